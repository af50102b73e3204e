"""The soak: every fault of this suite, at random, for as long as you like.

    .venv/bin/python -m pytest tests/faults -k soak -s          # bounded: each fault once, short
    .venv/bin/python -m pytest tests/faults --slow -k soak -s
    WEBSYNC_SOAK_MINUTES=60 .venv/bin/python -m pytest tests/faults --slow -k soak -s

Machine A works without pause through a proxy while, round after round, one
of these happens: A is killed -9 (and mounted again), the server is killed -9
(and started again on the same data and port), the server is stopped for
minutes, the network turns bad (delays, cuts, resets, 503s), or the network is
cut.  Machine B only follows.  After every round the server's disk is checked
(`serverstate.problems`); at the end the server, A, B and a fresh machine C
must all hold exactly what A's workload did.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.clients import Machine, eventually
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, run_until_killed, status, timed_mount
from tests.faults.workload import Workload
from tests.proxy import Proxy

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MINUTES = float(os.environ.get("WEBSYNC_SOAK_MINUTES", "10"))
FAULTS = ["client killed", "server killed", "server down", "bad network", "network cut"]
#: Seconds a fault lasts (server down, bad network, network cut): soak vs the bounded run.
LONG = {"server down": (30, 180), "bad network": (10, 60), "network cut": (5, 60)}
SHORT = {"server down": (8, 20), "bad network": (5, 12), "network cut": (3, 10)}


@contextmanager
def working(workload: Workload) -> Iterator[None]:
    """Run the workload in the background for the duration of the block."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not stop.is_set():
                workload.run(20, stop=stop.is_set)
                time.sleep(0.5)  # a busy person's pace, not a benchmark's
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive(), "the workload hangs"
    if errors:
        raise errors[0]


@pytest.mark.timeout(int(MINUTES * 60) + 1200)
def test_soak(
    own_site: Site, make_machine: Callable[..., Machine], seed: int, request: pytest.FixtureRequest
) -> None:
    """With --slow: faults at random for MINUTES; without: each fault once, briefly (in every run)."""
    rng = random.Random(seed)
    soak = bool(request.config.getoption("--slow"))
    lasting = LONG if soak else SHORT
    bounded = rng.sample(FAULTS, len(FAULTS))
    proxy = Proxy(own_site.port, seed=seed)
    try:
        a = make_machine("A", own_site, url=proxy.url, allow=(r"not available offline",))
        b = make_machine("B", own_site)
        workload = Workload(a.mnt, seed, big=0.01, max_big=9 * 1024 * 1024, max_files=3000)
        rounds: Counter[str] = Counter()
        mounts: list[float] = []
        end = time.monotonic() + MINUTES * 60
        while (time.monotonic() < end) if soak else bounded:
            # The client finds the server again on its own after every fault (its backoff is
            # capped at 30 s for the journal, 60 s for uploads); the next fault starts from there.
            eventually(lambda: status(a)["online"], timeout=120, what="A to reach the server again")
            fault = rng.choice(FAULTS) if soak else bounded.pop()
            rounds[fault] += 1
            started = time.monotonic()
            if fault == "client killed":
                run_until_killed(a, workload, rng, ops=3000, after=(0.5, 6.0))
                mounts.append(timed_mount(a))
                workload.settle(serverstate.read_tree(a.mnt))
            elif fault == "server killed":
                with working(workload):
                    for _ in range(rng.randint(1, 4)):
                        time.sleep(rng.uniform(0.2, 4.0))
                        own_site.kill()
                        found = serverstate.problems(own_site.data_dir, own_site.user)
                        assert found == [], "\n".join(found)
                        own_site.start()
            elif fault == "server down":
                with working(workload):
                    time.sleep(rng.uniform(0.5, 3.0))
                    own_site.stop()
                    down = rng.uniform(*lasting["server down"])
                    time.sleep(down / 2)
                    info = status(a)
                    assert not info["online"]
                    os.listdir(a.mnt)  # the tree is there offline
                    time.sleep(down / 2)
                    own_site.start()
            elif fault == "bad network":
                proxy.chaos(jitter=0.01, cut_rate=0.08, reset_rate=0.08, error_rate=0.25)
                with working(workload):
                    time.sleep(rng.uniform(*lasting["bad network"]))
                proxy.calm()
            else:
                with working(workload):
                    time.sleep(rng.uniform(0.5, 3.0))
                    proxy.online = False
                    time.sleep(rng.uniform(*lasting["network cut"]))
                    proxy.online = True
            assert serverstate.problems(own_site.data_dir, own_site.user, rehash=False) == []
            print(f"{fault}: {time.monotonic() - started:.0f} s; {workload.done} ops so far, "
                  f"{status(a)['pending']} pending")
        proxy.calm()
        drained(a, timeout=600)
        assert serverstate.problems(own_site.data_dir, own_site.user) == []
        workload.check(serverstate.tree(own_site.data_dir, own_site.user), "the server")
        eventually(lambda: serverstate.read_tree(a.mnt) == workload.model, timeout=60, what="A to hold the model")
        eventually(lambda: serverstate.read_tree(b.mnt) == workload.model, timeout=300, what="B to hold the model")
        c = make_machine("C", own_site)
        workload.check(serverstate.read_tree(c.mnt), "a fresh machine")
        slowest = max(mounts, default=0.0)
        print(f"soak: {f'{MINUTES:g} min' if soak else 'bounded'}, {workload.done} ops {dict(workload.counts)}; rounds {dict(rounds)}; "
              f"{len(mounts)} remounts after kill -9, slowest {slowest:.2f} s; "
              f"network: {proxy.cuts} cuts, {proxy.resets} resets, {proxy.errors} 503s; "
              f"{len(workload.model)} paths at the end")
    finally:
        proxy.close()
