"""Bad networks: a proxy between client and server delays, cuts mid-request, resets, answers 503.

Nothing is lost however the requests and answers are cut: a commit whose answer
never came is sent again under the same batch id (the server applies it once),
uploads resume with the blocks the server lacks, and retries back off
exponentially up to a cap instead of hammering the server.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from collections.abc import Callable

import httpx
import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, status
from tests.faults.workload import Workload
from tests.proxy import Proxy
from websync_fs.errors import Offline
from websync_fs.follower import backoff
from websync_fs.remote import Remote
from websync_server.protocol import BlockHash, NodeId

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


@pytest.mark.timeout(480)
def test_workload_through_a_bad_network_converges_with_zero_loss(
    site: Site, make_machine: Callable[..., Machine], proxy_for: Callable[[], Proxy], seed: int
) -> None:
    proxy = proxy_for()
    a = make_machine("A", site, url=proxy.url)
    b = make_machine("B", site)
    proxy.chaos(jitter=0.005, cut_rate=0.08, reset_rate=0.08, error_rate=0.25)
    workload = Workload(a.mnt, seed, big=0.01, max_big=9 * 1024 * 1024)

    def faults() -> int:
        return proxy.cuts + proxy.resets + proxy.errors

    start = time.monotonic()
    workload.run(1500)
    # On until the network did enough harm to prove something.  Faults come with requests, and the
    # client sends the ops of a moment as one batch (more ops need not mean more requests): so in
    # small rounds, each waiting for a few requests, bounded in ops and in time.
    while faults() < 40 and workload.done < 6000 and time.monotonic() - start < 150:
        asked = proxy.requests
        workload.run(25)
        eventually(lambda: proxy.requests >= asked + 3, timeout=30, what="the client's next requests")
    took = time.monotonic() - start
    assert not workload.slow_ops, workload.slow_ops
    # The queue drains through the bad network too; then the network heals for the last check.
    drained(a, timeout=120)
    proxy.calm()
    print(f"{workload.done} ops in {took:.1f} s, queue empty {time.monotonic() - start:.1f} s after the start; "
          f"{proxy.connections} connections, {proxy.requests} requests: {proxy.cuts} cut, {proxy.resets} reset, {proxy.errors} answered 503")
    assert faults() >= 40, "the network was not bad enough to prove anything"
    assert serverstate.problems(site.data_dir, site.user) == []
    workload.check(serverstate.tree(site.data_dir, site.user), "the server")
    # (No conflict copies either: the server holds exactly the model.)
    eventually(lambda: serverstate.read_tree(b.mnt) == workload.model, timeout=60, what="B to hold the model")


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
    time.sleep(16)
    attempts = [t - cut for t in proxy.attempts if t >= cut]
    early = sum(1 for t in attempts if t < 8)
    late = sum(1 for t in attempts if t >= 8)
    print(f"{len(attempts)} connection attempts in 16 s offline: {early} in the first 8 s, {late} in the next 8 s")
    # Without backoff a client retries many times a second; with it, the attempts thin out.
    assert len(attempts) <= 30
    assert late * 2 <= early
    assert status(a)["pending"] == 1
    proxy.online = True
    start = time.monotonic()
    drained(a, timeout=45)  # the follower's next try is at most backoff.CAP (4 s) away
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


def test_commit_whose_answer_is_lost_is_applied_once(
    site: Site, make_machine: Callable[..., Machine], proxy_for: Callable[[], Proxy]
) -> None:
    """The server commits, the answer never arrives: the retry must not make a conflict copy or a twin."""
    proxy = proxy_for()
    a = make_machine("A", site, url=proxy.url)
    a.path("doc.txt").write_bytes(b"v1\n")
    drained(a)
    proxy.lose_answer(b"/commit", count=2)
    a.path("doc.txt").write_bytes(b"v2\n")  # an update...
    # (At least: a retry of the update may lose the second answer too, within milliseconds.)
    eventually(lambda: proxy.lost_answers >= 1, what="the first lost answer")
    a.path("new.txt").write_bytes(b"new\n")  # ...and a create, both applied without the client knowing
    eventually(lambda: proxy.lost_answers >= 2, what="the second lost answer")
    # And the network goes before the client could ask again: its next tries fail before
    # they reach the commit (asking which blocks are missing), which must not change the batch.
    proxy.online = False
    time.sleep(2)
    proxy.online = True
    drained(a)
    assert serverstate.tree(site.data_dir, site.user) == {"doc.txt": b"v2\n", "new.txt": b"new\n"}
    assert sorted(os.listdir(a.mnt)) == ["doc.txt", "new.txt"]
    store = serverstate.store_of(site.data_dir, site.user)
    with sqlite3.connect(site.data_dir / "websync.db") as db:
        replaced = db.execute("SELECT count(*) FROM versions WHERE store = ?", (store,)).fetchone()[0]
    assert replaced == 1, "doc.txt got more versions than the two it was written with"
    assert serverstate.problems(site.data_dir, site.user) == []


async def test_an_answer_that_is_not_the_servers_counts_as_offline() -> None:
    """A captive portal (hotel wifi) answers every request itself: a page, or a redirect to one.

    That is no answer from the server: `Offline`, retried later; not a crash of the follower or
    the uploader over a body that is not JSON, and never taken as a commit's result.
    """
    def portal(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, html="<html><body>Please log in to the hotel wifi</body></html>")
        return httpx.Response(302, headers={"location": "http://portal.example/login"})

    remote = Remote("http://server.example", "token", "store", transport=httpx.MockTransport(portal))
    try:
        for call in (remote.changes(0), remote.whoami(), remote.node_state(NodeId("a" * 32)),
                     remote.missing([BlockHash("b" * 64)]), remote.commit("batch", [])):
            with pytest.raises(Offline, match="captive portal"):
                await call
    finally:
        await remote.aclose()
