"""The state database's log is copied into the database by a thread of its own, not by the writer."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

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
