"""The working copy of a file opened for writing.

A sparse local file holds the file's bytes while it is open for writing (while
they are few, memory does: spillfile.py).  It is filled lazily, block by block:
a block the program never reads and never partly overwrites is never
downloaded, so editing 1 MiB inside a 1 GiB file fetches one block.  `seal()` turns the current bytes into a block list (hashing
only the blocks that were written) and hands the new blocks to the cache.

Appending writers.  A program writing a big file from start to end appends
block after block.  From the second block on, or from the first for a writer
whose first write is 1 MiB or more (so small files never do this), such a
block is gathered in memory instead of the file; once full it is hashed and
stored into the cache in the background, and the working-copy file never
holds it: its bytes go into the page cache once, as a cache block, instead of
twice.  The last, partial block is hashed by `seal` from memory too (and, if
a read needs it meanwhile, put into the file).  Where the current bytes of a
block are:

==========  ===================================================================
state       where
==========  ===================================================================
base        unchanged since open (or the last seal): ``base[i]``, in the cache
            or on the server; fetched into the file on first use
in file     ``_present`` (base bytes fetched) or ``dirty`` (changed)
filling     ``_fill``: the block an appending writer is in, in memory
finishing   ``_mem``: full, being hashed and stored, in memory
stored      ``_stored``: only in the cache, under its hash
==========  ===================================================================

Anything other than an append that touches a block held elsewhere first
brings it into the file (`_ensure`), or forgets it when it is wholly
overwritten.  A crash loses nothing that was promised: the working copy is
thrown away at start either way, and what close() or fsync() sealed is in the
cache and the queue; what fsync() made durable while the file stayed open is
written down by `snapshot()` (fsynced.py) and sealed at start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from cache import zeros
from websync_server.protocol import BLOCK_SIZE, BlockHash, block_count

from . import portable
from .blocksource import Content
from .fsynced import Snapshot
from .spillfile import SpillFile

Loader = Callable[[BlockHash], Awaitable[Content]]
#: Puts a block into the cache and gives its hash (hashing it while it is written: cache.BlockCache.add).
Store = Callable[[bytes], str]
Offer = Callable[[BlockHash, bytes], None]
Spawn = Callable[[Callable[[], Awaitable[None]]], None]

#: Blocks hashed and stored ahead at once per process.  Storing a block is mostly the
#: kernel filling fresh page-cache pages for its new file, which ran at 300-370 MiB/s
#: on one core here: with one at a time the writer waited on it (220 MiB/s until
#: close() for 1 GiB); with two, 255-265 MiB/s, and the file reached the server sooner.
_AHEAD = trio.CapacityLimiter(2)
#: Full blocks of one file waiting in memory to be stored; the writer waits beyond this.
_FINISHING_MAX = 2
#: Files gathering blocks in memory at once; more use the file.  Each holds up to
#: 2 + _FINISHING_MAX blocks (filling, finishing, being stored): 128 MiB at most.
_FILLS_MAX = 8
_FILLING: set[int] = set()  # ids of the working copies in append mode
#: A first write at least this big, at the start of an empty copy, starts append mode at
#: block 0: a photo of a few MiB is then gathered and sealed from memory, never written
#: into the working-copy file and read back (`cp` writes st_blksize, 1 MiB, at a time).
_FILL_FROM_START = 1024 * 1024
#: Most bytes of a block already in the file that a write mid-block reads back to start append mode.
_APPEND_HEAD_MAX = 64 * 1024
#: A block sealed from memory up to this size is hashed on the event loop, like a copy
#: that is memory (spillfile.py); bigger ones in a worker thread.
_SEAL_ON_LOOP = 64 * 1024


async def _side_by_side(*jobs: Callable[[], Awaitable[None]]) -> None:
    """Run *jobs* at once; when all ended, raise the first one's error as it was (a full disk
    stays an OSError for the caller, not a group of one)."""
    errors: list[Exception] = []

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    if errors:
        raise errors[0]


class WorkingCopy:
    """Bytes of one node while it has writers; not thread-safe (trio task only)."""

    def __init__(self, path: Path, size: int, blocks: tuple[BlockHash, ...], load: Loader) -> None:
        self.path = path
        self.size = size
        self.base: list[BlockHash] = list(blocks)
        self._present: set[int] = set()
        self.dirty: set[int] = set()
        self._load = load
        self._file = SpillFile(path, size)
        self.handles = 0
        self._lock = trio.Lock()
        # Hashing ahead: a block a sequential writer has finished is hashed and
        # stored in the background, so close() only hashes what is left.  A
        # block's generation moves with every write to it; a result for an
        # older generation is stale and ignored.
        self._gen: dict[int, int] = {}
        self._ahead: dict[int, tuple[int, BlockHash]] = {}
        self.ahead_stored: list[str] = []  # held in the cache until the owner releases them
        self.spawn: Spawn | None = None
        self.store: Store | None = None
        #: Told of each block hashed ahead that is still current, bytes and all (earlyupload.py).
        self.offer: Offer | None = None
        #: An appending writer's first finished block is not offered: it goes up with the commit,
        #: and a file of one block (a photo) does not compete with the writing of the next one.
        self._first_appended = True
        self._closed = False
        self._length = size  # of the file; appended blocks held elsewhere do not grow it
        self._fill: list[bytes] | None = None  # chunks of the last block, while appending
        self._sealing: tuple[int, bytes] | None = None  # that block, while `seal` hashes it
        self._fill_len = 0
        self._mem: dict[int, tuple[bytes, trio.Event]] = {}
        self._stored: dict[int, BlockHash] = {}
        #: Writes and truncates so far: a seal after an fsync needs none since (vfs.py).
        self.changes = 0
        self.fsynced_changes = -1  # `changes` at the last fsync
        #: Blocks an fsync has already made durable in the cache; whether the file's name is.
        self.synced: set[str] = set()
        self._named = False
        self.fsyncs = 0  # fsync() calls that found the copy changed
        #: The copy's mtime was set by utimens since its last write: a file's own mtime is not it.
        self.mtime_set = False
        #: A growing fsync record stands for the copy (fsynced.py): what it gains goes into the
        #: file, never into blocks gathered in memory, so that the file stays all of it.
        self.grows_in_file = False

    @property
    def changed(self) -> bool:
        return (
            bool(self.dirty or self._mem or self._stored or self._fill)
            or len(self.base) != block_count(self.size)
        )

    @property
    def in_memory(self) -> bool:
        """True while the copy is memory (spillfile.py): sealing and closing it need no thread."""
        return not self._file.on_disk

    def close(self) -> None:
        self._closed = True
        self._end_fill()
        self._mem.clear()
        self._file.close()

    async def _ensure(self, index: int) -> None:
        """Bring the current bytes of block *index* into the file if they are not there yet."""
        if self._fill is not None and index == self.size // BLOCK_SIZE:
            self._spill_fill()
        tail = self._sealing
        if tail is not None and index == tail[0] and index not in self.dirty:
            # A read while `seal` hashes this block from memory: the file gets the same bytes
            # (the seal's hash is theirs; once sealed the block is base like any other).
            self._put_in_file(index, tail[1])
            return
        if index in self._mem:
            self._put_in_file(index, self._mem[index][0])
            del self._mem[index]
            return
        if index in self._stored:
            h = self._stored[index]
            data = await self._load(h)
            if self._stored.get(index) == h:  # else rewritten or brought in while we waited
                self._put_in_file(index, data)
                del self._stored[index]
            return
        if index in self._present or index in self.dirty or index >= len(self.base):
            return
        data = await self._load(self.base[index])
        if index in self._present or index in self.dirty or index in self._stored or index in self._mem:
            return  # another task filled it while we waited
        start = index * BLOCK_SIZE
        keep = max(0, min(len(data), self.size - start))
        self._pwrite(data[:keep], start)
        self._present.add(index)

    def _put_in_file(self, index: int, data: Content) -> None:
        """Write a changed block held in memory or the cache into the file; its hash stays known."""
        self._pwrite(data, index * BLOCK_SIZE)
        self.dirty.add(index)

    def _pwrite(self, data: Content, offset: int) -> None:
        """Write all of *data* at *offset*, or none of what grew the file.

        A nearly full disk takes part of a write and refuses the rest (tmpfs and
        ext4 return a short count first, ENOSPC next).  The part that grew the
        file is cut off again, so a failed write holds no space and leaves no
        bytes past the file's end that a later truncate could bring into view.
        """
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += self._file.pwrite(view[done:], offset + done)
        except OSError:
            if offset + done > self._length:
                self._file.truncate(self._length)
            raise
        self._length = max(self._length, offset + len(data))

    def _extend(self) -> None:
        """Give the file its full length, so that reads of holes give zeros, not short reads."""
        if self._length < self.size:
            self._file.truncate(self.size)
            self._length = self.size

    def _spill_fill(self) -> None:
        """Leave append mode: the block being gathered goes into the file."""
        if self._fill is None:
            return
        if self._fill_len:
            index = self.size // BLOCK_SIZE
            self._put_in_file(index, b"".join(self._fill))
        self._end_fill()

    def _take_fill(self) -> tuple[int, bytes] | None:
        """Leave append mode, handing over the partial block being gathered (for `seal`, from memory)."""
        if self._fill is None:
            return None
        tail = (self.size // BLOCK_SIZE, b"".join(self._fill)) if self._fill_len else None
        self._end_fill()
        return tail

    def _end_fill(self) -> None:
        if self._fill is not None:
            self._fill = None
            self._fill_len = 0
            _FILLING.discard(id(self))  # a set: close() may run in a worker thread

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        for index in range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
            await self._ensure(index)
        self._extend()
        return self._file.pread(end - offset, offset)

    async def write(self, offset: int, data: bytes) -> int:
        async with self._lock:
            self.changes += 1
            return await self._write(offset, data)

    async def _write(self, offset: int, data: bytes) -> int:
        if not data:
            return 0
        if self._appends(offset, len(data)):
            await self._append(data)
            return len(data)
        self._spill_fill()
        end = offset + len(data)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        for index in range(first, last + 1):
            whole = offset <= index * BLOCK_SIZE and end >= min((index + 1) * BLOCK_SIZE, max(self.size, end))
            if not whole:
                await self._ensure(index)
            else:
                # Wholly overwritten: a copy held in memory or the cache is no longer its content.
                self._mem.pop(index, None)
                self._stored.pop(index, None)
        if offset > self.size:
            # The old last block grows with zeros: it must be complete first.
            await self._ensure((self.size - 1) // BLOCK_SIZE if self.size else 0)
            self.dirty.update(range(self.size // BLOCK_SIZE, first))
        # Bytes of the file are about to change: a failed write may leave some of
        # them changed, and what is in the file must be what the seal hashes.
        self.dirty.update(i for i in range(first, last + 1) if i in self._present)
        self._pwrite(data, offset)
        self.dirty.update(range(first, last + 1))
        self._touch(range(first, last + 1))
        self.size = max(self.size, end)
        for index in range(first, end // BLOCK_SIZE):
            self._hash_ahead(index)  # wholly written up to its end: likely finished
        return len(data)

    def _appends(self, offset: int, length: int) -> bool:
        """True if a write of *length* at *offset* continues (or can start) gathering blocks in memory."""
        if offset != self.size or self.spawn is None or self.store is None or self.grows_in_file:
            return False
        if self._fill is not None:
            return True
        if len(_FILLING) >= _FILLS_MAX:
            return False
        if offset < BLOCK_SIZE:
            # The first block only for a writer starting big (cp, a download: files of a few
            # MiB), so small files never do this; their copy is memory anyway (spillfile.py).
            return offset == 0 and length >= _FILL_FROM_START
        # Mid-block (writes of odd sizes) the block's head must be in the file to be taken along,
        # and small: it is read back here, and a writer that fsyncs as it goes (a log) leaves
        # append mode at every fsync -- re-entering with a big head cost a read and a write of
        # up to a whole block an fsync.  Its writes go to the file until the next block.
        head = offset % BLOCK_SIZE
        return head == 0 or (head <= _APPEND_HEAD_MAX and offset // BLOCK_SIZE in self.dirty)

    async def _append(self, data: bytes) -> None:
        if self._fill is None:
            index = self.size // BLOCK_SIZE
            head = self._file.pread(self.size - index * BLOCK_SIZE, index * BLOCK_SIZE)
            self._fill = [head] if head else []
            self._fill_len = len(head)
            self.dirty.discard(index)  # its bytes are in the fill now, the file's are stale
            self._present.discard(index)
            _FILLING.add(id(self))
        while data:
            room = BLOCK_SIZE - self._fill_len
            part, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            index = self.size // BLOCK_SIZE
            self._fill.append(part)
            self._fill_len += len(part)
            self.size += len(part)
            self._touch(range(index, index + 1))
            if self._fill_len == BLOCK_SIZE:
                block = b"".join(self._fill)
                self._fill = []
                self._fill_len = 0
                await self._finish(index, block)
                if self._fill is None:
                    # A read of the new last block ended append mode while we waited.
                    if data and not self._closed:
                        await self._write(self.size, data)
                    return

    async def _finish(self, index: int, block: bytes) -> None:
        """Hash and store a full appended block in the background; it never enters the file."""
        assert self.spawn is not None and self.store is not None
        gen = self._gen[index]
        store = self.store
        done = trio.Event()
        self._mem[index] = (block, done)  # before any wait: reads meanwhile find it here
        offer, self._first_appended = not self._first_appended, False

        def work() -> BlockHash | None:
            if self._closed:
                return None
            h = BlockHash(store(block))
            self.ahead_stored.append(h)
            return h

        async def run() -> None:
            h = None
            try:
                async with _AHEAD:
                    h = await trio.to_thread.run_sync(work)
            except OSError:
                pass  # a full cache: left in memory for seal, which reports it
            finally:
                if h is not None and self._gen.get(index) == gen:
                    self._ahead[index] = (gen, h)
                    held = self._mem.get(index)
                    if held is not None and held[0] is block:
                        del self._mem[index]
                        self._stored[index] = h
                    if offer and self.offer is not None:
                        self.offer(h, block)
                done.set()

        self.spawn(run)
        while len(self._mem) > _FINISHING_MAX:
            await next(iter(self._mem.values()))[1].wait()
            self._spill_failed()

    def _spill_failed(self) -> None:
        """Blocks whose background store failed go into the file: seal stores them again."""
        for index, (block, done) in list(self._mem.items()):
            if done.is_set():
                self._put_in_file(index, block)  # first: a failed write keeps the bytes here
                del self._mem[index]

    def _touch(self, indexes: range) -> None:
        for index in indexes:
            self._gen[index] = self._gen.get(index, 0) + 1

    def _hash_ahead(self, index: int) -> None:
        if self.spawn is None or self.store is None or index not in self.dirty:
            return
        gen = self._gen.get(index, 0)
        store = self.store

        def work() -> tuple[BlockHash, bytes] | None:
            if self._closed or self._gen.get(index) != gen:
                return None
            data = self._file.pread(BLOCK_SIZE, index * BLOCK_SIZE)
            h = BlockHash(store(data))
            self.ahead_stored.append(h)
            return h, data

        async def run() -> None:
            async with _AHEAD:
                try:
                    done = await trio.to_thread.run_sync(work)
                except OSError:
                    return  # closed meanwhile: nothing to keep
            if done is not None and self._gen.get(index) == gen:
                h, data = done
                self._ahead[index] = (gen, h)
                if self.offer is not None:
                    self.offer(h, data)

        self.spawn(run)

    async def truncate(self, size: int) -> None:
        async with self._lock:
            self.changes += 1
            if size == self.size:
                return
            self._spill_fill()
            if size < self.size:
                if size % BLOCK_SIZE:
                    await self._ensure(size // BLOCK_SIZE)  # the new last block is rehashed
                    self.dirty.add(size // BLOCK_SIZE)
            elif self.size % BLOCK_SIZE:
                await self._ensure(self.size // BLOCK_SIZE)  # the old last block grows
            self._file.truncate(size)
            self._length = size
            count = block_count(size)
            self._touch(range(min(size, self.size) // BLOCK_SIZE, max(count, block_count(self.size))))
            if size > self.size:
                self.dirty.update(range(self.size // BLOCK_SIZE, count))
            self.base = self.base[:count]
            self._present = {i for i in self._present if i < count}
            self.dirty = {i for i in self.dirty if i < count}
            self._mem = {i: m for i, m in self._mem.items() if i < count}
            self._stored = {i: h for i, h in self._stored.items() if i < count}
            self.size = size

    async def _settle(self) -> None:
        """Bring blocks gathered in memory into the file or the cache; call holding the lock."""
        self._spill_fill()
        for _, done in list(self._mem.values()):
            await done.wait()
        self._spill_failed()

    async def snapshot(self) -> Snapshot:
        """Where the current bytes are, for fsync() (fsynced.py); `sync()` then makes the file's durable."""
        async with self._lock:
            await self._settle()
            count = block_count(self.size)
            in_file = tuple(i for i in range(count)
                            if i not in self._stored and (i in self.dirty or i >= len(self.base)))
            inline = None if self._file.on_disk else self._file.pread(self.size, 0)
            # The file holds the copy up to its end (its last block included) and its mtime is
            # the copy's: what it gains later is the copy's too (fsynced.py, ``grows``).
            grows = (inline is None and self._length == self.size and not self.mtime_set
                     and (self.size % BLOCK_SIZE == 0 or count - 1 in in_file))
            return Snapshot(size=self.size, base=tuple(self.base[:count]), stored=dict(self._stored),
                            in_file=in_file, inline=inline, path="" if inline is not None else self.path.name,
                            grows=grows)

    def to_file(self) -> None:
        """Move a copy held in memory into its file for good; on failure (a full disk) it stays."""
        with contextlib.suppress(OSError):
            self._file.spill()

    def sync(self) -> None:
        """fsync the working-copy file (and, the first time, its name); blocking."""
        self._file.sync()
        if not self._named:
            portable.fsync_dir(self.path.parent)
            self._named = True

    async def seal(self, store: Store) -> tuple[int, tuple[BlockHash, ...]] | None:
        """Hash what changed, put new blocks into *store*, return (size, blocks); None once closed."""
        async with self._lock:
            if self._closed:
                return None  # sealed and closed by another task while this one waited
            # An appending writer's last, partial block is hashed from memory: into the
            # file and read back, it cost a write and a read of up to 4 MiB a close.
            tail = self._sealing = self._take_fill()
            try:
                return await self._seal(store)
            except BaseException:
                if tail is not None and not self._closed and tail[0] not in self.dirty:
                    self._put_in_file(*tail)  # nothing sealed: the bytes stay in the copy
                raise
            finally:
                self._sealing = None

    async def _seal(self, store: Store) -> tuple[int, tuple[BlockHash, ...]]:
        """`seal`, holding the lock; `_sealing` is a partial last block taken from memory."""
        tail = self._sealing
        tail_hash: list[BlockHash] = []
        if tail is not None and len(tail[1]) > _SEAL_ON_LOOP:
            # A program's close() sends the file's last pages, and then the flush at once:
            # the last full block is still being hashed and stored in the background.  The
            # tail goes beside it, on the other core, not after it (cp -a of photos: 4.8 ms
            # of a flush's 13.6 were that wait).
            data = tail[1]

            async def store_tail() -> None:
                tail_hash.append(BlockHash(await trio.to_thread.run_sync(store, data)))

            await _side_by_side(store_tail, self._settle)
        else:
            await self._settle()
        self._extend()
        count = block_count(self.size)
        blocks = list(self.base[:count]) + [BlockHash("")] * (count - len(self.base))
        todo = []
        for i in range(count):
            if tail is not None and i == tail[0]:
                if tail_hash:
                    blocks[i] = tail_hash[0]
                else:
                    todo.append(i)  # hashed from memory
            elif i in self._stored:
                blocks[i] = self._stored[i]  # its bytes are in the cache only
            elif i in self.dirty or i >= len(self.base):
                ahead = self._ahead.get(i)
                if ahead is not None and ahead[0] == self._gen.get(i):
                    blocks[i] = ahead[1]  # hashed in the background, untouched since
                else:
                    todo.append(i)

        def work() -> list[tuple[int, BlockHash]]:
            out = []
            for index in todo:
                start = index * BLOCK_SIZE
                length = min(BLOCK_SIZE, self.size - start)
                if tail is not None and index == tail[0]:
                    data = tail[1]
                elif self._file.is_hole(start, length):
                    data = zeros(length)  # a sparse file's hole: not read, its hash known
                else:
                    data = self._file.pread(length, start)
                out.append((index, BlockHash(store(data))))
            return out

        # A copy in memory (64 KiB at most) is hashed and stored on the event loop
        # (~0.1 ms): the hop to a thread and back cost 0.7 ms a small file (GIL
        # hand-offs), more than the work, and no thread may read it anyway.
        on_loop = self.in_memory and (tail is None or len(tail[1]) <= _SEAL_ON_LOOP)
        done = (work() if on_loop else await trio.to_thread.run_sync(work)) if todo else []
        for index, h in done:
            blocks[index] = h
            if tail is None or index != tail[0]:
                self._present.add(index)  # the tail's bytes are in the cache only, as base
        self.base = blocks
        self.dirty.clear()
        self._stored.clear()
        return self.size, tuple(blocks)
