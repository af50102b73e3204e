"""Where file content comes from: memory, the disk cache, or the server.

Reads of a 4 MiB block arrive as many small FUSE reads.  A block on disk is
read in place, only the asked range (`BlockCache.read`).  A read of a block
that is not here is answered with a ranged GET of just its bytes (the server
vouches for a range, docs/protocol.md); once a block has been read by range
`FILL_AFTER` times, it downloads whole in the background, `FILLS_AT_ONCE`
blocks at a time.  For a program streaming through a file the whole block
starts downloading at its first read, which still takes its own bytes by
range; its later reads wait for the download.  A downloaded
block is checked against its hash, kept in a small in-memory LRU and answered
from there, and written to the disk cache in the background, off the read's
path.  Concurrent readers of one missing block share a single download -- and
its failure: when the server cannot be reached, every reader hears so at once,
and a block that just failed fails again at once for `FAILED_FOR` seconds (or
until the server answers again) instead of each read waiting out the network.

Demand loads come first: read-ahead (`prefetch`) loads at most `AHEAD_AT_ONCE`
blocks at a time, and only after it holds a slot does it start a download, so
a program's read never queues behind the blocks guessed for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Protocol

import trio

from cache import INLINE_MAX
from websync_server.protocol import BlockHash

from .errors import Offline, RemoteError

log = logging.getLogger(__name__)

#: Seconds a block that could not be fetched (server unreachable) fails again at once.
FAILED_FOR = 2.0
#: Blocks read ahead at the same time.
AHEAD_AT_ONCE = 3
#: Blocks fetched whole at the same time for scattered reads (see `BlockSource.read`).
FILLS_AT_ONCE = 2
#: Ranged reads of one block after which it is fetched whole.  Rent or buy: a
#: ranged GET costs about one round trip, the whole block one round trip plus
#: 4 MiB; buying once the rent paid is about the price keeps the total within
#: twice the best choice made in hindsight.  Measured, a 4 MiB GET took ~8
#: ranged GETs' time on loopback (16 vs 2 ms), and a WAN's longer round trips
#: and lower bandwidth keep the ratio near that.  Buying on the second read
#: fetched the whole of a big file read at random (4 reads a block) beside the
#: reads, and halved their rate.
FILL_AFTER = 8
_TOUCHED_MAX = 4096
#: Downloaded blocks whose disk write waits while other downloads are under way
#: (see `BlockSource._store`); as many as the memory cache holds, so waiting costs no memory.
_DEFER_MAX = 16
#: Seconds a block's disk write waits for the downloads at most.
_DEFER_S = 5.0
_STORING_MAX = 24  # downloaded blocks held in memory while they wait for the disk: then readers wait


#: A block's bytes: bytes, or the buffer a download arrived in (never changed after).
Content = bytes | bytearray


class Cache(Protocol):
    def get(self, h: str) -> bytes | None: ...
    def read(self, h: str, offset: int, length: int) -> bytes | None: ...
    def put(self, h: str, data: Content, *, verified: bool = False) -> None: ...
    def contains(self, h: str) -> bool: ...
    def find(self, h: str) -> bool: ...


class Fetch(Protocol):
    async def get_block(self, h: BlockHash) -> Content: ...
    async def get_block_range(self, h: BlockHash, offset: int, length: int) -> tuple[Content, bool]: ...


class _Fetch:
    """A download under way that other readers of the same block wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: RemoteError | OSError | None = None


