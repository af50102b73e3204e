"""BlockCache on a real diskcache directory: storage, integrity, LRU, protection, sharing.

Every test uses real files in a temporary directory; the multi-process test
uses real processes, and the concurrency test real worker threads driven from
trio, as the FUSE client does.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import cache._blocks
import cache._store
from cache import (
    BlockCache,
    CacheError,
    CacheFull,
    CacheStats,
    CacheUnavailable,
    CorruptBlock,
    InvalidBlockHash,
    zeros,
)

from cache._filewriter import FileWriter
from cache._store import INLINE_MAX

KiB = 1024
MiB = 1024 * KiB


def disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def make_block(seed: int, size: int = 64 * KiB) -> tuple[str, bytes]:
    """Return (hash, bytes) of a reproducible pseudo-random block."""
    data = random.Random(seed).randbytes(size)
    return hashlib.sha256(data).hexdigest(), data


def block_files(directory: Path, h: str | None = None) -> list[Path]:
    """The block files in a cache directory (those of block *h* if given)."""
    return sorted(directory.rglob(f"{h or '*'}.*.val"))


def stored_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in block_files(directory))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def bc(directory: Path) -> Iterator[BlockCache]:
    block_cache = BlockCache(directory, limit=1 * MiB)
    yield block_cache
    block_cache.close()


# -- storing and reading --------------------------------------------------------


def test_put_then_get_returns_the_same_bytes_from_one_file(directory: Path) -> None:
    h, data = make_block(1, 4 * MiB)
    absent, _ = make_block(2)
    with BlockCache(directory, limit=8 * MiB) as bc:
        bc.put(h, data)

        assert bc.get(h) == data
        assert bc.contains(h)
        assert bc.get(absent) is None
        assert not bc.contains(absent)
        (path,) = block_files(directory, h)
        assert path.stat().st_size == 4 * MiB  # a block above INLINE_MAX is a file, not a row
        assert bc.stats() == CacheStats(
            used=4 * MiB, limit=8 * MiB, protected_bytes=0, count=1, hits=1, misses=1
        )


def test_a_block_of_zeros_is_stored_under_its_hash_which_is_made_once(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse file's holes come as `zeros` objects: hashed once, stored once, read back as zeros."""
    made: list[int] = []
    real = cache._blocks.hashlib.sha256
    monkeypatch.setattr(cache._blocks.hashlib, "sha256", lambda data=b"": made.append(len(data)) or real(data))
    with BlockCache(directory, limit=8 * MiB) as bc:
        first = bc.add(zeros(4 * MiB), protect=True)
        second = bc.add(zeros(4 * MiB), protect=True)
        other = bc.add(bytes(4 * MiB), protect=True)  # zeros, but not the object: hashed as any block
        assert first == second == other == real(bytes(4 * MiB)).hexdigest()
        assert made.count(4 * MiB) <= 2  # once for `zeros`, once for the other object
        assert bc.get(first) == bytes(4 * MiB)
        assert len(block_files(directory, first)) == 1


def test_a_miss_is_counted_without_a_write_of_its_own_and_kept_with_the_next_row(directory: Path) -> None:
    # A cold read's first look at the cache must not wait on a commit; the count still
    # reaches the shared database, with the next block's row or at close.
    h, data = make_block(1)
    absent = [make_block(seed)[0] for seed in (2, 3, 4)]
    with BlockCache(directory, limit=8 * MiB) as bc:
        other = sqlite3.connect(directory / "cache.db")
        try:
            (before,) = other.execute("PRAGMA data_version").fetchone()
            assert bc.get(absent[0]) is None
            assert bc.read(absent[1], 0, 10) is None
            assert not bc.find(absent[2])
            assert other.execute("PRAGMA data_version").fetchone() == (before,)  # nothing committed
            assert bc.stats().misses == 3

            bc.put(h, data)
            assert other.execute("SELECT value FROM Settings WHERE key = 'misses'").fetchone() == (3,)
            assert bc.get(absent[0]) is None
        finally:
            other.close()
    with BlockCache(directory, limit=8 * MiB) as bc:
        assert (bc.stats().hits, bc.stats().misses) == (0, 4)


