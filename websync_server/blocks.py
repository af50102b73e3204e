"""The block store: content-addressed file blocks in a directory tree, durable before acknowledged.

Layout: ``ROOT/<user>/ab/cd/<hash>`` where ``ab`` and ``cd`` are the hash's first
two byte pairs, so no directory grows past 65,536 children per level.  Blocks
are shared by all stores of one user and never by two users: knowing a hash
must not let anyone read another user's bytes.

Crash safety.  `BlockStore.put` writes the bytes to a temporary file in
``ROOT/.incoming``, fsyncs it, renames it to its final name and fsyncs the
directory that now holds it (and any directory it had to create).
`BlockStore.put_many` (``POST /v1/blocks``, many small blocks) keeps the same
order for the whole request with two flushes instead of two or three per
block: every temporary file is written, then one ``syncfs`` makes them (and
any directory made for them) durable, then every one is renamed into place,
then a second ``syncfs`` makes the names durable.  Where there is no
``syncfs`` (not Linux) each file is fsynced, then each directory that gained
an entry once.  So at each point of a crash:

=====================================  ====================================
crash during / after                   after the restart
=====================================  ====================================
writing or flushing temporary files    no block under its name; the
                                       temporaries are removed at start
renaming (names not yet flushed)       each block absent or whole: a name
                                       only ever points at flushed bytes
the last flush, before the answer      as above; the client had no answer
                                       and sends the blocks again
the answer                             every block acknowledged is on disk
=====================================  ====================================

Never a torn file under a hash's name.  The PUT answers only after that, and
the metadata store refuses commits naming blocks that are not there, so a
committed node never points at a block a crash could lose.  Leftover
temporary files are removed at start.  A directory another request made is
durable before anyone can put a block in it (`_mkdir_lock` is held until it
is flushed), so one request's durable rename never hangs under another's
unflushed directory.

Ranges.  A whole block is checked by the client against its hash; a part of
one cannot be, so the server vouches for it: it serves a range only from a
block file it has hashed itself -- when it stored the file, or on the first
ranged read in this process -- and whose stamp (inode, size, mtime, ctime) is
unchanged since.  A block whose bytes no longer match its hash is answered
whole instead (`Extent.whole`), and the client's own check refuses it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


from . import directio
from ._exceptions import InsufficientStorage, InvalidRequest, NotFound, RangeNotSatisfiable, TooLarge
from .protocol import BLOCK_SIZE, BlockHash, is_block_hash

__all__ = ["BlockStore", "Blocks", "Extent", "StoredBlock", "check_block", "check_user"]

log = logging.getLogger(__name__)

_INCOMING = ".incoming"
# A temporary file older than this at start belongs to no running upload.
_STALE_TEMP_S = 3600.0
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# A block reported present keeps its mtime within this of now (see `_refresh`).
_REFRESH_AFTER_S = 3600.0
_CHECKED_MAX = 1_000_000  # block files remembered as hashed (about 200 bytes each)
#: Ranges up to this size of a block hashed here are read on the event loop (`read_small`).
SMALL_READ = 64 * 1024


class Blocks(Protocol):
    """What the server needs of a block store: this folder store, or object storage (objects.py)."""

    def open(self) -> None: ...
    def put(self, user: str, block: BlockHash, data: bytes | Sequence[bytes]) -> bool: ...
    def put_many(self, user: str, blocks: Sequence[tuple[BlockHash, bytes]]) -> int: ...
    def read(self, user: str, block: BlockHash, first: int | None = None, last: int | None = None) -> Extent: ...
    def read_small(self, user: str, block: BlockHash, first: int | None, last: int | None) -> Extent | None: ...
    def size(self, user: str, block: BlockHash) -> int | None: ...
    def sizes(self, user: str, blocks: Iterable[BlockHash]) -> dict[BlockHash, int]: ...
    def missing(self, user: str, blocks: Iterable[BlockHash]) -> list[BlockHash]: ...
    def files(self, user: str) -> Iterator[StoredBlock]: ...
    def remove(self, user: str, block: BlockHash, older_than_ns: int) -> bool: ...


def check_user(user: str) -> None:
    """Refuse a user name that can't name a folder or key prefix of blocks."""
    if not user or user.startswith(".") or "/" in user or "\\" in user or "\0" in user:
        raise ValueError(f"{user!r} can't name a block directory")


