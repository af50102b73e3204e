"""Full disks: the writer hears ENOSPC, nothing is corrupted, and everything recovers with space.

The client's cache directory (``HOME/cache``: working copies and blocks) sits
on a small tmpfs that a filler file makes full, as another program would.
The server's block directory sits on a small tmpfs too: its uploads are
answered 507 and the changes stay queued until there is room.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, resize, status

pytestmark = pytest.mark.mount

MB = 1024 * 1024


def fill(path: Path, leave: int) -> Path:
    """Fill the file system of *path* until about *leave* bytes are free; return the filler file."""
    filler = path / "filler"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    subprocess.run(["fallocate", "-l", str(max(0, free - leave)), str(filler)], check=True)
    return filler


def write_in_pieces(path: Path, data: bytes, piece: int = MB) -> None:
    with open(path, "wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start:start + piece])
            f.flush()


def test_full_cache_disk_gives_enospc_corrupts_nothing_and_recovers(
    site: Site, make_machine: Callable[..., Machine], tmpfs: Callable[[Path, str], Path]
) -> None:
    cache_disk: list[Path] = []
    a = make_machine(
        "A", site,
        before_mount=lambda m: cache_disk.append(tmpfs(m.home / "cache", "64m")),
        allow=(r"No space left on device", r"no space left",),
    )
    b = make_machine("B", site)
    kept = os.urandom(3 * MB)
    a.path("kept.bin").write_bytes(kept)
    drained(a)
    from_b = os.urandom(2 * MB)
    b.path("from-b.bin").write_bytes(from_b)
    eventually(lambda: a.path("from-b.bin").exists(), what="B's file listed on A")

    filler = fill(cache_disk[0], leave=512 * 1024)
    big = os.urandom(20 * MB)
    with pytest.raises(OSError) as failure:
        write_in_pieces(a.path("big.bin"), big)
    assert failure.value.errno == errno.ENOSPC
    # Nothing else was harmed: what was there reads back, the mount works, reads of
    # content that cannot be cached now are still served.
    assert read_bytes(a.path("kept.bin")) == kept
    assert read_bytes(a.path("from-b.bin")) == from_b
    assert a.path("big.bin").stat().st_size in (0, len(big))
    os.mkdir(a.path("still-works"))

    def small_fits() -> bool:
        # The failed write's working copy is removed off the request path: its room
        # returns a moment after the close, which a loaded machine can stretch.
        a.path("still-works", "small.txt").write_bytes(b"tiny files still fit\n")
        return True

    eventually(small_fits, timeout=20, what="a small file to fit after the failed write")

    filler.unlink()  # space returns
    write_in_pieces(a.path("big.bin"), big)
    assert read_bytes(a.path("big.bin")) == big
    drained(a)
    expected = {
        "kept.bin": kept, "from-b.bin": from_b, "big.bin": big,
        "still-works": serverstate.DIR, "still-works/small.txt": b"tiny files still fit\n",
    }
    assert serverstate.tree(site.data_dir, site.user) == expected
    assert serverstate.problems(site.data_dir, site.user) == []
    eventually(lambda: read_bytes(b.path("big.bin")) == big, what="big.bin on B")


def test_full_server_disk_keeps_changes_queued_until_there_is_room(
    own_site: Site, make_machine: Callable[..., Machine], tmpfs: Callable[[Path, str], Path]
) -> None:
    own_site.stop()
    blocks = tmpfs(own_site.data_dir / "blocks", "20m")
    own_site.start()
    a = make_machine("A", own_site)
    files = {f"f{i}.bin": os.urandom(4 * MB - 1000) for i in range(8)}  # 32 MB for 20 MB of room
    for name, data in files.items():
        a.path(name).write_bytes(data)

    def full() -> dict[str, object] | None:
        info = status(a)
        return info if info["pending"] and "full" in info["error"] else None

    info = eventually(full, timeout=30, what="the client to hear that the server's disk is full")
    print(f"server disk full: {info['pending']} change(s) wait: {info['error']}")
    assert info["online"]  # the server answers: it is full, not gone
    assert " 507" in own_site.process.log()  # the server said so: Insufficient Storage
    # The mount goes on meanwhile, and what did fit is whole on the server.
    assert serverstate.problems(own_site.data_dir, own_site.user) == []
    a.path("note.txt").write_bytes(b"written while the server was full\n")
    assert read_bytes(a.path("f7.bin")) == files["f7.bin"]
    time.sleep(2)
    assert status(a)["pending"] > 0

    resize(blocks, "64m")  # room again
    drained(a, timeout=80)
    expected = dict(files, **{"note.txt": b"written while the server was full\n"})
    assert serverstate.tree(own_site.data_dir, own_site.user) == expected
    assert serverstate.problems(own_site.data_dir, own_site.user) == []
