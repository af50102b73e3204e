"""Block files and their index on disk: diskcache, and exactly what we rely on in it.

`BlockStore` is the only module that touches diskcache, SQLite or the block
files; `BlockCache` above it holds the policy (hash checks, protection, when to
evict).  Every error from below is translated here, once, into the tree in
`_exceptions`.

Layout of a cache directory::

    cache.db (+ -wal, -shm)       diskcache's SQLite index, WAL mode: one row per block;
                                  a block of at most `INLINE_MAX` bytes is kept in
                                  its row, not in a file of its own
    ab/<hash>.<random>.val        one file per larger block, named after its hash so an
                                  operator can find it; the random part lets two
                                  processes put the same block at once without
                                  sharing a file.  One level of 256 folders: with
                                  two (ab/cd/, 65,536 folders) nearly every small
                                  block made a folder of its own (a mkdir a put).
                                  Files of caches written with two levels are
                                  found through their rows as before.
    pending/<random>.val          a block being written while its hash is found
                                  (`insert_hashing`), moved to its name after; one
                                  left by a killed process is an unindexed file,
                                  which `remove_orphans` deletes once it is old

Settings (persisted by diskcache in its ``Settings`` table, re-applied on every
open): ``eviction_policy='least-recently-used'`` so that diskcache's own
``get`` stamps the row's ``access_time`` inside the write transaction that
counts the hit -- an LRU refresh costs no extra SQLite write;
``cull_limit=0`` switches off diskcache's automatic culling, which cannot know
which blocks are protected (we evict ourselves, below); ``statistics=1`` keeps
hit and miss counters in the database, shared by every process.  diskcache
counts a miss in a write transaction of its own; a miss is this store's
first read of every block it does not have (a cold read waited ~0.5 ms on
that commit), so `load` looks first and a miss is counted in memory, written
with the next block's row (a miss is most often followed by the block it
missed) or at `close`;
``disk_min_file_size=0`` stops diskcache from choosing where a value goes: we
hand it either a file already written (`_Written`) or the bytes to keep in the
row (`_Inline`), and give the row the block's size either way (diskcache's own
inline values count zero bytes, which would hide them from the limit).

Why small blocks live in the index: creating a file costs about 1 ms of CPU
here (ext4 allocates an inode, a directory entry, an extent), a row in the WAL
about 0.15 ms, and a store of small files pays it once a file.  SQLite's own
measurements put the crossover of reading a blob from a row or from a file
near 100 KiB; `INLINE_MAX` stays well below it, at diskcache's own default
threshold for keeping a value in its row (32 KiB).

What we rely on beyond diskcache's documented API (checked against 5.6.3; a
major diskcache release needs these rechecked):

* the ``Cache`` table's columns ``rowid, key, raw, access_time, size,
  filename`` (str keys are stored with ``raw = 1``) and its triggers that keep
  the ``Settings`` rows ``size`` and ``count`` current;
* the ``Settings`` rows ``hits`` and ``misses``;
* ``Cache._sql``, the calling thread's connection, used inside the public
  ``Cache.transact()`` so that our statements join diskcache's transaction.

A block is written to its file before its row is inserted, and a row is deleted
before its file; so a row never points at a file that is still being written,
and a crash leaves at worst an unreferenced file (an orphan), which
`remove_orphans` reclaims.

A full disk: a put fails with `CacheFull` and removes what it wrote.  Reads go
on -- if the LRU stamp cannot be written (the WAL cannot grow), `load` reads
the block without it -- and eviction checkpoints the WAL to get room for its
deletions, so the owner can always make space (both seen on a full tmpfs).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

from ._exceptions import CacheError, CacheFull, CacheUnavailable
from ._filewriter import FileWriter

log = logging.getLogger(__name__)

#: Windows opens files as text unless told; its fsync (FlushFileBuffers) needs a descriptor open for writing.
_BINARY = getattr(os, "O_BINARY", 0)
_FOR_FSYNC = (os.O_RDWR | _BINARY) if os.name == "nt" else os.O_RDONLY

DEFAULT_TIMEOUT = 60.0
"""Seconds a statement waits for another process's SQLite write lock before failing."""

