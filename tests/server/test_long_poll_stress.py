"""Many long polls against a real server while thousands of commits land: none is left waiting.

Every poller waits with ``wait=WAIT_MAX`` while a commit it has not seen is
still to come, so an answer without news is a wake-up gone wrong: missed (the
poll would sit out its minute) or false (the announcement of a commit the poll
had read already ended its wait: notifier.py); every poller must see every
commit's folder.  Bounded by default (1,000 commits, 32 pollers); ``--slow`` runs 8,000
under 64.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.servers import ServerProcess, add_user, login
from websync_server.protocol import ROOT_ID, WAIT_MAX, new_node_id

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    add_user(tmp_path / "data", "poller", "poller-password-1")
    with ServerProcess.start(tmp_path / "data") as running:
        yield running


async def test_every_long_poll_is_answered_for_every_commit(server: ServerProcess, request: pytest.FixtureRequest) -> None:
    slow = bool(request.config.getoption("--slow"))
    pollers, committers, commits_each = (64, 8, 1000) if slow else (32, 5, 200)
    total = committers * commits_each
    answer = login(server.url, "poller", "poller-password-1")
    store = answer["store"]
    made: set[str] = set()
    seen: list[set[str]] = [set() for _ in range(pollers)]
    cursors = [0] * pollers
    missed: list[tuple[int, int]] = []
    final: list[int] = []
    started = trio.Event()
    ready = [0]

    limits = httpx.Limits(max_connections=pollers + committers + 4, max_keepalive_connections=pollers + committers + 4)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=WAIT_MAX + 30,
        limits=limits,
    ) as http:

        async def ask(method: str, url: str, **kw: Any) -> httpx.Response:
            # As the client does: a kept-alive connection the server closed just as it was
            # reused (uvicorn closes idle ones after 5 s; a loaded machine gets there) is
            # asked again.  Both calls are safe to repeat: a batch id is applied once.
            for attempt in range(3):
                try:
                    return await http.request(method, url, **kw)
                except httpx.TransportError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        async def poll(i: int) -> None:
            cursor = (await ask("GET", f"/v1/stores/{store}/changes", params={"cursor": 0})).json()["cursor"]
            ready[0] += 1
            if ready[0] == pollers:
                started.set()
            while len(seen[i]) < total:  # a commit this poller has not seen is still to come
                got = await ask("GET", f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": WAIT_MAX})
                page = got.json()
                names = {e["name"] for e in page["entries"] if e["node"] is not None}
                if not names and page["cursor"] == cursor:
                    missed.append((i, cursor))  # woken for nothing, or a minute without an answer
                seen[i] |= names
                cursor = cursors[i] = page["cursor"]

        async def commit(k: int) -> int:
            last = 0
            for j in range(commits_each):
                name = f"c{k}-{j}"
                got = await ask("POST", f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [
                    {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": name, "mode": 0o755,
                     "mtime_ns": 0}]})
                got.raise_for_status()
                made.add(name)
                last = max(last, got.json()["seq"])
            return last

        async def commit_all() -> None:
            await started.wait()
            lasts: list[int] = []

            async def one(k: int) -> None:
                lasts.append(await commit(k))

            async with trio.open_nursery() as inner:
                for k in range(committers):
                    inner.start_soon(one, k)
            final.append(max(lasts))

        with trio.fail_after(WAIT_MAX * 3):
            async with trio.open_nursery() as nursery:
                for i in range(pollers):
                    nursery.start_soon(poll, i)
                nursery.start_soon(commit_all)

    assert not missed, f"long polls answered without news (poller, cursor): {missed[:10]}"
    assert len(made) == total
    assert all(c == final[0] for c in cursors)
    assert all(s == made for s in seen), "a poller missed a commit"
