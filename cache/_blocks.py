"""Blocks of file content kept on local disk, least-recently-used first out, under a byte limit.

A block is up to 4 MiB of a file's content, named by the lower-case hex SHA-256
of its bytes.  Blocks never go stale, so the cache holds no versions or
timestamps, only bytes: a name either has its bytes here or it does not.

Entry states
------------
For one hash, as seen by one process::

                   put                           protect (refs 0 -> 1)
      absent ──────────────────► clean ───────────────────────────► protected
        ▲  ▲                      │  ◄───────────────────────────      │
        │  │ get/verify find      │     unprotect (refs -> 0)         │ never evicted,
        │  └─ damaged bytes ──────┤                                   │ never counted
        │                         │ evict: least recently used        │ as reclaimable
        └─────── evicted ◄────────┘ first, while usage > limit        │

*Protected* is an in-memory reference count kept by this process, separate
from presence: the owner may protect a hash before putting it (the write path
protects and then puts, so a fresh dirty block is never evictable, not even for
a moment; `add` does both, counting the reference once the hash is known and
before the block is indexed), and protecting an absent hash keeps nothing until
it is put.  A get
refreshes a block's LRU position, as does a put of a block already present.

What a crash leaves, state by state:

=================  ==========================================  ============================================
State at crash     On disk                                     After restart
=================  ==========================================  ============================================
absent             nothing                                     absent
mid-put            at most a block file that no index row      absent: get misses, usage does not count it;
                   points at (rows are inserted only after     `verify` deletes such orphans once they are
                   their file is complete; `add` writes it     an hour old
                   under ``pending/`` until its hash names it)
clean              index row + file                            clean, LRU position kept
protected          the same as clean: protection is not        clean until the owner rebuilds its counts
                   persisted                                   from its own durable records (write-back
                                                               journal, pins) -- which it must do before
                                                               its first put, evict or set_limit
mid-evict          rows are deleted in one transaction, files  before the commit: unchanged; after it:
                   after it commits                            evicted, with orphans for `verify`
power loss         SQLite runs WAL with synchronous=NORMAL     the last rows may be gone (absent again), or
                   and block files are not fsync'd, except     a row may outlive its file's bytes; the get
                   those passed to `sync` (a writer's fsync)   that finds bad bytes drops them and misses
=================  ==========================================  ============================================

Damaged bytes are never returned.  A block's SHA-256 is checked when it enters
the cache (`put`), every time a block kept in its index row is read (at most
`_store.INLINE_MAX` bytes), and the first time this process reads a block file (`get`, `read`);
the process then remembers the file it checked with that file's stamp (inode,
size, mtime and ctime, taken after the bytes were read or written) and trusts
the file while the stamp is unchanged -- any write to the file changes it, so
damage by a program or a torn rewrite is caught by the next read, which hashes
the whole block again.  Bit rot that changes no stamp (a failing disk) is
caught by the next process or by `verify`, which always rehashes.

Eviction
--------
Evicting walks the index by last access and deletes unprotected blocks until
usage is at or under the target.  A put evicts to the limit but never evicts the
block it has just stored, so a put followed by a get always hits, and a block
larger than the whole limit can still be used; hence after any put, usage <=
limit + that one block, unless protected blocks alone exceed the limit, in
which case everything unprotected is evicted and the cache stays over the limit
(``stats().over_limit``).

Concurrency
-----------
Methods are synchronous and thread-safe; the FUSE client calls them from trio
worker threads.  Several processes may use one directory at once (SQLite in WAL
mode underneath).  Locks, always taken in this order: ``BlockCache._lock``
(reference counts) -> ``BlockStore._write_lock`` (one SQLite writer per
process) -> SQLite's write lock.  An eviction holds ``_lock`` from choosing
victims until they are deleted, so a `protect` that has returned is honoured by
every later eviction, and one that is called meanwhile waits for it.  File
writes, reads and hashing run outside every lock.

Protection is per process: an eviction honours only the counts of the process
that runs it.  A second process on the same directory (the CLI) that puts or
evicts without first protecting the owner's dirty and pinned blocks can evict
them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from ._exceptions import CacheError, CorruptBlock, InvalidBlockHash
from ._stats import CacheStats
from ._store import BlockStore, Loaded, Stamp

log = logging.getLogger(__name__)

_HASH = re.compile(r"[0-9a-f]{64}")

ORPHAN_AGE = 3600.0
"""Seconds an unindexed block file must be left alone before `verify` deletes it."""

HASH_BESIDE_MIN = 1 << 20
"""Blocks of at least this many bytes are hashed beside their write (`add`); smaller ones first."""

REFRESH_EVERY = 30.0
"""Seconds between LRU refreshes of a block served by ranged `read` (each is a SQLite write)."""

_CHECKED_MAX = 100_000  # remembered checks; beyond it they are forgotten and redone


class _Checked(NamedTuple):
    """A block file whose bytes this process hashed, and the stamp it had then.

    A block kept in its index row has neither (None, None): its row is read
    and hashed again on every read, which for at most `INLINE_MAX` bytes costs
    less than the SQLite write a `get` makes.
    """

    filename: str | None
    stamp: Stamp | None
    refreshed: float  # time.monotonic() of the last LRU refresh


class BlockCache:
    """Blocks of file content named by their SHA-256, kept under a byte limit, LRU evicted."""

    def __init__(self, directory: Path | str, limit: int) -> None:
        _check_size("limit", limit)
        self._store = BlockStore(os.fspath(directory))
        self._limit = limit
        self._lock = threading.Lock()
        self._refs: dict[str, int] = {}  # guarded by _lock
        # Block files hashed by this process.  Only single dict operations touch it
        # (atomic under the GIL); a lost update costs one more hash, never a wrong byte.
        self._checked: dict[str, _Checked] = {}
        self._hashing: ThreadPoolExecutor | None = None  # made by the first `add` that needs it
        # The last big block `add` stored was there already: hash the next one first.
        self._present_lately = False

    @property
    def directory(self) -> Path:
        """The cache directory."""
        return Path(self._store.directory)

    @property
    def limit(self) -> int:
        """The byte limit evictions aim for."""
        return self._limit

    def get(self, h: str) -> bytes | None:
        """Return block *h*, or None if it is absent or its stored bytes were damaged.

        A hit refreshes the block's LRU position.  Damaged bytes are dropped,
        logged as a warning naming the hash, and counted as a miss.
        """
        _check_hash(h)
        loaded = self._store.load(h)
        if loaded is None:
            return None
        data = loaded.data
        if data is not None and self._trusted(h, loaded):
            return data
        if data is not None and _sha256(data) == h:
            self._remember(h, loaded.filename, loaded.stamp)
            return data
        self._checked.pop(h, None)
        log.warning("dropping corrupt cache block %s: %s", h, _damage(loaded))
        try:
            self._store.drop(h, loaded.filename, counted_as_hit=True)
        except CacheError as exc:
            # Still a miss; the next get or verify tries the drop again.
            log.warning("could not drop corrupt cache block %s: %s", h, exc)
        return None

    def peek(self, h: str) -> bytes | None:
        """Block *h* like `get`, but refreshing and counting nothing: no SQLite write.

        For the uploader: the blocks it sends are protected and were stored a
        moment ago, so the write a `get` makes bought nothing, and it took the
        writer lock that the file system's next seal waits for.  A block this
        process has not checked, or whose file changed, is a `get`.
        """
        _check_hash(h)
        checked = self._checked.get(h)
        if checked is not None:
            if checked.filename is None:
                data = self._store.read_inline(h)
                if data is not None and _sha256(data) == h:
                    return data
            else:
                loaded = self._store.read(h, checked.filename)
                if loaded.data is not None and loaded.stamp == checked.stamp:
                    return loaded.data
            self._checked.pop(h, None)
        return self.get(h)

    def read(self, h: str, offset: int, length: int) -> bytes | None:
        """Up to *length* bytes of block *h* from *offset*, or None like `get`.

        A block this process has checked is read in place -- a 4 KiB read costs
        a 4 KiB read -- as long as its file's stamp is unchanged; otherwise this
        is a `get` (whole block, hashed) and a slice.  The LRU position is
        refreshed at most every `REFRESH_EVERY` seconds, and hits served in
        place are not counted.
        """
        _check_hash(h)
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, not {offset}, {length}")
        checked = self._checked.get(h)
        if checked is not None:
            part = self._read_checked(h, checked, offset, length)
            if part is not None:
                now = time.monotonic()
                if now - checked.refreshed >= REFRESH_EVERY:
                    self._checked[h] = checked._replace(refreshed=now)
                    self._store.refresh(h)
                return part
            self._checked.pop(h, None)  # evicted, replaced or written to: check again
        data = self.get(h)
        return None if data is None else data[offset : offset + length]

    def _read_checked(self, h: str, checked: _Checked, offset: int, length: int) -> bytes | None:
        """The bytes asked for from a block checked before, or None if it is no longer as it was."""
        if checked.filename is None:
            data = self._store.read_inline(h)
            if data is None or _sha256(data) != h:
                return None
            return data[offset : offset + length]
        got = self._store.read_range(checked.filename, offset, length)
        if got is None or got[1] != checked.stamp:
            return None
        return got[0]

    def put(self, h: str, data: bytes | bytearray, *, verified: bool = False) -> None:
        """Store *data* as block *h*, then evict to the limit (sparing this block).

        Raises `CorruptBlock` if *data* does not hash to *h*, and `CacheFull` if
        the disk is full; either way nothing is stored.  Putting a block that is
        present only refreshes its LRU position.  ``verified=True`` says the
        caller has just hashed these very bytes (the writer sealing a file):
        hashing 4 MiB again would only cost time.
        """
        _check_hash(h)
        if not verified:
            actual = _sha256(data)
            if actual != h:
                raise CorruptBlock(h, actual)
        self._put(h, data)

    def _put(self, h: str, data: bytes | bytearray) -> bool:
        """`put` of checked bytes; True if the block was there already (only refreshed)."""
        present = self._store.refresh(h)
        if not present:
            filename, stamp = self._store.insert(h, data)
            self._remember(h, filename, stamp)
        self._evict(self._limit, spare=h)
        return present

    def add(self, data: bytes, *, protect: bool = False) -> str:
        """Store *data* under its SHA-256 and return the hash; with *protect*, count a reference on it.

        A new block of `HASH_BESIDE_MIN` bytes or more is hashed in another
        thread while it is written (docs/design.md, "Content"); a smaller one,
        or any while the blocks added lately were present already (a file
        saved again, a copy of a copy), is hashed first, so that a present
        block costs no write.  The reference is counted before the block can
        be evicted, and kept only when this returns: a failure (`CacheFull`)
        leaves none.
        """
        counted: list[str] = []

        def count(h: str) -> str:
            if protect:
                self.protect([h])
                counted.append(h)
            return h

        try:
            if len(data) < HASH_BESIDE_MIN or self._present_lately or _zeros_hash(data) is not None:
                h = count(_sha256(data))
                present = self._put(h, data)
            else:
                hashing = self._hasher().submit(_sha256, data)
                h, filename, stamp = self._store.insert_hashing(data, lambda: count(hashing.result()))
                present = filename is None
                if not present:
                    self._remember(h, filename, stamp)
                self._evict(self._limit, spare=h)
            self._present_lately = present and len(data) >= HASH_BESIDE_MIN
        except BaseException:
            self.unprotect(counted)
            raise
        return h

    def _hasher(self) -> ThreadPoolExecutor:
        """The thread that hashes a block while `add` writes it (hashlib lets go of the GIL)."""
        with self._lock:
            if self._hashing is None:
                self._hashing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="block-hash")
            return self._hashing

    def sync(self, hashes: Iterable[str]) -> None:
        """Make blocks *hashes* survive a power loss (the writer's fsync); absent ones are skipped."""
        self._store.sync([_check_hash(h) for h in hashes])

    def contains(self, h: str) -> bool:
        """True if block *h* is present; neither reads its bytes nor refreshes it."""
        _check_hash(h)
        return self._store.contains(h)

    def find(self, h: str) -> bool:
        """`contains`, for a read: a block that is absent counts as a miss."""
        _check_hash(h)
        return self._store.find(h)

    def present(self, hashes: Iterable[str]) -> dict[str, int]:
        """The size of each of *hashes* that is present, in a few queries for any number.

        Like `contains`, it neither reads bytes nor refreshes LRU positions.
        """
        return self._store.sizes(_check_hash(h) for h in hashes)

    def protect(self, hashes: Iterable[str]) -> None:
        """Count one more reference on each of *hashes*; referenced blocks are never evicted.

        A hash listed twice gets two references.  Counts live in memory only: the
        owner rebuilds them at start-up from its durable records.
        """
        counts = Counter(_check_hash(h) for h in hashes)  # validate all before changing any
        with self._lock:
            for h, n in counts.items():
                self._refs[h] = self._refs.get(h, 0) + n

    def unprotect(self, hashes: Iterable[str]) -> None:
        """Drop one reference on each of *hashes*, then evict to the limit if usage is over it.

        Raises ValueError, changing nothing, if a hash has fewer references than
        it is listed here.  Unprotecting nothing makes nothing evictable and
        evicts nothing (the pin reconciler does so after most changes).
        """
        counts = Counter(_check_hash(h) for h in hashes)
        if not counts:
            return
        with self._lock:
            for h, n in counts.items():
                if self._refs.get(h, 0) < n:
                    raise ValueError(f"block {h} unprotected more often than it was protected")
            for h, n in counts.items():
                left = self._refs[h] - n
                if left:
                    self._refs[h] = left
                else:
                    del self._refs[h]
        self._evict(self._limit)

    def set_limit(self, limit: int) -> None:
        """Change the byte limit and evict down to it at once."""
        _check_size("limit", limit)
        self._limit = limit
        self._evict(limit)

    def evict(self, target: int | None = None) -> int:
        """Evict unprotected blocks, least recently used first, until usage <= *target*.

        *target* defaults to the limit; 0 removes everything not protected.
        Returns the bytes freed.
        """
        if target is None:
            target = self._limit
        _check_size("target", target)
        return self._evict(target)

    def stats(self) -> CacheStats:
        """Usage, limit, protected bytes and blocks, entry count and the (persisted, shared) hit counters."""
        totals = self._store.totals()
        with self._lock:
            protected = list(self._refs)
        sizes = self._store.sizes(protected)
        return CacheStats(
            used=totals.size,
            limit=self._limit,
            protected_bytes=sum(sizes.values()),
            count=totals.entries,
            hits=totals.hits,
            misses=totals.misses,
            protected_count=len(sizes),
        )

    def verify(self) -> list[str]:
        """Rehash every block, drop the damaged ones and return their hashes.

        Protected blocks are checked too: damaged bytes are useless to their
        owner, who learns of the loss from the next get.  Also deletes block files
        no entry points at (left by a crash) once they are `ORPHAN_AGE` old.
        """
        corrupt: list[str] = []
        for h, filename in self._store.entries():
            loaded = self._store.read(h, filename)
            if loaded.data is not None and _sha256(loaded.data) == h:
                self._remember(h, filename, loaded.stamp)
                continue
            self._checked.pop(h, None)
            # drop() is conditional on the file: an entry evicted or re-put since it
            # was listed is not reported.
            if self._store.drop(h, filename):
                log.warning("dropped corrupt cache block %s: %s", h, _damage(loaded))
                corrupt.append(h)
        orphans = self._store.remove_orphans(older_than=ORPHAN_AGE)
        if orphans:
            log.info("removed %d orphaned block files from %s", orphans, self._store.directory)
        return corrupt

    def close(self) -> None:
        """Close the cache; any later call raises `CacheUnavailable`."""
        with self._lock:
            hashing, self._hashing = self._hashing, None
        if hashing is not None:
            hashing.shutdown()
        self._store.close()

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _trusted(self, h: str, loaded: Loaded) -> bool:
        """True if this process hashed the very file *loaded* came from and it is unchanged."""
        if loaded.filename is None:
            return False  # bytes from a row carry no stamp: hash them
        checked = self._checked.get(h)
        return checked is not None and (checked.filename, checked.stamp) == (loaded.filename, loaded.stamp)

    def _remember(self, h: str, filename: str | None, stamp: Stamp | None) -> None:
        if filename is not None and stamp is None:
            return  # a file without its stamp could not be trusted later
        # A row (None, None) is remembered too: `read` then reads it without a write.
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
        self._checked[h] = _Checked(filename, stamp, time.monotonic())

    def _evict(self, target: int, spare: str | None = None) -> int:
        if self._store.used() <= target:
            return 0  # the common case takes neither lock
        with self._lock:
            refs = self._refs
            return self._store.evict(target, keep=lambda key: key in refs or key == spare)


def _check_hash(h: str) -> str:
    if not isinstance(h, str) or not _HASH.fullmatch(h):
        raise InvalidBlockHash(h)
    return h


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of bytes >= 0, not {value!r}")


#: Blocks of zeros by length, each with its hash: a sparse file's holes are handed in as
#: these very objects (`zeros`), and hashed once, not at every block.  A 16 GiB file
#: made by ``truncate -s`` had taken 38 s of hashing zeros.
_ZEROS: dict[int, tuple[bytes, str]] = {}
#: Lengths kept: every full block is one length, a file's last block another.
_ZEROS_MAX = 8


def zeros(length: int) -> bytes:
    """*length* zero bytes, the same object each time while it is remembered, whose hash is known."""
    found = _ZEROS.get(length)
    if found is None:
        if len(_ZEROS) >= _ZEROS_MAX:
            _ZEROS.clear()
        data = bytes(length)
        found = _ZEROS[length] = (data, hashlib.sha256(data).hexdigest())
    return found[0]


def _zeros_hash(data: bytes | bytearray) -> str | None:
    """The hash of *data* if it is an object `zeros` made (None: it must be hashed)."""
    known = _ZEROS.get(len(data))
    return known[1] if known is not None and data is known[0] else None


def _sha256(data: bytes | bytearray) -> str:
    return _zeros_hash(data) or hashlib.sha256(data).hexdigest()


def _damage(loaded: Loaded) -> str:
    """Say what is wrong with a block that failed its check."""
    if loaded.data is None:
        return loaded.problem or "its bytes cannot be read"
    return f"its {len(loaded.data)} bytes hash to {_sha256(loaded.data)}"
