"""Shared folders on a real server process: members, read-only members, blocks, quotas, removal, audit, stamps."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.postgres import PostgresCluster
from tests.server.conftest import both_engines, database_url
from tests.servers import ServerProcess, add_user, login, server_command
from websync_server.protocol import new_node_id

engine = both_engines

PASSWORD = "correct horse battery"
USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture
def household(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, dict[str, httpx.Client], dict[str, str]]]:
    """A server with `USERS`, each logged in once: (server, clients by name, own stores by name)."""
    data = tmp_path / "data"
    url = database_url(request, engine)
    storage = ("--database", url) if url else ()
    for name in USERS:
        add_user(data, name, PASSWORD, storage)
    subprocess.run(server_command("user", "set", "alice", "--quota", "2M", "--data", str(data), *storage),
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    with ServerProcess.start(data, storage=storage) as server:
        clients, stores = {}, {}
        for name in USERS:
            answer = login(server.url, name, PASSWORD, "laptop")
            clients[name] = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"},
                                         timeout=60)  # fmt: skip
            stores[name] = answer["store"]
        try:
            yield server, clients, stores
        finally:
            for http in clients.values():
                http.close()


def _server_cli(server: ServerProcess, *args: str) -> None:
    done = subprocess.run(server_command(*args, "--data", str(server.data_dir), *server.storage),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(http: httpx.Client, data: bytes, store: str | None = None) -> httpx.Response:
    return http.put(f"/v1/blocks/{_hash(data)}", content=data, params={"store": store} if store else None)


def _create(http: httpx.Client, store: str, name: str, data: bytes, node: str | None = None) -> httpx.Response:
    op = {"op": "create", "id": node or new_node_id(), "parent": "root", "name": name, "mode": 0o644,
          "size": len(data), "blocks": [_hash(data)] if data else [], "mtime_ns": 1}  # fmt: skip
    return _commit(http, store, op)


def _commit(http: httpx.Client, store: str, *ops: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": list(ops)})


def _names(http: httpx.Client, store: str) -> set[str]:
    answer = http.get(f"/v1/stores/{store}/changes")
    assert answer.status_code == 200, answer.text
    return {e["name"] for e in answer.json()["entries"] if e["node"] is not None}


def _share(http: httpx.Client, name: str, user: str, read_only: bool = False) -> httpx.Response:
    return http.post("/v1/shares", json={"name": name, "user": user, "read_only": read_only})


def _family(clients: dict[str, httpx.Client], *members: str) -> str:
    """Alice's folder "Family" shared read-write with *members*; its store id."""
    answers = [_share(clients["alice"], "Family", member) for member in members]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return str(answers[0].json()["store"])


