"""The state database: its log is copied by a thread of its own, and what runs after a commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio

from cache import WalCheckpointer
from websync_fs import statedb
from websync_fs.statedb import StateDb


def _commit_rows(db: StateDb, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        with db.tx():
            db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (i, "x" * 3000))


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "statedb-checkpoint"]


@pytest.mark.timeout(60)
def test_the_log_is_copied_into_the_database_beside_the_writer_and_nothing_is_lost(tmp_path: Path) -> None:
    """1,000 commits of a page each, fewer pages than make a commit copy them itself.

    Still the database file fills while the log is open: the thread copied
    them.  Every row is in the file once the log is gone, and closing ends
    the thread.
    """
    path = tmp_path / "state.db"
    before = len(_checkpointers())
    db = StateDb(path)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    _commit_rows(db, 1000)
    assert 1000 < WalCheckpointer.BACKSTOP_PAGES
    assert len(_checkpointers()) == before + 1
    deadline = time.monotonic() + 20
    while path.stat().st_size < 900 * 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_size >= 900 * 3000  # copied by the thread: no commit did
    db.close()
    assert len(_checkpointers()) == before
    # Closing the last connection copies the rest and removes the log: the file alone holds every row.
    assert not Path(f"{path}-wal").exists()
    plain = sqlite3.connect(path)
    try:
        assert plain.execute("SELECT count(*), min(k), max(k) FROM t").fetchone() == (1000, 0, 999)
    finally:
        plain.close()


@pytest.mark.timeout(60)
def test_a_database_that_commits_little_starts_no_thread(tmp_path: Path) -> None:
    before = len(_checkpointers())
    db = StateDb(tmp_path / "state.db")
    try:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        _commit_rows(db, statedb.CHECKPOINT_EVERY - 1)
        assert len(_checkpointers()) == before
    finally:
        db.close()


@pytest.mark.timeout(30)
def test_a_callback_after_a_commit_that_fails_costs_no_later_callback_its_turn(tmp_path: Path) -> None:
    """One callback raises: every other still runs, then the committer hears the error.

    They ran in a plain loop, so one that raised dropped those after it: the
    uploader's wake among them, and a queued change waited for the next one.
    """
    db = StateDb(tmp_path / "state.db")
    try:
        ran: list[str] = []

        def broken() -> None:
            ran.append("broken")
            raise ValueError("a broken callback")

        with pytest.raises(ValueError, match="a broken callback"):
            with db.tx():
                db.after_commit(lambda: ran.append("first"))
                db.after_commit(broken)
                db.after_commit(lambda: ran.append("wake"))
        assert ran == ["first", "broken", "wake"]
        with db.tx():  # nothing of the failed round is left to run again
            pass
        assert ran == ["first", "broken", "wake"]
    finally:
        db.close()


@pytest.mark.timeout(60)
def test_a_sync_with_nothing_committed_since_the_last_costs_no_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite fsyncs its journal, then the journal's folder: the second finds nothing new.
    db = StateDb(tmp_path / "state.db")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    synced: list[str] = []
    monkeypatch.setattr(statedb, "sync_wal", synced.append)
    try:
        _commit_rows(db, 1)
        trio.run(db.synced)
        trio.run(db.synced)
        assert len(synced) == 1
        _commit_rows(db, 1, start=1)
        trio.run(db.synced)
        assert len(synced) == 2
    finally:
        db.close()
