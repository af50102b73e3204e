"""BlockSource on a real BlockCache with a server that is a function: ranges, whole blocks, failures."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cache import BlockCache
from websync_fs import blocksource
from websync_fs.blocksource import FILL_AFTER, BlockSource
from websync_fs.errors import Offline, RemoteError
from websync_server.protocol import BlockHash

BLOCK = 4 * 1024 * 1024


class Server:
    """Answers whole and ranged block GETs like websync_server; can be switched off or damage a block."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.online = True
        self.damaged: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def add(self, data: bytes) -> BlockHash:
        h = BlockHash(hashlib.sha256(data).hexdigest())
        self.blocks[h] = data
        return h

    def _bytes(self, h: str) -> bytes:
        if not self.online:
            raise Offline("connection refused")
        data = self.blocks[h]
        return data[:-1] + bytes([data[-1] ^ 1]) if h in self.damaged else data

    async def get_block(self, h: BlockHash) -> bytes:
        self.calls.append(("whole", h))
        await trio.sleep(0)
        return self._bytes(h)

    async def get_block_range(self, h: BlockHash, offset: int, length: int) -> tuple[bytes, bool]:
        self.calls.append(("range", h))
        await trio.sleep(0)
        data = self._bytes(h)
        if h in self.damaged:
            return data, True  # the server cannot vouch for a damaged block's range
        return data[offset : offset + length], False


@pytest.fixture
def cache(tmp_path: Path) -> BlockCache:
    return BlockCache(tmp_path / "blocks", limit=1 << 30)


async def _settle() -> None:
    for _ in range(50):
        await trio.sleep(0.01)


async def test_ranged_reads_until_the_block_is_in_use_then_the_whole_block(cache: BlockCache) -> None:
    server = Server()
    data = os.urandom(BLOCK)
    h = server.add(data)
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        offsets = [1000 + i * 300_000 for i in range(FILL_AFTER)]
        for n, offset in enumerate(offsets[:-1], 1):
            assert await source.read(h, offset, 4096) == data[offset : offset + 4096]
            await _settle()
            # A random reader of a big file pays a few KiB a read, never 4 MiB.
            assert server.calls == [("range", h)] * n and not cache.contains(h)
        assert await source.read(h, offsets[-1], 4096) == data[offsets[-1] : offsets[-1] + 4096]
        await _settle()
        assert ("whole", h) in server.calls and cache.contains(h)
        calls = len(server.calls)
        assert await source.read(h, BLOCK - 10, 4096) == data[-10:]
        assert len(server.calls) == calls  # from memory or disk now
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _source_of(cache: BlockCache, data: bytes) -> AsyncIterator[tuple[BlockSource, Server, BlockHash]]:
    """A running `BlockSource` over a server holding block *data*: the source, the server, the hash."""
    server = Server()
    h = server.add(data)
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        yield source, server, h
        nursery.cancel_scope.cancel()


async def test_a_streaming_read_takes_its_bytes_by_range_while_the_whole_block_comes(cache: BlockCache) -> None:
    data = os.urandom(100_000)
    async with _source_of(cache, data) as (source, server, h):
        assert await source.read(h, 0, 50_000, streaming=True, size=len(data)) == data[:50_000]
        await _settle()
        # Its own bytes at once; the rest of the block is what a reader going on wants next.
        assert sorted(server.calls) == [("range", h), ("whole", h)]
        assert await source.read(h, 50_000, 50_000, streaming=True, size=len(data)) == data[50_000:]
        assert len(server.calls) == 2  # the block came whole behind the first read
        assert cache.get(h) == data


async def test_a_streaming_read_of_a_whole_block_fetches_it_once(cache: BlockCache) -> None:
    data = os.urandom(100_000)
    async with _source_of(cache, data) as (source, server, h):
        # A small file read whole: its one GET, not a range beside it.
        assert await source.read(h, 0, len(data), streaming=True, size=len(data)) == data
        await _settle()
        assert server.calls == [("whole", h)]


