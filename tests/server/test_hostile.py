"""Attacks on a real server process, each bounded in count and time, on loopback only.

Each test makes one attack of the kind a logged-in user or a stranger on the
internet could make, and checks that the server stays usable for everyone
else, answers with a clear 4xx, and loses nothing.  Latencies are compared as
ratios measured in the same run, never against fixed times.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.hostile import deep_chain, mkdir, worst_batch
from tests.servers import ServerProcess, add_user, login
from websync_server.protocol import ROOT_ID, new_node_id

PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server per test: an attack must not leave state for the next one."""
    data = tmp_path / "data"
    for name, password in PASSWORDS.items():
        add_user(data, name, password)
    with ServerProcess.start(data) as running:
        yield running


def client(server: ServerProcess, user: str, device: str = "test") -> tuple[httpx.Client, str]:
    """An HTTP client logged in as *user*, and the user's store."""
    answer = login(server.url, user, PASSWORDS[user], device)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=60)
    return http, answer["store"]


def median_seconds(call: Callable[[], httpx.Response], times: int) -> float:
    """The median wall time of *times* calls, each of which must succeed."""
    taken = []
    for _ in range(times):
        started = time.perf_counter()
        call().raise_for_status()
        taken.append(time.perf_counter() - started)
    return statistics.median(taken)


@pytest.mark.timeout(120)
def test_one_user_at_the_bottom_of_the_deepest_tree_does_not_stall_another(server: ServerProcess) -> None:
    alice, alice_store = client(server, "alice")
    bob, bob_store = client(server, "bob")
    bottom, leaf = deep_chain(alice, alice_store)
    attack = worst_batch(bottom, leaf)

    def bob_commit() -> httpx.Response:
        return bob.post(f"/v1/stores/{bob_store}/commit", json={"batch": new_node_id(), "ops": [mkdir(ROOT_ID, new_node_id())]})

    def bob_changes() -> httpx.Response:
        return bob.get(f"/v1/stores/{bob_store}/changes", params={"cursor": 0})

    quiet = median_seconds(bob_commit, 30), median_seconds(bob_changes, 30)
    stop = threading.Event()
    answers: list[int] = []

    def attacker() -> None:
        http, store = client(server, "alice", "attacker")
        with http:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                answers.append(http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": attack}).status_code)

    threads = [threading.Thread(target=attacker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(answers) < 4:  # the attack is under way
            time.sleep(0.05)
        loaded = median_seconds(bob_commit, 30), median_seconds(bob_changes, 30)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(answers) == {200}, answers
    assert loaded[0] <= 3 * quiet[0], (quiet, loaded)
    assert loaded[1] <= 3 * quiet[1], (quiet, loaded)


@pytest.mark.timeout(60)
def test_folders_deeper_than_the_limit_are_refused_with_a_clear_error(server: ServerProcess) -> None:
    alice, store = client(server, "alice")
    _, leaf = deep_chain(alice, store)
    answer = alice.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [mkdir(leaf, "deeper")]})
    assert answer.status_code == 400 and "levels deep" in answer.json()["message"]
    too_many = [mkdir(ROOT_ID, f"n{i}") for i in range(1001)]
    answer = alice.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": too_many})
    assert answer.status_code == 400 and "at most 1000 ops" in answer.json()["message"]