def test_put_of_a_present_block_keeps_one_copy(bc: BlockCache, directory: Path) -> None:
    h, data = make_block(1)
    bc.put(h, data)
    bc.put(h, data)

    assert len(block_files(directory, h)) == 1
    assert bc.stats().used == len(data)


def test_put_refuses_bytes_that_do_not_match_their_hash(bc: BlockCache, directory: Path) -> None:
    h, _ = make_block(1)
    _, other = make_block(2)

    with pytest.raises(CorruptBlock) as caught:
        bc.put(h, other)

    assert isinstance(caught.value, ValueError)
    assert caught.value.actual == hashlib.sha256(other).hexdigest()
    assert not bc.contains(h)
    assert block_files(directory) == []


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65])
def test_malformed_hashes_are_refused_by_every_method(bc: BlockCache, bad: str) -> None:
    for call in (bc.get, bc.contains, lambda h: bc.put(h, b""), lambda h: bc.protect([h])):
        with pytest.raises(InvalidBlockHash):
            call(bad)


def test_the_empty_block_is_a_block(bc: BlockCache) -> None:
    h = hashlib.sha256(b"").hexdigest()
    bc.put(h, b"")
    assert bc.get(h) == b""


def _flip_a_byte(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(10)


@pytest.mark.parametrize("read", ["get", "peek"])  # peek: the uploader's read, a get once the file changed
@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, Path.unlink])
def test_get_drops_a_block_damaged_on_disk_and_logs_its_hash(
    bc: BlockCache, directory: Path, damage: Any, read: str, caplog: pytest.LogCaptureFixture
) -> None:
    h, data = make_block(1)
    bc.put(h, data)
    (path,) = block_files(directory, h)
    damage(path)

    assert getattr(bc, read)(h) is None

    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert h in record.getMessage()
    caplog.clear()
    assert not bc.contains(h)
    assert block_files(directory, h) == []
    stats = bc.stats()
    assert (stats.used, stats.count, stats.hits, stats.misses) == (0, 0, 0, 1)
    bc.put(h, data)  # a good copy can come back
    assert bc.get(h) == data