class BlockStore:
    """Users' blocks under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / _INCOMING
        # Held while creating directories: a put must not see a directory
        # another put made but has not yet fsynced into its parent.
        self._mkdir_lock = threading.Lock()
        # Block files this process hashed, with their stamp then (see "Ranges").  Only
        # single dict operations touch it (atomic under the GIL).
        self._checked: dict[Path, tuple[int, int, int, int]] = {}

    def open(self) -> None:
        """Create the directories and remove temporary files left by a crash."""
        with self._mkdir_lock:
            _make_dirs_durably(self._incoming)
        cutoff = time.time() - _STALE_TEMP_S
        for temp in self._incoming.iterdir():
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except FileNotFoundError:
                pass

    def path(self, user: str, block: BlockHash) -> Path:
        """Where the block lives (whether or not it is there)."""
        check_user(user)
        if not is_block_hash(block):
            raise InvalidRequest(f"{block!r} is not a block hash (64 lower-case hex digits)")
        return self.root / user / block[:2] / block[2:4] / block

    def put(self, user: str, block: BlockHash, data: bytes | Sequence[bytes]) -> bool:
        """Store *data* (bytes, or pieces of them in order) as *block* durably.

        True if it is new, False if it was already there.  Raises
        `InvalidRequest` when the data's SHA-256 is not *block* (nothing is
        stored), `TooLarge` for more than one block of data, and
        `InsufficientStorage` when the disk is full.
        """
        final = self.path(user, block)
        pieces = [data] if isinstance(data, bytes) else list(data)
        check_block(block, pieces)
        if self._refresh(final):
            return False
        temp = self._incoming / f"{block}.{uuid.uuid4().hex}"
        try:
            _write_durably(temp, pieces)
            with self._mkdir_lock:
                _make_dirs_durably(final.parent)
            # Two concurrent PUTs of one block both rename identical bytes into
            # place; whichever lands last wins, and both answers are right.
            os.replace(temp, final)
            _fsync_dir(final.parent)
            self._remember_checked(final, _stamp(os.stat(final)))
        except OSError as exc:
            _remove_quietly(temp)
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage("the server's disk is full; the block was not stored") from exc
            raise
        return True

    def put_many(self, user: str, blocks: Sequence[tuple[BlockHash, bytes]]) -> int:
        """Store several small blocks durably, flushed together; how many were new.

        Every block is checked as `put` checks it before anything is written:
        one that is wrong refuses the whole request and nothing is stored.
        """
        fresh: dict[Path, tuple[BlockHash, bytes]] = {}
        for block, data in blocks:
            final = self.path(user, block)
            check_block(block, [data])
            fresh[final] = (block, data)
        fresh = {final: bd for final, bd in fresh.items() if not self._refresh(final)}
        if len(fresh) <= 1:
            return sum(self.put(user, block, data) for block, data in fresh.values())
        temps: dict[Path, Path] = {}
        try:
            for final, (block, data) in fresh.items():
                temps[final] = temp = self._incoming / f"{block}.{uuid.uuid4().hex}"
                _write(temp, [data])
            self._flush_new(list(temps.values()), {final.parent for final in fresh})
            for final, temp in temps.items():
                # Two requests with one block both rename identical bytes into place.
                os.replace(temp, final)
            self._flush_names({final.parent for final in fresh})
        except OSError as exc:
            for temp in temps.values():
                _remove_quietly(temp)
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage("the server's disk is full; the blocks were not stored") from exc
            raise
        for final in fresh:
            self._remember_checked(final, _stamp(os.stat(final)))
        return len(fresh)

    def _flush_new(self, temps: list[Path], parents: set[Path]) -> None:
        """Make the temporary files' bytes, and the *parents* they will move into, durable."""
        if _syncfs is None:
            for temp in temps:
                _fsync_path(temp)
            with self._mkdir_lock:
                for parent in parents:
                    _make_dirs_durably(parent)
            return
        # Held over the flush: a directory made here is durable before another request uses it.
        with self._mkdir_lock:
            for parent in parents:
                parent.mkdir(parents=True, exist_ok=True)
            _syncfs(self._incoming)

    def _flush_names(self, parents: set[Path]) -> None:
        """Make the renames into *parents* durable."""
        if _syncfs is None:
            for parent in parents:
                _fsync_dir(parent)
        else:
            _syncfs(self._incoming)

    def read(self, user: str, block: BlockHash, first: int | None = None, last: int | None = None) -> Extent:
        """Read a block, or the bytes *first* to *last* of it (inclusive, as in HTTP ranges).

        With only *first*, read from there to the end; with only *last*, read
        the final *last* bytes.  `RangeNotSatisfiable` when the range starts
        at or beyond the end, `NotFound` when the block is not there.
        """
        path = self.path(user, block)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start, stop = _resolve_range(size, first, last)
                if (start, stop) != (0, size) and self._checked.get(path) != _stamp(os.fstat(f.fileno())):
                    data = f.read()
                    stamp = _stamp(os.fstat(f.fileno()))  # after the read: a write during it shows
                    if hashlib.sha256(data).hexdigest() != block:
                        self._checked.pop(path, None)
                        log.error("block %s of %s does not match its hash; served whole for the client to refuse",
                                  block, user)
                        return Extent(data, 0, len(data), whole=True)
                    self._remember_checked(path, stamp)
                    return Extent(data[start:stop], start, size)
                f.seek(start)
                return Extent(f.read(stop - start), start, size)
        except FileNotFoundError:
            raise NotFound(f"there is no block {block}") from None

    def read_small(self, user: str, block: BlockHash, first: int | None, last: int | None) -> Extent | None:
        """`read` of a small range of a block this process has hashed; None: call `read`.

        Cheap enough for the event loop (an open and a pread of at most
        `SMALL_READ` bytes), so a program's scattered 4 KiB reads cost no trip
        to a worker thread each.  Anything else -- a whole block, a block not
        hashed here, a file changed since -- is left to `read` in a thread.
        """
        if first is None or last is None or last - first >= SMALL_READ:
            return None
        path = self.path(user, block)
        checked = self._checked.get(path)
        if checked is None:
            return None
        try:
            with open(path, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                if _stamp(st) != checked:
                    return None
                start, stop = _resolve_range(st.st_size, first, last)
                return Extent(os.pread(f.fileno(), stop - start, start), start, st.st_size)
        except FileNotFoundError:
            return None

    def _remember_checked(self, path: Path, stamp: tuple[int, int, int, int]) -> None:
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
        self._checked[path] = stamp

    def size(self, user: str, block: BlockHash) -> int | None:
        """The size of a block, or None when the server lacks it."""
        try:
            return self.path(user, block).stat().st_size
        except FileNotFoundError:
            return None

    def sizes(self, user: str, blocks: Iterable[BlockHash]) -> dict[BlockHash, int]:
        """The sizes of those of *blocks* that are there."""
        found: dict[BlockHash, int] = {}
        for block in blocks:
            size = self.size(user, block)
            if size is not None:
                found[block] = size
        return found

    def files(self, user: str) -> Iterator[StoredBlock]:
        """Every block file of *user* with its size and mtime (names that are not hashes are left alone)."""
        root = self.root / user
        if not root.is_dir():
            return
        for first in sorted(os.scandir(root), key=lambda e: e.name):
            if not first.is_dir(follow_symlinks=False):
                continue
            for second in sorted(os.scandir(first.path), key=lambda e: e.name):
                if not second.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(second.path):
                    if entry.is_file(follow_symlinks=False) and is_block_hash(entry.name):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        yield StoredBlock(BlockHash(entry.name), st.st_size, st.st_mtime_ns)

    def remove(self, user: str, block: BlockHash, older_than_ns: int) -> bool:
        """Delete a block file unless it is gone or newer than *older_than_ns*; True if deleted."""
        path = self.path(user, block)
        try:
            if path.stat().st_mtime_ns >= older_than_ns:
                return False  # uploaded (or reported present) again since the listing
            path.unlink()
        except FileNotFoundError:
            return False
        self._checked.pop(path, None)
        return True

    def missing(self, user: str, blocks: Iterable[BlockHash]) -> list[BlockHash]:
        """Those of *blocks* the server lacks, each once, in the order given."""
        seen: set[BlockHash] = set()
        lacking: list[BlockHash] = []
        for block in blocks:
            if block not in seen:
                seen.add(block)
                if not self._refresh(self.path(user, block)):
                    lacking.append(block)
        return lacking

    @staticmethod
    def _refresh(path: Path) -> bool:
        """True if the block file is there; an old one gets a new mtime first.

        A client that was told a block is there will commit it soon; the
        collector (gc.py) spares blocks younger than its grace period, so an
        unnamed block a client just counted on is not freed under it.
        """
        try:
            st = path.stat()
            if st.st_mtime < time.time() - _REFRESH_AFTER_S:
                os.utime(path)
        except FileNotFoundError:
            return False
        return True


@dataclass(frozen=True)
class StoredBlock:
    """A block as the store holds it: its hash, size and when it was last written (or refreshed)."""

    block: BlockHash
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Extent:
    """Bytes read from a block: the data, its offset in the block, and the block's size."""

    data: bytes
    start: int
    size: int
    #: A range was asked for, but the block is damaged: here is all of it, unvouched.
    whole: bool = False


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    # Linux 6.13+ gives a write after a stat a distinct ctime even within one tick.
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _resolve_range(size: int, first: int | None, last: int | None) -> tuple[int, int]:
    """Start and stop (exclusive) of an inclusive byte range within *size* bytes."""
    if first is None and last is None:
        return 0, size
    if first is None:
        assert last is not None
        if last <= 0:
            raise RangeNotSatisfiable("a suffix range must ask for at least one byte", size)
        return max(0, size - last), size
    if first >= size:
        raise RangeNotSatisfiable(f"the range starts at byte {first} of a {size} byte block", size)
    stop = size if last is None else min(last + 1, size)
    return first, stop


def _fsync_file(fd: int) -> None:
    # On macOS fsync() leaves the data in the drive's cache; only F_FULLFSYNC
    # survives a power cut (fsync(2) man page, "Mac OS X").
    if sys.platform == "darwin":
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)  # type: ignore[attr-defined]
    else:
        os.fsync(fd)


