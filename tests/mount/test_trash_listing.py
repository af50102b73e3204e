"""The trash lists what a person deleted first; programs' internals are summed up, still restorable."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from tests.clients import Machine, eventually

pytestmark = pytest.mark.mount


def settled(m: Machine) -> bool:
    return json.loads(m.cli("status", "--json").stdout)["pending"] == 0


def test_the_trash_shows_what_a_person_deleted_before_programs_internals(a: Machine) -> None:
    a.path("letter.txt").write_text("Dear ...\n")
    eventually(lambda: settled(a), what="the letter sent")
    repo = a.path("repo")
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(a.mnt), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env, timeout=60)
    for n in range(3):
        (repo / f"f{n}.txt").write_text(f"{n}\n")
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env, timeout=60)
        subprocess.run(["git", "commit", "-qm", f"c{n}"], cwd=repo, check=True, env=env, timeout=60)
    eventually(lambda: settled(a), what="the commits sent")
    subprocess.run(["git", "gc", "-q"], cwd=repo, check=True, env=env, timeout=120)  # loose objects go
    db = sqlite3.connect(a.path("test.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("CREATE TABLE t (x)")
    for n in range(2):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (n,))
        eventually(lambda: settled(a), what="a journal sent")  # a long transaction: its journal syncs
        db.execute("COMMIT")  # and is deleted
    db.close()
    eventually(lambda: settled(a), what="the programs' work sent")
    a.path("letter.txt").unlink()

    def listing() -> list[str]:
        lines = a.cli("trash").stdout.splitlines()
        return lines if any("letter.txt" in line for line in lines) else []

    lines = eventually(listing, what="the letter in the trash")
    personal = lines[:-1]
    assert any("letter.txt" in line for line in personal)
    assert not [line for line in personal if ".git/" in line or "-journal" in line], lines
    assert lines[-1].startswith("and ") and "repo/.git/" in lines[-1] and "--all" in lines[-1]

    everything = json.loads(a.cli("trash", "--json").stdout)["trash"]
    journal = [i for i in everything if i["path"] == "test.db-journal"]
    assert journal and all(i["internal"] for i in journal)
    assert [i for i in everything if i["path"] == "letter.txt"][0]["internal"] is False
    assert any("test.db-journal" in line for line in a.cli("trash", "--all").stdout.splitlines())

    a.cli("restore", "letter.txt")  # a person's file comes back as ever ...
    a.cli("restore", "test.db-journal", "--as", "journal-copy")  # ... and so does an internal one
    eventually(lambda: a.path("letter.txt").exists() and a.path("journal-copy").exists(), what="both restored")
