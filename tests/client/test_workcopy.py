"""Working copies: lazy block fill, and only written blocks are rehashed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
    size, new = await work.seal(lambda h, d: sealed.__setitem__(h, d))
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
    size, new = await work.seal(lambda h, d: None)
    expected = data[: BS + 3] + b"\0" * 7
    assert size == len(expected)
    assert new == blocks_of(expected)[1]
    assert await work.read(0, size) == expected
    work.close()


async def test_write_past_the_end_leaves_zeros(tmp_path: Path) -> None:
    work = WorkingCopy(tmp_path / "w", 0, (), Source({}).load)
    await work.write(BS + 1, b"z")
    size, new = await work.seal(lambda h, d: None)
    expected = b"\0" * (BS + 1) + b"z"
    assert size == len(expected) and new == blocks_of(expected)[1]
    work.close()
