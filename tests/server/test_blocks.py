"""The block store: verified, durable, per-user, readable by range."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from websync_server._exceptions import InsufficientStorage, InvalidRequest, NotFound, RangeNotSatisfiable, TooLarge
from tests.seaweed import SeaweedS3
from websync_server.blocks import Blocks, BlockStore, Extent
from websync_server.objects import ObjectBlockStore
from websync_server.protocol import BLOCK_SIZE, BlockHash


def digest(data: bytes) -> BlockHash:
    return BlockHash(hashlib.sha256(data).hexdigest())


@pytest.fixture(params=["folder", "s3"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Blocks:
    """A block store in a folder, or in object storage (SeaweedFS's S3 gateway)."""
    store: Blocks
    if request.param == "folder":
        store = BlockStore(tmp_path / "blocks")
    else:
        s3: SeaweedS3 = request.getfixturevalue("s3")
        store = ObjectBlockStore(s3.new_url())
    store.open()
    return store


@pytest.fixture
def blocks(tmp_path: Path) -> BlockStore:
    store = BlockStore(tmp_path / "blocks")
    store.open()
    return store


def test_put_stores_under_the_hash_and_reports_new_or_known(stored: Blocks) -> None:
    data = b"hello world"
    block = digest(data)
    assert stored.put("alice", block, data) is True
    assert stored.put("alice", block, data) is False
    assert stored.read("alice", block).data == data
    assert stored.size("alice", block) == len(data)


def test_a_folder_keeps_each_block_under_its_user_and_hash_and_no_temporary_file(blocks: BlockStore) -> None:
    data = b"hello world"
    block = digest(data)
    blocks.put("alice", block, data)
    assert blocks.path("alice", block) == blocks.root / "alice" / block[:2] / block[2:4] / block
    assert blocks.path("alice", block).read_bytes() == data
    assert list((blocks.root / ".incoming").iterdir()) == []


def test_a_body_that_does_not_match_its_hash_is_refused_and_not_stored(stored: Blocks) -> None:
    block = digest(b"the real bytes")
    with pytest.raises(InvalidRequest, match="SHA-256"):
        stored.put("alice", block, b"other bytes")
    assert stored.size("alice", block) is None
    assert list(stored.files("alice")) == []


def test_a_wrong_whole_block_is_refused_leaving_nothing_and_refused_again_once_the_block_is_there(
    blocks: BlockStore,
) -> None:
    """The hash is found while the bytes are written: a mismatch still stores nothing, not even a temporary file."""
    data, wrong = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    block = digest(data)
    with pytest.raises(InvalidRequest, match="SHA-256"):
        blocks.put("alice", block, [wrong[:1000], wrong[1000:]])
    assert blocks.size("alice", block) is None
    assert list((blocks.root / ".incoming").iterdir()) == []
    assert blocks.put("alice", block, data)
    with pytest.raises(InvalidRequest, match="SHA-256"):
        blocks.put("alice", block, wrong)
    assert blocks.path("alice", block).read_bytes() == data


def test_a_body_in_pieces_is_checked_and_stored_whole(stored: Blocks) -> None:
    pieces = [os.urandom(65536), os.urandom(1000), os.urandom(262144)]
    data = b"".join(pieces)
    with pytest.raises(InvalidRequest, match="SHA-256"):
        stored.put("alice", digest(data), pieces[::-1])
    with pytest.raises(TooLarge):
        stored.put("alice", digest(data), [b"x" * BLOCK_SIZE, b"y"])
    assert stored.put("alice", digest(data), pieces) is True
    assert stored.read("alice", digest(data)).data == data


def test_blocks_over_the_block_size_are_too_large(stored: Blocks) -> None:
    data = b"x" * (BLOCK_SIZE + 1)
    with pytest.raises(TooLarge):
        stored.put("alice", digest(data), data)


def test_bad_hashes_are_invalid(stored: Blocks) -> None:
    for bad in ("", "A" * 64, "../../etc/passwd", "ab" * 31):
        with pytest.raises(InvalidRequest):
            stored.put("alice", BlockHash(bad), b"")


def test_users_do_not_share_blocks(stored: Blocks) -> None:
    data = b"secret"
    stored.put("alice", digest(data), data)
    assert stored.size("bob", digest(data)) is None
    assert stored.missing("bob", [digest(data)]) == [digest(data)]
    with pytest.raises(NotFound):
        stored.read("bob", digest(data))


def test_missing_lists_each_absent_block_once_in_order(stored: Blocks) -> None:
    have, lack1, lack2 = digest(b"1"), digest(b"2"), digest(b"3")
    stored.put("alice", have, b"1")
    assert stored.missing("alice", [lack2, have, lack1, lack2]) == [lack2, lack1]


def test_read_whole_and_ranges(stored: Blocks) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    block = digest(data)
    stored.put("alice", block, data)
    assert stored.read("alice", block).data == data
    part = stored.read("alice", block, 100, 199)
    assert (part.data, part.start, part.size) == (data[100:200], 100, len(data))
    assert stored.read("alice", block, 10_000).data == data[10_000:]
    assert stored.read("alice", block, None, 40).data == data[-40:]
    assert stored.read("alice", block, 10_200, 99_999).data == data[10_200:]
    with pytest.raises(RangeNotSatisfiable):
        stored.read("alice", block, len(data))
    with pytest.raises(NotFound):
        stored.read("alice", digest(b"never stored"))


def test_files_lists_a_users_blocks_and_remove_spares_one_not_older_than_asked(stored: Blocks) -> None:
    data = b"a block"
    stored.put("alice", digest(data), data)
    (listed,) = stored.files("alice")
    assert (listed.block, listed.size) == (digest(data), len(data))
    assert stored.remove("alice", digest(data), older_than_ns=listed.mtime_ns) is False  # written at the cutoff
    assert stored.size("alice", digest(data)) == len(data)
    later = listed.mtime_ns + 2_000_000_000  # past S3's whole-second LastModified
    assert stored.remove("alice", digest(data), older_than_ns=later) is True
    assert stored.remove("alice", digest(data), older_than_ns=later) is False  # gone already
    assert list(stored.files("alice")) == [] and stored.size("alice", digest(data)) is None


def test_object_storage_answers_which_blocks_exist_with_listings_not_a_request_per_block(s3: SeaweedS3) -> None:
    objects = ObjectBlockStore(s3.new_url())
    objects.open()
    have = [digest(str(i).encode()) for i in range(40)]
    for i, block in enumerate(have):
        objects.put("alice", block, str(i).encode())
    lack = [digest(f"absent {i}".encode()) for i in range(200)]
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    objects.client.meta.events.register("before-call.s3", count)
    try:
        assert set(objects.missing("alice", have + lack)) == set(lack)
        assert objects.sizes("alice", have[:3] + lack[:3]) == {b: len(str(i)) for i, b in enumerate(have[:3])}
    finally:
        objects.client.meta.events.unregister("before-call.s3", count)
    assert calls == {"ListObjectsV2": 2}, calls


def test_object_storage_reads_a_range_with_a_ranged_get(s3: SeaweedS3) -> None:
    objects = ObjectBlockStore(s3.new_url())
    data = os.urandom(BLOCK_SIZE)
    objects.put("alice", digest(data), data)
    ranges: list[str | None] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        ranges.append(params.get("Range"))

    objects.client.meta.events.register("provide-client-params.s3.GetObject", note)
    try:
        part = objects.read("alice", digest(data), 1000, 1999)
    finally:
        objects.client.meta.events.unregister("provide-client-params.s3.GetObject", note)
    assert (part.data, part.start, part.size) == (data[1000:2000], 1000, BLOCK_SIZE)
    assert ranges == ["bytes=1000-1999"]


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


@pytest.mark.parametrize("flush", ["syncfs", "fsync each"])
def test_put_many_stores_every_new_block_and_counts_only_those(
    blocks: BlockStore, flush: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if flush == "fsync each":
        # The way of systems without syncfs (macOS, Windows), which cannot run here.
        monkeypatch.setattr("websync_server.blocks._syncfs", None)
    datas = [f"block {i}".encode() * (i + 1) for i in range(20)]
    blocks.put("alice", digest(datas[0]), datas[0])
    pairs = [(digest(d), d) for d in datas] + [(digest(datas[3]), datas[3])]
    assert blocks.put_many("alice", pairs) == 19
    assert all(blocks.read("alice", digest(d)).data == d for d in datas)
    assert list((blocks.root / ".incoming").iterdir()) == []
    assert blocks.put_many("alice", pairs) == 0


def test_put_many_with_one_wrong_block_stores_none(stored: Blocks) -> None:
    good = [(digest(d), d) for d in (b"first", b"second", b"third")]
    with pytest.raises(InvalidRequest):
        stored.put_many("alice", [*good, (digest(b"good"), b"evil")])
    assert stored.missing("alice", [h for h, _ in good]) == [h for h, _ in good]
