"""FileWriter on real file systems: the disk under tmp_path, and a ramfs, which refuses O_DIRECT."""

from __future__ import annotations

import os
import random
import subprocess
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache._filewriter import DIRECT_MIN, PROBE_EVERY, PROBE_EVERY_MAX, FileWriter

MiB = 1 << 20


def write_new(writer: FileWriter, path: Path, data: bytes | bytearray | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer.write(fd, data)
    finally:
        os.close(fd)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ramfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("size", [100_000, DIRECT_MIN, 4 * MiB, 4 * MiB - 1000, DIRECT_MIN + 1])
@pytest.mark.parametrize("mode", ["auto", "direct", "buffered"])
def test_every_way_writes_exactly_the_bytes(tmp_path: Path, mode: str, size: int) -> None:
    writer = FileWriter(mode)
    for n in range(3):  # auto: buffered, direct, then the faster one
        data = random.Random(n).randbytes(size)
        path = tmp_path / f"block{n}"
        write_new(writer, path, (data, bytearray(data), memoryview(data))[n])  # any bytes-like
        assert path.read_bytes() == data


def test_auto_measures_both_ways_then_mostly_takes_the_faster(tmp_path: Path) -> None:
    writer = FileWriter("auto")
    data = random.Random(1).randbytes(DIRECT_MIN)
    write_new(writer, tmp_path / "a", data)
    write_new(writer, tmp_path / "b", data)
    costs = writer.costs
    assert costs["buffered"] is not None and costs["direct"] is not None and min(costs.values()) > 0

    # Which is faster here depends on the machine; the choice follows the numbers.
    for faster in (True, False):
        writer._samples = {faster: deque([1.0e-9] * 5), not faster: deque([1.1e-9] * 5)}  # noqa: SLF001
        picks = [writer._choose() for _ in range(4 * PROBE_EVERY)]  # noqa: SLF001
        assert picks.count(not faster) == 4  # the slower way, measured anew now and then


def test_a_way_much_slower_than_the_other_is_measured_more_rarely(tmp_path: Path) -> None:
    """Probing a way that costs 9x costs at most a tenth more (a fixed 1 in 8 nearly doubled the cost)."""
    writer = FileWriter("auto")
    for faster in (True, False):
        for ratio, every in ((1.5, PROBE_EVERY), (3.0, 20), (9.0, PROBE_EVERY_MAX), (100.0, PROBE_EVERY_MAX)):
            writer._samples = {faster: deque([1e-9] * 5), not faster: deque([ratio * 1e-9] * 5)}  # noqa: SLF001
            picks = [writer._choose() for _ in range(4 * every)]  # noqa: SLF001
            assert picks.count(not faster) == 4, (ratio, every)
            slow_time = picks.count(not faster) * ratio + picks.count(faster)
            assert slow_time <= 1.1 * len(picks) or every == PROBE_EVERY_MAX


def test_small_writes_stay_buffered(tmp_path: Path) -> None:
    writer = FileWriter("direct")
    write_new(writer, tmp_path / "small", b"x" * (DIRECT_MIN - 1))
    assert writer.costs == {"buffered": None, "direct": None}  # not even measured


def test_a_file_system_without_direct_io_gets_buffered_writes(ramfs: Path) -> None:
    writer = FileWriter("direct")
    data = random.Random(2).randbytes(4 * MiB - 1000)
    write_new(writer, ramfs / "one", data)
    write_new(writer, ramfs / "two", data)
    assert (ramfs / "one").read_bytes() == data
    assert (ramfs / "two").read_bytes() == data
    assert not writer.direct


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode 'fast'"):
        FileWriter("fast")
