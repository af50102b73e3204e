"""Wakes this process's long polls when any server process commits: PostgreSQL LISTEN/NOTIFY.

With several server processes on one PostgreSQL database, a commit lands on one
of them and the long polls that wait for it may be held by any other.  Every
commit queues ``NOTIFY websync_changes, 'STORE SEQ'`` in its own transaction
(`Database.announce`); PostgreSQL delivers it to every listening session after
the transaction commits, and never for one that rolled back.  The `Listener`
keeps one dedicated connection in LISTEN on a thread of its own and hands each
payload to the `Notifier`, which wakes the waiters on the event loop.

No lost wake-ups.  The listener is listening before the server accepts its
first request, and a notification is sent only after the commit is visible, so
the argument of notifier.py holds across processes: a long poll that read the
journal before the commit gets the notification, one that read after it sees
the commit.  A change of shared folders sends ``NOTIFY websync_changes, 'STORE'``
for the own store of every user it concerns (and the folder's store) the same
way, and the listener hands it to `Notifier.wake`.  When the connection breaks, notifications sent meanwhile are lost,
so after reconnecting the listener wakes every waiter (`Notifier.wake_all`):
each rereads the journal, and one that finds nothing new waits again.

Life cycle: `start` connects and LISTENs (and raises if it cannot: a server
that can't hear other processes would hold long polls for nothing), `close`
stops the thread within `_POLL_S`.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from sqlalchemy.engine import make_url

from .database import CHANGES_CHANNEL
from .notifier import Notifier

__all__ = ["Listener"]

log = logging.getLogger(__name__)

# How often the thread looks up from a quiet connection to see whether it should stop.
_POLL_S = 0.5
_RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class Listener:
    """A thread that LISTENs for other processes' commits and feeds them to a `Notifier`."""

    def __init__(self, url: str, notifier: Notifier) -> None:
        self._conninfo = _conninfo(url)
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect and LISTEN now, then follow notifications on a thread until `close`."""
        conn = self._connect()
        self._thread = threading.Thread(target=self._run, args=(conn,), name="websync-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following notifications and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        conn.execute(f"LISTEN {CHANGES_CHANNEL}")
        return conn

    def _run(self, conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
        failures = 0
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = self._connect()
                except psycopg.Error as exc:
                    delay = _RETRY_S[min(failures, len(_RETRY_S) - 1)]
                    failures += 1
                    log.warning("can't listen for other server processes' commits (retrying in %g s): %s",
                                delay, exc)  # fmt: skip
                    self._stop.wait(delay)
                    continue
                log.info("listening for other server processes' commits again")
                self._notifier.wake_all()  # whatever was sent while deaf: see the module docstring
                failures = 0
            try:
                for note in conn.notifies(timeout=_POLL_S):
                    self._deliver(note.payload)
            except psycopg.Error as exc:
                log.warning("lost the connection that listens for other server processes' commits: %s", exc)
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _deliver(self, payload: str) -> None:
        store, _, seq = payload.partition(" ")
        if not seq:  # news besides the journal: the store's user's shared folders changed
            self._notifier.wake([store])
            return
        try:
            self._notifier.notify(store, int(seq))
        except ValueError:
            log.warning("ignored a notification that is not 'STORE SEQ' or 'STORE': %r", payload)


def _conninfo(url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (psycopg takes ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
