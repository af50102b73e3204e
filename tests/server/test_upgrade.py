"""Upgrades: a data directory made by the first release opens, migrates and serves with this one.

``fixtures/release-0.1.0/`` was made by the release before migrations
existed (schema version 2): user ``keeper`` (password ``keeper-password``)
with ``docs/letter.txt`` in two versions, a symlink ``link``, and ``old.txt``
in the trash.  Tests copy it and never change the fixture itself.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, login, server_command
from websync_server.check import check
from websync_server.schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.fixture
def old_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    return data


def test_the_first_releases_data_is_migrated_and_served(old_data: Path) -> None:
    with ServerProcess.start(old_data) as server:
        answer = login(server.url, "keeper", "keeper-password", "new-laptop")
        store = answer["store"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}) as http:
            listing = http.get(f"/v1/stores/{store}/changes", params={"cursor": 0}).json()
            names = {e["name"]: e["node"] for e in listing["entries"]}
            assert set(names) == {"docs", "letter.txt", "link"}
            versions = http.get(f"/v1/stores/{store}/nodes/{names['letter.txt']}/versions").json()["versions"]
            contents = [http.get(f"/v1/blocks/{v['blocks'][0]}").content for v in versions]
            assert contents == [b"first version of the letter\n", b"second version of the letter\n"]
            assert [i["name"] for i in http.get(f"/v1/stores/{store}/trash").json()["items"]] == ["old.txt"]
            # and it takes new commits
            mkdir = {"op": "mkdir", "id": "ab" * 16, "parent": "root", "name": "new", "mode": 0o755, "mtime_ns": 1}
            assert http.post(f"/v1/stores/{store}/commit", json={"batch": "b1", "ops": [mkdir]}).status_code == 200
    db = sqlite3.connect(old_data / "websync.db")
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == f"{SCHEMA_VERSION:04d}"
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"versions_by_replaced", "batches_by_time"} <= indexes
        # The old device counts as seen at the upgrade, so the idle limit does not log it out.
        assert db.execute("SELECT last_seen_ns FROM devices WHERE name = 'old-laptop'").fetchone()[0] > 0
    finally:
        db.close()
    assert check(old_data).ok


def test_a_database_from_a_newer_release_is_refused_unchanged(old_data: Path) -> None:
    db = sqlite3.connect(old_data / "websync.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = (old_data / "websync.db").read_bytes()
    done = subprocess.run(server_command("usage", "--data", str(old_data)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "schema version 99, made by a newer release" in done.stderr and "Traceback" not in done.stderr
    assert (old_data / "websync.db").read_bytes() == before


def test_a_client_of_another_protocol_version_is_told_so(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/v2/login", json={"user": "alice", "password": "x", "device": "d"})
    assert answer.status_code == 400 and answer.json()["error"] == "protocol"
    assert "protocol version 1" in answer.json()["message"] and "client 2" in answer.json()["message"]
    assert httpx.get(f"{server.url}/v1/nothing-here").status_code == 404
    assert httpx.get(f"{server.url}/v1/health").json()["version"] == 1
