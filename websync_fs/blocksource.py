"""Where file content comes from: memory, the disk cache, or the server.

Reads of a 4 MiB block arrive as many small FUSE reads; a small in-memory LRU
keeps the last blocks so each is read and verified from disk once, and
concurrent readers of one missing block share a single download -- and its
failure: when the server cannot be reached, every reader hears so at once, and
a block that just failed fails again at once for `FAILED_FOR` seconds (or
until the server answers again) instead of each read waiting out the network.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Protocol

import trio

from websync_server.protocol import BlockHash

from .errors import Offline, RemoteError

log = logging.getLogger(__name__)

#: Seconds a block that could not be fetched (server unreachable) fails again at once.
FAILED_FOR = 2.0


class Cache(Protocol):
    def get(self, h: str) -> bytes | None: ...
    def put(self, h: str, data: bytes, *, verified: bool = False) -> None: ...
    def contains(self, h: str) -> bool: ...


class Fetch(Protocol):
    async def get_block(self, h: BlockHash) -> bytes: ...


class _Fetch:
    """A download under way that other readers of the same block wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: RemoteError | OSError | None = None


class BlockSource:
    def __init__(self, cache: Cache, remote: Fetch, memory_blocks: int = 16) -> None:
        self.cache = cache
        self.remote = remote
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_blocks = memory_blocks
        self._inflight: dict[str, _Fetch] = {}
        self._failed: dict[str, tuple[float, Offline]] = {}  # block -> (when, why), see get()
        self._limiter = trio.CapacityLimiter(8)

    def _remember(self, h: str, data: bytes) -> None:
        self._memory[h] = data
        self._memory.move_to_end(h)
        while len(self._memory) > self._memory_blocks:
            self._memory.popitem(last=False)

    def reconnected(self) -> None:
        """The server answers again: blocks that failed may be fetched at once."""
        self._failed.clear()

    def cached(self, h: str) -> bool:
        return h in self._memory or self.cache.contains(h)

    async def get(self, h: BlockHash) -> bytes:
        """The bytes of block *h*; raises `Offline` when it must be fetched and cannot be."""
        while True:
            data = self._memory.get(h)
            if data is not None:
                self._memory.move_to_end(h)
                return data
            failed = self._failed.get(h)
            if failed is not None and trio.current_time() - failed[0] < FAILED_FOR and not self.cache.contains(h):
                # The kernel reads a page again when its read-ahead failed: without this,
                # one read() of a file the server cannot give waits out the server twice.
                raise failed[1]
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
            data = await self._load(h)
            self._remember(h, data)
            self._failed.pop(h, None)
            return data
        except (RemoteError, OSError) as exc:
            fetch.error = exc
            if isinstance(exc, Offline):
                if len(self._failed) > 1000:
                    self._failed.clear()
                self._failed[h] = (trio.current_time(), exc)
            raise
        finally:
            del self._inflight[h]
            fetch.done.set()

    async def _load(self, h: BlockHash) -> bytes:
        async with self._limiter:
            data = await trio.to_thread.run_sync(self.cache.get, h)
            if data is not None:
                return data
            try:
                data = await self.remote.get_block(h)
            except Offline:
                log.warning("block %s is not available offline (not cached and the server is unreachable)", h)
                raise
            digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
            if digest != h:
                raise RemoteError(f"the server sent block {h} with the wrong content")
            try:
                # Just hashed above: the cache need not hash the 4 MiB again.
                await trio.to_thread.run_sync(lambda: self.cache.put(h, data, verified=True))
            except OSError as exc:
                # A full (or failing) cache disk must not fail a read: the bytes are here.
                log.warning("block %s is read but not cached: %s", h, exc)
            return data

    def prefetch(self, nursery: trio.Nursery, hashes: list[BlockHash]) -> None:
        """Start loading *hashes* in the background (read-ahead); errors are ignored."""
        for h in hashes:
            if h in self._memory or h in self._inflight:
                continue
            nursery.start_soon(self._quiet_get, h)

    async def _quiet_get(self, h: BlockHash) -> None:
        # It runs in the mount's nursery: an error escaping here would end the mount.
        try:
            await self.get(h)
        except (RemoteError, OSError) as exc:
            log.debug("read-ahead of block %s failed: %s", h, exc)
