"""Working copies: lazy block fill, and only written blocks are rehashed."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from cache import zeros
from websync_fs.spillfile import SpillFile
from websync_fs.workcopy import WorkingCopy
from websync_server.protocol import BLOCK_SIZE, BlockHash

BS = BLOCK_SIZE


def blocks_of(data: bytes) -> tuple[dict[str, bytes], tuple[BlockHash, ...]]:
    store = {}
    hashes = []
    for start in range(0, len(data), BS):
        chunk = data[start : start + BS]
        h = hashlib.sha256(chunk).hexdigest()
        store[h] = chunk
        hashes.append(BlockHash(h))
    return store, tuple(hashes)


class Source:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store
        self.loaded: list[str] = []

    async def load(self, h: BlockHash) -> bytes:
        self.loaded.append(h)
        return self.store[h]


async def test_edit_in_the_middle_fetches_and_rehashes_one_block(tmp_path: Path) -> None:
    data = os.urandom(3 * BS + 100)
    store, hashes = blocks_of(data)
    src = Source(store)
    work = WorkingCopy(tmp_path / "w", len(data), hashes, src.load)
    await work.write(BS + 10, b"x" * 1000)
    sealed: dict[str, bytes] = {}
    size, new = await work.seal(Cache.into(sealed))
    assert size == len(data)
    assert src.loaded == [hashes[1]]
    assert len(sealed) == 1
    expected = data[: BS + 10] + b"x" * 1000 + data[BS + 1010 :]
    assert new == blocks_of(expected)[1]
    work.close()


async def test_reads_see_writes_and_old_bytes(tmp_path: Path) -> None:
    data = os.urandom(BS + 5)
    store, hashes = blocks_of(data)
    work = WorkingCopy(tmp_path / "w", len(data), hashes, Source(store).load)
    await work.write(2, b"abc")
    assert await work.read(0, 10) == data[:2] + b"abc" + data[5:10]
    assert await work.read(BS, 100) == data[BS:]
    work.close()


async def test_truncate_down_and_up(tmp_path: Path) -> None:
    data = os.urandom(2 * BS + 7)
    store, hashes = blocks_of(data)
    work = WorkingCopy(tmp_path / "w", len(data), hashes, Source(store).load)
    await work.truncate(BS + 3)
    await work.truncate(BS + 10)
    size, new = await work.seal(Cache().store)
    expected = data[: BS + 3] + b"\0" * 7
    assert size == len(expected)
    assert new == blocks_of(expected)[1]
    assert await work.read(0, size) == expected
    work.close()


async def test_write_past_the_end_leaves_zeros(tmp_path: Path) -> None:
    work = WorkingCopy(tmp_path / "w", 0, (), Source({}).load)
    await work.write(BS + 1, b"z")
    size, new = await work.seal(Cache().store)
    expected = b"\0" * (BS + 1) + b"z"
    assert size == len(expected) and new == blocks_of(expected)[1]
    work.close()


class Cache:
    """A dict standing in for the block cache, loading and storing like the real one."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.offered: list[str] = []

    def store(self, data: bytes) -> str:
        return Cache.into(self.blocks)(data)

    @staticmethod
    def into(blocks: dict[str, bytes]) -> Callable[[bytes], str]:
        """A store that puts each block into *blocks* under its hash."""
        def store(data: bytes) -> str:
            h = hashlib.sha256(data).hexdigest()
            blocks[h] = bytes(data)
            return h
        return store

    async def load(self, h: BlockHash) -> bytes:
        return self.blocks[h]


def appending_copy(path: Path, nursery: trio.Nursery, cache: Cache) -> WorkingCopy:
    work = WorkingCopy(path, 0, (), cache.load)
    work.spawn = nursery.start_soon
    work.store = cache.store
    work.offer = lambda h, data: cache.offered.append(h)
    return work


async def write_by_mib(work: WorkingCopy, data: bytes) -> None:
    """Write *data* from the start 1 MiB at a time, as cp does (st_blksize)."""
    for start in range(0, len(data), 1 << 20):
        await work.write(start, data[start : start + (1 << 20)])


async def sealed_by_mib(
    tmp_path: Path, nursery: trio.Nursery, cache: Cache, data: bytes
) -> tuple[WorkingCopy, tuple[BlockHash, ...]]:
    """A new appending copy written by `write_by_mib` and sealed; checked to seal *data*."""
    work = appending_copy(tmp_path / "w", nursery, cache)
    await write_by_mib(work, data)
    size, new = await work.seal(cache.store)
    assert (size, new) == (len(data), blocks_of(data)[1])
    return work, new


