"""Bad networks: a proxy between client and server delays, cuts mid-request, resets, answers 503.

Nothing is lost however the requests and answers are cut: a commit whose answer
never came is sent again under the same batch id (the server applies it once),
uploads resume with the blocks the server lacks, and retries back off
exponentially up to a cap instead of hammering the server.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, status
from tests.faults.workload import Workload
from tests.proxy import Proxy
from websync_fs.follower import backoff

pytestmark = pytest.mark.mount

BLOCK = 4 * 1024 * 1024


@pytest.fixture
def proxy_for(site: Site, seed: int) -> Callable[[], Proxy]:
    made: list[Proxy] = []

    def make() -> Proxy:
        made.append(Proxy(site.port, seed=seed))
        return made[-1]

    yield make  # type: ignore[misc]
    for p in made:
        p.close()


def test_workload_through_a_bad_network_converges_with_zero_loss(
    site: Site, make_machine: Callable[..., Machine], proxy_for: Callable[[], Proxy], seed: int
) -> None:
    proxy = proxy_for()
    a = make_machine("A", site, url=proxy.url)
    b = make_machine("B", site)
    proxy.chaos(jitter=0.005, cut_rate=0.02, reset_rate=0.02, error_rate=0.1)
    workload = Workload(a.mnt, seed, big=0.01, max_big=9 * 1024 * 1024)
    start = time.monotonic()
    workload.run(1500)
    took = time.monotonic() - start
    assert workload.done == 1500 and not workload.slow_ops, workload.slow_ops
    # The queue drains through the bad network too; then the network heals for the last check.
    drained(a, timeout=120)
    proxy.calm()
    print(f"1500 ops in {took:.1f} s, queue empty {time.monotonic() - start:.1f} s after the start; "
          f"{proxy.connections} connections: {proxy.cuts} cut, {proxy.resets} reset, {proxy.errors} answered 503")
    assert proxy.cuts + proxy.resets + proxy.errors >= 30, "the network was not bad enough to prove anything"
    assert serverstate.problems(site.data_dir, site.user) == []
    workload.check(serverstate.tree(site.data_dir, site.user), "the server")
    eventually(lambda: serverstate.read_tree(b.mnt) == workload.model, timeout=60, what="B to hold the model")
    conflicts = [p for p in workload.model if "conflict" in p]
    assert not conflicts


def test_retries_back_off_exponentially_to_a_cap(
    site: Site, make_machine: Callable[..., Machine], proxy_for: Callable[[], Proxy]
) -> None:
    # The schedule: doubling from 0.25 s, never above the cap.
    waits = [backoff(n) for n in range(1, 12)]
    assert waits[:4] == [0.25, 0.5, 1.0, 2.0]
    assert all(later == min(30.0, 2 * earlier) for earlier, later in zip(waits, waits[1:]))
    assert max(waits) == 30.0 and backoff(100) == 30.0
    assert backoff(100, cap=60.0) == 60.0

    proxy = proxy_for()
    a = make_machine("A", site, url=proxy.url)
    proxy.online = False
    cut = time.monotonic()
    a.path("waiting.txt").write_bytes(b"queued while offline\n")  # the uploader retries too
    time.sleep(24)
    attempts = [t - cut for t in proxy.attempts if t >= cut]
    early = sum(1 for t in attempts if t < 12)
    late = sum(1 for t in attempts if t >= 12)
    print(f"{len(attempts)} connection attempts in 24 s offline: {early} in the first 12 s, {late} in the next 12 s")
    # Without backoff a client retries many times a second; with it, the attempts thin out.
    assert len(attempts) <= 40
    assert late * 2 <= early
    assert status(a)["pending"] == 1
    proxy.online = True
    start = time.monotonic()
    drained(a, timeout=45)  # the follower's next try is at most the cap (30 s) away
    print(f"back online: the queue went up {time.monotonic() - start:.1f} s later")


def test_big_upload_cut_in_the_middle_resends_only_missing_blocks(
    site: Site, make_machine: Callable[..., Machine], proxy_for: Callable[[], Proxy], seed: int
) -> None:
    proxy = proxy_for()
    a = make_machine("A", site, url=proxy.url)
    data = random.Random(seed).randbytes(12 * BLOCK + 777)
    hashes = [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    proxy.trip_offline_at(proxy.bytes_up + 7 * BLOCK)  # cut every connection when about half went up
    a.path("video.mp4").write_bytes(data)
    eventually(lambda: not proxy.online, timeout=60, what="the cut in the middle of the upload")
    time.sleep(1)
    present = sum(serverstate.block_path(site.data_dir, site.user, h).exists() for h in hashes)
    assert 0 < present < len(hashes), f"{present} of {len(hashes)} blocks: the cut missed the upload"
    before = proxy.bytes_up
    proxy.online = True
    drained(a, timeout=60)
    resent = proxy.bytes_up - before
    missing = len(hashes) - present
    print(f"cut with {present} of {len(hashes)} blocks on the server; {resent} bytes went up afterwards "
          f"for {missing} missing blocks ({missing * BLOCK} bytes)")
    assert resent < missing * BLOCK + 256 * 1024, "blocks the server already had were sent again"
    assert serverstate.tree(site.data_dir, site.user) == {"video.mp4": data}
    assert read_bytes(a.path("video.mp4")) == data
