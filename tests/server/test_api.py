"""The HTTP API of docs/protocol.md, against a real server process."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.server.conftest import Session, both_engines
from tests.server.ops import create, mkdir, setattr_
from tests.servers import ServerProcess
from websync_server.protocol import BLOCK_SIZE, ROOT_ID, ChangeRows, Changes, new_node_id

Login = Callable[..., Session]


engine = both_engines  # every test here runs on SQLite and on PostgreSQL


def current_cursor(s: Session) -> int:
    cursor = 0
    while True:
        page = Changes.from_wire(s.http.get(f"/v1/stores/{s.store}/changes", params={"cursor": cursor}).json())
        cursor = page.cursor
        if not page.more:
            return cursor


# -- authentication and authorization ------------------------------------------


def test_health_needs_no_token(server: ServerProcess) -> None:
    answer = httpx.get(f"{server.url}/v1/health")
    assert answer.status_code == 200 and answer.json() == {"ok": True, "version": 1}


def test_login_answers_token_user_device_and_store(server: ServerProcess, session: Login) -> None:
    s = session("alice", device="laptop")
    whoami = s.http.get("/v1/whoami")
    assert whoami.status_code == 200
    assert whoami.json() == {"user": "alice", "device": "laptop", "store": s.store}
    assert len(s.token) >= 40


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody", "alice-password")])
def test_wrong_user_or_password_is_401(server: ServerProcess, user: str, password: str) -> None:
    answer = httpx.post(f"{server.url}/v1/login", json={"user": user, "password": password, "device": "d"})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic YWxpY2U6cHc=", "Bearer"])
def test_missing_or_wrong_token_is_401_everywhere(server: ServerProcess, session: Login, header: str | None) -> None:
    store = session("alice").store
    headers = {"Authorization": header} if header else {}
    calls: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", "/v1/whoami", None),
        ("GET", f"/v1/stores/{store}/changes", None),
        ("GET", f"/v1/stores/{store}/nodes/root", None),
        ("POST", f"/v1/stores/{store}/commit", {"batch": "b", "ops": [mkdir("x")]}),
        ("POST", "/v1/blocks/missing", {"hashes": []}),
        ("GET", "/v1/blocks/" + "0" * 64, None),
    ]
    for method, path, body in calls:
        answer = httpx.request(method, server.url + path, json=body, headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.json()["error"] == "unauthorized" and answer.json()["message"]
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_someone_elses_store_is_403_and_an_unknown_one_404(session: Login) -> None:
    alice, bob = session("alice"), session("bob")
    for path in ("changes", "nodes/root"):
        answer = bob.http.get(f"/v1/stores/{alice.store}/{path}")
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    answer = bob.http.post(f"/v1/stores/{alice.store}/commit", json={"batch": "b", "ops": [mkdir("x")]})
    assert answer.status_code == 403
    assert bob.http.get(f"/v1/stores/{'0' * 32}/changes").status_code == 404
    assert bob.http.get(f"/v1/stores/{alice.store}/nodes/root").json()["error"] == "forbidden"


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 256, "é" * 128, "", "nul\0byte"])
def test_bad_names_are_400_and_change_nothing(session: Login, name: str) -> None:
    s = session("alice")
    before = current_cursor(s)
    answer = s.commit(mkdir(name))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid"
    assert "name" in answer.json()["message"]
    assert current_cursor(s) == before


def test_malformed_json_and_bad_parameters_are_400(session: Login) -> None:
    s = session("alice")
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        answer = s.http.post(
            f"/v1/stores/{s.store}/commit", content=content, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400 and answer.json()["error"] == "invalid"
    for params in ({"cursor": "-1"}, {"cursor": "x"}, {"wait": "soon"}, {"wait": "nan"}, {"limit": "0"}):
        assert s.http.get(f"/v1/stores/{s.store}/changes", params=params).status_code == 400, params
    assert s.http.get(f"/v1/stores/{s.store}/nodes/not-an-id").status_code == 400
    for form in ("", "Compact", "arrays", "compact,objects"):
        answer = s.http.get(f"/v1/stores/{s.store}/changes", params={"format": form})
        assert answer.status_code == 400 and "format must be one of" in answer.json()["message"], form


def test_unknown_calls_are_json_404_and_405(server: ServerProcess) -> None:
    answer = httpx.get(f"{server.url}/v1/nothing-here")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    answer = httpx.delete(f"{server.url}/v1/health")
    assert answer.status_code == 405 and answer.json()["error"] == "method_not_allowed"


# -- commits and the journal ---------------------------------------------------


def test_commit_then_changes_and_node_state(session: Login) -> None:
    s = session("alice", device="desk")
    cursor = current_cursor(s)
    d = mkdir(f"dir-{new_node_id()}")
    answer = s.commit(d)
    assert answer.status_code == 200 and answer.json() == {"seq": cursor + 1}
    changes = Changes.from_wire(s.http.get(f"/v1/stores/{s.store}/changes", params={"cursor": cursor}).json())
    assert [(n.id, n.device) for n in changes.nodes] == [(d["id"], s.device)] and changes.cursor == cursor + 1
    state = s.http.get(f"/v1/stores/{s.store}/nodes/{d['id']}").json()
    assert state["node"]["kind"] == "dir" and state["entries"] == [
        {"parent": ROOT_ID, "name": d["name"], "node": d["id"], "seq": cursor + 1}
    ]
    assert s.http.get(f"/v1/stores/{s.store}/nodes/{new_node_id()}").status_code == 404


def test_changes_come_as_objects_by_default_and_as_arrays_when_asked(session: Login) -> None:
    s = session("alice", device="desk")
    cursor = current_cursor(s)
    d = mkdir(f"dir-{new_node_id()}")
    seq = s.commit(d).json()["seq"]
    url, params = f"/v1/stores/{s.store}/changes", {"cursor": cursor}
    objects = s.http.get(url, params=params).json()
    assert "format" not in objects and objects == s.http.get(url, params={**params, "format": "objects"}).json()
    assert objects["nodes"][0] == {
        "id": d["id"], "kind": "dir", "mode": 0o755, "size": 0, "mtime_ns": d["mtime_ns"], "seq": seq,
        "blocks": [], "target": "", "deleted": False, "device": s.device, "rdev": 0, "xattrs": {},
    }
    compact = s.http.get(url, params={**params, "format": "compact"}).json()
    assert compact == {
        "format": "compact", "cursor": seq, "reset": False, "more": False,
        "nodes": [[d["id"], "dir", 0o755, 0, d["mtime_ns"], seq, s.device]],
        "entries": [[ROOT_ID, d["name"], d["id"], seq]], "shares": 0,  # the user's own store: their stamp
    }
    assert ChangeRows.from_wire(compact).to_changes() == Changes.from_wire(objects)


def test_a_conflict_is_409_with_index_reason_and_node(session: Login) -> None:
    s = session("alice")
    taken = mkdir(f"taken-{new_node_id()}")
    assert s.commit(taken).status_code == 200
    answer = s.commit(mkdir(f"fine-{new_node_id()}"), mkdir(taken["name"]))
    body = answer.json()
    assert answer.status_code == 409
    assert (body["error"], body["index"], body["reason"]) == ("conflict", 1, "exists")
    assert body["node"]["id"] == taken["id"] and body["message"]


def test_a_retried_batch_answers_the_first_seq(session: Login) -> None:
    s = session("alice")
    op = mkdir(f"once-{new_node_id()}")
    first = s.commit(op, batch="retry-me-" + op["id"])
    again = s.commit(op, batch="retry-me-" + op["id"])
    assert first.status_code == again.status_code == 200 and first.json() == again.json()


def test_long_poll_answers_promptly_when_another_device_commits(session: Login) -> None:
    watcher, writer = session("alice", device="watcher"), session("alice", device="writer")
    cursor = current_cursor(watcher)
    result: dict[str, object] = {}

    def poll() -> None:
        started = time.monotonic()
        answer = watcher.http.get(f"/v1/stores/{watcher.store}/changes", params={"cursor": cursor, "wait": 30})
        result["elapsed"] = time.monotonic() - started
        result["changes"] = Changes.from_wire(answer.json())

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    assert "changes" not in result, "the poll answered before anything changed"
    d = mkdir(f"news-{new_node_id()}")
    committed = time.monotonic()
    assert writer.commit(d).status_code == 200
    thread.join(10)
    changes = result["changes"]
    assert isinstance(changes, Changes) and [n.id for n in changes.nodes] == [d["id"]]
    assert time.monotonic() - committed < 2
    assert 0.5 <= float(result["elapsed"]) < 5  # type: ignore[arg-type]


def test_long_poll_times_out_with_no_changes(session: Login) -> None:
    s = session("bob")
    cursor = current_cursor(s)
    started = time.monotonic()
    answer = s.http.get(f"/v1/stores/{s.store}/changes", params={"cursor": cursor, "wait": 1})
    elapsed = time.monotonic() - started
    changes = Changes.from_wire(answer.json())
    assert answer.status_code == 200 and changes.nodes == () and changes.entries == ()
    assert changes.cursor == cursor and 0.9 < elapsed < 4


def test_long_poll_answers_at_once_when_changes_exist(session: Login) -> None:
    s = session("bob")
    cursor = current_cursor(s)
    s.commit(mkdir(f"now-{new_node_id()}"))
    started = time.monotonic()
    s.http.get(f"/v1/stores/{s.store}/changes", params={"cursor": cursor, "wait": 30})
    assert time.monotonic() - started < 2


# -- blocks --------------------------------------------------------------------


def test_block_put_verifies_and_get_serves_ranges(session: Login) -> None:
    s = session("alice")
    data = new_node_id().encode() * 1000
    block = hashlib.sha256(data).hexdigest()
    assert s.http.post("/v1/blocks/missing", json={"hashes": [block]}).json() == {"missing": [block]}
    wrong = s.http.put(f"/v1/blocks/{block}", content=data + b"!")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid"
    assert s.http.put(f"/v1/blocks/{block}", content=data).status_code == 201
    assert s.http.put(f"/v1/blocks/{block}", content=data).status_code == 200
    assert s.http.post("/v1/blocks/missing", json={"hashes": [block]}).json() == {"missing": []}
    whole = s.http.get(f"/v1/blocks/{block}")
    assert whole.status_code == 200 and whole.content == data
    part = s.http.get(f"/v1/blocks/{block}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = s.http.get(f"/v1/blocks/{block}", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    beyond = s.http.get(f"/v1/blocks/{block}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    # Blocks are per user.
    assert session("bob").http.get(f"/v1/blocks/{block}").status_code == 404


def test_a_block_over_4_mib_is_413(session: Login) -> None:
    s = session("alice")
    data = b"x" * (BLOCK_SIZE + 1)
    answer = s.http.put(f"/v1/blocks/{hashlib.sha256(data).hexdigest()}", content=data)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"


def test_a_full_4_mib_block_round_trips_and_makes_a_file(session: Login) -> None:
    s = session("alice")
    data = bytes(range(256)) * (BLOCK_SIZE // 256)
    block = hashlib.sha256(data).hexdigest()
    assert s.http.put(f"/v1/blocks/{block}", content=data).status_code in (200, 201)
    assert s.http.get(f"/v1/blocks/{block}").content == data
    f = create(f"big-{new_node_id()}", size=BLOCK_SIZE, blocks=[block])
    assert s.commit(f).status_code == 200
    assert s.commit(setattr_(f["id"], mode=0o600)).status_code == 200


def test_commit_naming_a_block_not_uploaded_is_400(session: Login) -> None:
    s = session("alice")
    answer = s.commit(create(f"f-{new_node_id()}", size=1, blocks=["cd" * 32]))
    assert answer.status_code == 400 and "not on the server" in answer.json()["message"]


def test_requests_on_a_kept_alive_connection_are_not_held_back(server: ServerProcess) -> None:
    # Without TCP_NODELAY each answer after the first on a connection waited
    # ~40 ms for the client's delayed ACK (see runner.listen).
    timings = []
    with httpx.Client(base_url=server.url) as http:
        for _ in range(21):
            started = time.monotonic()
            assert http.get("/v1/health").status_code == 200
            timings.append(time.monotonic() - started)
    assert sorted(timings[1:])[10] < 0.02, timings


def test_versions_and_trash_over_http(session: Login) -> None:
    s, bob = session("alice", device="desk"), session("bob")
    f = create(f"doc-{new_node_id()}")
    seq = s.commit(f).json()["seq"]
    versions = s.http.get(f"/v1/stores/{s.store}/nodes/{f['id']}/versions")
    assert versions.status_code == 200
    [only] = versions.json()["versions"]
    assert (only["version"], only["seq"], only["device"], only["current"]) == (1, seq, s.device, True)
    assert set(only) == {"version", "seq", "size", "mtime_ns", "blocks", "device", "time", "current", "until"}
    assert only["until"] is None  # the current version stays while the file does
    deleted = s.commit({"op": "delete", "id": f["id"], "parent": ROOT_ID, "name": f["name"]}).json()["seq"]
    items = s.http.get(f"/v1/stores/{s.store}/trash").json()["items"]
    mine = [i for i in items if i["node"] == f["id"]]
    assert mine == [
        {"node": f["id"], "kind": "file", "parent": ROOT_ID, "name": f["name"], "path": f["name"], "size": 0,
         "device": s.device, "time": mine[0]["time"], "seq": deleted, "until": pytest.approx(mine[0]["time"] + 30 * 86400)}
    ]  # fmt: skip
    assert bob.http.get(f"/v1/stores/{s.store}/trash").status_code == 403
    assert bob.http.get(f"/v1/stores/{s.store}/nodes/{f['id']}/versions").status_code == 403
    restored = s.commit({"op": "restore", "id": f["id"], "parent": ROOT_ID, "name": f["name"]})
    assert restored.status_code == 200
    assert f["id"] not in {i["node"] for i in s.http.get(f"/v1/stores/{s.store}/trash").json()["items"]}


def test_a_token_revoked_by_another_process_is_refused_after_one_recheck(server: ServerProcess) -> None:
    # Real processes: the server, and the admin CLI revoking from beside it.
    from tests.servers import add_user, login, server_command
    from websync_server.accounts import TOKEN_TRUST_S

    add_user(server.data_dir, "carol", "carol-password", server.storage)
    answer = login(server.url, "carol", "carol-password")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=30) as http:
        assert http.get(f"/v1/stores/{answer['store']}/changes").status_code == 200  # trusted from here
        import subprocess

        subprocess.run(server_command("user", "revoke", "carol", "--data", str(server.data_dir), *server.storage), check=True,
                       capture_output=True)
        time.sleep(TOKEN_TRUST_S + 0.5)
        # Trust ran out: answered at once, while the database is asked again beside it.
        assert http.get(f"/v1/stores/{answer['store']}/changes").status_code == 200
        deadline = time.monotonic() + 10
        while (status := http.get(f"/v1/stores/{answer['store']}/changes").status_code) == 200:
            assert time.monotonic() < deadline, "the revoked token kept working"
            time.sleep(0.05)
        assert status == 401
