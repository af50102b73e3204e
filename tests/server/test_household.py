"""Accounts and devices of a household on a real server process: removal, devices, passwords, quotas."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import ServerProcess, add_user, login, server_command
from websync_server.protocol import new_node_id

PASSWORD = "correct horse battery"


def _cli(data: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args, "--data", str(data)), input=input, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def _users(tmp_path: Path, *names: str) -> Path:
    """A data directory with users *names*, all with `PASSWORD`."""
    data = tmp_path / "data"
    for name in names:
        add_user(data, name, PASSWORD)
    return data


def _client(server: ServerProcess, user: str, device: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
    answer = login(server.url, user, password, device)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=30)
    return http, answer["store"]


def _put(http: httpx.Client, data: bytes) -> httpx.Response:
    return http.put(f"/v1/blocks/{hashlib.sha256(data).hexdigest()}", content=data)


def _create(http: httpx.Client, store: str, name: str, data: bytes) -> httpx.Response:
    op = {"op": "create", "id": new_node_id(), "parent": "root", "name": name, "mode": 0o644,
          "size": len(data), "blocks": [hashlib.sha256(data).hexdigest()] if data else [], "mtime_ns": 1}
    return http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]})


def test_user_remove_takes_the_user_and_their_data_only_after_confirmation(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice", "bob")
    with ServerProcess.start(data) as server:
        alice, alice_store = _client(server, "alice", "laptop")
        bob, bob_store = _client(server, "bob", "desk")
        with alice, bob:
            for http, store in ((alice, alice_store), (bob, bob_store)):
                assert _put(http, b"family photos").status_code == 201
                assert _create(http, store, "photo.jpg", b"family photos").status_code == 200
            refused = _cli(data, "user", "remove", "alice", input="alic\n")
            assert refused.returncode == 1 and "not confirmed" in refused.stderr
            assert alice.get("/v1/whoami").status_code == 200
            done = _cli(data, "user", "remove", "alice", input="alice\n")
            assert done.returncode == 0, done.stderr
            assert "removed user alice with 1 files and folders" in done.stdout
            assert not (data / "blocks" / "alice").exists()
            # The token's trust runs out within seconds; then every call is refused.
            deadline = time.monotonic() + 30
            while alice.get("/v1/whoami").status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert alice.get("/v1/whoami").status_code == 401
            assert httpx.post(f"{server.url}/v1/login", json={"user": "alice", "password": PASSWORD,
                                                             "device": "x"}).status_code == 401  # fmt: skip
            # Bob keeps everything.
            assert bob.get(f"/v1/stores/{bob_store}/changes").json()["entries"][0]["name"] == "photo.jpg"
            assert (data / "blocks" / "bob").exists()
        # The name can be taken again, by a new user with an empty store.
        add_user(data, "alice", PASSWORD)
        again, store = _client(server, "alice", "laptop")
        with again:
            assert store != alice_store and again.get(f"/v1/stores/{store}/changes").json()["entries"] == []
        assert "websync_server.audit: user alice removed" in server.log()
    assert _cli(data, "user", "remove", "nobody", "--yes").stderr.startswith("Error: there is no user named")


def test_devices_are_listed_and_one_is_revoked_or_logs_itself_out(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    with ServerProcess.start(data) as server:
        laptop, _ = _client(server, "alice", "laptop")
        phone, _ = _client(server, "alice", "phone")
        tablet, _ = _client(server, "alice", "tablet")
        with laptop, phone, tablet:
            listed = laptop.get("/v1/devices").json()["devices"]
            assert [(d["name"], d["current"]) for d in listed] == [("laptop", True), ("phone", False), ("tablet", False)]
            assert all(d["last_seen_ns"] >= d["created_ns"] > 0 for d in listed)
            phone_id = listed[1]["id"]
            assert laptop.post(f"/v1/devices/{phone_id}/revoke").json() == {"id": phone_id, "name": "phone"}
            assert phone.get("/v1/whoami").status_code == 401
            assert laptop.post(f"/v1/devices/{phone_id}/revoke").status_code == 404
            for bad in ("²", "-1", "9999999999999999999", "laptop"):
                assert laptop.post(f"/v1/devices/{bad}/revoke").status_code == 400, bad
            assert tablet.post("/v1/logout").json() == {"ok": True}
            assert tablet.get("/v1/whoami").status_code == 401
            assert [d["name"] for d in laptop.get("/v1/devices").json()["devices"]] == ["laptop"]
        log = server.log()
        assert "device 'phone'" in log and "of user alice removed: revoked by device 'laptop'" in log
        assert "device 'tablet'" in log and "removed: logged out" in log
        assert "device 'laptop'" in log and "added" in log


def test_a_device_cannot_revoke_another_users_device(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice", "bob")
    with ServerProcess.start(data) as server:
        alice, _ = _client(server, "alice", "laptop")
        bob, _ = _client(server, "bob", "desk")
        with alice, bob:
            bob_id = bob.get("/v1/devices").json()["devices"][0]["id"]
            assert alice.post(f"/v1/devices/{bob_id}/revoke").status_code == 404
            assert bob.get("/v1/whoami").status_code == 200


def test_password_change_needs_the_current_password_and_a_strong_new_one(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    with ServerProcess.start(data) as server:
        laptop, _ = _client(server, "alice", "laptop")
        with laptop:
            wrong = laptop.post("/v1/password", json={"password": "not it at all", "new_password": "new and long one"})
            assert wrong.status_code == 401 and "current password is wrong" in wrong.json()["message"]
            weak = laptop.post("/v1/password", json={"password": PASSWORD, "new_password": "pw"})
            assert weak.status_code == 400 and "at least 8" in weak.json()["message"]
            assert laptop.post("/v1/password", json={"password": PASSWORD}).status_code == 400
            nested = b"[" * 5000 + b"]" * 5000
            assert laptop.post("/v1/password", content=nested, headers={"content-type": "application/json"}
                               ).status_code == 400  # fmt: skip
            ok = laptop.post("/v1/password", json={"password": PASSWORD, "new_password": "new and long one"})
            assert ok.status_code == 200, ok.text
            assert laptop.get("/v1/whoami").status_code == 200  # this device stays logged in
        assert login(server.url, "alice", "new and long one", "phone")["token"]
        assert "password of user alice changed from device 'laptop'" in server.log()
        assert "failed login as user 'alice'" in server.log()


def test_a_device_unseen_for_the_idle_limit_stops_working(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    idle_days = 6.0 / 86400  # six seconds: longer than a token's trust (accounts.TOKEN_TRUST_S)
    with ServerProcess.start(data, extra_args=("--device-idle-days", repr(idle_days))) as server:
        busy, _ = _client(server, "alice", "busy")
        idle, _ = _client(server, "alice", "idle")
        with busy, idle:
            assert idle.get("/v1/whoami").status_code == 200
            deadline = time.monotonic() + 14
            while time.monotonic() < deadline:  # busy calls on through idle's silence
                assert busy.get("/v1/whoami").status_code == 200
                time.sleep(0.1)
            # A token trusted lately is answered once more while it is checked again (accounts.py).
            deadline = time.monotonic() + 10
            while idle.get("/v1/whoami").status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert idle.get("/v1/whoami").status_code == 401
            assert busy.get("/v1/whoami").status_code == 200
        assert "device 'idle'" in server.log() and "removed: unseen for too long" in server.log()


def test_uploads_past_the_byte_quota_are_refused_with_507_until_there_is_room(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice", "bob")
    assert _cli(data, "user", "set", "alice", "--quota", "1M").returncode == 0
    with ServerProcess.start(data) as server:
        alice, store = _client(server, "alice", "laptop")
        bob, _ = _client(server, "bob", "desk")
        with alice, bob:
            first, second = os.urandom(700 * 1024), os.urandom(700 * 1024)
            assert _put(alice, first).status_code == 201
            assert _create(alice, store, "a.bin", first).status_code == 200
            assert _put(alice, first).status_code == 200  # stored already: costs nothing more
            refused = _put(alice, second)
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"] == "quota_exceeded"
            assert "over their quota: 700.0 KiB of 1.0 MiB stored" in refused.json()["message"]
            usage = alice.get("/v1/usage").json()  # what the web page shows
            assert usage == {"stored_bytes": 700 * 1024, "quota_bytes": 1 << 20, "quota_nodes": None}
            assert bob.get("/v1/usage").json()["quota_bytes"] is None
            assert _put(bob, second).status_code == 201  # others' quotas are their own
            framed = hashlib.sha256(second).hexdigest().encode() + len(second).to_bytes(4, "big") + second
            assert alice.post("/v1/blocks", content=framed).status_code == 507
            assert _cli(data, "user", "set", "alice", "--quota", "2M").returncode == 0
            deadline = time.monotonic() + 30  # a running server reads the bounds again within seconds
            while _put(alice, second).status_code == 507 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _create(alice, store, "b.bin", second).status_code == 200
        quota_lines = [line for line in server.log().splitlines() if "quota_exceeded" in line]
        assert quota_lines and all(" INFO " in line for line in quota_lines)  # the user's state, not a server fault


def test_uncommitted_uploads_stop_counting_once_the_collector_frees_them(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    assert _cli(data, "user", "set", "alice", "--quota", "1M").returncode == 0
    with ServerProcess.start(data, extra_args=("--gc-every", "0")) as server:
        alice, _ = _client(server, "alice", "laptop")
        with alice:
            assert _put(alice, os.urandom(700 * 1024)).status_code == 201  # never committed
            later = os.urandom(700 * 1024)
            assert _put(alice, later).status_code == 507
            collected = _cli(data, "gc", "--grace-hours", "0")
            assert collected.returncode == 0, collected.stderr
            deadline = time.monotonic() + 30
            while _put(alice, later).status_code == 507 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _put(alice, later).status_code == 200


def test_commits_past_the_node_bound_are_refused_whole(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    done = _cli(data, "user", "set", "alice", "--max-nodes", "2")
    assert done.returncode == 0 and "max nodes 2" in done.stdout
    with ServerProcess.start(data) as server:
        alice, store = _client(server, "alice", "laptop")
        with alice:
            assert _create(alice, store, "one", b"").status_code == 200
            assert _create(alice, store, "two", b"").status_code == 200
            refused = _create(alice, store, "three", b"")
            assert refused.status_code == 507 and refused.json()["error"] == "quota_exceeded"
            assert "bound of 2 files and folders" in refused.json()["message"]
            listed = alice.get(f"/v1/stores/{store}/changes").json()["entries"]
            assert sorted(e["name"] for e in listed) == ["one", "two"]


def test_user_set_refuses_bad_sizes_and_unknown_users(tmp_path: Path) -> None:
    data = _users(tmp_path, "alice")
    assert "is not a size" in _cli(data, "user", "set", "alice", "--quota", "lots").stderr
    assert "whole number" in _cli(data, "user", "set", "alice", "--max-nodes", "-1").stderr
    assert "no user named 'bob'" in _cli(data, "user", "set", "bob", "--quota", "1G").stderr
    shown = _cli(data, "user", "set", "alice", "--quota", "1.5G", "--max-nodes", "none")
    assert "quota 1.5 GiB" in shown.stdout and "max nodes none" in shown.stdout
    assert json.loads(_cli(data, "usage", "--json").stdout)[0]["quota"] == 1536 * 1024**2
    assert "quota none" in _cli(data, "user", "set", "alice", "--quota", "none").stdout