#: Log pages past which a commit still copies them itself (SQLite's own checkpoint), for a
#: writer its `WalCheckpointer` thread cannot keep up with.
WAL_BACKSTOP_PAGES = 4_000

_SETTINGS: dict[str, Any] = {
    "eviction_policy": "least-recently-used",
    "cull_limit": 0,
    # Belt and braces next to cull_limit=0: an explicit Cache.cull() by some other
    # tool opening this directory must not evict protected blocks either.
    "size_limit": 2**62,
    "statistics": 1,
    "disk_min_file_size": 0,
    # The log is copied by a thread of its own (WalCheckpointer); this is the backstop.
    "sqlite_wal_autocheckpoint": WAL_BACKSTOP_PAGES,
}

INLINE_MAX = 32 * 1024
"""Blocks of at most this many bytes are kept in their index row instead of a file."""

#: Where a block is written before its hash, found meanwhile, names it (`insert_hashing`);
#: what a killed process left there is an orphan like any unindexed block file.
_PENDING = "pending"

_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_PAGE = 512  # rows per round trip when scanning the index
_ADD_MISSES = "UPDATE Settings SET value = value + ? WHERE key = 'misses'"


class Totals(NamedTuple):
    """The counters diskcache keeps in its ``Settings`` table."""

    size: int
    entries: int
    hits: int
    misses: int


Stamp = tuple[int, int, int, int]
"""A block file's (st_ino, st_size, st_mtime_ns, st_ctime_ns): any write to the file changes it."""


@dataclass(slots=True)
class Loaded:
    """A block's bytes as found on disk, or why they could not be read."""

    filename: str | None
    data: bytes | None
    problem: str | None = None
    #: The file's stamp taken after the bytes were read, so a write during the read shows.
    stamp: Stamp | None = None


@dataclass(slots=True)
class _Written:
    """A block file already on disk that a new row should point at."""

    filename: str
    size: int


@dataclass(slots=True)
class _Inline:
    """A small block's bytes, to be kept in its index row."""

    data: bytes


@dataclass(slots=True)
class _Opened:
    """A block file opened inside diskcache's ``get`` transaction (None if it has vanished)."""

    filename: str
    reader: IO[bytes] | None