def test_members_read_and_write_a_shared_folder_and_read_only_members_are_refused(household: Any) -> None:
    server, c, own = household
    made = _share(c["alice"], "Family", "bob")
    assert made.status_code == 200, made.text
    share = made.json()["store"]
    assert share != own["alice"]
    again = _share(c["alice"], "Family", "carol", read_only=True).json()
    assert again["store"] == share  # the same folder, one more member
    assert again["members"] == [{"user": "bob", "read_only": False}, {"user": "carol", "read_only": True}]
    # Every member and the owner list it; others don't.
    for name, read_only in (("alice", False), ("bob", False), ("carol", True)):
        listed = c[name].get("/v1/shares").json()["shares"]
        assert [(s["store"], s["name"], s["owner"], s["read_only"]) for s in listed] == [
            (share, "Family", "alice", read_only)]
    assert c["dave"].get("/v1/shares").json() == {"shares": []}
    # The owner writes with her own blocks; the members read them through the folder only.
    photo = os.urandom(5000)
    assert _put(c["alice"], photo).status_code == 201
    photo_id = new_node_id()
    assert _create(c["alice"], share, "photo.jpg", photo, photo_id).status_code == 200
    assert _names(c["bob"], share) == _names(c["carol"], share) == {"photo.jpg"}
    assert c["bob"].get(f"/v1/blocks/{_hash(photo)}", params={"store": share}).content == photo
    assert c["carol"].get(f"/v1/blocks/{_hash(photo)}", params={"store": share}).content == photo
    assert c["bob"].get(f"/v1/blocks/{_hash(photo)}").status_code == 404  # not through his own folder
    # A read-write member adds a file; everyone sees it.
    note = os.urandom(3000)
    assert _put(c["bob"], note, share).status_code == 201
    assert _create(c["bob"], share, "note.txt", note).status_code == 200
    assert _names(c["alice"], share) == {"photo.jpg", "note.txt"}
    assert c["carol"].get(f"/v1/blocks/{_hash(note)}", params={"store": share}).content == note
    # The read-only member is refused every change, with a reason the client can name.
    refused = _create(c["carol"], share, "mine.txt", b"")
    assert refused.status_code == 403 and refused.json()["error"] == "read_only", refused.text
    assert "the shared folder 'Family' of alice is read-only for user carol" in refused.json()["message"]
    assert _put(c["carol"], b"carol's", share).json()["error"] == "read_only"
    # History and trash work in the folder as anywhere: bob updates and deletes, alice restores.
    newer = os.urandom(4000)
    assert _put(c["bob"], newer, share).status_code == 201
    base = c["bob"].get(f"/v1/stores/{share}/nodes/{photo_id}").json()["node"]["seq"]
    update = {"op": "update", "id": photo_id, "base": base, "size": len(newer), "blocks": [_hash(newer)],
              "mtime_ns": 2}
    updated = _commit(c["bob"], share, update)
    assert updated.status_code == 200
    newest = os.urandom(4000)  # the owner's update before anyone reads: "newer" is only a version now
    assert _put(c["alice"], newest).status_code == 201
    again = {**update, "base": updated.json()["seq"], "size": len(newest), "blocks": [_hash(newest)]}
    assert _commit(c["alice"], share, again).status_code == 200, again
    versions = c["carol"].get(f"/v1/stores/{share}/nodes/{photo_id}/versions").json()["versions"]
    assert len(versions) == 3
    for old in (photo, newer):  # the old ones
        assert c["carol"].get(f"/v1/blocks/{_hash(old)}", params={"store": share}).content == old
    assert _commit(c["bob"], share, {"op": "delete", "id": photo_id, "parent": "root", "name": "photo.jpg"}
                   ).status_code == 200  # fmt: skip
    trash = c["alice"].get(f"/v1/stores/{share}/trash").json()["items"]
    assert [t["name"] for t in trash] == ["photo.jpg"]
    assert _commit(c["alice"], share, {"op": "restore", "id": photo_id, "parent": "root", "name": "photo.jpg"}
                   ).status_code == 200  # fmt: skip
    # Strangers are refused as for any other user's store.
    assert c["dave"].get(f"/v1/stores/{share}/changes").status_code == 403
    assert _create(c["dave"], share, "x", b"").status_code == 403
    assert c["dave"].get(f"/v1/blocks/{_hash(photo)}", params={"store": share}).status_code == 403
    # The owner's own store stays hers alone, and each user's login still names their own store.
    assert c["bob"].get(f"/v1/stores/{own['alice']}/changes").status_code == 403
    assert c["alice"].get("/v1/whoami").json()["store"] == own["alice"]
    log = server.log()
    assert f"folder 'Family' ({share}) of user alice shared with user bob, read-write" in log
    assert "shared with user carol, read-only" in log


def test_a_member_learns_nothing_of_the_owners_other_blocks(household: Any) -> None:
    _, c, own = household
    share = _family(c, "bob")
    secret = os.urandom(2000)
    assert _put(c["alice"], secret).status_code == 201
    assert _create(c["alice"], own["alice"], "diary.txt", secret).status_code == 200
    # Asking, reading, and naming the hash in a commit all fail alike.
    missing = c["bob"].post("/v1/blocks/missing", params={"store": share}, json={"hashes": [_hash(secret)]})
    assert missing.json() == {"missing": [_hash(secret)]}
    assert c["bob"].get(f"/v1/blocks/{_hash(secret)}", params={"store": share}).status_code == 404
    named = _create(c["bob"], share, "diary.txt", secret)
    assert named.status_code == 400 and "upload it before committing" in named.json()["message"]
    # Uploading it answers as for a new block; with the bytes in hand he may use it.
    assert _put(c["bob"], secret, share).status_code == 201
    assert c["bob"].post("/v1/blocks/missing", params={"store": share},
                         json={"hashes": [_hash(secret)]}).json() == {"missing": []}  # fmt: skip
    assert _create(c["bob"], share, "diary.txt", secret).status_code == 200