def test_read_returns_the_asked_range_without_rehashing_a_checked_block(
    bc: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, data = make_block(1)
    absent, _ = make_block(2)
    bc.put(h, data)
    hashed: list[int] = []
    real = cache._blocks._sha256
    monkeypatch.setattr(cache._blocks, "_sha256", lambda b: hashed.append(len(b)) or real(b))

    assert bc.read(h, 4096, 4096) == data[4096:8192]
    assert bc.read(h, len(data) - 10, 4096) == data[-10:]  # short at the end, like pread
    assert bc.read(h, len(data) + 5, 10) == b""
    assert bc.get(h) == data
    assert hashed == []  # checked when it was put
    assert bc.read(absent, 0, 10) is None


@pytest.mark.parametrize("size", [INLINE_MAX // 2, 256 * KiB])
def test_peek_reads_a_block_this_process_stored_without_a_write(directory: Path, size: int) -> None:
    """The uploader's read: a row or a file stored here a moment ago, no LRU write, no hit counted."""
    h, data = make_block(1, size)
    with BlockCache(directory, limit=8 * MiB) as bc:
        bc.put(h, data)
        other = sqlite3.connect(directory / "cache.db")
        try:
            (before,) = other.execute("PRAGMA data_version").fetchone()
            assert bc.peek(h) == data
            assert other.execute("PRAGMA data_version").fetchone() == (before,)  # nothing committed
        finally:
            other.close()
        assert bc.stats().hits == 0


def test_a_block_checked_once_per_process_is_checked_again_by_a_new_one(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h, data = make_block(1)
    with BlockCache(directory, limit=1 * MiB) as first:
        first.put(h, data)
    (path,) = block_files(directory, h)
    _flip_a_byte(path)  # damaged while no process had it open
    with BlockCache(directory, limit=1 * MiB) as second:
        assert second.read(h, 0, 4096) is None  # this process never checked it: hashed, dropped
    assert block_files(directory, h) == []
    assert any(h in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, Path.unlink])
def test_read_notices_a_block_file_written_to_after_it_was_checked(
    bc: BlockCache, directory: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    h, data = make_block(1)
    bc.put(h, data)
    assert bc.read(h, 0, 4096) == data[:4096]
    (path,) = block_files(directory, h)
    damage(path)

    assert bc.read(h, 0, 4096) is None
    assert bc.read(h, 900, 200) is None
    assert not bc.contains(h)
    if damage is not Path.unlink:  # a missing file is a miss; a damaged one is also a warning
        assert any(h in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()
    bc.put(h, data)
    assert bc.read(h, 900, 200) == data[900:1100]


def test_read_of_an_evicted_block_is_a_miss(bc: BlockCache) -> None:
    h, data = make_block(1)
    bc.put(h, data)
    bc.evict(0)
    assert bc.read(h, 0, 100) is None
    assert bc.get(h) is None


# -- eviction ---------------------------------------------------------------------


def test_get_refreshes_lru_position_so_a_touched_block_survives_eviction(
    directory: Path,
) -> None:
    a, b, c, d = (make_block(seed) for seed in range(4))
    with BlockCache(directory, limit=3 * 64 * KiB) as bc:
        for h, data in (a, b, c):
            bc.put(h, data)
        assert bc.get(a[0]) == a[1]  # a is now the most recently used

        bc.put(*d)

        assert [bc.contains(h) for h, _ in (a, b, c, d)] == [True, False, True, True]


def test_usage_stays_within_one_block_of_the_limit_over_200_puts(
    bc: BlockCache, directory: Path
) -> None:
    blocks = [make_block(seed) for seed in range(200)]
    for h, data in blocks:
        bc.put(h, data)
        assert bc.stats().used <= bc.limit + 64 * KiB

    stats = bc.stats()
    assert stats.used <= stats.limit
    assert stats.count == stats.used // (64 * KiB)
    assert stored_bytes(directory) == stats.used  # evicted files are really gone
    assert all(bc.contains(h) for h, _ in blocks[-stats.count :])
    assert not any(bc.contains(h) for h, _ in blocks[: -stats.count])


def test_a_block_larger_than_the_limit_stays_until_the_next_put(directory: Path) -> None:
    big, small = make_block(1, 256 * KiB), make_block(2, 16 * KiB)
    with BlockCache(directory, limit=100 * KiB) as bc:
        bc.put(*big)
        assert bc.get(big[0]) == big[1]  # put spares the block it stored

        bc.put(*small)
        assert not bc.contains(big[0])
        assert bc.get(small[0]) == small[1]


def test_protected_blocks_are_never_evicted_even_under_a_one_byte_limit(
    bc: BlockCache, directory: Path
) -> None:
    pinned = [make_block(seed) for seed in range(3)]
    bc.protect(h for h, _ in pinned[:2])  # protected before it is put: never evictable
    bc.put(*pinned[0])
    bc.put(*pinned[1])
    bc.protect([pinned[2][0]])
    bc.put(*pinned[2])
    for seed in range(100, 130):  # enough to push every unprotected block out
        bc.put(*make_block(seed))

    bc.set_limit(1)

    stats = bc.stats()
    assert stats.used == stats.protected_bytes == 3 * 64 * KiB
    assert stats.count == 3 and stats.over_limit and stats.reclaimable == 0
    assert all(bc.get(h) == data for h, data in pinned)
    assert bc.evict(0) == 0
    assert stored_bytes(directory) == stats.used


def test_unprotect_makes_blocks_reclaimable_and_evicts_to_the_limit(bc: BlockCache) -> None:
    blocks = [make_block(seed) for seed in range(4)]
    hashes = [h for h, _ in blocks]
    bc.protect(hashes)
    bc.protect(hashes[:1])  # a second reference
    for block in blocks:
        bc.put(*block)
    bc.set_limit(0)

    bc.unprotect(hashes)

    assert [bc.contains(h) for h in hashes] == [True, False, False, False]
    assert bc.stats().protected_bytes == 64 * KiB
    bc.unprotect(hashes[:1])
    assert bc.stats().used == 0


def test_unprotect_more_often_than_protect_raises_and_changes_nothing(bc: BlockCache) -> None:
    (a, data_a), (b, data_b) = make_block(1), make_block(2)
    bc.protect([a, b])
    bc.put(a, data_a)
    bc.put(b, data_b)

    with pytest.raises(ValueError):
        bc.unprotect([a, b, b])

    assert bc.evict(0) == 0
    assert bc.stats().protected_bytes == 2 * 64 * KiB


def test_set_limit_evicts_at_once_oldest_first(bc: BlockCache) -> None:
    blocks = [make_block(seed) for seed in range(10)]
    for block in blocks:
        bc.put(*block)
    assert bc.stats().used == 10 * 64 * KiB

    bc.set_limit(256 * KiB)

    assert bc.stats().used == 256 * KiB
    assert [bc.contains(h) for h, _ in blocks] == [False] * 6 + [True] * 4


def test_evict_to_zero_frees_everything_unprotected(bc: BlockCache, directory: Path) -> None:
    keep = make_block(0)
    bc.protect([keep[0]])
    for seed in range(6):
        bc.put(*make_block(seed))

    assert bc.evict(0) == 5 * 64 * KiB
    assert bc.stats().used == 64 * KiB
    assert block_files(directory) == block_files(directory, keep[0])
    assert bc.evict() == 0  # already under the limit


# -- integrity and recovery -------------------------------------------------------


def test_verify_drops_and_reports_every_damaged_block(
    bc: BlockCache, directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = [make_block(seed) for seed in range(6)]
    for block in blocks:
        bc.put(*block)
    _flip_a_byte(block_files(directory, blocks[1][0])[0])
    block_files(directory, blocks[4][0])[0].unlink()

    corrupt = bc.verify()

    assert sorted(corrupt) == sorted([blocks[1][0], blocks[4][0]])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all(any(h in message for message in warnings) for h in corrupt)
    caplog.clear()
    assert [bc.get(h) == data for h, data in blocks] == [True, False, True, True, False, True]
    assert bc.stats().count == 4
    assert bc.verify() == []


def test_verify_removes_old_orphan_files_but_not_fresh_ones(
    bc: BlockCache, directory: Path
) -> None:
    h, data = make_block(1)
    bc.put(h, data)
    (kept,) = block_files(directory, h)
    # What a crash between writing a block file and indexing it leaves behind:
    old_orphan = kept.parent / f"{'a' * 64}.deadbeef.val"
    fresh_orphan = kept.parent / f"{'b' * 64}.deadbeef.val"  # a put in flight elsewhere
    # ... and a kill while `add` wrote a block whose hash had not named it yet:
    (directory / "pending").mkdir()
    old_pending, fresh_pending = directory / "pending" / "0123abcd.val", directory / "pending" / "4567ef01.val"
    two_hours_ago = time.time() - 7200
    for path in (old_orphan, fresh_orphan, old_pending, fresh_pending):
        path.write_bytes(b"x" * 100)
    for path in (old_orphan, old_pending):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert bc.verify() == []

    assert not old_orphan.exists() and not old_pending.exists()
    assert fresh_orphan.exists() and fresh_pending.exists()
    assert bc.get(h) == data


def test_reopening_keeps_blocks_and_counters_but_not_protection(directory: Path) -> None:
    (a, data_a), (b, data_b) = make_block(1), make_block(2)
    with BlockCache(directory, limit=1 * MiB) as bc:
        bc.put(a, data_a)
        bc.put(b, data_b)
        bc.protect([a])
        assert bc.get(a) == data_a

    with BlockCache(directory, limit=1 * MiB) as reopened:
        stats = reopened.stats()
        assert (stats.count, stats.hits, stats.protected_bytes) == (2, 1, 0)
        assert reopened.get(b) == data_b
        # Protection is the owner's to rebuild: until it does, nothing is held.
        assert reopened.evict(0) == 2 * 64 * KiB


def test_close_releases_every_thread_connection(directory: Path) -> None:
    def open_database_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(
            1 for fd in fds.iterdir() if str(directory) in os.path.realpath(fd)
        )

    h, data = make_block(1)
    bc = BlockCache(directory, limit=1 * MiB)
    bc.put(h, data)
    threads = [threading.Thread(target=bc.get, args=(h,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert open_database_files() >= 5  # one connection per thread that used it

    bc.close()

    assert open_database_files() == 0
    with pytest.raises(CacheUnavailable):
        bc.get(h)


# -- small blocks, kept in their index row ------------------------------------------


def _damage_row(directory: Path, h: str, value: bytes) -> None:
    """Overwrite a block's row as another program (or a bad disk sector) might."""
    import sqlite3

    with sqlite3.connect(directory / "cache.db") as conn:
        assert conn.execute("UPDATE Cache SET value = ? WHERE key = ?", (value, h)).rowcount == 1


def test_small_blocks_live_in_their_row_and_count_toward_usage(bc: BlockCache, directory: Path) -> None:
    small = [make_block(seed, size) for seed, size in enumerate([1, 1000, 16 * KiB, INLINE_MAX])]
    h_big, big = make_block(9, INLINE_MAX + 1)
    for block in small:
        bc.put(*block)
    bc.put(h_big, big)

    assert [path.name.split(".")[0] for path in block_files(directory)] == [h_big]  # only the big one
    assert all(bc.get(h) == data for h, data in small)
    assert all(bc.contains(h) for h, _ in small)
    h, data = small[2]
    assert bc.read(h, 4096, 100) == data[4096:4196]
    assert bc.read(h, len(data) - 3, 100) == data[-3:]
    assert bc.present([h for h, _ in small]) == {h: len(data) for h, data in small}
    stats = bc.stats()
    assert (stats.used, stats.count) == (sum(len(d) for _, d in small) + len(big), 5)
    bc.sync([h for h, _ in small] + [h_big])  # rows have no file to fsync; the checkpoint does


def test_a_damaged_row_is_never_returned(
    bc: BlockCache, directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h, data = make_block(1, 8 * KiB)
    bc.put(h, data)
    assert bc.read(h, 0, 10) == data[:10]  # checked and remembered
    _damage_row(directory, h, b"x" + data[1:])

    assert bc.read(h, 0, 10) is None  # a row carries no stamp: it is hashed on every read
    assert not bc.contains(h)
    assert any(h in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()
    bc.put(h, data)
    _damage_row(directory, h, data[:100])
    assert bc.get(h) is None
    caplog.clear()
    assert (bc.stats().used, bc.stats().count) == (0, 0)


def test_verify_rehashes_rows_keeps_good_ones_and_drops_damaged_ones(
    bc: BlockCache, directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = [make_block(seed, 4 * KiB) for seed in range(4)]
    for block in blocks:
        bc.put(*block)
    _damage_row(directory, blocks[2][0], b"not the block")

    assert bc.verify() == [blocks[2][0]]
    caplog.clear()
    assert [bc.get(h) == data for h, data in blocks] == [True, True, False, True]
    assert bc.verify() == []


def test_small_blocks_are_evicted_and_protected_like_files(directory: Path) -> None:
    size = 8 * KiB
    blocks = [make_block(seed, size) for seed in range(40)]
    with BlockCache(directory, limit=10 * size) as bc:
        bc.protect([blocks[0][0]])
        for block in blocks:
            bc.put(*block)
            assert bc.stats().used <= 10 * size + size

        assert bc.get(blocks[0][0]) == blocks[0][1]  # protected: never evicted
        assert bc.get(blocks[1][0]) is None  # the oldest unprotected went first
        assert bc.get(blocks[-1][0]) == blocks[-1][1]
        used = bc.stats().used
        assert bc.evict(0) == used - size  # everything but the protected block
        assert bc.stats().used == size
        assert block_files(directory) == []


def test_add_names_a_block_by_the_hash_found_while_it_was_written_and_counts_a_reference(directory: Path) -> None:
    big, big_data = make_block(1, 4 * MiB)
    small, small_data = make_block(2, 1000)
    with BlockCache(directory, limit=1) as bc:  # a limit that keeps only what is protected
        assert bc.add(big_data, protect=True) == big
        assert bc.add(small_data, protect=True) == small
        assert bc.add(big_data, protect=True) == big  # present: refreshed, one copy, one more reference

        assert bc.get(big) == big_data and bc.get(small) == small_data
        assert [path.name.split(".")[0] for path in directory.rglob("*.val")] == [big]  # nothing left pending
        bc.unprotect([big, small])
        assert bc.contains(big) and not bc.contains(small)  # the second reference holds it
        bc.unprotect([big])
        assert not bc.contains(big)
        assert bc.add(small_data) == small  # without protect: evicted at once, as `put` would


def test_add_writes_no_block_again_while_the_blocks_added_lately_were_there(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file saved again, or copied again: its blocks are present, and cost a hash, not a write."""
    blocks = [make_block(seed, 2 * MiB) for seed in range(4)]
    written: list[str] = []
    real = cache._store._write_new_file
    monkeypatch.setattr(cache._store, "_write_new_file", lambda path, *rest: written.append(path) or real(path, *rest))
    with BlockCache(directory, limit=64 * MiB) as bc:
        for _h, data in blocks[:3]:
            bc.add(data)
        assert len(written) == 3
        for h, data in blocks[:3]:  # again: the first one is written and found there, the rest are not written
            assert bc.add(data) == h
        assert len(written) == 4
        assert bc.add(blocks[3][1]) == blocks[3][0]  # new: hashed first this once, then beside the write again
        assert bc.add(blocks[2][1] + b"x") and len(written) == 6
        assert list((directory / "pending").iterdir()) == []


# -- a full disk ------------------------------------------------------------------


@pytest.mark.parametrize("size", [64 * KiB, 4 * MiB - 1000], ids=["small block", "whole block"])
@pytest.mark.parametrize("mode", ["buffered", "direct"])
@pytest.mark.parametrize("way", ["put", "add"])
def test_disk_full_while_writing_a_block_raises_cache_full_and_leaves_no_file(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path], size: int, mode: str, way: str
) -> None:
    # A real disk that fills up part way through the block (room for the index only).
    disk = tmpfs(tmp_path / "disk", "1m")
    directory = disk / "cache"
    bc = BlockCache(directory, limit=64 * MiB)
    try:
        bc._store._writer = FileWriter(mode)  # noqa: SLF001 - both ways of writing
        h, data = make_block(1, size)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (disk_free(disk) - size // 2))

        # add: hashed beside the write, and protected (the writer's way), so no reference may stay.
        store = (lambda: bc.put(h, data)) if way == "put" else (lambda: bc.add(data, protect=True))

        with pytest.raises(CacheFull) as caught:
            store()

        assert caught.value.errno == errno.ENOSPC
        assert list(directory.rglob("*.val")) == []  # also none left under pending/
        assert not bc.contains(h)
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # room again
        store()
        assert bc.get(h) == data
        if way == "add":
            bc.unprotect([h])  # the one reference the second add counted: the failed one left none
            assert bc.evict(0) == size
    finally:
        bc.close()


@pytest.mark.parametrize("size", [16, INLINE_MAX + 1], ids=["in its row", "in a file"])
def test_database_full_raises_cache_full_and_leaves_no_trace(
    bc: BlockCache, directory: Path, size: int
) -> None:
    # SQLITE_FULL is what SQLite reports when its file cannot grow; max_page_count
    # produces the same error without filling a real disk.  This thread's
    # connection is the one put() will use.
    db = bc._store._db  # noqa: SLF001 - fault injection
    (pages,) = db._sql("PRAGMA page_count").fetchone()
    db._sql(f"PRAGMA max_page_count = {pages}")
    stored: list[str] = []
    with pytest.raises(CacheFull) as caught:
        for seed in range(5000):
            h, data = make_block(seed, size)
            bc.put(h, data)
            stored.append(h)

    assert caught.value.errno == errno.ENOSPC
    assert not bc.contains(h)  # the block that did not fit
    assert block_files(directory, h) == []
    assert len(stored) == bc.stats().count
    assert len(block_files(directory)) == (len(stored) if size > INLINE_MAX else 0)
    db._sql("PRAGMA max_page_count = 1073741823")
    bc.put(h, data)
    assert bc.get(h) == data


def test_a_really_full_disk_raises_cache_full_yet_reads_and_evicts(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    mount_point = tmpfs(tmp_path / "small", "3m")
    directory = mount_point / "cache"
    stored: list[tuple[str, bytes]] = []
    with BlockCache(directory, limit=1024 * MiB) as bc:
        with pytest.raises(CacheFull) as caught:
            for seed in range(100):
                block = make_block(seed, 256 * KiB)
                bc.put(*block)
                stored.append(block)
        h, data = block

        assert caught.value.errno == errno.ENOSPC
        assert stored, "the disk was full before the first block"
        assert not bc.contains(h)
        assert block_files(directory, h) == []
        assert stored_bytes(directory) == bc.stats().used == len(stored) * 256 * KiB

        # Take the last free byte, so that SQLite's WAL cannot grow either.
        with pytest.raises(OSError), (mount_point / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 64 * KiB)
                filler.flush()
        for _ in range(20):  # enough LRU refreshes to need more WAL than there is
            assert all(bc.get(h) == data for h, data in stored)

        assert bc.evict(0) == len(stored) * 256 * KiB
        assert block_files(directory) == []
        (mount_point / "filler").unlink()
        bc.put(h, data)
        assert bc.get(h) == data


# -- sharing: threads and processes ------------------------------------------------


def _put_and_read_back(directory: str, seeds: list[int]) -> int:
    """Run in a child process: put blocks into the shared cache and read them back."""
    with BlockCache(directory, limit=64 * MiB) as bc:
        for seed in seeds:
            h, data = make_block(seed)
            bc.put(h, data)
            assert bc.get(h) == data
        # Blocks the parent put before starting us are visible here.
        h, data = make_block(0)
        assert bc.get(h) == data
        return bc.stats().count


def test_two_processes_on_one_directory_see_each_others_puts(directory: Path) -> None:
    first = make_block(0)
    with BlockCache(directory, limit=64 * MiB) as bc:
        bc.put(*first)
        context = multiprocessing.get_context("spawn")
        with context.Pool(2) as pool:
            children = [
                pool.apply_async(_put_and_read_back, (str(directory), list(range(start, start + 20))))
                for start in (100, 200)
            ]
            for seed in range(300, 320):  # the parent writes at the same time
                bc.put(*make_block(seed))
            counts = [child.get(timeout=60) for child in children]

        assert all(count >= 21 for count in counts)
        for seed in [*range(100, 120), *range(200, 220), *range(300, 320)]:
            h, data = make_block(seed)
            assert bc.get(h) == data
        assert bc.stats().count == 61
        assert stored_bytes(directory) == 61 * 64 * KiB


@pytest.mark.parametrize("size", [16 * KiB, 64 * KiB], ids=["rows", "files"])
async def test_worker_threads_put_and_get_concurrently(directory: Path, size: int) -> None:
    pool = [make_block(seed, size) for seed in range(64)]
    pinned = pool[:4]
    workers = 8
    bc = BlockCache(directory, limit=16 * size)
    bc.protect(h for h, _ in pinned)
    for block in pinned:
        bc.put(*block)
    wrong: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            h, data = rng.choice(pool)
            if rng.random() < 0.5:
                bc.put(h, data)
            else:
                got = bc.get(h)
                if got is not None and got != data:
                    wrong.append(h)
            assert bc.stats().used <= bc.limit + workers * size

    try:
        async with trio.open_nursery() as nursery:
            for seed in range(workers):
                nursery.start_soon(trio.to_thread.run_sync, work, seed)

        assert wrong == []
        assert all(bc.get(h) == data for h, data in pinned)
        stats = bc.stats()
        assert stats.protected_bytes == len(pinned) * size
        in_files = size > INLINE_MAX
        assert len(block_files(directory)) == (stats.count if in_files else 0)
        assert stored_bytes(directory) == (stats.used if in_files else 0)
        bc.evict()
        assert bc.stats().used <= bc.limit
        assert bc.verify() == []
    finally:
        bc.close()


def test_errors_share_one_base_class() -> None:
    assert issubclass(CacheFull, CacheError) and issubclass(CacheFull, OSError)
    assert issubclass(CacheUnavailable, CacheError) and issubclass(CacheUnavailable, OSError)
    assert issubclass(CorruptBlock, CacheError) and issubclass(InvalidBlockHash, CacheError)
    assert CacheFull().errno == errno.ENOSPC
