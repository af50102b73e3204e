"""Working copies made durable by fsync() while their file stays open, and their recovery at start.

Sealing a file (hashing its changed blocks, storing them in the cache, queueing
an update) and then syncing all of it took five fsyncs an `fsync()`: the new
block file, two of its folders, the cache index and the state database.  A
program that fsyncs as it goes -- SQLite at every commit, a log after every
line -- paid that each time.  Instead `fsync()` writes down where the
file's current bytes are and syncs that record and the working copy side by
side, as a local file system syncs a file and its journal:

* ``base``: block hashes of the blocks unchanged since the copy was opened
  (on the server, or in the cache under a queued item);
* ``stored``: block index -> hash of appended blocks that went straight into
  the cache (workcopy.py, "appending writers");
* ``in_file``: the indexes whose bytes are in the working-copy file, or in
  ``inline`` -- the whole copy -- while it is memory (spillfile.py);
* ``size`` and ``mtime_ns`` at the fsync;
* ``grows``: the copy's file held all of it, up to its end, and its mtime
  was a write's (not one set by utimens).  Then the file's own length and
  mtime count too, and what the copy gains goes into the file
  (`WorkingCopy.grows_in_file`): an fsync that only added bytes to the file,
  or rewrote bytes already in it, writes no new record and syncs the file
  alone -- one fsync, as on a local disk, where it was the record's and the
  file's side by side (a log or a database file fsync'd after every write).

A record lives in the state database beside the replica and the queue:

===============================  =============================================
event                            the record
===============================  =============================================
fsync() of a changed copy        written (replacing the last), then synced;
                                 kept, when it grows and `follows` holds
seal (close, a quiet moment)     deleted in the seal's own transaction
copy closed unsealed             deleted
start-up                         every record is sealed into a queued update
                                 (`reseal`), then deleted; the files go
===============================  =============================================

A crash between the record's commit and the end of its fsync leaves a record
whose bytes may be partly older: the fsync never returned, so nothing was
promised.  Bytes written after the fsync may show: a growing record takes
its file as it is (longer by what was written, shorter by a truncate), other
records cut the copy at ``size``, and bytes of a copy on disk overwritten in
place show (what a local disk holds after a
crash is the same mix; after a killed writer it holds all of them).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from websync_server.protocol import BLOCK_SIZE, BlockHash, block_count

from .statedb import StateDb

__all__ = ["Fsynced", "Snapshot", "as_left", "reader"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fsynced (
    ino INTEGER PRIMARY KEY,
    path TEXT NOT NULL,  -- the working copy's file name in the work folder ('' while in memory)
    size INTEGER NOT NULL,
    mtime_ns INTEGER,
    base TEXT NOT NULL,  -- JSON list of hashes
    stored TEXT NOT NULL,  -- JSON {index: hash}
    in_file TEXT NOT NULL,  -- JSON list of indexes
    inline BLOB,
    grows INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Snapshot:
    """Where a working copy's bytes are at one moment (see the module docstring)."""

    size: int
    base: tuple[BlockHash, ...]
    stored: dict[int, BlockHash]
    in_file: tuple[int, ...]
    inline: bytes | None = None
    path: str = ""
    mtime_ns: int | None = None
    grows: bool = False

    def follows(self, last: Snapshot) -> bool:
        """True if the growing record *last* already stands for this later snapshot of the same copy.

        Nothing but the file changed since: the same blocks elsewhere, the same
        file, at least as long, with every block it gained in the file.
        """
        if not (last.grows and self.grows and self.path == last.path and self.size >= last.size):
            return False
        if self.base != last.base or self.stored != last.stored:
            return False
        gained = set(range(block_count(last.size), block_count(self.size))) - set(self.stored)
        return set(self.in_file) == set(last.in_file) | gained

    def grown(self, length: int, mtime_ns: int | None) -> Snapshot:
        """This growing record as its file stands at a start: *length* bytes, last written at *mtime_ns*."""
        if not self.grows or length == self.size and (mtime_ns or 0) <= (self.mtime_ns or 0):
            return self
        # The file is the copy: longer by what was written since, shorter by a truncate (at
        # the record it was exactly as long; only a truncate makes it shorter).
        size = length
        gained = range(block_count(self.size), block_count(size))
        mtimes = [m for m in (self.mtime_ns, mtime_ns) if m is not None]
        return dataclasses.replace(self, size=size, in_file=tuple(sorted({*self.in_file, *gained})),
                                   mtime_ns=max(mtimes) if mtimes else None)

    @property
    def hashes(self) -> list[str]:
        """The blocks this content names in the cache (and on the server)."""
        return [*self.base, *self.stored.values()]

    def blocks(self, read: Callable[[int, int], bytes], store: Callable[[bytes], str]) -> tuple[BlockHash, ...]:
        """The block list of this content; blocks read with *read(offset, length)* go into *store* (which hashes)."""
        out = []
        in_file = set(self.in_file)
        for index in range(block_count(self.size)):
            if index in self.stored:
                out.append(self.stored[index])
            elif index in in_file:
                start = index * BLOCK_SIZE
                length = min(BLOCK_SIZE, self.size - start)
                data = read(start, length).ljust(length, b"\0")  # a hole, or past the file's end: zeros
                out.append(BlockHash(store(data)))
            else:
                out.append(self.base[index])
        return tuple(out)


