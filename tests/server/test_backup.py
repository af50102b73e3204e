"""Online backup under write load, restore elsewhere, serve it: the moment of the backup, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import USERS, Session
from tests.server.ops import create, update
from tests.servers import ServerProcess, login, server_command
from websync_server.check import check

WRITERS = 3
START_FILES = 60


class Load:
    """Threads that create and update files over HTTP, recording every content at its seq."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.blobs: dict[str, bytes] = {}
        self.history: dict[str, list[tuple[int, list[str]]]] = {}  # node -> [(seq, blocks)]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(i,)) for i in range(WRITERS)]

    def put(self) -> tuple[int, list[str]]:
        data = os.urandom(int.from_bytes(os.urandom(2), "big") * 4 + 1)
        h = hashlib.sha256(data).hexdigest()
        assert self.s.http.put(f"/v1/blocks/{h}", content=data).status_code in (200, 201)
        with self.lock:
            self.blobs[h] = data
        return len(data), [h]

    def create(self) -> None:
        size, blocks = self.put()
        op = create(f"f-{os.urandom(6).hex()}", size=size, blocks=blocks)
        answer = self.s.commit(op)
        assert answer.status_code == 200, answer.text
        with self.lock:
            self.history[op["id"]] = [(answer.json()["seq"], blocks)]

    def edit(self, node: str) -> None:
        with self.lock:
            base = self.history[node][-1][0]
        size, blocks = self.put()
        answer = self.s.commit(update(node, base=base, size=size, blocks=blocks))
        if answer.status_code == 409:
            return  # another writer updated it first
        assert answer.status_code == 200, answer.text
        with self.lock:
            self.history[node].append((answer.json()["seq"], blocks))

    def _work(self, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 3 == 0:
                self.create()
            else:
                with self.lock:
                    nodes = list(self.history)
                self.edit(nodes[(n * 7 + index) % len(nodes)])

    def at(self, seq: int) -> dict[str, list[list[str]]]:
        """Each file's contents (oldest first) as of commit *seq*."""
        return {
            node: [blocks for s, blocks in contents if s <= seq]
            for node, contents in self.history.items() if contents[0][0] <= seq
        }  # fmt: skip


@pytest.mark.timeout(300)
def test_backup_under_load_restores_every_file_and_version_byte_for_byte(
    server: ServerProcess, session: Callable[..., Session], tmp_path: Path
) -> None:
    load = Load(session("alice"))
    for _ in range(START_FILES):
        load.create()
    for thread in load.threads:
        thread.start()
    try:
        done = subprocess.run(
            server_command("backup", "--data", str(server.data_dir), str(tmp_path / "backup"), "--json"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    seq = report["seqs"][load.s.store]
    expected = load.at(seq)
    assert len(expected) < len(load.history) or max(c[-1][0] for c in load.history.values()) > seq, \
        "the load went on during the backup"

    again = subprocess.run(  # incremental: a second backup into one folder copies only new blocks
        server_command("backup", "--data", str(server.data_dir), str(tmp_path / "backup2"), "--json"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    third = json.loads(subprocess.run(
        server_command("backup", "--data", str(server.data_dir), str(tmp_path / "backup2"), "--json"),
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout)  # fmt: skip
    assert third["blocks_copied"] == 0 and third["blocks_present"] == json.loads(again.stdout)["blocks_copied"]

    restored = subprocess.run(
        server_command("restore", "--data", str(tmp_path / "new"), str(tmp_path / "backup")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert check(tmp_path / "new").ok
    with ServerProcess.start(tmp_path / "new") as again:
        token = login(again.url, "alice", USERS["alice"])["token"]
        with httpx.Client(base_url=again.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            listing = http.get(f"/v1/stores/{load.s.store}/changes", params={"cursor": 0}).json()
            live = {n["id"] for n in listing["nodes"] if n["id"] != "root"}
            assert live == set(expected)
            for node, contents in expected.items():
                versions = http.get(f"/v1/stores/{load.s.store}/nodes/{node}/versions").json()["versions"]
                assert [v["blocks"] for v in versions] == contents
                for [h] in contents:
                    assert http.get(f"/v1/blocks/{h}").content == load.blobs[h]
            # A machine that followed the old server past the backup learns it is ahead.
            ahead = http.get(f"/v1/stores/{load.s.store}/changes", params={"cursor": seq + 1}).json()
            assert ahead["reset"] and ahead["ahead"]
            behind = http.get(f"/v1/stores/{load.s.store}/changes", params={"cursor": seq}).json()
            assert behind["reset"] and not behind.get("ahead")
