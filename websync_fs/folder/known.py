"""The folder's last synced state: what each path held when local and remote last agreed.

This is the merge base of the three trees (the folder on disk, the replica,
and this table): a path whose file differs from its row changed locally; a
path whose replica node differs from its row changed remotely; both at once
is a conflict.  The row also remembers what this process itself wrote, so its
own downloads are never taken for local changes (size, mtime and inode match).

Schema (its own SQLite file beside the replica, so the engine's schema stays
the engine's)::

    known(path PRIMARY KEY, node, version, kind, size, mtime_ns, ino, mode)
    meta(key PRIMARY KEY, value)       folder path and marker id; a case-only rename
                                       under way (``respelling``, see `Merger.recover`)
    sending(path PRIMARY KEY, content, kind, size, mtime_ns, ino, mode)
                                       a file's upload under way: its content
                                       (`content_of`) and what the path held

Crash safety: a row is written only after the change it records is done (the
file renamed into place, the core holding the upload in its durable queue).
A kill -9 between the two leaves a path whose row is stale.  For an upload,
``sending`` says what was sent from what: the next look at the path takes the
node as the merge base if it holds exactly that content (`Merger._sent_before_a_crash`),
so a file written on meanwhile (tar, a program's next save) goes up as its next
version instead of beside it as a conflict copy.  Otherwise the start-up scan
sees both sides changed and settles it by content (equal: row fixed; not: a
conflict copy, nothing lost).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS known (
    path TEXT PRIMARY KEY, node TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, mode INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS known_node ON known (node);
CREATE INDEX IF NOT EXISTS known_ino ON known (ino);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sending (
    path TEXT PRIMARY KEY, content TEXT NOT NULL, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, mode INTEGER NOT NULL
);
"""


def content_of(size: int, blocks: Iterable[str]) -> str:
    """A file's content as one string: its size and its block hashes, hashed."""
    return f"{size}:{hashlib.sha1(','.join(blocks).encode()).hexdigest()}"


@dataclass(frozen=True)
class LocalSig:
    """What a path holds on disk, as far as telling a change goes (no content read)."""

    kind: str
    size: int
    mtime_ns: int
    ino: int
    mode: int
    #: Owner and group on disk (-1: not read, as in a stored row).  Not part of equality: a chown
    #: changes no content; the merger compares them with the node's (`Merger._owner_changed`).
    uid: int = field(default=-1, compare=False)
    gid: int = field(default=-1, compare=False)

    def same(self, other: LocalSig | None) -> bool:
        """Unchanged?  A folder changes only by being replaced (its mtime moves with its entries)."""
        if other is None or other.kind != self.kind:
            return False
        if self.kind == "dir":
            return self.ino == other.ino and self.mode == other.mode
        return self == other


@dataclass(frozen=True)
class Known:
    path: str
    node: str
    version: str
    sig: LocalSig


class KnownTree:
    """Rows of the last synced state, keyed by relative path."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        #: Paths with a row in ``sending`` (few: the uploads of this moment, or of a killed run).
        self._sending = {path for (path,) in self._db.execute("SELECT path FROM sending")}

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _known(r: tuple[object, ...] | None) -> Known | None:
        if r is None:
            return None
        path, node, version, kind, size, mtime, ino, mode = r
        return Known(str(path), str(node), str(version), LocalSig(str(kind), int(size), int(mtime), int(ino), int(mode)))  # type: ignore[call-overload]

    def get(self, path: str) -> Known | None:
        return self._known(self._db.execute("SELECT * FROM known WHERE path = ?", (path,)).fetchone())

    def by_node(self, node: str) -> list[Known]:
        return [k for r in self._db.execute("SELECT * FROM known WHERE node = ?", (node,)) if (k := self._known(r))]

    def by_ino(self, ino: int) -> list[Known]:
        return [k for r in self._db.execute("SELECT * FROM known WHERE ino = ?", (ino,)) if (k := self._known(r))]

    def under(self, path: str) -> list[str]:
        """Paths strictly below folder *path* ('' is the top)."""
        if not path:
            return [r[0] for r in self._db.execute("SELECT path FROM known")]
        lo = path + "/"
        return [r[0] for r in self._db.execute("SELECT path FROM known WHERE path >= ? AND path < ?", (lo, path + "0"))]

    def all(self) -> dict[str, Known]:
        """Every row by path (one query: the start-up scan's merge base)."""
        return {k.path: k for r in self._db.execute("SELECT * FROM known") if (k := self._known(r))}

    def paths(self) -> Iterator[str]:
        for (path,) in self._db.execute("SELECT path FROM known"):
            yield path

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM known").fetchone()[0])

    def put(self, path: str, node: str, version: str, sig: LocalSig) -> None:
        """*path* is synced: *node* at *version*, *sig* on disk (an upload under way there is done)."""
        row = (path, node, version, sig.kind, sig.size, sig.mtime_ns, sig.ino, sig.mode)
        if path not in self._sending:
            self._db.execute("INSERT OR REPLACE INTO known VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO known VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._db.execute("DELETE FROM sending WHERE path = ?", (path,))
        self._sending.discard(path)

    def sending(self, path: str, content: str, sig: LocalSig) -> None:
        """The file at *path*, as *sig* says, goes to the core now with *content* (`content_of`)."""
        self._db.execute("INSERT OR REPLACE INTO sending VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (path, content, sig.kind, sig.size, sig.mtime_ns, sig.ino, sig.mode))
        self._sending.add(path)

    def sent(self, path: str) -> tuple[str, LocalSig] | None:
        """The upload at *path* whose `put` never came (a kill -9 between them): its content and sig."""
        if path not in self._sending:
            return None
        r = self._db.execute("SELECT content, kind, size, mtime_ns, ino, mode FROM sending WHERE path = ?",
                             (path,)).fetchone()
        if r is None:
            return None
        content, kind, size, mtime, ino, mode = r
        return str(content), LocalSig(str(kind), int(size), int(mtime), int(ino), int(mode))

    def not_sending(self, path: str) -> None:
        if path in self._sending:
            self._db.execute("DELETE FROM sending WHERE path = ?", (path,))
            self._sending.discard(path)

    def drop(self, path: str) -> None:
        self._db.execute("DELETE FROM known WHERE path = ?", (path,))

    def move(self, src: str, dst: str, *, done: str = "") -> None:
        """Rows of *src* and everything below it now live at *dst*; meta *done* goes (one transaction)."""
        with self._db:
            self._db.execute("BEGIN")
            for old in [src, *self.under(src)]:
                self._db.execute("DELETE FROM known WHERE path = ?", (dst + old[len(src):],))
                self._db.execute("UPDATE known SET path = ? WHERE path = ?", (dst + old[len(src):], old))
            if done:
                self._db.execute("DELETE FROM meta WHERE key = ?", (done,))

    def clear(self) -> None:
        self._db.execute("DELETE FROM known")
        self._db.execute("DELETE FROM sending")
        self._sending.clear()

    def meta(self, key: str, default: str = "") -> str:
        r = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(r[0]) if r else default

    def set_meta(self, key: str, value: str, *, durable: bool = False) -> None:
        """Set *key*; *durable*: on disk when this returns, not only in the WAL (a power cut keeps it)."""
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")  # this commit syncs the WAL
        try:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
