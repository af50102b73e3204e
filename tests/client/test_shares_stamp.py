"""The follower hears at once that the user's shared folders changed: a real server process, and old servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.servers import ServerProcess, add_user
from websync_fs import follower
from websync_fs.follower import Applier, Follower
from websync_fs.remote import Remote, login
from websync_fs.replica import Replica
from websync_fs.statedb import StateDb
from websync_fs.writeback import WriteBackQueue


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDb]:
    db = StateDb(tmp_path / "state.db")
    yield db
    db.close()


def _follower(remote: Remote, db: StateDb) -> tuple[Follower, list[int]]:
    """A follower of *remote* over an empty replica, and the stamps its `on_shares` is told."""
    applier = Applier(Replica(db), WriteBackQueue(db, quiet=0), lambda node: False, lambda inv: None)
    follow = Follower(remote, applier, lambda online, error: None)
    heard: list[int] = []
    follow.on_shares = heard.append
    return follow, heard


async def _heard(heard: list[int], count: int) -> None:
    while len(heard) < count:
        await trio.sleep(0.05)


async def test_the_follower_hears_a_share_made_with_its_user_within_a_moment(
    server: ServerProcess, account: tuple[str, str], state: StateDb
) -> None:
    user, password = account
    add_user(server.data_dir, f"{user}-friend", password)
    mine = await login(server.url, user, password, "laptop")
    friends = await login(server.url, f"{user}-friend", password, "laptop")
    remote = Remote(server.url, mine["token"], mine["store"])
    friend = Remote(server.url, friends["token"], friends["store"])
    follow, heard = _follower(remote, state)
    async with trio.open_nursery() as nursery:
        await nursery.start(follow.run)
        with trio.fail_after(follower.WAIT / 2):
            await _heard(heard, 1)  # the first answer's stamp
        assert heard == [remote.shares_stamp]
        # Its long poll now waits with the stamp it knows; the share must end it.
        await trio.sleep(0.5)
        started = time.monotonic()
        await friend.share("Band", user, read_only=True)
        with trio.fail_after(follower.WAIT):
            await _heard(heard, 2)
        elapsed = time.monotonic() - started
        await friend.share("Band", user, read_only=False)
        with trio.fail_after(follower.WAIT):
            await _heard(heard, 3)
        nursery.cancel_scope.cancel()
    assert elapsed < follower.WAIT / 4
    assert len(set(heard)) == 3 and heard[-1] == remote.shares_stamp
    for client in (remote, friend):
        await client.aclose()


class OldServer:
    """Answers changes calls as a server without shares stamps would, or with *stamp*; records the queries."""

    def __init__(self, stamp: int | None) -> None:
        self.stamp = stamp
        self.queries: list[dict[str, str]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(dict(request.url.params))
        page: dict[str, Any] = {"cursor": 1, "reset": False, "more": False, "nodes": [], "entries": []}
        if self.stamp is not None:
            page["shares"] = self.stamp
        return httpx.Response(200, json=page)


async def test_a_server_without_stamps_is_never_heard_and_a_shared_folder_sends_none(state: StateDb) -> None:
    old = OldServer(None)
    remote = Remote("http://server", "token", "store", transport=httpx.MockTransport(old.handle))
    follow, heard = _follower(remote, state)
    for _ in range(2):
        await follow.catch_up()
    assert heard == [] and all("shares" not in q for q in old.queries)
    new = OldServer(7)
    remote = Remote("http://server", "token", "store", transport=httpx.MockTransport(new.handle))
    follow, heard = _follower(remote, state)
    for _ in range(2):
        await follow.catch_up()
    assert heard == [7] and "shares" not in new.queries[0] and new.queries[1]["shares"] == "7"
    shared = Remote("http://server", "token", "folder", transport=httpx.MockTransport(new.handle), shared=True)
    for _ in range(2):
        await shared.changes(0)
    assert "shares" not in new.queries[-1] and shared.shares_stamp is None