async def test_a_read_of_a_block_in_memory_is_a_view_of_it_not_a_copy(cache: BlockCache) -> None:
    server = Server()
    data = os.urandom(1 << 20)
    h = server.add(data)
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        await source.get(h)
        first = await source.read(h, 0, 256 * 1024, streaming=True)
        second = await source.read(h, 256 * 1024, 256 * 1024, streaming=True)
        assert isinstance(first, memoryview) and isinstance(second, memoryview)
        assert first.obj is second.obj  # both views of the one block held
        assert (first, second) == (data[: 256 * 1024], data[256 * 1024 : 512 * 1024])
        nursery.cancel_scope.cancel()


async def test_a_downloaded_block_goes_to_disk_once_downloads_pause(cache: BlockCache) -> None:
    server = Server()
    first, second = os.urandom(1 << 20), os.urandom(1 << 20)
    h1, h2 = server.add(first), server.add(second)
    gate = trio.Event()
    plain = server.get_block

    async def held_back(h: BlockHash) -> bytes:
        if h == h2:
            await gate.wait()
        return await plain(h)

    server.get_block = held_back  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        assert await source.read(h1, 0, 4096, streaming=True) == first[:4096]
        nursery.start_soon(source.get, h2)  # the next block, still on its way
        await _settle()
        # The write would take the cores and the disk from the download: it waits.
        assert not cache.contains(h1) and source.cached(h1)
        gate.set()
        await _settle()
        assert cache.get(h1) == first and cache.get(h2) == second
        nursery.cancel_scope.cancel()


async def test_downloads_that_outrun_the_disk_never_wait_on_the_writes_they_hold_back(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many small files come down at once (a synced folder's first sync): past _STORING_MAX
    # held blocks a download waits for its own write, and stays in flight meanwhile.  A
    # deferred write holding the writer waited for the downloads to end: each waited out
    # _DEFER_S in turn, a folder's batch stood still for minutes.  Without that bound the
    # wait would be forever: the test hangs unless no write waits on a waiting download.
    monkeypatch.setattr(blocksource, "_DEFER_S", math.inf)
    server = Server()
    hashes = [server.add(os.urandom(4096)) for _ in range(3 * blocksource._STORING_MAX)]
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        with trio.fail_after(120):  # a hang detector, far past the second or so this takes
            async with trio.open_nursery() as downloads:
                for h in hashes:
                    downloads.start_soon(source.get, h)
            while source._storing:
                await trio.sleep(0.01)
        assert all(cache.contains(h) for h in hashes)
        nursery.cancel_scope.cancel()


async def test_a_damaged_block_is_refused_whether_asked_whole_or_in_part(cache: BlockCache) -> None:
    server = Server()
    h = server.add(os.urandom(100_000))
    server.damaged.add(h)
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        with pytest.raises(RemoteError, match="wrong content"):
            await source.read(h, 0, 4096)
        with pytest.raises(RemoteError, match="wrong content"):
            await source.read(h, 0, 4096, streaming=True)
        await _settle()
        assert not cache.contains(h)
        nursery.cancel_scope.cancel()


async def test_an_unreachable_server_fails_a_ranged_read_and_its_retry_at_once(cache: BlockCache) -> None:
    server = Server()
    h = server.add(os.urandom(100_000))
    server.online = False
    async with trio.open_nursery() as nursery:
        source = BlockSource(cache, server)
        source.start(nursery)
        with pytest.raises(Offline):
            await source.read(h, 0, 4096)
        with pytest.raises(Offline):
            await source.read(h, 0, 4096)  # the kernel's retry: no second request
        assert server.calls == [("range", h)]
        source.reconnected()
        server.online = True
        assert await source.read(h, 10, 10) == server.blocks[h][10:20]
        nursery.cancel_scope.cancel()
