"""The scaled set-up: several server processes on one PostgreSQL database and one S3 bucket answer alike."""

from __future__ import annotations

import hashlib
import os
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import PostgresCluster
from tests.seaweed import SeaweedS3
from tests.server.ops import create, mkdir
from tests.servers import ServerProcess, add_user, login, server_command
from websync_server.database import CHANGES_CHANNEL
from websync_server.protocol import Changes, new_node_id


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster, s3: SeaweedS3
) -> Iterator[list[ServerProcess]]:
    """Two server processes, each with its own --data, sharing --database (PostgreSQL) and --blocks (S3)."""
    root = tmp_path_factory.mktemp("scaled")
    storage = ("--database", postgres.new_database(), "--blocks", s3.new_url())
    add_user(root / "one", "alice", "alice-password", storage)
    add_user(root / "one", "bob", "bob-password", storage)
    started: list[ServerProcess] = []
    try:
        for name in ("one", "two"):
            started.append(ServerProcess.start(root / name, storage=storage))
        yield started
    finally:
        for server in started:
            server.stop()


def client(server: ServerProcess, user: str = "alice") -> tuple[httpx.Client, str]:
    answer = login(server.url, user, f"{user}-password")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=60)
    return http, answer["store"]


def cursor_of(http: httpx.Client, store: str) -> int:
    page = Changes.from_wire(http.get(f"/v1/stores/{store}/changes", params={"cursor": 0}).json())
    return page.cursor


def long_poll_across(reader_server: ServerProcess, writer_server: ServerProcess, name: str) -> tuple[float, float, Changes]:
    """Long-poll on one process while the other commits a mkdir of *name*: (seconds waited, wait asked, answer)."""
    reader, store = client(reader_server)
    writer, _ = client(writer_server)
    cursor = cursor_of(reader, store)
    wait = 20.0
    answers: list[tuple[float, Changes]] = []

    def long_poll() -> None:
        started = time.monotonic()
        page = reader.get(f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": wait})
        answers.append((time.monotonic() - started, Changes.from_wire(page.json())))

    poller = threading.Thread(target=long_poll)
    poller.start()
    # Give the poll time to read and start waiting, so the commit must wake it
    # (committed earlier, it would be answered from the read: also right, but not this test).
    time.sleep(1.0)
    made = mkdir(name)
    assert writer.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [made]}).status_code == 200
    poller.join(wait + 10)
    reader.close()
    writer.close()
    (elapsed, page), = answers
    return elapsed, wait, page


def test_a_long_poll_on_one_process_wakes_when_another_process_commits(processes: list[ServerProcess]) -> None:
    elapsed, wait, page = long_poll_across(processes[0], processes[1], "woken")
    assert [e.name for e in page.entries] == ["woken"]  # a timed-out poll would answer with nothing
    assert elapsed < wait / 4, elapsed


def test_a_process_whose_listening_connection_broke_listens_again(
    processes: list[ServerProcess], postgres: PostgresCluster
) -> None:
    one, two = processes
    postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN {CHANGES_CHANNEL}'")
    deadline = time.monotonic() + 30
    while one.log().count("listening for other server processes' commits again") < 1:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.1)
    elapsed, wait, page = long_poll_across(one, two, "heard-again")
    assert [e.name for e in page.entries] == ["heard-again"]
    assert elapsed < wait / 4, elapsed