def full_then_fine(cache: Cache) -> tuple[Callable[[bytes], str], list[bool]]:
    """A store into *cache* that fails for a full disk while the list's flag is true."""
    full = [True]

    def store(block: bytes) -> str:
        if full[0]:
            raise OSError(28, "No space left on device")
        return cache.store(block)

    return store, full


async def test_appended_blocks_skip_the_file_and_are_stored_and_offered(tmp_path: Path) -> None:
    data = os.urandom(5 * BS + 1234)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work, new = await sealed_by_mib(tmp_path, nursery, cache, data)
        # Every block went to the cache from memory, the tail too (at the seal): written
        # 1 MiB at a time from the start, none of it entered the file.  Reading it back
        # brings it in.
        assert os.stat(tmp_path / "w").st_blocks * 512 <= 64 * 1024
        assert set(cache.offered) == set(new[1:5])  # every full block but the first, the tail excepted
        assert await work.read(0, len(data)) == data
        work.close()


@pytest.mark.parametrize("full_blocks", [1, 3])
async def test_an_appending_writers_first_block_is_not_offered_early(tmp_path: Path, full_blocks: int) -> None:
    """A photo's one block goes up with its commit; from the second block on, a big file's blocks go early."""
    data = os.urandom(full_blocks * BS + 5000)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work, new = await sealed_by_mib(tmp_path, nursery, cache, data)
        assert set(cache.offered) == set(new[1:full_blocks])
        work.close()


async def test_reads_and_rewrites_while_appending_see_the_current_bytes(tmp_path: Path) -> None:
    data = bytearray(os.urandom(4 * BS + 100))
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        await work.write(0, bytes(data[:BS]))
        step = 3 * 1024 * 1024 + 17  # appends that straddle block ends
        for start in range(BS, 3 * BS, step):
            await work.write(start, bytes(data[start : min(start + step, 3 * BS)]))
        assert await work.read(BS - 10, BS + 20) == data[BS - 10 : 2 * BS + 10]
        await trio.sleep(0.05)  # let the stores finish: the blocks are in the cache only
        assert await work.read(2 * BS + 5, 100) == data[2 * BS + 5 : 2 * BS + 105]
        data[BS + 7 : BS + 11] = b"edit"
        await work.write(BS + 7, b"edit")
        data[2 * BS : 3 * BS] = os.urandom(BS)
        await work.write(2 * BS, bytes(data[2 * BS : 3 * BS]))
        await work.write(3 * BS, bytes(data[3 * BS :]))
        size, new = await work.seal(cache.store)
        assert (size, new) == (len(data), blocks_of(bytes(data))[1])
        assert await work.read(0, size) == data
        work.close()


async def test_truncate_while_appending_drops_the_blocks_held_elsewhere(tmp_path: Path) -> None:
    data = os.urandom(4 * BS)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        for start in range(0, len(data), BS):
            await work.write(start, data[start : start + BS])
        await trio.sleep(0.05)  # stored: blocks 1-3 are in the cache only
        await work.write(len(data), b"tail")
        await work.truncate(2 * BS + 5)
        await work.write(2 * BS + 5, b"more")
        expected = data[: 2 * BS + 5] + b"more"
        size, new = await work.seal(cache.store)
        assert (size, new) == (len(expected), blocks_of(expected)[1])
        assert await work.read(0, size) == expected
        work.close()


async def test_a_failed_background_store_is_reported_by_seal(tmp_path: Path) -> None:
    data = os.urandom(3 * BS)
    cache = Cache()
    store, full = full_then_fine(cache)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        work.store = store
        await work.write(0, data[:BS])
        await work.write(BS, data[BS:])
        with pytest.raises(OSError):
            await work.seal(store)
        full[0] = False
        size, new = await work.seal(store)
        assert (size, new) == (len(data), blocks_of(data)[1])
        assert await work.read(0, size) == data
        work.close()


async def test_a_photo_written_in_big_writes_is_sealed_from_memory_and_reads_back(tmp_path: Path) -> None:
    """3 MiB written 1 MiB at a time from the start (cp): gathered and sealed from memory, never in the file."""
    data = os.urandom(3 * (1 << 20) + 17)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work, new = await sealed_by_mib(tmp_path, nursery, cache, data)
        size = len(data)
        assert not (tmp_path / "w").exists() or os.stat(tmp_path / "w").st_blocks == 0
        assert await work.read(0, size) == data
        # Going on writing after the seal: the sealed tail comes back from the cache first.
        await work.write(size, b"more")
        size, new = await work.seal(cache.store)
        assert new == blocks_of(data + b"more")[1]
        work.close()


