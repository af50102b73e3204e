"""The working copy of a file opened for writing.

A sparse local file holds the file's bytes while it is open for writing.  It is
filled lazily, block by block: a block the program never reads and never
partly overwrites is never downloaded, so editing 1 MiB inside a 1 GiB file
fetches one block.  `seal()` turns the current bytes into a block list (hashing
only the blocks that were written) and hands the new blocks to the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from websync_server.protocol import BLOCK_SIZE, BlockHash, block_count

Loader = Callable[[BlockHash], Awaitable[bytes]]
Store = Callable[[str, bytes], None]
Offer = Callable[[BlockHash, bytes], None]
Spawn = Callable[[Callable[[], Awaitable[None]]], None]

#: One block hashed ahead at a time per process: the writer keeps the other core.
_AHEAD = trio.CapacityLimiter(1)


class WorkingCopy:
    """Bytes of one node while it has writers; not thread-safe (trio task only)."""

    def __init__(self, path: Path, size: int, blocks: tuple[BlockHash, ...], load: Loader) -> None:
        self.path = path
        self.size = size
        self.base: list[BlockHash] = list(blocks)
        self._present: set[int] = set()
        self.dirty: set[int] = set()
        self._load = load
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, size)
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
        self._closed = False

    @property
    def changed(self) -> bool:
        return bool(self.dirty) or len(self.base) != block_count(self.size)

    def close(self) -> None:
        self._closed = True
        os.close(self._fd)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _ensure(self, index: int) -> None:
        """Bring block *index* of the old content into the file if it is not there yet."""
        if index in self._present or index in self.dirty or index >= len(self.base):
            return
        data = await self._load(self.base[index])
        if index in self._present or index in self.dirty:
            return  # another task filled it while we waited
        start = index * BLOCK_SIZE
        keep = max(0, min(len(data), self.size - start))
        os.pwrite(self._fd, data[:keep], start)
        self._present.add(index)

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        for index in range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
            await self._ensure(index)
        return os.pread(self._fd, end - offset, offset)

    async def write(self, offset: int, data: bytes) -> int:
        async with self._lock:
            return await self._write(offset, data)

    async def _write(self, offset: int, data: bytes) -> int:
        if not data:
            return 0
        end = offset + len(data)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        for index in (first, last):
            whole = offset <= index * BLOCK_SIZE and end >= min((index + 1) * BLOCK_SIZE, max(self.size, end))
            if not whole:
                await self._ensure(index)
        if offset > self.size:
            # The old last block grows with zeros: it must be complete first.
            await self._ensure((self.size - 1) // BLOCK_SIZE if self.size else 0)
            self.dirty.update(range(self.size // BLOCK_SIZE, first))
        os.pwrite(self._fd, data, offset)
        self.dirty.update(range(first, last + 1))
        self._touch(range(first, last + 1))
        self.size = max(self.size, end)
        for index in range(first, end // BLOCK_SIZE):
            self._hash_ahead(index)  # wholly written up to its end: likely finished
        return len(data)

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
            data = os.pread(self._fd, BLOCK_SIZE, index * BLOCK_SIZE)
            h = hashlib.sha256(data).hexdigest()
            store(h, data)
            self.ahead_stored.append(h)
            return BlockHash(h), data

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
            if size == self.size:
                return
            if size < self.size:
                if size % BLOCK_SIZE:
                    await self._ensure(size // BLOCK_SIZE)  # the new last block is rehashed
                    self.dirty.add(size // BLOCK_SIZE)
            elif self.size % BLOCK_SIZE:
                await self._ensure(self.size // BLOCK_SIZE)  # the old last block grows
            os.ftruncate(self._fd, size)
            count = block_count(size)
            self._touch(range(min(size, self.size) // BLOCK_SIZE, max(count, block_count(self.size))))
            if size > self.size:
                self.dirty.update(range(self.size // BLOCK_SIZE, count))
            self.base = self.base[:count]
            self._present = {i for i in self._present if i < count}
            self.dirty = {i for i in self.dirty if i < count}
            self.size = size

    def fsync(self) -> None:
        os.fsync(self._fd)

    async def seal(self, store: Store) -> tuple[int, tuple[BlockHash, ...]]:
        """Hash what changed, put new blocks into *store*, return (size, blocks)."""
        async with self._lock:
            count = block_count(self.size)
            blocks = list(self.base[:count]) + [BlockHash("")] * (count - len(self.base))
            todo = []
            for i in range(count):
                if i in self.dirty or i >= len(self.base):
                    ahead = self._ahead.get(i)
                    if ahead is not None and ahead[0] == self._gen.get(i):
                        blocks[i] = ahead[1]  # hashed in the background, untouched since
                    else:
                        todo.append(i)

            def work() -> list[tuple[int, BlockHash]]:
                out = []
                for index in todo:
                    start = index * BLOCK_SIZE
                    data = os.pread(self._fd, min(BLOCK_SIZE, self.size - start), start)
                    h = hashlib.sha256(data).hexdigest()
                    store(h, data)
                    out.append((index, BlockHash(h)))
                return out

            for index, h in await trio.to_thread.run_sync(work):
                blocks[index] = h
                self._present.add(index)
            self.base = blocks
            self.dirty.clear()
            return self.size, tuple(blocks)
