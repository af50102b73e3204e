"""The server as a process: CLI errors, clean shutdown, and surviving kill -9."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.servers import ServerProcess, add_user, login, server_command
from websync_server.protocol import Changes, new_node_id


def run_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), input=input, capture_output=True, text=True, timeout=60)


def test_user_add_and_list(tmp_path: Path) -> None:
    store = add_user(tmp_path, "alice", "alice-password")
    listed = run_cli("user", "list", "--data", str(tmp_path))
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split() == ["alice", store, "0"]


def test_cli_errors_are_one_sentence_and_exit_1(tmp_path: Path) -> None:
    add_user(tmp_path, "alice", "alice-password")
    for args, message in [
        (("user", "add", "alice", "--password-stdin"), "Error: a user named 'alice' already exists"),
        (("user", "add", "Alice", "--password-stdin"), "Error: 'Alice' can't be a user name"),
        (("user", "add", "carol", "--password-stdin"), "Error: the password must not be empty"),
    ]:
        done = run_cli(*args, "--data", str(tmp_path), input="\n" if "carol" in args else "long-enough\n")
        assert done.returncode == 1, done
        assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    done = subprocess.run(
        server_command("user", "add", "dora", "--password-stdin"),
        input="dora-password\n", capture_output=True, text=True, timeout=60,
        env={"WEBSYNC_SERVER_DATA": str(tmp_path / "env-data"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env-data" / "websync.db").exists()


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli("serve", "--data", str(tmp_path), "--port", str(port))
    assert done.returncode == 1
    assert f"can't listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_ends_a_held_long_poll_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_user(data, "alice", "alice-password")
    server = ServerProcess.start(data)
    try:
        answer = login(server.url, "alice", "alice-password")
        headers = {"Authorization": f"Bearer {answer['token']}"}
        url = f"{server.url}/v1/stores/{answer['store']}/changes"
        cursor = httpx.get(url, headers=headers).json()["cursor"]
        polled: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: polled.append(httpx.get(url, params={"cursor": cursor, "wait": 60}, headers=headers))
        )
        poll.start()
        time.sleep(0.5)
        started = time.monotonic()
        status = server.stop()
        poll.join(10)
        assert status == 0 and time.monotonic() - started < 5
        assert polled and polled[0].status_code == 200 and polled[0].json()["nodes"] == []
        assert "stopped" in server.log()
    finally:
        server.kill()


def test_kill_9_during_commits_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_user(data, "alice", "alice-password")
    server = ServerProcess.start(data)
    answer = login(server.url, "alice", "alice-password")
    headers = {"Authorization": f"Bearer {answer['token']}"}
    commit_url = f"{server.url}/v1/stores/{answer['store']}/commit"
    acknowledged: dict[str, int] = {}
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(headers=headers, timeout=5) as http:
            while not stop.is_set():
                node_id = new_node_id()
                op = {"op": "mkdir", "id": node_id, "parent": "root", "name": node_id, "mode": 0o755, "mtime_ns": 1}
                try:
                    reply = http.post(commit_url, json={"batch": node_id, "ops": [op]})
                except httpx.HTTPError:
                    return  # the server died under us
                acknowledged[node_id] = reply.json()["seq"]

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acknowledged) > 10

    check = sqlite3.connect(data / "websync.db")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    check.close()

    with ServerProcess.start(data) as again:
        answer = login(again.url, "alice", "alice-password")
        listing = Changes.from_wire(
            httpx.get(
                f"{again.url}/v1/stores/{answer['store']}/changes",
                headers={"Authorization": f"Bearer {answer['token']}"},
            ).json()
        )
    listed: dict[str, int] = {e.node: e.seq for e in listing.entries if e.node is not None}
    assert all(listed.get(node_id) == seq for node_id, seq in acknowledged.items())
    # Each commit took exactly one seq: no gaps, no half-applied commit.
    assert sorted(listed.values()) == list(range(2, listing.cursor + 1))


def test_user_passwd_sets_a_new_password_that_must_be_strong(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_user(data, "alice", "alice-password")
    weak = run_cli("user", "passwd", "alice", "--data", str(data), "--password-stdin", input="pw\n")
    assert weak.returncode == 1 and "at least 8 characters" in weak.stderr
    done = run_cli("user", "passwd", "alice", "--data", str(data), "--password-stdin", input="a-new-secret\n")
    assert done.returncode == 0, done.stderr
    nobody = run_cli("user", "passwd", "nobody", "--data", str(data), "--password-stdin", input="a-new-secret\n")
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr
    with ServerProcess.start(data) as server:
        assert login(server.url, "alice", "a-new-secret")["user"] == "alice"
        refused = httpx.post(f"{server.url}/v1/login", json={"user": "alice", "password": "alice-password", "device": "d"})
        assert refused.status_code == 401
    assert "password of user alice changed from the command line" in (data / "server.log").read_text()


def test_requests_reach_the_log_only_with_access_log(tmp_path: Path) -> None:
    for extra, logged in (((), False), (("--access-log",), True)):
        data = tmp_path / ("on" if logged else "off")
        add_user(data, "alice", "alice-password")
        with ServerProcess.start(data, extra_args=extra) as server:
            assert httpx.get(f"{server.url}/v1/health").status_code == 200
            assert httpx.get(f"{server.url}/v1/no-such-call").status_code == 404
            assert server.stop() == 0
        log = server.log()
        assert "listening on" in log  # the server's own records are there either way
        assert ('"GET /v1/health HTTP/1.1" 200' in log) is logged, log
        assert ('"GET /v1/no-such-call HTTP/1.1" 404' in log) is logged, log