async def test_small_first_writes_keep_a_small_file_in_memory_not_gathering(tmp_path: Path) -> None:
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        await work.write(0, b"a" * 4096)
        await work.write(4096, b"b" * (2 << 20))  # big, but not a first write at 0: the file takes it
        size, new = await work.seal(cache.store)
        assert new == blocks_of(b"a" * 4096 + b"b" * (2 << 20))[1]
        work.close()


async def test_a_tail_whose_store_fails_stays_in_the_copy_and_seals_later(tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 5)
    cache = Cache()
    store, full = full_then_fine(cache)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        await write_by_mib(work, data)
        with pytest.raises(OSError):
            await work.seal(store)
        assert await work.read(0, len(data)) == data
        full[0] = False
        size, new = await work.seal(store)
        assert (size, new) == (len(data), blocks_of(data)[1])
        work.close()


async def test_a_read_while_the_seal_stores_the_tail_sees_its_bytes(tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 5)
    cache = Cache()
    gate = threading.Event()

    def slow_store(block: bytes) -> str:
        gate.wait(10)
        return cache.store(block)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        await write_by_mib(work, data)
        sealed: list[tuple[int, tuple[BlockHash, ...]] | None] = []

        async def seal() -> None:
            sealed.append(await work.seal(slow_store))

        nursery.start_soon(seal)
        await trio.testing.wait_all_tasks_blocked()  # the seal waits in the store
        assert await work.read(1000, 5000) == data[1000:6000]
        gate.set()
        while not sealed:
            await trio.sleep(0.01)
        assert sealed[0] == (len(data), blocks_of(data)[1])
        assert await work.read(0, len(data)) == data
        work.close()


async def test_the_seal_stores_the_tail_while_the_last_full_block_is_still_being_stored(tmp_path: Path) -> None:
    """close() sends a photo's last pages and the flush at once: the tail is not queued behind the block."""
    data = os.urandom(BS + 2 * (1 << 20) + 5)
    cache = Cache()
    gate = threading.Event()

    def store(block: bytes) -> str:
        if len(block) == BS:
            gate.wait(10)  # the full block is still being stored when the seal starts
        return cache.store(block)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        work.store = store
        sealed: list[tuple[int, tuple[BlockHash, ...]] | None] = []

        async def close() -> None:
            await write_by_mib(work, data)
            sealed.append(await work.seal(store))

        nursery.start_soon(close)
        tail_hash = blocks_of(data)[1][1]
        with trio.fail_after(10):
            while tail_hash not in cache.blocks:
                await trio.sleep(0.01)
        assert not sealed and blocks_of(data)[1][0] not in cache.blocks
        gate.set()
        with trio.fail_after(10):
            while not sealed:
                await trio.sleep(0.01)
        assert sealed[0] == (len(data), blocks_of(data)[1])
        assert await work.read(0, len(data)) == data
        work.close()


async def test_a_tail_whose_store_fails_beside_a_full_block_raises_the_disk_error_itself(tmp_path: Path) -> None:
    data = os.urandom(BS + (1 << 20) + 5)
    cache = Cache()
    full = [True]

    def store(block: bytes) -> str:
        if full[0] and len(block) < BS:
            raise OSError(28, "No space left on device")
        return cache.store(block)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        work.store = store
        await write_by_mib(work, data)
        with pytest.raises(OSError) as refused:  # not a group of one: callers tell ENOSPC by errno
            await work.seal(store)
        assert refused.value.errno == errno.ENOSPC
        assert await work.read(0, len(data)) == data
        full[0] = False
        assert await work.seal(store) == (len(data), blocks_of(data)[1])
        work.close()


async def test_a_read_while_the_writer_waits_for_stores_sees_the_finished_blocks(tmp_path: Path) -> None:
    data = os.urandom(5 * BS)
    cache = Cache()
    gate = threading.Event()

    def slow_store(block: bytes) -> str:
        gate.wait(10)  # the cache is slow: finished blocks pile up in memory
        return cache.store(block)

    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        work.store = slow_store

        async def writer() -> None:
            await work.write(0, data[:BS])
            await work.write(BS, data[BS:])

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for the stores
        # Blocks 0-2 are finished and in memory (a first write of a whole block starts
        # gathering at block 0), the writer waits before the fourth.
        assert await work.read(2 * BS, BS) == data[2 * BS : 3 * BS]
        gate.set()
        size, new = await work.seal(slow_store)
        assert (size, new) == (len(data), blocks_of(data)[1])
        assert await work.read(0, size) == data
        work.close()


