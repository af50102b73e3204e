"""Offline: the server is stopped; the mount stays usable and everything done meanwhile is replayed.

Machine A works on while the server is down: it lists the whole tree, reads
what it has cached or pinned, gets a prompt clear error (not a hang) for a
file whose content it never fetched, and queues writes, renames, deletes and
new folders.  B changes a file A also changes while A is cut off, so the
replay meets a conflict.  When the server is back, A's queue goes up in
order, on its own, and both machines and the server agree.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, status
from tests.proxy import Proxy

pytestmark = pytest.mark.mount


def walk(root: os.PathLike[str]) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


def test_offline_mount_stays_usable_and_replays_in_order(
    own_site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    proxy = Proxy(own_site.port, seed=seed)
    try:
        _offline_case(own_site, make_machine, proxy, offline_for=8.0)
    finally:
        proxy.close()


def _offline_case(site: Site, make_machine: Callable[..., Machine], proxy: Proxy, offline_for: float) -> None:
    a = make_machine("A", site, url=proxy.url, allow=(r"not available offline",))
    b = make_machine("B", site)
    big = os.urandom(6 * 1024 * 1024)
    pinned = os.urandom(5 * 1024 * 1024)  # other bytes: blocks are shared by content
    for d in ("docs", "pinned", "old"):
        os.mkdir(a.path(d))
    a.path("docs", "cached.txt").write_bytes(b"cached on A\n")
    a.path("docs", "shared.txt").write_bytes(b"v1\n")
    a.path("pinned", "big.bin").write_bytes(b"placeholder")
    a.path("old", "gone.txt").write_bytes(b"to be deleted\n")
    b_dir = b.path("from-b")
    eventually(lambda: b.path("pinned", "big.bin").exists(), what="A's files on B")
    os.mkdir(b_dir)
    b.path("from-b", "never-read.bin").write_bytes(big)
    b.path("pinned", "big.bin").write_bytes(pinned)
    eventually(lambda: a.path("from-b", "never-read.bin").stat().st_size == len(big), what="B's files listed on A")
    a.cli("pin", str(a.path("pinned")))  # waits until pinned/ is local
    drained(a)
    drained(b)
    before = walk(a.mnt)

    # A loses its network; B changes shared.txt meanwhile (a conflict for the replay).
    proxy.online = False
    b.path("docs", "shared.txt").write_bytes(b"v2 from B\n")
    drained(b)
    # Then the server goes down for everyone.
    site.stop()
    down = time.monotonic()

    start = time.monotonic()
    assert walk(a.mnt) == before
    listed = time.monotonic() - start
    assert a.path("docs", "cached.txt").read_bytes() == b"cached on A\n"
    assert read_bytes(a.path("pinned", "big.bin")) == pinned
    start = time.monotonic()
    with pytest.raises(OSError) as failure:
        read_bytes(a.path("from-b", "never-read.bin"))
    failed_in = time.monotonic() - start
    assert failure.value.errno in (errno.EIO, errno.ENETUNREACH)
    assert failed_in < 10, f"reading an unfetched file took {failed_in:.1f} s to fail"
    eventually(lambda: "not available offline" in a.log(), what="the log line about offline content")

    # Work goes on, offline: every kind of change, in an order that only replays in order.
    os.mkdir(a.path("new"))
    a.path("new", "a.txt").write_bytes(b"first a\n")
    os.rename(a.path("new", "a.txt"), a.path("new", "b.txt"))
    a.path("new", "a.txt").write_bytes(b"second a\n")  # a new file under the old name
    os.rename(a.path("new"), a.path("renamed"))
    os.mkdir(a.path("renamed", "sub"))
    a.path("renamed", "sub", "deep.txt").write_bytes(b"deep\n")
    os.unlink(a.path("old", "gone.txt"))
    os.rmdir(a.path("old"))
    os.rename(a.path("docs", "cached.txt"), a.path("renamed", "moved.txt"))
    a.path("docs", "shared.txt").write_bytes(b"v2 from A\n")
    with open(a.path("renamed", "b.txt"), "ab") as f:
        f.write(b"appended offline\n")
    info = status(a)
    assert not info["online"]
    assert info["pending"] >= 8
    text = a.cli("status").stdout
    assert "offline" in text and f"pending:    {info['pending']} change(s)" in text
    print(f"offline: listing took {listed * 1000:.0f} ms, the unfetched read failed in {failed_in:.2f} s; "
          f"{info['pending']} changes queued")

    time.sleep(max(0.0, offline_for - (time.monotonic() - down)))
    site.start()
    proxy.online = True
    back = time.monotonic()
    drained(a, timeout=90)
    drained(b, timeout=90)
    print(f"the queue was replayed {time.monotonic() - back:.1f} s after the server came back")

    expected = {
        "docs": serverstate.DIR,
        "docs/shared.txt": b"v2 from B\n",  # the server's version stays at the path...
        "pinned": serverstate.DIR,
        "pinned/big.bin": pinned,
        "from-b": serverstate.DIR,
        "from-b/never-read.bin": big,
        "renamed": serverstate.DIR,
        "renamed/a.txt": b"second a\n",
        "renamed/b.txt": b"first a\nappended offline\n",
        "renamed/moved.txt": b"cached on A\n",
        "renamed/sub": serverstate.DIR,
        "renamed/sub/deep.txt": b"deep\n",
    }
    on_server = serverstate.tree(site.data_dir, site.user)
    copies = [p for p in on_server if p.startswith("docs/shared (conflict from A ")]
    assert len(copies) == 1, sorted(on_server)
    expected[copies[0]] = b"v2 from A\n"  # ...and A's offline edit is kept beside it
    assert on_server == expected, serverstate.diff(expected, on_server)
    assert serverstate.problems(site.data_dir, site.user) == []
    for m in (a, b):
        eventually(lambda m=m: serverstate.read_tree(m.mnt) == expected, what=f"the same tree on {m.name}")
    assert read_bytes(a.path("from-b", "never-read.bin")) == big  # fetched now that it can be


def test_a_hung_server_makes_reads_fail_in_bounded_time_not_hang(
    own_site: Site, make_machine: Callable[..., Machine]
) -> None:
    """A server that accepts connections but never answers (stopped, swapping): reads fail, writes queue."""
    a = make_machine("A", own_site, allow=(r"not available offline",))
    b = make_machine("B", own_site)
    data = os.urandom(3 * 1024 * 1024)
    b.path("remote.bin").write_bytes(data)
    eventually(lambda: a.path("remote.bin").exists(), what="B's file listed on A")
    os.kill(own_site.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as failure:
            read_bytes(a.path("remote.bin"))
        took = time.monotonic() - start
        print(f"a read from the hung server failed after {took:.1f} s with {errno.errorcode[failure.value.errno]}")
        assert failure.value.errno in (errno.EIO, errno.ENETUNREACH)
        assert took < 20
        start = time.monotonic()
        a.path("written-meanwhile.txt").write_bytes(b"queued\n")
        assert sorted(os.listdir(a.mnt)) == ["remote.bin", "written-meanwhile.txt"]
        assert time.monotonic() - start < 2
    finally:
        os.kill(own_site.process.pid, signal.SIGCONT)
    eventually(lambda: read_bytes(a.path("remote.bin")) == data, what="the read to work again")
    drained(a, timeout=90)
    assert serverstate.tree(own_site.data_dir, own_site.user)["written-meanwhile.txt"] == b"queued\n"


def test_queued_folder_moves_reach_the_server_in_an_order_it_accepts(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    """Changes go up in order; one that waits (a file's rename waits a second, it may be a save)
    must not let a later folder move overtake an earlier one: P into X is only legal once Y
    (which holds X) has left P, so the server would refuse it as a cycle and the move be undone.
    """
    a = make_machine("A", site)
    os.makedirs(a.path("P", "Q", "Y", "X"))
    a.path("P", "Q", "Y", "f.txt").write_bytes(b"f\n")
    drained(a)
    os.rename(a.path("P", "Q", "Y", "f.txt"), a.path("P", "Q", "Y", "g.txt"))  # waits ~1 s
    os.rename(a.path("P", "Q", "Y"), a.path("Y"))
    os.rename(a.path("P"), a.path("Y", "X", "P"))
    expected = {
        "Y": serverstate.DIR, "Y/g.txt": b"f\n", "Y/X": serverstate.DIR,
        "Y/X/P": serverstate.DIR, "Y/X/P/Q": serverstate.DIR,
    }
    assert serverstate.read_tree(a.mnt) == expected
    drained(a)
    assert serverstate.tree(site.data_dir, site.user) == expected
    assert serverstate.read_tree(a.mnt) == expected


def test_a_save_right_after_a_move_keeps_the_move(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    """Move a document, then save it at once (GLib: write a temporary file, rename it over).

    The save becomes one new version of the document; the move, still queued, must reach
    the server too, or the document would stay at its old place there (and on every other
    machine) while this one shows it at the new one.
    """
    a = make_machine("A", site)
    b = make_machine("B", site)
    os.mkdir(a.path("sub"))
    a.path("doc.txt").write_bytes(b"v1\n")
    drained(a)
    os.rename(a.path("doc.txt"), a.path("sub", "doc.txt"))
    a.path("sub", ".goutputstream-ABC123").write_bytes(b"v2\n")
    os.rename(a.path("sub", ".goutputstream-ABC123"), a.path("sub", "doc.txt"))
    expected = {"sub": serverstate.DIR, "sub/doc.txt": b"v2\n"}
    assert serverstate.read_tree(a.mnt) == expected
    drained(a)
    assert serverstate.tree(site.data_dir, site.user) == expected
    eventually(lambda: serverstate.read_tree(b.mnt) == expected, what="the moved, saved document on B")
    assert serverstate.read_tree(a.mnt) == expected


def _git(repo: os.PathLike[str], *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {args[0]}: {done.stderr}"
    return done.stdout


def test_a_git_repository_committed_to_offline_on_two_machines_still_works(
    site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    """Both machines commit to one repository while A is offline: A's ``main`` is a conflict.

    A copy named ``main (conflict from A ...)`` in ``.git/refs/heads`` is a
    ref name git refuses: ``git log --all``, ``fsck`` and ``gc`` failed on
    every machine.  The copy is a branch git accepts, so A's commit is there
    to merge and the repository keeps working everywhere.
    """
    proxy = Proxy(site.port, seed=seed)
    try:
        a = make_machine("A", site, url=proxy.url)
        b = make_machine("B", site)
        subprocess.run(["git", "init", "-q", "-b", "main", str(a.path("repo"))], check=True, timeout=60)
        a.path("repo", "readme.txt").write_text("one\n")
        _git(a.path("repo"), "add", ".")
        _git(a.path("repo"), "commit", "-qm", "one")
        drained(a)
        first = _git(a.path("repo"), "rev-parse", "main").strip()
        eventually(lambda: _ref(b, "main") == first, what="the repository on B")

        proxy.online = False
        for m, name in ((a, "from-a.txt"), (b, "from-b.txt")):
            m.path("repo", name).write_text(f"{m.name}\n")
            _git(m.path("repo"), "add", name)
            _git(m.path("repo"), "commit", "-qm", f"on {m.name}")
        on_a = _git(a.path("repo"), "rev-parse", "main").strip()
        drained(b)
        proxy.online = True
        drained(a, timeout=90)
        drained(b)

        heads = b.path("repo", ".git", "refs", "heads")
        eventually(lambda: len(os.listdir(heads)) == 2, what="A's main beside B's on B")
        (copy,) = [n for n in os.listdir(heads) if n != "main"]
        assert copy.startswith("main.conflict-from-A-"), copy
        for m in (a, b):
            eventually(lambda m=m: _ref(m, copy) == on_a, what=f"A's commit as a branch on {m.name}")
            eventually(lambda m=m: _fsck(m), what=f"git fsck passing on {m.name}")
            assert {"one", "on A", "on B"} <= set(_git(m.path("repo"), "log", "--all", "--format=%s").split("\n"))
        assert _git(b.path("repo"), "show", f"{copy}:from-a.txt") == "A\n"
        _git(b.path("repo"), "gc", "-q")
        assert _fsck(b)
    finally:
        proxy.close()


def _ref(m: Machine, name: str) -> str | None:
    path = m.path("repo", ".git", "refs", "heads", name)
    return path.read_text().strip() if path.exists() else None


def _fsck(m: Machine) -> bool:
    """Whether git finds the repository whole (the other machine's objects may still be coming)."""
    return subprocess.run(["git", "-C", str(m.path("repo")), "fsck", "--no-progress"],
                          capture_output=True, timeout=60).returncode == 0
