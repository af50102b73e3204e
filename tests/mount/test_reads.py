"""Reads of content a machine has never had: by range first, the whole block into the cache once in use."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from tests.clients import Machine, block_cached, eventually, read_bytes
from websync_fs.blocksource import FILL_AFTER

pytestmark = pytest.mark.mount

BLOCK = 4 * 1024 * 1024


def test_scattered_first_reads_return_the_right_bytes_and_cache_whole_blocks(a: Machine, b: Machine) -> None:
    data = os.urandom(3 * BLOCK + 5000)
    hashes = [hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    a.path("video.mkv").write_bytes(data)
    eventually(lambda: b.path("video.mkv").stat().st_size == len(data), what="video.mkv on B")

    rng = random.Random(7)
    offsets = [len(data) - 100, 0, BLOCK + 123_457, 2 * BLOCK - 10]
    offsets += [rng.randrange(len(data)) for _ in range(40)]
    with open(b.path("video.mkv"), "rb") as f:
        for offset in offsets:
            # Unaligned, and some across a block boundary.
            assert os.pread(f.fileno(), 7000, offset) == data[offset : offset + 7000], offset

    assert read_bytes(b.path("video.mkv")) == data
    eventually(lambda: all(block_cached(b, h) for h in hashes), what="every block cached whole on B")


def test_a_first_read_after_a_seek_needs_no_earlier_block(a: Machine, b: Machine) -> None:
    data = os.urandom(4 * BLOCK)
    a.path("disk.img").write_bytes(data)
    eventually(lambda: b.path("disk.img").stat().st_size == len(data), what="disk.img on B")
    middle = 2 * BLOCK + 4096 * 9
    path: Path = b.path("disk.img")
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4096, middle) == data[middle : middle + 4096]
        # Read there again and again (scattered, so the kernel cannot answer): now the
        # block is in use and comes down whole.
        for step in range(1, FILL_AFTER):
            later = middle + step * 300_000
            assert os.pread(f.fileno(), 4096, later) == data[later : later + 4096]
    eventually(lambda: block_cached(b, hashlib.sha256(data[2 * BLOCK : 3 * BLOCK]).hexdigest()), what="the block read")
    assert not block_cached(b, hashlib.sha256(data[:BLOCK]).hexdigest())