def test_removed_members_lose_the_folder_and_only_the_owner_removes_others(household: Any) -> None:
    server, c, _ = household
    share = _family(c, "bob", "carol")
    assert c["bob"].post(f"/v1/shares/{share}/members/carol/remove").status_code == 403
    assert c["dave"].post(f"/v1/shares/{share}/members/carol/remove").status_code == 404
    assert c["carol"].post(f"/v1/shares/{share}/members/carol/remove").json() == {"ok": True}  # she leaves
    assert c["alice"].post(f"/v1/shares/{share}/members/bob/remove").json() == {"ok": True}
    for name in ("bob", "carol"):
        assert c[name].get(f"/v1/stores/{share}/changes").status_code == 403
        assert c[name].get("/v1/shares").json() == {"shares": []}
        assert _put(c[name], b"late", share).status_code == 403
    assert c["alice"].post(f"/v1/shares/{share}/members/bob/remove").status_code == 404  # not a member any more
    assert [s["members"] for s in c["alice"].get("/v1/shares").json()["shares"]] == [[]]
    assert f"folder 'Family' ({share}) no longer shared with user bob: removed by user alice" in server.log()
    assert "no longer shared with user carol: removed by user carol" in server.log()


def test_a_shared_folder_is_charged_to_its_owner(household: Any) -> None:
    _, c, _ = household
    share = _family(c, "bob")
    first, second = os.urandom(1200 * 1024), os.urandom(1200 * 1024)
    assert _put(c["bob"], first, share).status_code == 201
    assert _create(c["bob"], share, "a.bin", first).status_code == 200
    assert c["alice"].get("/v1/usage").json()["stored_bytes"] == 1200 * 1024
    assert c["bob"].get("/v1/usage").json()["stored_bytes"] == 0
    refused = _put(c["bob"], second, share)  # alice's quota of 2 MiB
    assert refused.status_code == 507 and refused.json()["error"] == "quota_exceeded"
    assert _put(c["bob"], second).status_code == 201  # his own folder is his own


def test_a_members_long_poll_wakes_on_the_owners_commit(household: Any) -> None:
    _, c, _ = household
    share = _family(c, "bob")
    cursor = c["bob"].get(f"/v1/stores/{share}/changes").json()["cursor"]
    answers: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: answers.append(
        c["bob"].get(f"/v1/stores/{share}/changes", params={"cursor": cursor, "wait": 50}).json()))
    waiter.start()
    assert _create(c["alice"], share, "hello.txt", b"").status_code == 200
    waiter.join(timeout=55)
    assert [e["name"] for e in answers[0]["entries"]] == ["hello.txt"]


def test_bad_share_requests_are_refused_with_a_reason(household: Any) -> None:
    _, c, own = household
    for body, status in (
        ({"name": "a/b", "user": "bob"}, 400),
        ({"name": "", "user": "bob"}, 400),
        ({"name": "F", "user": "nobody"}, 404),
        ({"name": "F", "user": "alice"}, 400),
        ({"name": "F", "user": "bob", "read_only": "yes"}, 400),
        ({"name": ["F"], "user": "bob"}, 400),
    ):
        answer = c["alice"].post("/v1/shares", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["message"]
    assert c["alice"].post("/v1/shares", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert c["alice"].post(f"/v1/shares/{'0' * 32}/members/bob/remove").status_code == 404
    assert c["alice"].post(f"/v1/shares/{own['alice']}/members/bob/remove").status_code == 404  # not a shared folder
    assert c["bob"].get("/v1/blocks/" + "0" * 64, params={"store": "x"}).status_code == 404
    assert c["alice"].get("/v1/shares").json() == {"shares": []}  # nothing was made


def test_one_long_poll_waits_on_a_users_own_store_and_shared_folders_at_once(household: Any) -> None:
    _, c, own = household
    share = _family(c, "bob")
    cursors = {s: c["bob"].get(f"/v1/stores/{s}/changes").json()["cursor"] for s in (own["bob"], share)}
    assert c["bob"].post("/v1/changes/wait", json={"cursors": cursors, "wait": 0}).json() == {"ready": []}
    assert c["bob"].post("/v1/changes/wait", json={"cursors": {share: 0}}).json() == {"ready": [share]}
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(
        c["bob"].post("/v1/changes/wait", json={"cursors": cursors, "wait": 50})))
    waiter.start()
    assert _create(c["alice"], share, "hello.txt", b"").status_code == 200
    waiter.join(timeout=55)
    assert answers[0].json() == {"ready": [share]}
    refused = c["dave"].post("/v1/changes/wait", json={"cursors": {share: 0}})
    assert refused.status_code == 403
    for bad in ({"cursors": {}}, {"cursors": {share: -1}}, {"cursors": {share: "1"}}, {"cursors": [share]},
                {"cursors": {share: 0}, "wait": "long"}, {"cursors": {share: True}}):
        assert c["bob"].post("/v1/changes/wait", json=bad).status_code == 400, bad


def test_sharing_one_new_folder_from_many_requests_at_once_makes_one_folder(household: Any) -> None:
    _, c, _ = household
    members = ["bob", "carol", "dave"] * 3
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda m=m: answers.append(_share(c["alice"], "Trip", m))) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(a.status_code for a in answers) == [200] * len(members), [a.text for a in answers]
    assert len({a.json()["store"] for a in answers}) == 1
    [listed] = c["alice"].get("/v1/shares").json()["shares"]
    assert [m["user"] for m in listed["members"]] == ["bob", "carol", "dave"]


