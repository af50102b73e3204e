"""kill -9 of the client: what was closed or fsync'd before the kill reaches the server, byte for byte.

The workload runs in a thread against the mount while the test kills the
mount process at a random moment, mounts again, checks that the mount shows
one of the trees the workload may have left (every op that returned, and the
one in flight either done, not done, or cut at a point the close-to-open
promise allows), and goes on.  At the end the server's database and block
files, and a fresh machine, must hold exactly the model.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import Machine, eventually
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, dump_stacks, log_lines, run_until_killed, status, timed_mount
from tests.faults.workload import Workload
from tests.proxy import Proxy

pytestmark = pytest.mark.mount

BLOCK = 4 * 1024 * 1024


def check_everywhere(site: Site, make_machine: Callable[..., Machine], workload: Workload) -> None:
    """The server's disk and a fresh machine C hold exactly the workload's model."""
    assert serverstate.problems(site.data_dir, site.user) == []
    workload.check(serverstate.tree(site.data_dir, site.user), "the server")
    c = make_machine("C", site)
    workload.check(serverstate.read_tree(c.mnt), "a fresh machine")


def test_kill_during_a_thousand_ops_loses_nothing_closed(
    site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    rng = random.Random(seed)
    a = make_machine("A", site)
    workload = Workload(a.mnt, seed, big=0.005)
    kills = 0
    while workload.done < 1000:
        run_until_killed(a, workload, rng, ops=400, after=(0.3, 2.5))
        kills += 1
        pending = status(a)["pending"]
        # What the kill left, kept for the post-mortem of a failure (A/state-before-N).
        shutil.copytree(a.home / "state", a.home.parent / f"state-before-{kills}",
                        ignore=shutil.ignore_patterns("*.sock"))
        took = timed_mount(a)
        print(f"kill {kills}: {workload.done} ops done, {pending} pending; mounted again in {took:.2f} s")
        # The mount shows every op that returned before the kill.
        workload.settle(serverstate.read_tree(a.mnt))
    assert kills >= 3
    drained(a)
    check_everywhere(site, make_machine, workload)
    print("ops:", workload.counts)


def test_fsynced_bytes_of_a_file_still_open_survive_the_kill(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    a = make_machine("A", site)
    a.path("journal.log").write_bytes(b"closed version\n")
    f = open(a.path("journal.log"), "r+b")
    try:
        f.seek(0, os.SEEK_END)
        f.write(b"line 1, fsync'd\n")
        f.flush()
        os.fsync(f.fileno())
        f.write(b"line 2, never fsync'd nor closed\n")
        f.flush()
        g = open(a.path("new.db"), "wb")
        g.write(os.urandom(5 * BLOCK // 2))
        g.flush()
        os.fsync(g.fileno())
        synced = g.tell()
        g.write(b"tail that nobody promised")
        g.flush()
        a.kill()
    finally:
        for handle in (f, g):
            try:
                handle.close()
            except OSError:
                pass  # the mount is gone: close() has nothing to close
    a.mount()
    # A copy in memory is all in its record: what came after the fsync is gone.  A copy on
    # disk keeps what its file gained since, as a local disk does when its writer is killed.
    assert a.path("journal.log").read_bytes() == b"closed version\nline 1, fsync'd\n"
    assert a.path("new.db").stat().st_size == synced + len(b"tail that nobody promised")
    with open(a.path("new.db"), "rb") as again:
        again.seek(synced)
        assert again.read() == b"tail that nobody promised"
    drained(a)
    on_server = serverstate.tree(site.data_dir, site.user)
    assert on_server["journal.log"] == b"closed version\nline 1, fsync'd\n"
    assert on_server["new.db"] == a.path("new.db").read_bytes()
    assert serverstate.problems(site.data_dir, site.user) == []


def test_a_close_after_an_fsync_is_what_a_kill_leaves(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    a = make_machine("A", site)
    big = os.urandom(200_000)  # a working copy on disk, not in memory
    for name, head in (("small.txt", b"fsync'd\n"), ("big.bin", big)):
        with open(a.path(name), "wb") as f:
            f.write(head)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            f.write(b"overwritten after the fsync, then closed\n")
    f = open(a.path("gone.txt"), "wb")
    try:
        f.write(b"fsync'd, then deleted while open")
        f.flush()
        os.fsync(f.fileno())
        os.unlink(a.path("gone.txt"))
        a.kill()
    finally:
        try:
            f.close()
        except OSError:
            pass  # the mount is gone
    a.mount()
    closed = b"overwritten after the fsync, then closed\n"
    assert a.path("small.txt").read_bytes() == closed
    assert a.path("big.bin").read_bytes() == closed + big[len(closed):]
    assert not a.path("gone.txt").exists()
    drained(a)
    on_server = serverstate.tree(site.data_dir, site.user)
    assert on_server == {"small.txt": closed, "big.bin": closed + big[len(closed):]}
    assert serverstate.problems(site.data_dir, site.user) == []


def test_kill_during_a_large_upload_resends_only_missing_blocks(
    site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    proxy = Proxy(site.port, seed=seed)
    try:
        a = make_machine("A", site, url=proxy.url)
        data = random.Random(seed).randbytes(12 * BLOCK + 12345)
        proxy.rate = 40 * 1024 * 1024  # 40 MB/s per connection: the upload takes a moment
        a.path("disk.img").write_bytes(data)
        # Kill once about half the file went up.
        eventually(lambda: proxy.bytes_up > 6 * BLOCK, timeout=60, what="half the upload")
        a.kill()
        before = proxy.bytes_up
        on_server = sum(
            1 for i in range(13)
            if serverstate.block_path(site.data_dir, site.user, _hash(data[i * BLOCK:(i + 1) * BLOCK])).exists()
        )
        print(f"killed after {before} bytes went up; {on_server} of 13 blocks were on the server")
        took = timed_mount(a)
        print(f"mounted again in {took:.2f} s")
        drained(a)
        resent = proxy.bytes_up - before
        missing = 13 - on_server
        print(f"after the restart {resent} bytes went up for {missing} missing blocks")
        assert resent < missing * BLOCK + BLOCK // 2, "blocks the server had were sent again"
        assert serverstate.tree(site.data_dir, site.user) == {"disk.img": data}
        assert a.path("disk.img").read_bytes() == data
    finally:
        proxy.close()


def test_mount_comes_up_fast_with_thousands_pending(
    site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    proxy = Proxy(site.port, seed=seed)
    try:
        a = make_machine("A", site, url=proxy.url)
        proxy.online = False
        for d in range(20):
            os.mkdir(a.path(f"d{d:02d}"))
            for i in range(100):
                a.path(f"d{d:02d}", f"f{i:03d}.txt").write_bytes(f"{d}/{i} {seed}\n".encode() * (1 + i))
        a.kill()
        pending = status(a)["pending"]
        assert pending >= 2000
        offline = timed_mount(a)
        a.kill()
        proxy.online = True
        online = timed_mount(a)
        start = time.monotonic()
        drained(a, timeout=120)
        drain = time.monotonic() - start
        print(f"{pending} pending: mounted offline in {offline:.2f} s, online in {online:.2f} s; "
              f"the queue drained in {drain:.1f} s")
        tree = serverstate.tree(site.data_dir, site.user)
        assert len(tree) == 2020
        assert tree["d19/f099.txt"] == f"19/99 {seed}\n".encode() * 100
    finally:
        proxy.close()


def _hash(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(120)
def test_a_stuck_process_can_be_made_to_say_where_it_is(make_machine: Callable[..., Machine], site: Site,
                                                         tmp_path: Path) -> None:
    """A failure's report asks the running mount and synced folder for their stacks (`dump_stacks`)."""
    a = make_machine("A", site)
    b = make_machine("B", site, mount=False)
    b.sync(tmp_path / "folder")
    for machine in (a, b):
        dump_stacks(machine)
        text = "\n".join(log_lines(machine))
        # SIGUSR1: every thread's stack, written from the signal handler (faulthandler) --
        # what a process whose event loop is held up can still say; SIGUSR2: its tasks.
        assert "most recent call first" in text, text[-2000:]
        assert "tasks and what they wait for" in text, text[-2000:]