def test_commits_to_one_store_through_both_processes_are_serialised(processes: list[ServerProcess]) -> None:
    sessions = [client(server, "bob") for server in processes]
    store = sessions[0][1]
    before = cursor_of(sessions[0][0], store)
    seqs: list[int] = []
    per_writer = 15

    def write(http: httpx.Client, writer: int) -> None:
        for i in range(per_writer):
            answer = http.post(f"/v1/stores/{store}/commit",
                               json={"batch": new_node_id(), "ops": [mkdir(f"w{writer}-{i}")]})  # fmt: skip
            assert answer.status_code == 200, answer.text
            seqs.append(answer.json()["seq"])

    threads = [threading.Thread(target=write, args=(http, n)) for n, (http, _) in enumerate(sessions * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = per_writer * len(threads)
    # Every commit took the next seq of the store: no two alike, none skipped.
    assert sorted(seqs) == list(range(before + 1, before + total + 1))
    listing = Changes.from_wire(sessions[1][0].get(f"/v1/stores/{store}/changes", params={"cursor": 0}).json())
    assert sum(1 for e in listing.entries if e.name.startswith("w")) == total


def test_a_batch_sent_to_both_processes_applies_once(processes: list[ServerProcess]) -> None:
    (first, store), (second, _) = (client(server) for server in processes)
    batch, made = new_node_id(), mkdir("once")
    answers = [http.post(f"/v1/stores/{store}/commit", json={"batch": batch, "ops": [made]}) for http in (first, second)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["seq"] == answers[1].json()["seq"]
    listing = Changes.from_wire(second.get(f"/v1/stores/{store}/changes", params={"cursor": 0}).json())
    assert [e.name for e in listing.entries].count("once") == 1


def test_a_block_uploaded_through_one_process_is_read_through_the_other(processes: list[ServerProcess]) -> None:
    (up, _), (down, _) = (client(server) for server in processes)
    data = b"shared block folder" * 1000
    block = hashlib.sha256(data).hexdigest()
    assert up.put(f"/v1/blocks/{block}", content=data).status_code in (200, 201)
    assert down.get(f"/v1/blocks/{block}").content == data


def test_collection_on_the_scaled_set_up_frees_unnamed_blocks_and_keeps_named_ones(
    processes: list[ServerProcess],
) -> None:
    http, store = client(processes[0])
    named, unnamed = b"named by a file" * 100, b"named by nothing" * 100
    for data in (named, unnamed):
        assert http.put(f"/v1/blocks/{hashlib.sha256(data).hexdigest()}", content=data).status_code in (200, 201)
    made = create("kept.txt", size=len(named), blocks=[hashlib.sha256(named).hexdigest()])
    assert http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [made]}).status_code == 200
    done = subprocess.run(
        server_command("gc", "--data", str(processes[1].data_dir), *processes[1].storage, "--grace-hours", "0",
                       "--json"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["blocks"] >= 1
    missing = http.post("/v1/blocks/missing", json={"hashes": [hashlib.sha256(d).hexdigest() for d in (named, unnamed)]})
    assert missing.json()["missing"] == [hashlib.sha256(unnamed).hexdigest()]


def test_check_and_usage_on_the_scaled_set_up_read_the_bucket(processes: list[ServerProcess]) -> None:
    http, store = client(processes[0], "bob")
    data, stray = b"bob's file" * 100, b"uploaded, never named" * 100
    for block in (data, stray):
        assert http.put(f"/v1/blocks/{hashlib.sha256(block).hexdigest()}", content=block).status_code in (200, 201)
    made = create("checked.txt", size=len(data), blocks=[hashlib.sha256(data).hexdigest()])
    assert http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [made]}).status_code == 200

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(server_command(*args, "--data", str(processes[1].data_dir), *processes[1].storage),
                              capture_output=True, text=True, timeout=120)

    checked = cli("check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["problems"] == [] and report["orphans"].get("bob", 0) >= 1 and report["counts"]["blocks"] >= 2
    used = {row["user"]: row for row in json.loads(cli("usage", "--json").stdout)}
    assert used["bob"]["current"] >= len(data) and used["bob"]["disk"] >= len(data) + len(stray)


def test_a_quota_holds_across_processes_on_the_scaled_set_up(processes: list[ServerProcess]) -> None:
    """Bytes are counted from the bucket, so a quota set once holds whichever process stores the block."""
    add_user(processes[0].data_dir, "carol", "carol-password", processes[0].storage)
    done = subprocess.run(
        server_command("user", "set", "carol", "--quota", "1M", "--data", str(processes[0].data_dir),
                       *processes[0].storage),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    one, _ = client(processes[0], "carol")
    two, _ = client(processes[1], "carol")
    first, second = os.urandom(700 * 1024), os.urandom(700 * 1024)
    assert one.put(f"/v1/blocks/{hashlib.sha256(first).hexdigest()}", content=first).status_code == 201
    refused = two.put(f"/v1/blocks/{hashlib.sha256(second).hexdigest()}", content=second)
    assert refused.status_code == 507 and refused.json()["error"] == "quota_exceeded", refused.text


def test_a_backup_of_the_scaled_set_up_restores_into_a_single_box_that_serves_it(
    processes: list[ServerProcess], tmp_path: Path
) -> None:
    http, store = client(processes[0])
    data = os.urandom(300_000)
    block = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v1/blocks/{block}", content=data).status_code in (200, 201)
    made = create("backed-up.bin", size=len(data), blocks=[block])
    assert http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [made]}).status_code == 200
    dest, restored = tmp_path / "backup", tmp_path / "restored"
    for args in (["backup", "--data", str(processes[1].data_dir), *processes[1].storage, str(dest), "--json"],
                 ["restore", "--data", str(restored), str(dest)]):
        done = subprocess.run(server_command(*args), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (dest / "blocks" / "alice").is_dir()
    with ServerProcess.start(restored) as single:
        answer = login(single.url, "alice", "alice-password")
        auth = {"Authorization": f"Bearer {answer['token']}"}
        with httpx.Client(base_url=single.url, headers=auth, timeout=60) as back:
            listing = Changes.from_wire(back.get(f"/v1/stores/{answer['store']}/changes",
                                                 params={"cursor": 0}).json())
            node = next(n for n in listing.nodes if list(n.blocks) == [block])
            assert node.size == len(data)
            assert back.get(f"/v1/blocks/{block}").content == data


def test_migrate_moves_a_single_box_to_postgresql_and_s3_and_every_login_stays_valid(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster, s3: SeaweedS3
) -> None:
    data = tmp_path_factory.mktemp("single") / "data"
    add_user(data, "carol", "carol-password")
    content = os.urandom(300_000)
    block = hashlib.sha256(content).hexdigest()
    with ServerProcess.start(data) as box:
        answer = login(box.url, "carol", "carol-password", device="laptop")
        headers = {"Authorization": f"Bearer {answer['token']}"}
        with httpx.Client(base_url=box.url, headers=headers, timeout=60) as http:
            assert http.put(f"/v1/blocks/{block}", content=content).status_code in (200, 201)
            made = create("kept.bin", size=len(content), blocks=[block])
            batch = new_node_id()
            seq = http.post(f"/v1/stores/{answer['store']}/commit", json={"batch": batch, "ops": [made]}).json()["seq"]
    storage = ("--database", postgres.new_database(), "--blocks", s3.new_url())
    done = subprocess.run(server_command("migrate", "--data", str(data), "--to", storage[1], "--blocks", storage[3]),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 blocks" in done.stdout, done.stdout
    again = subprocess.run(server_command("migrate", "--data", str(data), "--to", storage[1], "--blocks", storage[3]),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 1 and "already has users" in again.stderr
    with ServerProcess.start(data, storage=storage) as scaled:
        with httpx.Client(base_url=scaled.url, headers=headers, timeout=60) as http:  # the old token
            listing = Changes.from_wire(http.get(f"/v1/stores/{answer['store']}/changes", params={"cursor": 0}).json())
            assert listing.cursor == seq and [e.name for e in listing.entries] == ["kept.bin"]
            assert http.get(f"/v1/blocks/{block}").content == content
            # The batch applies once on the new set-up too, and new rows get new ids.
            retry = http.post(f"/v1/stores/{answer['store']}/commit", json={"batch": batch, "ops": [made]})
            assert retry.json()["seq"] == seq
        add_user(data, "dave", "dave-password", storage)
        assert login(scaled.url, "dave", "dave-password")["user"] == "dave"