def test_removing_a_user_takes_their_shared_folders_and_their_memberships(household: Any) -> None:
    server, c, own = household
    family = _family(c, "bob", "carol")
    bobs = _share(c["bob"], "Band", "carol").json()["store"]
    note = os.urandom(1000)
    assert _put(c["bob"], note, family).status_code == 201
    assert _create(c["bob"], family, "note.txt", note).status_code == 200
    for user in ("bob", "alice"):
        _server_cli(server, "user", "remove", user, "--yes")
    assert c["carol"].get("/v1/shares").json() == {"shares": []}
    for store in (family, bobs):
        assert c["carol"].get(f"/v1/stores/{store}/changes").status_code == 404
    assert c["carol"].get(f"/v1/stores/{own['carol']}/changes").status_code == 200


def test_a_members_upload_freed_by_the_collector_no_longer_lets_them_name_its_hash(household: Any) -> None:
    server, c, own = household
    share = _family(c, "bob")
    data = os.urandom(3000)
    assert _put(c["bob"], data, share).status_code == 201  # never committed
    _server_cli(server, "retention", "--grace-hours", "0")
    _server_cli(server, "gc")
    # Later the owner stores the same bytes for herself: bob must not learn it, nor reach them.
    assert _put(c["alice"], data).status_code == 201
    assert _create(c["alice"], own["alice"], "mine.bin", data).status_code == 200
    missing = c["bob"].post("/v1/blocks/missing", params={"store": share}, json={"hashes": [_hash(data)]})
    assert missing.json() == {"missing": [_hash(data)]}
    assert _create(c["bob"], share, "mine.bin", data).status_code == 400


def _stamp(http: httpx.Client, store: str, **params: Any) -> int:
    """The shares stamp the user's own store's changes answer carries."""
    answer = http.get(f"/v1/stores/{store}/changes", params=params)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["shares"])


def test_the_shares_stamp_moves_for_the_owner_and_members_of_a_changed_folder_only(household: Any) -> None:
    server, c, own = household
    stamps = {user: _stamp(c[user], own[user]) for user in USERS}

    def moved() -> set[str]:
        now = {user: _stamp(c[user], own[user]) for user in stamps}
        changed = {user for user in stamps if now[user] != stamps[user]}
        stamps.update(now)
        return changed

    family = _family(c, "bob")
    assert moved() == {"alice", "bob"}
    assert _share(c["alice"], "Family", "bob", read_only=True).status_code == 200
    assert moved() == {"alice", "bob"}
    assert _share(c["alice"], "Family", "bob", read_only=True).status_code == 200  # no change: no news
    assert moved() == set()
    assert _share(c["alice"], "Family", "carol").status_code == 200
    assert moved() == {"alice", "bob", "carol"}  # bob's list shows carol now
    assert c["bob"].post(f"/v1/shares/{family}/members/bob/remove").status_code == 200
    assert moved() == {"alice", "bob", "carol"}
    assert c["dave"].post(f"/v1/shares/{family}/members/carol/remove").status_code == 404  # refused: no news
    assert moved() == set()
    _server_cli(server, "user", "remove", "carol", "--yes")  # a member: the owner hears it
    del stamps["carol"]
    assert moved() == {"alice"}
    assert _share(c["dave"], "Games", "bob").status_code == 200
    assert moved() == {"dave", "bob"}
    _server_cli(server, "user", "remove", "dave", "--yes")  # an owner: the members hear it
    del stamps["dave"]
    assert moved() == {"bob"}
    # Both forms carry it; a shared folder's journal never does.
    compact = c["alice"].get(f"/v1/stores/{own['alice']}/changes", params={"format": "compact"}).json()
    assert compact["format"] == "compact" and compact["shares"] == stamps["alice"]
    assert "shares" not in c["alice"].get(f"/v1/stores/{family}/changes").json()


