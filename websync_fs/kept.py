"""A member's unsent work in a folder no longer shared with them, written out under ``kept/``.

Removed from a shared folder, a member's machine deletes the folder's place
(replica, queue, working copies, cached blocks).  The files they changed there
that the server never took are still their work: before the place goes, each
is written at its path in the folder under the own home's ``kept/NAME DATE``.

A running engine does it on its close (`client.Engine._keep_unsent`, which
seals open files first).  A place found unshared while nothing of it ran is
kept here from its durable state alone (`forget_unshared`): queued creates and
updates, and what a killed session fsync'd of files it left open
(fsynced.py), whose bytes are in the working copies and the cache (bytes
that were only on the server, such as the unchanged blocks of a big file
appended to here, are written as zeros, and the file's name says so).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cache import BlockCache
from websync_server.protocol import BLOCK_SIZE, KIND_FILE, OP_CREATE, OP_UPDATE, block_count

from .control import CacheLock
from .fsynced import Fsynced, Snapshot, as_left, reader
from .home import Home
from .mountlock import MountLock
from .replica import Replica
from .statedb import StateDb
from .storepaths import path_of
from .writeback import WriteBackQueue

log = logging.getLogger(__name__)

#: One piece of a kept file, in order: its length, and how to read its bytes (None: nowhere on this
#: machine, such as the unchanged blocks of a big file only appended to here, which are on the server).
Part = tuple[int, Callable[[], bytes | None]]

#: Errors that may pass (a full disk): the place stays and the next look tries again.  Any other
#: error of a file's path (a name too long under ``kept/``, one the disk refuses) will not pass:
#: the file is written under its node id instead.
_PASSING = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


class Content(NamedTuple):
    parts: Sequence[Part]
    mtime_ns: int


def destination(home: Home) -> Path:
    """Where this place's unsent files go: ``kept/NAME DATE`` in the own home."""
    return home.kept_dir / f"{home.share().get('name', home.store)} {time.strftime('%Y-%m-%d %H%M%S')}"


def revoked_sentence(home: Home, kept: int, dest: Path | None) -> str:
    """What the status says of a folder no longer shared: and where its unsent files went, if any."""
    name = home.share().get("name", home.store)
    if kept and dest is not None:
        return (f"{name} is no longer shared with you; this machine keeps only the {kept} file(s)"
                f" changed here that never reached the server, in {dest}")
    return f"{name} is no longer shared with you; this machine keeps nothing of it"


def unsent_files(replica: Replica, queue: WriteBackQueue, fsynced: Fsynced, cache: BlockCache,
                 work_dir: Path) -> dict[str, Content]:
    """The files changed here that never went up (node -> content): queued creates and updates, and
    what was fsync'd of files still open or left open by a killed session (newer than their queue)."""
    files: dict[str, Content] = {}
    for node in dict.fromkeys(item.node for item in queue.items() if item.op["op"] in (OP_CREATE, OP_UPDATE)):
        row = replica.by_id(node)
        if row is not None:
            files[node] = Content(_cached(cache, row.size, row.blocks), row.mtime_ns)
    for ino, snap in fsynced:
        row = replica.get(ino)
        if row is not None and not row.orphan:
            snap = as_left(snap, work_dir)
            files[row.id] = Content(_snapshot_parts(snap, work_dir, cache), snap.mtime_ns or row.mtime_ns)
    return files


def write_kept(replica: Replica, files: dict[str, Content], dest: Path) -> tuple[int, int]:
    """Write each file of *files* (node -> content) under *dest* at its path; (written, failed).

    Bytes that are nowhere on this machine are written as zeros, and the file's
    name says "(incomplete)".  A file that could not be written for an error
    that may pass (a full disk) counts as failed; nothing of it is left.
    """
    kept = failed = 0
    for node, content in files.items():
        row = replica.by_id(node)
        path = path_of(replica, node) if row is not None and row.kind == KIND_FILE else None
        if row is None or path is None or row.local:
            continue  # gone since, or a file never sent by design (an Office lock file)
        try:
            try:
                _write_one(dest.joinpath(*path.split("/")), content)
            except OSError as exc:
                if exc.errno in _PASSING:
                    raise
                log.warning("could not keep %s under its name (%s): kept as %s", path, exc, node)
                _write_one(dest / node, content)
        except OSError as exc:
            log.warning("could not keep %s in %s: %s", path, dest, exc)
            failed += 1
            continue
        kept += 1
    return kept, failed


