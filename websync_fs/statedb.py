"""The client's state database: one SQLite file for the replica and the queue.

Both live in one database so that a local change and the queue item that sends
it to the server are written in one transaction: after a crash either both are
there or neither is.
"""

from __future__ import annotations

import logging
import sqlite3

from cache import WalCheckpointer, sync_wal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .quicksync import FSYNCS

log = logging.getLogger(__name__)

#: Commits after which the log is copied into the database, by a thread of its own.
CHECKPOINT_EVERY = 200


class StateDb:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed process loses nothing (the log is in the page
        # cache); `sync()` covers power loss and is called for fsync().
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA wal_autocheckpoint={WalCheckpointer.BACKSTOP_PAGES}")
        self._depth = 0
        self._after: list[Callable[[], None]] = []
        self._synced_mark = -1  # `conn.total_changes` when the last finished `synced` began
        self._checkpoints = WalCheckpointer(self.path, "statedb-checkpoint", CHECKPOINT_EVERY)

    def close(self) -> None:
        self._checkpoints.close()
        self.conn.close()

    def execute(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction; nested uses join the outer one.

        Callbacks registered with `after_commit` run once the outermost
        transaction has committed, and are dropped if it rolls back.
        """
        if self._depth == 0:
            self.conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.conn.execute("ROLLBACK")
                self._after.clear()
            raise
        self._depth -= 1
        if self._depth == 0:
            self.conn.execute("COMMIT")
            after, self._after = self._after, []
            failed: Exception | None = None
            for fn in (self._checkpoints.committed, *after):
                # Every callback runs: one that fails must not cost the uploader the wake
                # that follows it (the change would wait for the next one to come along).
                try:
                    fn()
                except Exception as exc:
                    log.exception("after a commit of %s", self.path)
                    failed = failed or exc
            if failed is not None:
                raise failed

    @contextmanager
    def large_cache(self, mib: int = 64) -> Iterator[None]:
        """A page cache of *mib* MiB while the block runs (a first listing inserts at random ids).

        With SQLite's default of 2 MiB, a first listing of 200,000 files spent
        more time moving index pages in and out than inserting.
        """
        (before,) = self.conn.execute("PRAGMA cache_size").fetchone()
        self.conn.execute(f"PRAGMA cache_size=-{mib * 1024}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA cache_size={int(before)}")

    def ensure_columns(self, table: str, columns: dict[str, str]) -> list[str]:
        """Add *columns* (name -> SQL declaration) that *table* lacks; return those added.

        State databases written by an earlier version gain new columns in place.
        """
        have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
        added = [name for name in columns if have and name not in have]
        for name in added:
            self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name]}")
        return added

    def after_commit(self, fn: Callable[[], None]) -> None:
        if self._depth == 0:
            fn()
        else:
            self._after.append(fn)

    def sync(self) -> None:
        """Make everything committed so far durable against power loss (one fsync of the log)."""
        sync_wal(self.path)

    async def synced(self) -> None:
        """`sync` (on the loop while fsyncs are quick: quicksync.py), or nothing if no row
        changed since the last such sync began.

        An fsync of a folder, or of a file with no unsynced change, most often
        follows one that synced everything already (SQLite syncs its journal,
        then the journal's folder): it then costs no thread trip and no fsync.
        """
        mark = self.conn.total_changes  # rows changed so far; a rolled-back one counts too
        if mark == self._synced_mark:
            return
        await FSYNCS.run(self.sync)
        self._synced_mark = max(self._synced_mark, mark)