async def test_writes_of_odd_sizes_append_from_memory_too(tmp_path: Path) -> None:
    data = os.urandom(4 * BS + 999)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        step = 100_003  # never lands on a block boundary
        for start in range(0, len(data), step):
            await work.write(start, data[start : start + step])
        assert await work.read(BS - 7, 20) == data[BS - 7 : BS + 13]
        size, new = await work.seal(cache.store)
        assert (size, new) == (len(data), blocks_of(data)[1])
        assert set(new[2:4]) <= set(cache.offered)  # gathered in memory, stored from there
        assert os.stat(tmp_path / "w").st_blocks * 512 <= 3 * BS
        assert await work.read(0, size) == data
        work.close()


async def test_a_write_refused_for_a_full_disk_holds_no_space_and_changes_nothing(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    # tmpfs takes what fits of a write and refuses the rest: a short count, then ENOSPC.
    disk = tmpfs(tmp_path / "disk", "1m")
    old = os.urandom(BS + 10)
    store, hashes = blocks_of(old)
    work = WorkingCopy(disk / "w", len(old), hashes, Source(store).load)
    assert await work.read(BS, 10) == old[BS:]  # the last block is in the file now
    free = os.statvfs(disk).f_bavail
    with pytest.raises(OSError) as refused:
        await work.write(len(old), os.urandom(2 * 1024 * 1024))
    assert refused.value.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == free  # what fitted was given back
    assert work.size == len(old)
    assert await work.write(len(old), b"tail") == 4  # a small write still fits
    size, new = await work.seal(Cache().store)
    assert (size, new) == (len(old) + 4, blocks_of(old + b"tail")[1])
    work.close()


async def test_a_small_copy_that_cannot_grow_onto_a_full_disk_keeps_its_bytes(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    # A copy in memory moves into its file when it grows past 64 KiB; a full disk refuses.
    disk = tmpfs(tmp_path / "disk", "64k")
    with open(disk / "filler", "wb", buffering=0) as out:
        with pytest.raises(OSError):
            while True:
                out.write(os.urandom(4096))
    work = WorkingCopy(disk / "w", 0, (), Source({}).load)
    assert await work.write(0, b"small") == 5
    with pytest.raises(OSError) as refused:
        await work.write(5, os.urandom(128 * 1024))
    assert refused.value.errno == errno.ENOSPC
    assert work.size == 5 and await work.read(0, 100) == b"small"
    assert await work.write(5, b"!") == 1
    size, new = await work.seal(Cache().store)
    assert (size, new) == (6, blocks_of(b"small!")[1])
    work.close()


async def test_a_writer_that_fsyncs_as_it_appends_reads_nothing_back(tmp_path: Path) -> None:
    # A log fsync'd after every line: each fsync (a snapshot) ends append mode.  Starting it
    # again mid-block read the block's head back from the file, up to a block an fsync.
    data = os.urandom(BS + 200_000)
    cache = Cache()
    async with trio.open_nursery() as nursery:
        work = appending_copy(tmp_path / "w", nursery, cache)
        await write_by_mib(work, data[: BS + 100_000])
        await work.snapshot()
        read = []
        pread = work._file.pread
        work._file.pread = lambda length, offset: read.append(length) or pread(length, offset)  # type: ignore[method-assign]
        for start in range(BS + 100_000, len(data), 4096):
            await work.write(start, data[start : start + 4096])
            await work.snapshot()
        assert sum(read) == 0
        size, new = await work.seal(cache.store)
        assert (size, new) == (len(data), blocks_of(data)[1])
        work.close()


async def test_a_sparse_file_s_holes_are_neither_read_nor_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``truncate -s 16G``, or a byte written far out, had read and hashed every block of zeros (38 s)."""
    work = WorkingCopy(tmp_path / "w", 0, (), Cache().load)
    await work.truncate(4 * BS + 10)
    await work.write(4 * BS + 9, b"x")
    reads: list[int] = []
    real = SpillFile.pread
    monkeypatch.setattr(SpillFile, "pread", lambda self, length, offset: reads.append(offset) or real(self, length, offset))
    handed: list[bytes] = []

    def store(data: bytes) -> str:
        handed.append(data)
        return hashlib.sha256(data).hexdigest()

    size, blocks = await work.seal(store)
    assert size == 4 * BS + 10
    assert reads == [4 * BS]  # only the block that holds a byte
    assert [data is zeros(BS) for data in handed] == [True, True, True, True, False]  # hashes known (cache)
    assert blocks == (hashlib.sha256(bytes(BS)).hexdigest(),) * 4 + (hashlib.sha256(bytes(9) + b"x").hexdigest(),)
    assert await work.read(0, 16) == bytes(16) and await work.read(4 * BS + 8, 2) == b"\0x"
    work.close()