class _BlockDisk(diskcache.Disk):
    """diskcache's serializer, taught to index files we wrote and to open them for reading."""

    def __init__(self, directory: str, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self._root = directory

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if isinstance(value, _Written):
            return value.size, MODE_BINARY, value.filename, None
        if isinstance(value, _Inline):
            return len(value.data), MODE_RAW, None, sqlite3.Binary(value.data)
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode == MODE_BINARY and read:
            # Opened while diskcache's transaction still holds the write lock, so an
            # eviction (which deletes the row first and the file after its commit)
            # cannot remove the file between our finding the row and opening it.
            try:
                reader: IO[bytes] | None = open(os.path.join(self._root, filename), "rb", buffering=0)
            except FileNotFoundError:
                reader = None
            return _Opened(filename, reader)
        return super().fetch(mode, filename, value, read)


class BlockStore:
    """Block files under one directory, indexed by diskcache; safe across threads and processes.

    diskcache gives every thread its own SQLite connection.  Our write
    transactions are also serialized within the process by ``_write_lock``, so
    worker threads queue on a mutex (woken at once) rather than in SQLite's
    busy handler (which sleeps and polls); the lock never covers file I/O.
    """

    def __init__(self, directory: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._directory = directory
        self._write_lock = threading.Lock()
        self._misses = 0  # counted since the last write of the index (see the module's docstring)
        self._misses_lock = threading.Lock()  # never held over I/O: the event loop takes it
        self._writer = FileWriter()
        self._checkpoints = WalCheckpointer(os.path.join(directory, "cache.db"), "cache-checkpoint")
        with _translated("open the cache"):
            self._cache: diskcache.Cache | None = diskcache.Cache(
                directory, timeout=timeout, disk=_BlockDisk, **_SETTINGS
            )

    @property
    def directory(self) -> str:
        """The cache directory."""
        return self._directory

    @property
    def _db(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            raise CacheUnavailable("the cache is closed", errno.EBADF)
        return cache

    def close(self) -> None:
        """Close the database, including the connections other threads opened."""
        with contextlib.suppress(CacheError):  # only counters are lost
            self._write_misses()
        with self._write_lock:
            cache, self._cache = self._cache, None
        if cache is None:
            return
        self._checkpoints.close()
        cache.close()  # this thread's connection
        # diskcache keeps one connection per thread in a threading.local, and only the
        # owning thread may close it.  Dropping the last reference to the Cache frees
        # them, but CPython's sqlite3.Connection sits in a reference cycle with its
        # statement cache (checked on 3.11: `del conn` leaves the file open until
        # gc.collect()), so collect now: the files must be closed when close() returns
        # (unmount, removing the directory, Windows' sharing rules).
        del cache
        gc.collect()

    # -- one block ---------------------------------------------------------------

    def load(self, h: str) -> Loaded | None:
        """Return block *h* as stored, or None; counts a hit or miss and refreshes its LRU stamp.

        On a full disk, where even that small write can fail (the WAL cannot
        grow), the block is still read, without refreshing or counting it.
        """
        try:
            if not self.find(h):
                return None  # no write transaction for a miss
            with _translated(f"read block {h}"):
                with self._write_lock:
                    found = self._db.get(h, read=True)
        except CacheFull:
            with _translated(f"read block {h}"):
                row = self._db._sql(
                    "SELECT filename FROM Cache WHERE key = ? AND raw = 1", (h,)
                ).fetchone()
            return None if row is None else self.read(h, row[0])
        if found is None:
            return None
        if isinstance(found, bytes):  # kept in its row
            return Loaded(None, found)
        if not isinstance(found, _Opened):
            return Loaded(None, None, f"unexpected value of type {type(found).__name__}")
        if found.reader is None:
            return Loaded(found.filename, None, "its file is missing")
        try:
            with found.reader as reader:
                data = reader.read()  # one allocation, sized by fstat
                stamp = _stamp(os.fstat(reader.fileno()))
        except OSError as exc:
            return Loaded(found.filename, None, f"its file cannot be read: {exc}")
        return Loaded(found.filename, data, stamp=stamp)

    def read(self, h: str, filename: str | None) -> Loaded:
        """Read block *h* as stored in *filename* (None: in its row), refreshing and counting nothing."""
        if filename is None:
            data = self.read_inline(h)
            return Loaded(None, data, None if data is not None else "its row is gone")
        try:
            with open(os.path.join(self._directory, filename), "rb", buffering=0) as reader:
                data = reader.read()
                return Loaded(filename, data, stamp=_stamp(os.fstat(reader.fileno())))
        except OSError as exc:
            return Loaded(filename, None, f"its file cannot be read: {exc}")

    def read_inline(self, h: str) -> bytes | None:
        """The bytes of block *h* if it is kept in its row; None otherwise.  A read, no write."""
        with _translated(f"read block {h}"):
            row = self._db._sql(
                "SELECT value FROM Cache WHERE key = ? AND raw = 1 AND filename IS NULL", (h,)
            ).fetchone()
        if row is None or not isinstance(row[0], bytes):
            return None
        return row[0]

    def read_range(self, filename: str, offset: int, length: int) -> tuple[bytes, Stamp] | None:
        """Up to *length* bytes of a block file from *offset*, and its stamp; None if it cannot be read.

        Touches neither the index nor the counters.  A file is never rewritten
        in place, so one opened just before an eviction removed it still holds
        its block's bytes.
        """
        try:
            fd = os.open(os.path.join(self._directory, filename), os.O_RDONLY | _BINARY)
        except OSError:
            return None
        try:
            if hasattr(os, "pread"):
                data = os.pread(fd, length, offset)
            else:  # Windows; this descriptor is ours alone, so its position is too
                os.lseek(fd, offset, os.SEEK_SET)
                data = os.read(fd, length)
            return data, _stamp(os.fstat(fd))
        except OSError:
            return None
        finally:
            os.close(fd)

    def contains(self, h: str) -> bool:
        """True if an entry for *h* exists (its bytes are not checked)."""
        with _translated(f"look up block {h}"):
            return bool(h in self._db)

    def find(self, h: str) -> bool:
        """`contains`, for a read: an absent block counts as a miss (see the module's docstring)."""
        if self.contains(h):
            return True
        self.missed()
        return False

    def refresh(self, h: str) -> bool:
        """Stamp *h* as just used; False if it is absent."""
        with _translated(f"refresh block {h}"):
            with self._write_lock:
                cursor = self._db._sql(
                    "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (time.time(), h)
                )
        return bool(cursor.rowcount > 0)

    def insert(self, h: str, data: bytes | bytearray) -> tuple[str | None, Stamp | None]:
        """Index *data* as *h*: in its row if small, else in a new file; return the file and its stamp.

        A block kept in its row has neither (None, None).  On any failure leave no trace.
        """
        if len(data) <= INLINE_MAX:
            with _translated(f"store block {h}"):
                self._set(h, _Inline(bytes(data)))
            self._checkpoints.committed()
            return None, None
        name = os.path.join(h[:2], f"{h}.{secrets.token_hex(4)}.val")
        try:
            with _translated(f"store block {h}"):
                stamp = _write_new_file(os.path.join(self._directory, name), data, self._writer)
                self._set(h, _Written(name, len(data)))
            self._checkpoints.committed()
        except BaseException:
            self._discard(h, name)
            raise
        return name, stamp

    def insert_hashing(self, data: bytes, digest: Callable[[], str]) -> tuple[str, str, Stamp] | tuple[str, None, None]:
        """Write *data* into a new file while *digest* (hashing it elsewhere) finds its name; index it.

        For blocks bigger than `INLINE_MAX`.  Returns (hash, file, stamp), or
        (hash, None, None) when the block was there already (only refreshed,
        the new file gone).  On any failure leave no trace.
        """
        pending = os.path.join(self._directory, _PENDING, f"{secrets.token_hex(8)}.val")
        try:
            with _translated("store a block"):
                _write_new_file(pending, data, self._writer)
                h = digest()
                if self.refresh(h):
                    os.remove(pending)
                    return h, None, None
                name = os.path.join(h[:2], f"{h}.{secrets.token_hex(4)}.val")
                _move_new_file(pending, os.path.join(self._directory, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(pending)
            raise
        try:
            with _translated(f"store block {h}"):
                stamp = _stamp(os.stat(os.path.join(self._directory, name)))  # after the move: it moves the ctime
                self._set(h, _Written(name, len(data)))
            self._checkpoints.committed()
        except BaseException:
            self._discard(h, name)  # not a file whose row was committed
            raise
        return h, name, stamp

    def sync(self, hashes: Iterable[str]) -> None:
        """Make the files of *hashes* and the index rows naming them survive a power loss."""
        folders: set[str] = set()
        with _translated("sync the cache"):
            for h in hashes:
                row = self._db._sql("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (h,)).fetchone()
                if row is None or row[0] is None:
                    continue
                path = os.path.join(self._directory, row[0])
                fd = os.open(path, _FOR_FSYNC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                folder = os.path.dirname(path)
                folders.update((folder, os.path.dirname(folder)))
            for folder in folders:
                _fsync_dir(folder)
            sync_wal(os.path.join(self._directory, "cache.db"))

    def drop(self, h: str, filename: str | None, *, counted_as_hit: bool = False) -> bool:
        """Delete the entry *h* if it still points at *filename*; True if it did.

        With *counted_as_hit*, turn the hit diskcache counted for the read that
        found the block damaged into a miss, in the same transaction.
        """
        with _translated(f"drop block {h}"):
            with self._write_lock:
                db = self._db
                with db.transact():
                    if filename is None:
                        cursor = db._sql("DELETE FROM Cache WHERE key = ? AND raw = 1", (h,))
                    else:
                        cursor = db._sql(
                            "DELETE FROM Cache WHERE key = ? AND raw = 1 AND filename = ?",
                            (h, filename),
                        )
                    dropped = bool(cursor.rowcount > 0)
                    if counted_as_hit:
                        db._sql("UPDATE Settings SET value = value - 1 WHERE key = 'hits'")
                        db._sql(_ADD_MISSES, (1,))
            if filename is not None:
                # If the row had already moved on (re-put or evicted elsewhere), whoever
                # moved it removed this file or will; removing twice is harmless.
                db.disk.remove(filename)
        return dropped

    def _set(self, h: str, value: object) -> None:
        """Index *h* as *value*, writing the misses counted meanwhile in the same transaction."""
        with self._write_lock, self._misses_taken() as misses:
            db = self._db
            with db.transact():
                db.set(h, value)
                if misses:
                    db._sql(_ADD_MISSES, (misses,))

    def missed(self, count: int = 1) -> None:
        """Count *count* reads that found no block; written to the index with its next write."""
        with self._misses_lock:
            self._misses += count

    @contextlib.contextmanager
    def _misses_taken(self) -> Iterator[int]:
        """The misses counted so far, for a write that adds them; counted again if it fails."""
        with self._misses_lock:
            misses, self._misses = self._misses, 0
        try:
            yield misses
        except BaseException:
            self.missed(misses)
            raise

    def _write_misses(self) -> None:
        with _translated("count cache misses"), self._write_lock, self._misses_taken() as misses:
            if misses:
                self._db._sql(_ADD_MISSES, (misses,))

    def _discard(self, h: str, filename: str) -> None:
        """Remove a file a failed insert wrote, unless its row was committed after all."""
        cache = self._cache
        if cache is None:
            return
        with contextlib.suppress(Exception):
            row = cache._sql("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (h,)).fetchone()
            if row is not None and row[0] == filename:
                return
        cache.disk.remove(filename)

    # -- the whole cache ---------------------------------------------------------

    def used(self) -> int:
        """Bytes of block content indexed."""
        with _translated("read the cache size"):
            row = self._db._sql("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        return int(row[0])

    def totals(self) -> Totals:
        """Size, count, hits and misses, read in one statement."""
        with _translated("read the cache statistics"):
            rows = dict(
                self._db._sql(
                    "SELECT key, value FROM Settings WHERE key IN ('size', 'count', 'hits', 'misses')"
                ).fetchall()
            )
        with self._misses_lock:
            misses = int(rows["misses"]) + self._misses
        return Totals(int(rows["size"]), int(rows["count"]), int(rows["hits"]), misses)

    def size_of(self, hashes: Iterable[str]) -> int:
        """Total bytes of those of *hashes* that are present."""
        keys = list(hashes)
        total = 0
        with _translated("measure blocks"):
            for start in range(0, len(keys), _PAGE):
                chunk = keys[start : start + _PAGE]
                marks = ",".join("?" * len(chunk))
                (size,) = self._db._sql(
                    f"SELECT COALESCE(SUM(size), 0) FROM Cache WHERE raw = 1 AND key IN ({marks})",
                    chunk,
                ).fetchone()
                total += int(size)
        return total

    def sizes(self, hashes: Iterable[str]) -> dict[str, int]:
        """The size of each of *hashes* that is present (absent ones are left out)."""
        keys = list(dict.fromkeys(hashes))
        found: dict[str, int] = {}
        with _translated("look up blocks"):
            for start in range(0, len(keys), _PAGE):
                chunk = keys[start : start + _PAGE]
                marks = ",".join("?" * len(chunk))
                rows = self._db._sql(
                    f"SELECT key, size FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk
                ).fetchall()
                found.update((key, int(size)) for key, size in rows)
        return found

    def evict(self, target: int, keep: Callable[[str], bool]) -> int:
        """Delete least-recently-used entries, skipping those *keep* names, until usage <= *target*.

        Returns the bytes freed.  Victims are chosen and deleted in one write
        transaction, so no get or put of another thread or process interleaves;
        their files are removed after it commits.
        """
        with _translated("evict blocks"):
            with self._write_lock:
                db = self._db
                try:
                    victims, freed = self._delete_lru(db, target, keep)
                except sqlite3.OperationalError as exc:
                    if not _is_disk_full(exc):
                        raise
                    # The disk is so full that the WAL cannot take the deletions -- the
                    # moment eviction matters most.  Checkpointing with TRUNCATE hands
                    # the WAL's space back to the file system; then it can grow again.
                    db._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    victims, freed = self._delete_lru(db, target, keep)
            for filename in victims:
                if filename is not None:
                    db.disk.remove(filename)
        return freed

    @staticmethod
    def _delete_lru(
        db: diskcache.Cache, target: int, keep: Callable[[str], bool]
    ) -> tuple[list[str | None], int]:
        """Delete the rows `evict` chooses in one transaction; return their files and size."""
        victims: list[str | None] = []
        rowids: list[int] = []
        freed = 0
        with db.transact():
            (used,) = db._sql("SELECT value FROM Settings WHERE key = 'size'").fetchone()
            excess = int(used) - target
            cursor = db._sql("SELECT rowid, key, size, filename FROM Cache ORDER BY access_time, rowid")
            try:
                while freed < excess and (rows := cursor.fetchmany(_PAGE)):
                    for rowid, key, size, filename in rows:
                        if freed >= excess:
                            break
                        if keep(key):
                            continue
                        rowids.append(rowid)
                        victims.append(filename)
                        freed += size
            finally:
                cursor.close()
            for rowid in rowids:
                db._sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
        return victims, freed

    def entries(self) -> Iterator[tuple[str, str | None]]:
        """Yield (hash, filename) of every entry, a page at a time, holding no lock between pages."""
        last = -1
        while True:
            with _translated("list blocks"):
                rows = self._db._sql(
                    "SELECT rowid, key, filename FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, _PAGE),
                ).fetchall()
            if not rows:
                return
            for _rowid, key, filename in rows:
                yield key, filename
            last = rows[-1][0]

    def remove_orphans(self, older_than: float) -> int:
        """Delete block files no entry points at and untouched for *older_than* seconds.

        The age guard spares files that a put in some process has written but not
        yet indexed.  Returns how many files were removed.
        """
        with _translated("list block files"):
            referenced = {
                name
                for (name,) in self._db._sql(
                    "SELECT filename FROM Cache WHERE filename IS NOT NULL"
                ).fetchall()
            }
        disk = self._db.disk
        now = time.time()
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self._directory):
            for name in filenames:
                if not name.endswith(".val"):
                    continue
                path = os.path.join(dirpath, name)
                relative = os.path.relpath(path, self._directory)
                if relative in referenced:
                    continue
                try:
                    if now - os.stat(path).st_mtime < older_than:
                        continue
                except FileNotFoundError:
                    continue
                disk.remove(relative)
                removed += 1
        return removed


def _stamp(st: os.stat_result) -> Stamp:
    # Since Linux 6.13 (multigrain timestamps on ext4, xfs, btrfs, tmpfs) a write after
    # this stat gets a ctime distinct from the one read here, even within one tick.
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _write_new_file(path: str, data: bytes | bytearray, writer: FileWriter) -> Stamp:
    """Create *path* exclusively, write *data* and return its stamp; remove what was written if that fails."""
    directory = os.path.dirname(path)
    for attempt in range(10):
        # diskcache's Disk.remove prunes the directories it empties (os.removedirs),
        # and another thread or process may do so in the middle of our makedirs or
        # between it and the open; diskcache's own writer retries the same way.
        try:
            os.makedirs(directory, exist_ok=True)
        except FileExistsError:
            # Even with exist_ok: the directory its mkdir found was pruned before
            # makedirs checked that it is one (seen with 8 threads putting at once).
            if attempt == 9:
                raise
            continue
        try:
            file = open(path, "xb", buffering=0)
            break
        except FileNotFoundError:
            if attempt == 9:
                raise
    try:
        with file:
            writer.write(file.fileno(), data)
            return _stamp(os.fstat(file.fileno()))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def _move_new_file(source: str, path: str) -> None:
    """Rename *source* to *path*, making *path*'s directory as `_write_new_file` does."""
    for attempt in range(10):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.rename(source, path)
            return
        except (FileExistsError, FileNotFoundError):
            # The directory was pruned between the makedirs and the rename (see above).
            if attempt == 9 or not os.path.exists(source):
                raise


def sync_wal(db_path: str) -> None:
    """Make every transaction committed to the WAL-mode database *db_path* survive a power loss.

    With ``synchronous=NORMAL`` a commit writes its log pages without fsync,
    and a checkpoint syncs the log before it copies pages and the database
    after: so what is committed is in the synced database or in the log, and
    one fsync of the log makes all of it durable.  A ``wal_checkpoint(FULL)``
    would do the same with two or three fsyncs and a copy of every page.
    """
    try:
        fd = os.open(db_path + "-wal", _FOR_FSYNC)
    except FileNotFoundError:
        return  # no log: everything is in the database, synced by the checkpoint that removed it
    try:
        os.fsync(fd)
        log = os.fstat(fd)
    finally:
        os.close(fd)
    if _synced_logs.get(db_path) != (log.st_dev, log.st_ino):
        _fsync_dir(os.path.dirname(os.path.abspath(db_path)))  # the log's own name: once per log file
        _synced_logs[db_path] = (log.st_dev, log.st_ino)


class WalCheckpointer:
    """Copies a WAL-mode database's log into the database on a thread of its own, beside the writer.

    SQLite's own checkpoint runs inside the commit that fills the log past
    1,000 pages, with an fsync of the log and one of the database: in a
    small-file workload it was half of all commit time, paid by whichever
    file system request made that commit.  Here every *every* commits
    (`committed`) wake a thread that runs a passive checkpoint on a
    connection of its own: it copies what no reader still needs and never
    blocks the writer.  The thread starts with the first checkpoint due, so
    a database that commits little costs none.
    """

    #: What the writer's connection sets as SQLite's own checkpoint threshold.
    BACKSTOP_PAGES = WAL_BACKSTOP_PAGES

    def __init__(self, path: str, name: str, every: int = 200) -> None:
        self._path = path
        self._name = name
        self._every = every
        self._commits = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """A transaction was committed (any thread)."""
        with self._lock:
            self._commits += 1
            if self._commits % self._every or self._stop:
                return
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread  # only once started: close() joins it
        self._due.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stop:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("checkpoint of %s failed (the next one tries again): %s", self._path, exc)
                _read_ahead(self._path + "-wal")
        finally:
            conn.close()

    def close(self) -> None:
        """End the thread (before the writer's own connection closes: the last one removes the log)."""
        with self._lock:
            self._stop = True
            thread = self._thread
        self._due.set()
        if thread is not None:
            # A checkpoint the disk keeps waiting must not hold up the end (the thread is a daemon,
            # and a log left behind is copied by the next open).
            thread.join(timeout=5)


def _read_ahead(path: str) -> None:
    """Ask the kernel to bring *path* into its page cache, in the background (a no-op where it cannot).

    After a checkpoint the next commit writes the log over from its start.  A
    log frame is a page and a 24-byte header, so every write covers parts of
    two file pages, and a file page the kernel no longer holds (memory grew
    short, or a benchmark dropped the caches) is read from the disk first,
    inside the commit, on the event loop: the commits of a mass delete after
    such a drop took 0.5 ms each instead of 30 µs.  Read ahead here, beside
    the writer, they do not wait; pages already held cost nothing.
    """
    if sys.platform == "win32" or not hasattr(os, "posix_fadvise"):  # Windows, macOS
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no log (yet): nothing to read
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Database path -> the log file whose name `sync_wal` has made durable.
_synced_logs: dict[str, tuple[int, int]] = {}


def _fsync_dir(path: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows opens no directory; NTFS journals a rename itself (as websync_fs/portable.py)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(exc: BaseException | None) -> bool:
    """True if *exc*, or an error it arose from, says the disk or the database is full."""
    for _ in range(8):  # a failed statement can be followed by a failed ROLLBACK
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == _SQLITE_FULL:
                return True
            if "database or disk is full" in str(exc):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Turn diskcache, sqlite3 and OS errors into the cache's own, once."""
    try:
        yield
    except CacheError:
        raise
    except diskcache.Timeout as exc:
        raise CacheUnavailable(
            f"could not {doing}: the cache database stayed locked by another process", errno.EBUSY
        ) from exc
    except (OSError, sqlite3.Error) as exc:
        if _is_disk_full(exc):
            raise CacheFull(f"could not {doing}: no space left on the cache's disk") from exc
        code = exc.errno if isinstance(exc, OSError) else None
        raise CacheUnavailable(f"could not {doing}: {exc}", code or None) from exc