def check_block(block: BlockHash, pieces: list[bytes]) -> None:
    """Refuse data that is more than a block (`TooLarge`) or whose SHA-256 is not *block* (`InvalidRequest`)."""
    size = sum(len(piece) for piece in pieces)
    if size > BLOCK_SIZE:
        raise TooLarge(f"a block holds at most {BLOCK_SIZE} bytes, this body has {size}")
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    actual = digest.hexdigest()
    if actual != block:
        raise InvalidRequest(f"the body's SHA-256 is {actual}, not {block}")


def _write_durably(path: Path, pieces: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        directio.write_new(fd, pieces)  # whole blocks past the page cache: fsync'd next anyway
        _fsync_file(fd)
    finally:
        os.close(fd)


def _write(path: Path, pieces: list[bytes]) -> None:
    """A new file holding *pieces*, not yet flushed (`put_many` flushes many at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        directio.write_new(fd, pieces)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync_file(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[Path], None] | None:
    """syncfs(2) where the C library has it (Linux): one call flushes every file and name on a file system.

    Python's os module has no syncfs; the C library's is called through
    ctypes.  Since Linux 5.8 it reports write-back errors of the file system
    (errseq), so a failed flush is an error here as an fsync's would be.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]

    def syncfs(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if call(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(path))
        finally:
            os.close(fd)

    return syncfs


_syncfs = _load_syncfs()


def _fsync_dir(path: Path) -> None:
    """Make the names in directory *path* durable (a rename or a new entry)."""
    if os.name == "nt":
        return  # Windows can't open a directory; NTFS journals its metadata.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(path: Path) -> None:
    """Create *path* and missing parents, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    _make_dirs_durably(path.parent)
    path.mkdir(exist_ok=True)
    _fsync_dir(path.parent)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
