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

    @property
    def changed(self) -> bool:
        return bool(self.dirty) or len(self.base) != block_count(self.size)

    def close(self) -> None:
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
        self.size = max(self.size, end)
        return len(data)

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
            todo = sorted(i for i in range(count) if i in self.dirty or i >= len(self.base))

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
