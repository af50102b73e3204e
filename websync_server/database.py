"""The metadata database: one engine, its dialect quirks, and two kinds of transaction.

Everything above this module uses portable SQLAlchemy Core inside either a
`Database.read` transaction (a consistent snapshot) or a `Database.write`
transaction (serialized with every other writer).  The dialect differences live
here and nowhere else:

SQLite (the embedded default)
    WAL mode, so readers never block the writer and vice versa.
    ``synchronous=FULL``: in WAL mode that fsyncs the log on every commit.
    ``NORMAL`` would keep the file consistent but can lose the last commits on a
    power cut -- after the client was told ``200`` and dropped its own queue
    entry, i.e. lost user data.  One fsync per commit is the price of the 200.
    Writers open with ``BEGIN IMMEDIATE``: a deferred transaction that first
    reads and then writes fails with SQLITE_BUSY (no retry) when another writer
    committed in between.  Writers in this process also queue on a lock first,
    so they wait in FIFO order instead of in SQLite's sleep-and-poll busy handler.

PostgreSQL (``postgresql://`` or ``postgres://`` URLs, driven by psycopg 3)
    Reads run at REPEATABLE READ so a multi-statement read sees one snapshot.
    Writers run at READ COMMITTED and rely on the caller's ``SELECT ... FOR
    UPDATE`` of the store row, which serializes commits per store wherever they
    arrive (any number of server processes); after the lock every statement
    sees the latest committed rows, so a batch id committed by another process
    is found and not applied twice.  `Database.announce` (and `announce_wake`)
    queues a NOTIFY in the committing transaction; PostgreSQL delivers it to every listening process
    only if and when that transaction commits (listener.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from . import migrations
from ._exceptions import DatabaseError, InsufficientStorage
from .schema import SCHEMA_VERSION, meta, metadata

__all__ = ["CHANGES_CHANNEL", "DB_FILENAME", "Database", "engine_url", "sqlite_url"]

log = logging.getLogger(__name__)

DB_FILENAME = "websync.db"

# How long a writer in another process (e.g. ``websync-server user add`` while
# the server runs) may hold SQLite's write lock before we give up.
_SQLITE_BUSY_TIMEOUT_S = 30.0

#: The PostgreSQL NOTIFY channel of commits, payload "STORE SEQ", and of other news for a store's
#: long polls, payload "STORE" (listener.py).
CHANGES_CHANNEL = "websync_changes"

# Execution option that marks a connection as a writer (see _sqlite_begin).
_WRITE_OPTION = "websync_write"


class Database:
    """The metadata database behind one engine; create with `Database.open`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # Only SQLite needs it: one writer at a time per database file anyway.
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def open(cls, url: str) -> Database:
        """Connect to *url*, create the schema on first use, and check its version."""
        try:
            engine = _create_engine(url)
        except (SQLAlchemyError, ImportError) as exc:
            raise DatabaseError(f"can't open the database {url}: {exc}") from exc
        db = cls(engine)
        try:
            db._initialize()
        except SQLAlchemyError as exc:
            engine.dispose()
            raise DatabaseError(f"can't open the database {url}: {exc}") from exc
        except DatabaseError:
            engine.dispose()
            raise
        return db

    @classmethod
    def open_in(cls, data_dir: Path) -> Database:
        """The embedded SQLite database in a server data directory."""
        return cls.open(sqlite_url(data_dir / DB_FILENAME))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction that sees one consistent snapshot."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            if _is_disk_full(exc):
                raise InsufficientStorage("the server's disk is full; nothing was changed") from exc
            raise
        finally:
            if lock is not None:
                lock.release()

    def announce(self, conn: Connection, store: str, seq: int) -> None:
        """Tell every server process on this database, once *conn*'s transaction commits, that *store* is at *seq*.

        Nothing on SQLite: only one process serves an SQLite database, and it
        wakes its own long polls (notifier.py).
        """
        if not self.is_sqlite:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                         {"channel": CHANGES_CHANNEL, "payload": f"{store} {seq}"})  # fmt: skip

    def lock(self, conn: Connection, name: str) -> None:
        """Hold the lock *name* until *conn*'s transaction ends: its holders run one at a time in every process.

        A PostgreSQL advisory lock; on SQLite every writer holds the database's one write lock already.
        """
        if not self.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})

    def announce_wake(self, conn: Connection, stores: Iterable[str]) -> None:
        """Wake, once *conn*'s transaction commits, every long poll of *stores* in the other server processes.

        For news that is not in a store's journal (its user's shared folders
        changed): payload ``STORE`` with no seq (listener.py).  Nothing on SQLite,
        as for `announce`; the caller wakes its own process after the commit.
        """
        if not self.is_sqlite:
            for store in sorted(set(stores)):
                conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                             {"channel": CHANGES_CHANNEL, "payload": store})  # fmt: skip

    def continue_ids(self, conn: Connection) -> None:
        """After rows were copied in with their ids, make new rows' ids follow the highest (transfer.py).

        SQLite takes the next id from the table itself; PostgreSQL from a
        sequence per column, which explicit ids leave behind.
        """
        if self.is_sqlite:
            return
        for table in metadata.sorted_tables:
            column = table.autoincrement_column
            if column is None:
                continue
            conn.execute(
                text(f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                     f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"),
                {"table": table.name, "column": column.name},
            )  # fmt: skip

    def _initialize(self) -> None:
        with self.write() as conn:
            # checkfirst: a second process starting at the same time (serve and
            # ``user add``) finds the tables the first one made under this lock.
            # On an older database it adds only missing tables (never indexes of
            # existing ones): the migrations below bring those up to date.
            metadata.create_all(conn, checkfirst=True)
            found = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            if found is None:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                conn.execute(insert(meta).values(key="created_ns", value=str(time.time_ns())))
                migrations.stamp(conn, SCHEMA_VERSION)
                log.info("created metadata schema version %d", SCHEMA_VERSION)
            elif int(found) > SCHEMA_VERSION:
                raise DatabaseError(
                    f"the database has schema version {found}, made by a newer release; this server knows "
                    f"versions up to {SCHEMA_VERSION}: run the newer release (nothing was changed)"
                )
            elif int(found) < SCHEMA_VERSION:
                migrations.upgrade(conn, int(found), SCHEMA_VERSION)
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
                log.info("migrated the metadata schema from version %s to %d", found, SCHEMA_VERSION)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite database file."""
    return f"sqlite:///{path}"


def engine_url(url: str) -> str:
    """*url* with the driver this server uses for its engine: psycopg 3 for PostgreSQL.

    ``postgresql://`` alone means psycopg2 to SQLAlchemy, which this server
    does not install; ``postgres://`` is what many hosting services hand out.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _create_engine(url: str) -> Engine:
    url = engine_url(url)
    if not url.startswith("sqlite"):
        # Long polls hold no connection (they wait on the notifier), so the
        # pool is sized for the worker threads that run queries at once.
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=32)
    engine = create_engine(
        url,
        connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        # Commits run in a thread pool of up to 40 threads; more pooled
        # connections than writers is pointless for SQLite but readers benefit.
        pool_size=8,
        max_overflow=32,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _is_disk_full(exc: OperationalError) -> bool:
    # SQLITE_FULL is 13 (sqlite3 sets sqlite_errorcode since Python 3.11);
    # PostgreSQL's disk_full is SQLSTATE 53100 (psycopg 3: sqlstate, psycopg2: pgcode).
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == 13:
        return True
    return "53100" in (getattr(orig, "sqlstate", None), getattr(orig, "pgcode", None))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (it would issue a
    # deferred BEGIN on its own); _sqlite_begin issues the right BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    writer = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")
