"""Where file content comes from: memory, the disk cache, or the server.

Reads of a 4 MiB block arrive as many small FUSE reads; a small in-memory LRU
keeps the last blocks so each is read and verified from disk once, and
concurrent readers of one missing block share a single download.
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


class Cache(Protocol):
    def get(self, h: str) -> bytes | None: ...
    def put(self, h: str, data: bytes) -> None: ...
    def contains(self, h: str) -> bool: ...


class Fetch(Protocol):
    async def get_block(self, h: BlockHash) -> bytes: ...


class BlockSource:
    def __init__(self, cache: Cache, remote: Fetch, memory_blocks: int = 16) -> None:
        self.cache = cache
        self.remote = remote
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_blocks = memory_blocks
        self._inflight: dict[str, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(8)

    def _remember(self, h: str, data: bytes) -> None:
        self._memory[h] = data
        self._memory.move_to_end(h)
        while len(self._memory) > self._memory_blocks:
            self._memory.popitem(last=False)

    def cached(self, h: str) -> bool:
        return h in self._memory or self.cache.contains(h)

    async def get(self, h: BlockHash) -> bytes:
        """The bytes of block *h*; raises `Offline` when it must be fetched and cannot be."""
        while True:
            data = self._memory.get(h)
            if data is not None:
                self._memory.move_to_end(h)
                return data
            event = self._inflight.get(h)
            if event is None:
                break
            await event.wait()
            if h in self._memory:
                continue
            # The other fetch failed: try ourselves (and fail the same way, most likely).
            break
        event = trio.Event()
        self._inflight[h] = event
        try:
            data = await self._load(h)
            self._remember(h, data)
            return data
        finally:
            del self._inflight[h]
            event.set()

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
                await trio.to_thread.run_sync(self.cache.put, h, data)
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