class Fsynced:
    """The table of fsync'd working copies."""

    def __init__(self, db: StateDb) -> None:
        self._db = db
        db.conn.executescript(_SCHEMA)
        db.ensure_columns("fsynced", {"grows": "INTEGER NOT NULL DEFAULT 0"})
        #: Inodes that have a record, with the one this session made durable (None: not yet,
        #: or an earlier session's): only such a record may stand for a later fsync.
        self._has: dict[int, Snapshot | None] = {ino: None for (ino,) in db.execute("SELECT ino FROM fsynced")}

    def record(self, ino: int, snap: Snapshot) -> None:
        """Write *snap* as *ino*'s fsync'd state; call inside a transaction."""
        self._db.execute(
            "INSERT OR REPLACE INTO fsynced (ino, path, size, mtime_ns, base, stored, in_file, inline, grows)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (ino, snap.path, snap.size, snap.mtime_ns, json.dumps(snap.base),
             json.dumps({str(i): h for i, h in snap.stored.items()}), json.dumps(snap.in_file), snap.inline,
             int(snap.grows)),
        )
        self._has[ino] = None

    def durable(self, ino: int, snap: Snapshot) -> None:
        """*snap*, recorded for *ino*, is synced: a later fsync it `follows` may rely on it."""
        if ino in self._has:  # not sealed and forgotten meanwhile
            self._has[ino] = snap

    def has(self, ino: int) -> bool:
        return ino in self._has

    def last(self, ino: int) -> Snapshot | None:
        """The durable record this session wrote for *ino*, if it still stands."""
        return self._has.get(ino)

    def forget(self, ino: int) -> None:
        """Drop *ino*'s record (its content was sealed, or its copy closed)."""
        if ino in self._has:
            self._db.execute("DELETE FROM fsynced WHERE ino=?", (ino,))
            del self._has[ino]

    def __iter__(self) -> Iterator[tuple[int, Snapshot]]:
        rows = self._db.execute(
            "SELECT ino, path, size, mtime_ns, base, stored, in_file, inline, grows FROM fsynced ORDER BY ino",
        ).fetchall()
        for ino, path, size, mtime, base, stored, in_file, inline, grows in rows:
            yield ino, Snapshot(
                size=size, base=tuple(json.loads(base)), stored={int(i): h for i, h in json.loads(stored).items()},
                in_file=tuple(json.loads(in_file)), inline=inline, path=path, mtime_ns=mtime, grows=bool(grows),
            )


def as_left(snap: Snapshot, work_dir: Path) -> Snapshot:
    """*snap* as its copy's file stands now (`Snapshot.grown`): what a start reseals."""
    if not snap.grows:
        return snap
    try:
        st = os.stat(work_dir / snap.path)
    except OSError:
        return snap
    return snap.grown(st.st_size, st.st_mtime_ns)


def reader(snap: Snapshot, work_dir: Path) -> Callable[[int, int], bytes]:
    """Read bytes of *snap*'s copy: its inline bytes, or its file in *work_dir* (none if gone)."""
    if snap.inline is not None:
        data = snap.inline
        return lambda offset, length: data[offset : offset + length]

    def read(offset: int, length: int) -> bytes:
        try:
            with open(work_dir / snap.path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError):
            return b""

    return read
