"""The block store: verified, durable, per-user, readable by range."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from websync_server._exceptions import InsufficientStorage, InvalidRequest, NotFound, RangeNotSatisfiable, TooLarge
from websync_server.blocks import BlockStore, Extent
from websync_server.protocol import BLOCK_SIZE, BlockHash


def digest(data: bytes) -> BlockHash:
    return BlockHash(hashlib.sha256(data).hexdigest())


@pytest.fixture
def blocks(tmp_path: Path) -> BlockStore:
    store = BlockStore(tmp_path / "blocks")
    store.open()
    return store


def test_put_stores_under_the_hash_and_reports_new_or_known(blocks: BlockStore) -> None:
    data = b"hello world"
    block = digest(data)
    assert blocks.put("alice", block, data) is True
    assert blocks.put("alice", block, data) is False
    assert blocks.path("alice", block) == blocks.root / "alice" / block[:2] / block[2:4] / block
    assert blocks.path("alice", block).read_bytes() == data
    assert blocks.size("alice", block) == len(data)
    assert list((blocks.root / ".incoming").iterdir()) == []


def test_a_body_that_does_not_match_its_hash_is_refused_and_not_stored(blocks: BlockStore) -> None:
    block = digest(b"the real bytes")
    with pytest.raises(InvalidRequest, match="SHA-256"):
        blocks.put("alice", block, b"other bytes")
    assert blocks.size("alice", block) is None
    assert not (blocks.root / "alice").exists()


def test_a_body_in_pieces_is_checked_and_stored_whole(blocks: BlockStore) -> None:
    pieces = [os.urandom(65536), os.urandom(1000), os.urandom(262144)]
    data = b"".join(pieces)
    with pytest.raises(InvalidRequest, match="SHA-256"):
        blocks.put("alice", digest(data), pieces[::-1])
    with pytest.raises(TooLarge):
        blocks.put("alice", digest(data), [b"x" * BLOCK_SIZE, b"y"])
    assert blocks.put("alice", digest(data), pieces) is True
    assert blocks.path("alice", digest(data)).read_bytes() == data


def test_blocks_over_the_block_size_are_too_large(blocks: BlockStore) -> None:
    data = b"x" * (BLOCK_SIZE + 1)
    with pytest.raises(TooLarge):
        blocks.put("alice", digest(data), data)


def test_bad_hashes_are_invalid(blocks: BlockStore) -> None:
    for bad in ("", "A" * 64, "../../etc/passwd", "ab" * 31):
        with pytest.raises(InvalidRequest):
            blocks.put("alice", BlockHash(bad), b"")


def test_users_do_not_share_blocks(blocks: BlockStore) -> None:
    data = b"secret"
    blocks.put("alice", digest(data), data)
    assert blocks.size("bob", digest(data)) is None
    assert blocks.missing("bob", [digest(data)]) == [digest(data)]
    with pytest.raises(NotFound):
        blocks.read("bob", digest(data))


def test_missing_lists_each_absent_block_once_in_order(blocks: BlockStore) -> None:
    have, lack1, lack2 = digest(b"1"), digest(b"2"), digest(b"3")
    blocks.put("alice", have, b"1")
    assert blocks.missing("alice", [lack2, have, lack1, lack2]) == [lack2, lack1]


def test_read_whole_and_ranges(blocks: BlockStore) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    block = digest(data)
    blocks.put("alice", block, data)
    assert blocks.read("alice", block).data == data
    part = blocks.read("alice", block, 100, 199)
    assert (part.data, part.start, part.size) == (data[100:200], 100, len(data))
    assert blocks.read("alice", block, 10_000).data == data[10_000:]
    assert blocks.read("alice", block, None, 40).data == data[-40:]
    assert blocks.read("alice", block, 10_200, 99_999).data == data[10_200:]
    with pytest.raises(RangeNotSatisfiable):
        blocks.read("alice", block, len(data))
    with pytest.raises(NotFound):
        blocks.read("alice", digest(b"never stored"))


def test_a_full_disk_stores_nothing_and_says_so(blocks: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    data = b"z" * 1000
    with pytest.raises(InsufficientStorage):
        blocks.put("alice", digest(data), data)
    assert blocks.size("alice", digest(data)) is None
    assert list((blocks.root / ".incoming").iterdir()) == []


@pytest.mark.parametrize("pieces", [1, 3])
def test_a_whole_block_in_pieces_is_stored_exactly(blocks: BlockStore, pieces: int) -> None:
    # Whole blocks go to the disk by direct I/O, from an aligned copy padded to pages.
    data = os.urandom(BLOCK_SIZE - 1234)
    step = -(-len(data) // pieces)
    block = digest(data)
    assert blocks.put("alice", block, [data[i:i + step] for i in range(0, len(data), step)]) is True
    assert blocks.path("alice", block).read_bytes() == data
    assert blocks.read("alice", block, 4_000_000).data == data[4_000_000:]


def test_a_disk_that_fills_during_a_whole_block_keeps_nothing_of_it(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    disk = tmpfs(tmp_path / "disk", "2m")
    store = BlockStore(disk / "blocks")
    store.open()
    data = os.urandom(BLOCK_SIZE)
    with pytest.raises(InsufficientStorage):
        store.put("alice", digest(data), data)
    assert store.size("alice", digest(data)) is None
    assert list((store.root / ".incoming").iterdir()) == []
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # room again
    assert store.put("alice", digest(data), data) is True
    assert store.read("alice", digest(data)).data == data


def test_open_removes_stale_temporary_files_only(blocks: BlockStore) -> None:
    incoming = blocks.root / ".incoming"
    stale, fresh = incoming / "stale", incoming / "fresh"
    stale.write_bytes(b"torn upload")
    fresh.write_bytes(b"upload in flight")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    blocks.open()
    assert not stale.exists() and fresh.exists()


def test_a_range_of_a_damaged_block_is_answered_with_the_whole_block(
    blocks: BlockStore, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(100_000)
    block = digest(data)
    blocks.put("alice", block, data)
    assert blocks.read("alice", block, 10, 19) == Extent(data[10:20], 10, len(data))
    path = blocks.path("alice", block)
    with open(path, "r+b") as f:  # bit rot after the block was stored
        f.seek(50_000)
        f.write(b"\0" * 8)
    damaged = path.read_bytes()

    extent = blocks.read("alice", block, 10, 19)  # the range itself is intact; the block is not

    assert extent == Extent(damaged, 0, len(damaged), whole=True)
    assert block in caplog.text
    assert blocks.read("alice", block) == Extent(damaged, 0, len(damaged))  # whole reads are the client's to check


def test_a_block_stored_by_an_earlier_process_is_hashed_before_a_range_of_it_is_served(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    block = digest(data)
    first = BlockStore(tmp_path)
    first.open()
    first.put("alice", block, data)
    second = BlockStore(tmp_path)
    second.open()
    assert second.read("alice", block, 0, 99) == Extent(data[:100], 0, len(data))


def test_small_ranges_of_hashed_blocks_are_read_in_place_and_anything_else_is_left_to_read(
    tmp_path: Path,
) -> None:
    data = os.urandom(300_000)
    block = digest(data)
    earlier = BlockStore(tmp_path)
    earlier.open()
    earlier.put("alice", block, data)
    blocks = BlockStore(tmp_path)
    blocks.open()
    # Not hashed by this process yet: only `read` may vouch for it.
    assert blocks.read_small("alice", block, 10, 4105) is None
    assert blocks.read("alice", block, 10, 4105) == Extent(data[10:4106], 10, len(data))
    assert blocks.read_small("alice", block, 10, 4105) == Extent(data[10:4106], 10, len(data))
    assert blocks.read_small("alice", block, 299_990, 300_100) == Extent(data[299_990:], 299_990, len(data))
    assert blocks.read_small("alice", block, None, None) is None  # whole
    assert blocks.read_small("alice", block, 0, 200_000) is None  # not small
    with pytest.raises(RangeNotSatisfiable):
        blocks.read_small("alice", block, 300_000, 300_010)
    path = blocks.path("alice", block)
    with open(path, "r+b") as f:  # written to since it was hashed: hashed again by `read`
        f.seek(50)
        f.write(b"\0")
    assert blocks.read_small("alice", block, 10, 4105) is None
    assert blocks.read_small("bob", block, 10, 4105) is None  # another user's block is not there