class BlockSource:
    def __init__(self, cache: Cache, remote: Fetch, memory_blocks: int = 16) -> None:
        self.cache = cache
        self.remote = remote
        self._memory: OrderedDict[str, Content] = OrderedDict()
        self._memory_blocks = memory_blocks
        self._inflight: dict[str, _Fetch] = {}
        self._failed: dict[str, tuple[float, Offline]] = {}  # block -> (when, why), see get()
        self._limiter = trio.CapacityLimiter(8)
        self._ahead = trio.CapacityLimiter(AHEAD_AT_ONCE)
        self._filling: set[str] = set()  # blocks fetched whole after scattered reads
        # Downloaded blocks on their way to the disk cache; readers find them here.
        self._storing: dict[str, Content] = {}
        self._writer = trio.CapacityLimiter(1)
        #: Writes a download waits for (the disk fell behind): a deferred write holding the writer must not wait on.
        self._pressing = 0
        self._quieter = trio.lowlevel.ParkingLot()  # a deferred disk write may go on: see _store()
        self._nursery: trio.Nursery | None = None
        #: Blocks answered by range, not on disk nor fetched since: how many times (see read()).
        self._touched: OrderedDict[str, int] = OrderedDict()

    def start(self, nursery: trio.Nursery) -> None:
        """Run background work (cache writes) in *nursery*; without it, writes happen inline."""
        self._nursery = nursery

    def _remember(self, h: str, data: Content) -> None:
        self._memory[h] = data
        self._memory.move_to_end(h)
        while len(self._memory) > self._memory_blocks:
            self._memory.popitem(last=False)

    def _held(self, h: str) -> Content | None:
        data = self._memory.get(h)
        if data is not None:
            self._memory.move_to_end(h)
            return data
        return self._storing.get(h)

    def reconnected(self) -> None:
        """The server answers again: blocks that failed may be fetched at once."""
        self._failed.clear()

    def cached(self, h: str) -> bool:
        return h in self._memory or h in self._storing or self.cache.contains(h)

    async def read(
        self, h: BlockHash, offset: int, length: int, *, streaming: bool = False, size: int | None = None
    ) -> Content | memoryview:
        """Up to *length* bytes of block *h* from *offset*; raises `Offline` like `get`.

        A block that is nowhere here is answered with a ranged GET of just
        these bytes (and downloaded whole in the background once it has been
        read `FILL_AFTER` times); a reader *streaming* through the file starts
        that download at once, and a streaming read of the whole block (a small
        file) waits for it rather than asking twice.  *size*, the block's
        length where the caller knows it: a small block is a row of the
        cache's index, read on the event loop (tens of microseconds) rather
        than through a worker thread (the hop there and back cost about
        100 microseconds, more than the read: half of a small file's read).
        """
        data = self._held(h)
        if data is None and h in self._inflight and (streaming or self._nursery is None):
            data = await self.get(h)
        if data is not None:
            return memoryview(data)[offset : offset + length]  # no copy: the kernel copies the reply
        if h not in self._touched:  # a touched block was not on disk, nor fetched since
            if size is not None and size <= INLINE_MAX:
                part = self.cache.read(h, offset, length)
            elif self.cache.find(h):
                # Looked up here first: a block that is not on disk (every cold read)
                # need not make the trip to a worker thread and back for it.
                part = await trio.to_thread.run_sync(self.cache.read, h, offset, length)
            else:
                part = None
            if part is not None:
                return part
        whole = offset == 0 and size is not None and length >= size
        if self._nursery is None or (streaming and whole):
            data = await self.get(h, look_on_disk=False)  # just missed on disk
            return memoryview(data)[offset : offset + length]
        if streaming and h not in self._filling:
            # Reading on: the whole block comes next, in the background.  This read takes
            # its own bytes by range meanwhile: it need not wait for 4 MiB (a random
            # reader's read that happens to land near its last one waited ~12 ms).
            self._filling.add(h)
            self._nursery.start_soon(self._fill, h)
        # Even while the whole block downloads: a few KiB now beat waiting for 4 MiB.
        self._raise_if_failed(h)
        fetched = await self._fetch_range(h, offset, length)
        reads = self._touched.get(h, 0) + 1
        self._touched[h] = reads
        self._touched.move_to_end(h)
        while len(self._touched) > _TOUCHED_MAX:
            self._touched.popitem(last=False)
        if reads >= FILL_AFTER:
            # In use: fetch it whole -- a few such blocks at a time, and none while
            # those are under way, so scattered reads never queue behind 4 MiB
            # downloads (a later read of this block tries again).  Not sooner: a
            # program that reads a page and seeks on (a media player, a file type
            # probe, a random reader of a big file) would pay 4 MiB for each.
            if len(self._filling) < FILLS_AT_ONCE and h not in self._inflight and h not in self._filling:
                self._filling.add(h)  # before the task starts: no await in between
                self._nursery.start_soon(self._fill, h)
        return fetched

    async def _fetch_range(self, h: BlockHash, offset: int, length: int) -> Content | memoryview:
        try:
            data, whole = await self.remote.get_block_range(h, offset, length)
        except Offline as exc:
            log.warning("block %s is not available offline (not cached and the server is unreachable)", h)
            self._note_failed(h, exc)
            raise
        if not whole:
            return data  # the server vouches for a range (docs/protocol.md)
        digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        if digest != h:
            raise RemoteError(f"the server sent block {h} with the wrong content")
        self._remember(h, data)
        return memoryview(data)[offset : offset + length]

    def _raise_if_failed(self, h: str) -> None:
        failed = self._failed.get(h)
        if failed is not None and trio.current_time() - failed[0] < FAILED_FOR and not self.cache.contains(h):
            # The kernel reads a page again when its read-ahead failed: without this,
            # one read() of a file the server cannot give waits out the server twice.
            raise failed[1]

    def _note_failed(self, h: str, exc: Offline) -> None:
        if len(self._failed) > 1000:
            self._failed.clear()
        self._failed[h] = (trio.current_time(), exc)

    async def get(self, h: BlockHash, *, look_on_disk: bool = True) -> Content:
        """The bytes of block *h*; raises `Offline` when it must be fetched and cannot be."""
        while True:
            data = self._held(h)
            if data is not None:
                return data
            self._raise_if_failed(h)
            fetch = self._inflight.get(h)
            if fetch is None:
                break
            await fetch.done.wait()
            if fetch.error is not None and h not in self._memory:
                # One download for every reader, and its failure is theirs too: trying
                # again one after another would make each wait out a dead server in turn.
                raise fetch.error
        fetch = _Fetch()
        self._inflight[h] = fetch
        try:
            data = await self._load(h, look_on_disk)
            self._remember(h, data)
            self._failed.pop(h, None)
            return data
        except (RemoteError, OSError) as exc:
            fetch.error = exc
            if isinstance(exc, Offline):
                self._note_failed(h, exc)
            raise
        finally:
            del self._inflight[h]
            fetch.done.set()
            if not self._inflight:
                self._quieter.unpark_all()

    async def _load(self, h: BlockHash, look_on_disk: bool) -> Content:
        async with self._limiter:
            if look_on_disk:
                kept = await trio.to_thread.run_sync(self.cache.get, h)
                if kept is not None:
                    return kept
            try:
                data = await self.remote.get_block(h)
            except Offline:
                log.warning("block %s is not available offline (not cached and the server is unreachable)", h)
                raise
            digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
            if digest != h:
                raise RemoteError(f"the server sent block {h} with the wrong content")
        if self._nursery is None or len(self._storing) >= _STORING_MAX:
            # The disk falls behind: readers wait for it.  This download is in flight until
            # its write is done, so a deferred write holding the writer must stop waiting
            # for the downloads to end: each would otherwise wait out _DEFER_S in turn.
            self._pressing += 1
            self._quieter.unpark_all()
            try:
                await self._store(h, data)
            finally:
                self._pressing -= 1
        else:
            # The reader has its bytes now; the disk write (4 MiB) need not delay it.
            self._storing[h] = data
            self._quieter.unpark_all()  # one more block waits: past _DEFER_MAX, write one
            self._nursery.start_soon(self._store, h, data, True)
        return data

    async def _store(self, h: str, data: Content, defer: bool = False) -> None:
        """Write downloaded block *h* into the disk cache; if *defer*, once downloads pause.

        While a program streams through a file, the next blocks are coming
        in; a 4 MiB write beside them takes the same two cores and disk, and a
        cold read of 64 MiB ran about 15 % faster with no cache writes at all
        (docs/benchmarks.md).  So a write waits until no download is under
        way, `_DEFER_MAX` blocks wait, a download waits for the disk (`_load`),
        or `_DEFER_S` have passed.  The blocks are the ones just read, held in
        the memory cache meanwhile anyway.
        """
        try:
            # Shielded: a block read just before unmount is still on disk after it
            # (at most _STORING_MAX writes of a few ms each; cancelled downloads end the wait).
            with trio.CancelScope(shield=True):
                async with self._writer:
                    if defer:
                        await self._until_quiet()
                    # Just hashed above: the cache need not hash the 4 MiB again.
                    await trio.to_thread.run_sync(lambda: self.cache.put(h, data, verified=True))
        except OSError as exc:
            # A full (or failing) cache disk must not fail a read: the bytes are here.
            log.warning("block %s is read but not cached: %s", h, exc)
        finally:
            self._storing.pop(h, None)
            self._touched.pop(h, None)  # on disk now (or never will be): look there first

    async def _until_quiet(self) -> None:
        with trio.move_on_after(_DEFER_S):
            while self._inflight and len(self._storing) <= _DEFER_MAX and not self._pressing:
                await self._quieter.park()

    async def _fill(self, h: BlockHash) -> None:
        try:
            await self.get(h)
        except (RemoteError, OSError) as exc:
            log.debug("fetching block %s whole failed: %s", h, exc)
        finally:
            self._filling.discard(h)

    def prefetch(self, nursery: trio.Nursery, hashes: list[BlockHash]) -> None:
        """Start loading *hashes* in the background (read-ahead); errors are ignored."""
        for h in hashes:
            if h in self._memory or h in self._inflight or h in self._storing:
                continue
            nursery.start_soon(self._quiet_get, h)

    async def _quiet_get(self, h: BlockHash) -> None:
        # It runs in the mount's nursery: an error escaping here would end the mount.
        try:
            async with self._ahead:
                if h in self._memory or h in self._inflight:
                    return  # a reader got there first
                await self.get(h)
        except (RemoteError, OSError) as exc:
            log.debug("read-ahead of block %s failed: %s", h, exc)
