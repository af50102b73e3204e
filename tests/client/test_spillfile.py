"""Working-copy bytes: in memory while small, moved into the file once they grow."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from websync_fs import spillfile
from websync_fs.spillfile import SMALL, SpillFile


def test_a_small_copy_stays_in_memory_and_leaves_no_file(tmp_path: Path) -> None:
    f = SpillFile(tmp_path / "w", 0)
    assert f.pwrite(b"hello", 0) == 5
    assert f.pwrite(b"!", 10) == 1  # past the end: a hole of zeros
    assert f.pread(100, 0) == b"hello" + bytes(5) + b"!"
    f.truncate(3)
    assert f.pread(100, 0) == b"hel"
    f.truncate(6)
    assert f.pread(100, 0) == b"hel" + bytes(3)
    assert not f.on_disk and not (tmp_path / "w").exists()
    f.close()
    f.close()
    with pytest.raises(OSError) as closed:  # as a closed descriptor answers a late reader
        f.pread(1, 0)
    assert closed.value.errno == errno.EBADF


@pytest.mark.parametrize("grow", ["write", "truncate"])
def test_growing_past_small_moves_the_bytes_into_the_file(tmp_path: Path, grow: str) -> None:
    f = SpillFile(tmp_path / "w", 4)
    f.pwrite(b"abcd", 0)
    if grow == "write":
        f.pwrite(b"z", SMALL)
        expected = b"abcd" + bytes(SMALL - 4) + b"z"
    else:
        f.truncate(SMALL + 1)
        expected = b"abcd" + bytes(SMALL - 3)
    assert f.on_disk
    assert (tmp_path / "w").read_bytes() == expected
    assert f.pread(SMALL + 10, 0) == expected
    f.close()
    assert not (tmp_path / "w").exists()


def test_memory_is_bounded_over_all_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spillfile, "MEMORY_MAX", 2 * SMALL)
    copies = [SpillFile(tmp_path / f"w{i}", 0) for i in range(3)]
    assert [c.on_disk for c in copies] == [False, False, True]
    copies[0].close()
    again = SpillFile(tmp_path / "again", 0)  # the memory given back is used again
    assert not again.on_disk
    for c in [*copies, again]:
        c.close()


def test_a_copy_that_cannot_move_to_a_full_disk_keeps_its_bytes(
    tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    disk = tmpfs(tmp_path / "disk", "64k")
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        with pytest.raises(OSError):
            while True:
                out.write(os.urandom(4096))
    f = SpillFile(disk / "w", 0)
    f.pwrite(b"kept", 0)
    with pytest.raises(OSError) as refused:
        f.pwrite(os.urandom(SMALL), 4)
    assert refused.value.errno == errno.ENOSPC
    assert not f.on_disk and not (disk / "w").exists()
    assert f.pread(10, 0) == b"kept"
    f.truncate(2)  # while the error is still held (the working copy undoes growth so)
    assert f.pread(10, 0) == b"ke"
    filler.unlink()
    f.pwrite(b"!", SMALL)  # room again: it moves now
    assert f.on_disk and f.pread(4, 0) == b"ke\0\0"
    f.close()
