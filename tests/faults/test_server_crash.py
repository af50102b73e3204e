"""kill -9 of the server during block uploads and commits: the store stays whole, clients resume.

After every kill the test opens the server's SQLite database and block
directory itself (as the restarted server will) and checks the invariants of
`serverstate.problems`: no node names a missing or torn block, no batch is
half-applied.  Then it starts the server again on the same data and port and
lets the clients find it on their own.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from tests.clients import Machine
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, status
from tests.faults.workload import Workload
from tests.proxy import Proxy

pytestmark = pytest.mark.mount


def test_server_killed_during_uploads_and_commits_stays_consistent(
    own_site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    rng = random.Random(seed)
    a = make_machine("A", own_site)
    # Big files (up to 3 blocks) now and then, so kills land in block uploads too.
    workload = Workload(a.mnt, seed, big=0.04, max_big=10 * 1024 * 1024)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            workload.run(10**6, stop=stop.is_set)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        for kill in range(6):
            time.sleep(rng.uniform(0.5, 2.0))
            own_site.kill()
            found = serverstate.problems(own_site.data_dir, own_site.user)
            assert found == [], f"after kill {kill + 1}: " + "\n".join(found)
            # Down for a moment: the mount keeps taking changes meanwhile.
            time.sleep(rng.uniform(0.0, 1.0))
            own_site.start()
    finally:
        stop.set()
        thread.join(60)
    if errors:
        raise errors[0]
    print(f"{workload.done} ops; slow ones: {workload.slow_ops}")
    assert workload.done > 100
    drained(a, timeout=90)
    assert serverstate.problems(own_site.data_dir, own_site.user) == []
    workload.check(serverstate.tree(own_site.data_dir, own_site.user), "the server")
    c = make_machine("C", own_site)
    workload.check(serverstate.read_tree(c.mnt), "a fresh machine")
    print(f"{workload.done} ops, 6 server kills: {workload.counts}")


def test_big_batch_is_applied_whole_or_not_at_all(
    own_site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    """1,500 queued changes go up in batches of up to 1,000 ops; kill -9 lands inside their commits.

    The files share a few contents, so the block uploads are quick and most of
    the time goes into the commits.  After each kill the server holds whole
    batches only (`serverstate.problems` checks every row against the batch
    that wrote it), so the number of entries is always a sum of whole batches.
    """
    rng = random.Random(seed)
    proxy = Proxy(own_site.port, seed=seed)
    try:
        a = make_machine("A", own_site, url=proxy.url)
        proxy.online = False
        contents = [f"{seed} content {i}\n".encode() * rng.randint(1, 200) for i in range(10)]
        expected: serverstate.Tree = {}
        for d in range(15):
            os.mkdir(a.path(f"d{d}"))
            expected[f"d{d}"] = serverstate.DIR
            for i in range(100):
                data = rng.choice(contents)
                a.path(f"d{d}", f"f{i}").write_bytes(data)
                expected[f"d{d}/f{i}"] = data
        a.kill()
        assert status(a)["pending"] == 1515
        # A batch that was sending when the network went goes again first, as it was.
        with sqlite3.connect(a.home / "state" / "replica.db") as db:
            first = db.execute("SELECT count(*) FROM items WHERE state = 'uploading'").fetchone()[0]
        boundaries = {0, first, min(1515, first + 1000), 1515} if first else {0, 1000, 1515}
        proxy.online = True
        a.mount()  # the queue goes up at once
        counts = []
        for _ in range(5):
            time.sleep(rng.uniform(0.05, 1.0))
            own_site.kill()
            found = serverstate.problems(own_site.data_dir, own_site.user)
            assert found == [], "\n".join(found)
            counts.append(len(serverstate.tree(own_site.data_dir, own_site.user)))
            own_site.start()
        print("entries on the server after each kill:", counts)
        # Whole batches only: nothing between one batch's end and the next one's.
        assert set(counts) <= boundaries, (counts, boundaries)
        drained(a, timeout=60)
        on_server = serverstate.tree(own_site.data_dir, own_site.user)
        assert on_server == expected, serverstate.diff(expected, on_server)
    finally:
        proxy.close()