def _write_one(target: Path, content: Content) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    out = open(target, "xb")  # never over a file of the same name (a case-folding disk)
    try:
        with out:
            whole = _copy(content.parts, out)
        os.utime(target, ns=(content.mtime_ns, content.mtime_ns))
        if not whole:
            stem, dot, suffix = target.name.rpartition(".")
            name = f"{stem} (incomplete).{suffix}" if dot and stem else f"{target.name} (incomplete)"
            os.rename(target, target.with_name(name))
            log.warning("kept %s with zeros where its bytes were only on the server", target.with_name(name))
    except BaseException:
        target.unlink(missing_ok=True)  # made here: nothing half-written stays
        raise


def _copy(parts: Sequence[Part], out: BinaryIO) -> bool:
    """Write *parts* to *out* in order; False if one of them was missing (zeros in its place)."""
    whole = True
    for length, read in parts:
        data = read()
        if data is None:
            data, whole = bytes(length), False
        out.write(data)
    return whole


def _lengths(size: int) -> list[int]:
    return [min(BLOCK_SIZE, size - i * BLOCK_SIZE) for i in range(block_count(size))]


def _cached(cache: BlockCache, size: int, hashes: Sequence[str]) -> list[Part]:
    return [(length, functools.partial(cache.get, h)) for length, h in zip(_lengths(size), hashes)]


def _snapshot_parts(snap: Snapshot, work_dir: Path, cache: BlockCache) -> list[Part]:
    """The pieces of fsync'd content: blocks from the cache, the rest from its working copy."""
    read, in_file = reader(snap, work_dir), set(snap.in_file)
    parts: list[Part] = []
    for index, length in enumerate(_lengths(snap.size)):
        if index in snap.stored or index not in in_file:
            h = snap.stored.get(index) or snap.base[index]
            parts.append((length, functools.partial(cache.get, h)))
        else:
            parts.append((length, functools.partial(_padded, read, index * BLOCK_SIZE, length)))
    return parts


def _padded(read: Callable[[int, int], bytes], start: int, length: int) -> bytes:
    return read(start, length).ljust(length, b"\0")  # a hole, or past the file's end: zeros


def keep_unsent(home: Home, replica: Replica, queue: WriteBackQueue, fsynced: Fsynced,
                cache: BlockCache) -> tuple[int, int, Path | None]:
    """Write out *home*'s unsent files under ``kept/`` (`unsent_files`, `write_kept`); (kept, failed, where)."""
    files = unsent_files(replica, queue, fsynced, cache, home.work_dir)
    if not files:
        return 0, 0, None
    dest = destination(home)
    kept, failed = write_kept(replica, files, dest)
    if kept:
        log.warning("kept %d unsent file(s) of %s in %s", kept, home.store, dest)
    if failed:  # a full disk, say: the place stays, and the next look tries again
        log.error("could not keep %d unsent file(s) of %s in %s; its place stays until they can be",
                  failed, home.store, dest)
    return kept, failed, dest


def _keep_from_state(home: Home) -> tuple[int, int, Path | None]:
    """`keep_unsent` from the place's state database and cache alone (nothing of it runs)."""
    db = StateDb(home.replica_db)
    try:
        cache = BlockCache(home.blocks_dir, home.load_settings().cache_limit)
        try:
            return keep_unsent(home, Replica(db), WriteBackQueue(db), Fsynced(db), cache)
        finally:
            cache.close()
    finally:
        db.close()


def forget_unshared(home: Home) -> None:
    """Forget a place whose folder is no longer shared with this user, found while nothing of it ran.

    Its unsent files are kept first, as a running engine keeps them.  A synced
    folder's unsent files are the folder's own files and stay there.  A client
    of the place starting meanwhile holds its locks: it then hears the refusal
    itself, and nothing is done here.
    """
    lock = MountLock.acquire(home.pid_file)
    if lock is None:
        return
    try:
        cache_lock = CacheLock.try_acquire(home.state_dir)
        if cache_lock is None:
            return
        try:
            kept, dest = 0, None
            if home.replica_db.exists() and not home.known_db.exists():
                try:
                    kept, failed, dest = _keep_from_state(home)
                except Exception:  # noqa: BLE001  # the place stays for the next look: nothing is lost
                    log.exception("could not keep the unsent files of %s; its place stays for now", home.store)
                    return
                if failed:
                    return
            # The status first: killed while forgetting, the place reads as forgotten once its replica
            # is gone, and the status still says where the kept files are.
            home.status_file.write_text(json.dumps({"revoked": revoked_sentence(home, kept, dest)}))
            home.forget()
        finally:
            cache_lock.release()
    finally:
        lock.release()