def test_a_long_poll_with_a_stale_stamp_answers_at_once_and_a_bad_one_is_refused(household: Any) -> None:
    _, c, own = household
    first = c["bob"].get(f"/v1/stores/{own['bob']}/changes").json()
    _family(c, "bob")
    wait = 30.0
    started = time.monotonic()
    page = c["bob"].get(f"/v1/stores/{own['bob']}/changes",
                        params={"cursor": first["cursor"], "wait": wait, "shares": first["shares"]})  # fmt: skip
    elapsed = time.monotonic() - started
    assert page.status_code == 200 and page.json()["shares"] != first["shares"]
    assert page.json()["cursor"] == first["cursor"] and page.json()["entries"] == []
    assert elapsed < wait / 4
    for bad in ("-1", "x", "1.5", "²", "9" * 20):
        answer = c["bob"].get(f"/v1/stores/{own['bob']}/changes", params={"shares": bad})
        assert answer.status_code == 400, (bad, answer.text)


def _poll_woken_by(poller: httpx.Client, store: str, change: Any) -> tuple[float, float, dict[str, Any]]:
    """Long-poll *store* with its current stamp while *change* runs: (seconds waited, wait asked, answer)."""
    first = poller.get(f"/v1/stores/{store}/changes").json()
    wait = 30.0
    answers: list[tuple[float, dict[str, Any]]] = []

    def long_poll() -> None:
        started = time.monotonic()
        page = poller.get(f"/v1/stores/{store}/changes",
                          params={"cursor": first["cursor"], "wait": wait, "shares": first["shares"]})  # fmt: skip
        answers.append((time.monotonic() - started, page.json()))

    thread = threading.Thread(target=long_poll)
    thread.start()
    # Give the poll time to read and start waiting, so the change must wake it.
    time.sleep(1.0)
    change()
    thread.join(wait + 10)
    (elapsed, page), = answers
    assert page["shares"] != first["shares"] and page["cursor"] == first["cursor"]
    return elapsed, wait, page


def test_a_share_wakes_the_members_and_owners_long_polls_on_their_own_stores(household: Any) -> None:
    _, c, own = household
    elapsed, wait, _ = _poll_woken_by(c["bob"], own["bob"], lambda: _family(c, "bob"))
    assert elapsed < wait / 4
    elapsed, wait, _ = _poll_woken_by(c["alice"], own["alice"],
                                      lambda: _share(c["alice"], "Family", "bob", read_only=True))  # fmt: skip
    assert elapsed < wait / 4


@pytest.fixture
def two_processes(tmp_path: Path, postgres: PostgresCluster) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes on one PostgreSQL database, each with its own --data, with alice and bob."""
    storage = ("--database", postgres.new_database())
    for name in ("alice", "bob"):
        add_user(tmp_path / "one", name, PASSWORD, storage)
    with ServerProcess.start(tmp_path / "one", storage=storage) as one:
        with ServerProcess.start(tmp_path / "two", storage=storage) as two:
            yield one, two


def test_a_share_made_on_another_server_process_wakes_a_long_poll_at_once(two_processes: Any) -> None:
    one, two = two_processes
    clients = {}
    for name, server in (("alice", one), ("bob", two)):
        answer = login(server.url, name, PASSWORD, "laptop")
        clients[name] = (httpx.Client(base_url=server.url, timeout=60,
                                      headers={"Authorization": f"Bearer {answer['token']}"}), answer["store"])  # fmt: skip
    try:
        bob, bobs = clients["bob"]
        alice, _ = clients["alice"]
        elapsed, wait, _ = _poll_woken_by(bob, bobs, lambda: _share(alice, "Family", "bob"))
        assert elapsed < wait / 4
        family = alice.get("/v1/shares").json()["shares"][0]["store"]
        elapsed, wait, _ = _poll_woken_by(bob, bobs, lambda: alice.post(f"/v1/shares/{family}/members/bob/remove"))
        assert elapsed < wait / 4
    finally:
        for http, _ in clients.values():
            http.close()

