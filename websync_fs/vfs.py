"""The platform-neutral filesystem core.

Every mount adapter (pyfuse3, winfspy) decodes its arguments and calls one method
here.  Metadata comes from the replica and never waits on the network; file
content comes from working copies (open for writing) or the block source.
Every change is applied to the replica and queued for the server in one
transaction of the state database.  The one exception: attributes set on a file
open for writing (tar's utimens, chown and chmod before its close) are held in
memory and go into the row and the queue with the file's content at close, in
its transaction, or at most `ATTRS_DUE` later (`_settle_attrs`).

Errors leave as `FsError` carrying the errno a local filesystem would give.

Concurrency: all methods run on the trio loop.  A stretch without ``await`` is
atomic with respect to other requests and to the follower; the replica
transactions below rely on that (no ``await`` inside ``with self._db.tx()``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from websync_server.protocol import (
    BLOCK_SIZE,
    BlockHash,
    KIND_DIR,
    KIND_FILE,
    KIND_SPECIAL,
    KIND_SYMLINK,
    NAME_MAX,
    XATTR_NAME_MAX,
    XATTR_TOTAL_MAX,
    XATTR_VALUE_MAX,
    Create,
    Delete,
    InvalidName,
    Link,
    Mkdir,
    Mknod,
    NodeId,
    Op,
    Rename,
    SetAttr,
    Symlink,
    Update,
    new_node_id,
    validate_name,
)

from .blocksource import BlockSource, Content
from .errors import FsError, Offline, RemoteError
from .fsynced import Fsynced, Snapshot, as_left, reader
from .handles import Handle, HandleTable
from .inodes import InodeTable
from .invalidation import Notify
from .names import NamePolicy
from .owners import Caller, Owners, chown_fields
from .replica import ROOT_INO, NodeRow, NodeStat, Replica
from .quicksync import FSYNCS
from .saves import SaveDetector
from .statedb import StateDb
from .workcopy import WorkingCopy
from .writeback import WriteBackQueue

log = logging.getLogger(__name__)

#: The one namespace of extended attributes stored and synced (others: EOPNOTSUPP).
XATTR_KEPT = "user."
#: Blocks read ahead of a program reading a file from start to end.
READ_AHEAD_BLOCKS = 4
#: A file fsync'd and then left alone this long (seconds) is sealed and queued although still
#: open: a program that fsyncs as it goes (a database, a log) sends a version once it pauses.
SEAL_AFTER_FSYNC = 1.0
#: fsyncs a copy in memory gets before it moves into its file: SQLite's journal, made
#: and fsync'd twice at every commit, stays in memory; its database, a log, move.
FSYNCS_IN_MEMORY = 3
#: Attributes set on a file open for writing reach its row and the queue with its close, or
#: this long (seconds) after they were set while it stays open (a log another program chmods).
ATTRS_DUE = 1.0
_SEQUENTIAL_SLACK = 1024 * 1024  # how far from where the last read ended a read still goes on from it
_TYPE = {KIND_FILE: stat.S_IFREG, KIND_DIR: stat.S_IFDIR, KIND_SYMLINK: stat.S_IFLNK}


@dataclass(frozen=True)
class OpenMode:
    """How a file is opened, in the core's terms (a front end translates its own flags)."""

    read: bool = True
    write: bool = False
    append: bool = False
    #: Cut the file to nothing as it opens (O_TRUNC, CREATE_ALWAYS).
    truncate: bool = False


@dataclass(frozen=True)
class FsStats:
    """What a statfs answer says: sizes in bytes and counts of files, whatever the front end."""

    block_size: int
    total_bytes: int
    free_bytes: int
    available_bytes: int
    files: int
    free_files: int
    name_max: int = NAME_MAX


@dataclass
class FileAttr:
    ino: int
    mode: int  # with the S_IF* type bits
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int = 0
    uid: int = 0  # as shown on this machine (owners.py)
    gid: int = 0




_Node = TypeVar("_Node", NodeRow, NodeStat)


def _folder(row: _Node) -> _Node:
    """*row* if it is a folder still named somewhere: else ENOTDIR, or ENOENT for an orphan."""
    if row.kind != KIND_DIR:
        raise FsError(errno.ENOTDIR)
    if row.orphan:
        raise FsError(errno.ENOENT)
    return row


def check_name(name: str) -> str:
    if len(os.fsencode(name)) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    try:
        return validate_name(name)
    except InvalidName as exc:
        raise FsError(errno.EINVAL, str(exc)) from exc


class Vfs:
    def __init__(
        self, db: StateDb, replica: Replica, queue: WriteBackQueue, source: BlockSource,
        store_block: Callable[[bytes], str], release_blocks: Callable[[list[str]], None],
        work_dir: Path, *,
        hold_blocks: Callable[[list[str]], None] = lambda hashes: None,
        sync_blocks: Callable[[list[str]], None] = lambda hashes: None,
        names: NamePolicy | None = None, temporary_quiet: float = 3.0, replace_quiet: float = 1.0,
        early_upload: Callable[[str, bytes], object] | None = None, owners: Owners | None = None,
    ) -> None:
        self._db = db
        self.replica = replica
        self.queue = queue
        self.source = source
        self._store_block = store_block
        self._release_blocks = release_blocks
        self._hold_blocks = hold_blocks
        self._sync_blocks = sync_blocks
        self._early_upload = early_upload
        self.names = names or NamePolicy()
        self.owners = owners or Owners.of_this_process()
        self.temporary_quiet = temporary_quiet
        self.replace_quiet = replace_quiet
        self.saves = SaveDetector(replica, queue, self._send)
        self._work_dir = work_dir
        self.inodes = InodeTable()
        self.handles = HandleTable()
        self._work: dict[int, WorkingCopy] = {}
        self._mtime: dict[int, int] = {}  # mtime of working copies, set on write
        self._seen: dict[int, tuple[str, ...]] = {}  # content the kernel's pages hold, per inode
        self._copies = 0
        self.fsynced = Fsynced(db)
        self._seal_due: dict[int, float] = {}  # inode -> when to seal it after its last fsync
        #: Attributes set on files open for writing, not yet in their rows (`_hold_attrs`),
        #: and when each inode's are due to be written anyway.
        self._attrs: dict[int, dict[str, Any]] = {}
        self._attrs_due: dict[int, float] = {}
        self._attrs_waiting = trio.Event()
        self.notify: Notify = lambda inv: None
        self.on_settled: Callable[[], None] = lambda: None
        self._nursery: trio.Nursery | None = None
        #: A shared folder this user may only read: every change is EROFS before anything is queued.
        self.read_only = False

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._attrs_when_due)
        for ino, snap in list(self.fsynced):
            self._reseal(ino, snap)
        for leftover in self._work_dir.glob("*"):
            # Unsealed bytes of a killed session: what was closed or fsync'd is queued now.
            leftover.unlink()
        with self._db.tx():
            # An orphan a queued item still names (a file written, then deleted before it
            # went up) keeps its row until that item is sent: the item reads it.
            self.replica.purge_orphans(keep=self.queue.pending_nodes())

    def _reseal(self, ino: int, snap: Snapshot) -> None:
        """Queue what an fsync of a killed session made durable (fsynced.py), as its close would have."""
        row = self.replica.get(ino)
        stored: list[str] = []
        store = self._storing(stored)
        try:
            with self._db.tx():
                if row is not None and not row.orphan:
                    snap = as_left(snap, self._work_dir)
                    blocks = snap.blocks(reader(snap, self._work_dir), store)
                    self._sealed(row, snap.size, blocks, snap.mtime_ns or row.mtime_ns)
                    log.info("queued the fsync'd content of %s left open by the last session", row.id)
                self.fsynced.forget(ino)
        finally:
            self._release_blocks(stored)

    # -- helpers -------------------------------------------------------------
    def _changing(self) -> None:
        """Refuse a change of a read-only tree (EROFS), as a file system mounted read-only does."""
        if self.read_only:
            raise FsError(errno.EROFS, "this shared folder is read-only for you")

    def _row(self, ino: int) -> NodeRow:
        """*ino*'s row as this machine shows it: with the attributes held for it (`_hold_attrs`)."""
        row = self.replica.get(ino)
        if row is None:
            raise FsError(errno.ENOENT)
        held = self._attrs.get(ino)
        return row if held is None else dataclasses.replace(row, **held)

    def _dir(self, ino: int) -> NodeRow:
        return _folder(self._row(ino))

    def _dir_stat(self, ino: int) -> NodeStat:
        """`_dir` where the folder's attributes are all that is needed (a listing, a look-up)."""
        row = self.replica.stat(ino)
        if row is None:
            raise FsError(errno.ENOENT)
        return _folder(row)

    def attr(self, row: NodeRow | NodeStat, links: int | None = None) -> FileAttr:
        size, mtime = row.size, row.mtime_ns
        work = self._work.get(row.ino)
        if work is not None:
            size = work.size
            mtime = self._mtime.get(row.ino, mtime)
            held = self._attrs.get(row.ino)
            if held is not None:
                row = row._replace(**held) if isinstance(row, tuple) else dataclasses.replace(row, **held)
        if links is not None:
            nlink = links
        elif row.kind == KIND_DIR:
            nlink = 2 + self.replica.count_subdirs(row.id)
        else:
            nlink = 0 if row.orphan else max(1, len(self.replica.entries_of(row.id)))
        if row.kind == KIND_SYMLINK:
            size = len(os.fsencode(row.target))
        mode = row.mode if row.kind == KIND_SPECIAL else _TYPE[row.kind] | row.mode
        return FileAttr(row.ino, mode, size, mtime, max(row.ctime_ns, mtime), nlink, row.rdev,
                        self.owners.shown_uid(row.uid), self.owners.shown_gid(row.gid))

    def busy(self, node: str) -> bool:
        """True while *node* has a local writer: remote changes to it must wait."""
        row = self.replica.by_id(node)
        return row is not None and row.ino in self._work

    def writing(self) -> bool:
        """True while any file has a local writer (its changes are not in the queue yet)."""
        return bool(self._work)

    def is_dirty(self, ino: int) -> bool:
        return ino in self._work

    # -- metadata ------------------------------------------------------------
    def lookup(self, parent: int, name: str) -> FileAttr:
        pdir = self._dir_stat(parent)
        if name == ".":
            return self.attr(pdir)
        found = self.replica.lookup_with_links(pdir.id, name)
        if found is None:
            if len(os.fsencode(name)) > NAME_MAX:
                raise FsError(errno.ENAMETOOLONG)
            raise FsError(errno.ENOENT)
        return self.attr(*found)

    def getattr(self, ino: int) -> FileAttr:
        found = self.replica.with_links(ino)
        if found is None:
            raise FsError(errno.ENOENT)
        return self.attr(*found)

    def listdir(self, ino: int) -> list[tuple[str, FileAttr]]:
        found = self.replica.folder_listing(ino)
        if found is None:
            raise FsError(errno.ENOENT)
        _folder(found[0])
        return [(name, self.attr(row, links)) for name, row, links in found[1]]

    def readlink(self, ino: int) -> str:
        row = self._row(ino)
        if row.kind != KIND_SYMLINK:
            raise FsError(errno.EINVAL)
        return row.target

    def forget(self, ino: int, count: int) -> None:
        if self.inodes.forget(ino, count):
            self._seen.pop(ino, None)  # the kernel dropped the inode and its pages
            self._maybe_drop(ino)

    def _maybe_drop(self, ino: int) -> None:
        if self.inodes.known(ino):
            # Asked first: the kernel still holds the inode at every unlink and release,
            # so this answers most calls without reading the database.
            return
        if not self.replica.is_orphan(ino):
            return
        row = self.replica.get(ino)
        if (
            row and row.orphan and not self.handles.open_on(ino)
            and not self.queue.items(row.id)  # the queue still needs its seq
        ):
            with self._db.tx():
                self.replica.drop_node(row.id)
            if row.local:
                self._release_blocks(list(row.blocks))

    # -- namespace changes ---------------------------------------------------
    def _new_entry_checks(self, parent: int, name: str) -> NodeRow:
        pdir = self._dir(parent)
        check_name(name)
        if self.replica.lookup(pdir.id, name) is not None:
            raise FsError(errno.EEXIST)
        return pdir

    def mkdir(self, parent: int, name: str, mode: int, caller: Caller | None = None) -> FileAttr:
        self._changing()
        pdir = self._new_entry_checks(parent, name)
        node = new_node_id()
        mode &= 0o7777
        if pdir.mode & stat.S_ISGID:
            mode |= stat.S_ISGID  # a setgid folder's subfolders are setgid too (as ext4)
        with self._db.tx():
            row = self.replica.add_node(node, KIND_DIR, mode, owner=self.owners.new_node(caller, pdir.mode, pdir.gid))
            self.replica.set_entry(pdir.id, name, node)
            self._touch_dir(pdir)
            self._send(Mkdir(id=node, parent=pdir.id, name=name, mode=row.mode, mtime_ns=row.mtime_ns, uid=row.uid,
                             gid=row.gid), name=name)
        return self.attr(row)

    def symlink(self, parent: int, name: str, target: str, caller: Caller | None = None) -> FileAttr:
        self._changing()
        pdir = self._new_entry_checks(parent, name)
        if not target or len(os.fsencode(target)) > 4095:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        node = new_node_id()
        local = self._local_name(KIND_SYMLINK, name)
        with self._db.tx():
            row = self.replica.add_node(node, KIND_SYMLINK, 0o777, target=target, local=local,
                                        owner=self.owners.new_node(caller, pdir.mode, pdir.gid))
            self.replica.set_entry(pdir.id, name, node)
            self._touch_dir(pdir)
            if not local:
                self._send(self._born(row, pdir.id, name), name=name)
        return self.attr(row)

    def _send(
        self, op: Op, *, name: str | None = None, replaced: bool = False, version: bool = False,
        quiet: float | None = None,
    ) -> None:
        """Queue *op* for the server with the quiet period its names call for (*version*: see enqueue)."""
        if name is not None and self.names.temporary(name):
            quiet = max(quiet or 0.0, self.temporary_quiet)
        if replaced:
            # A save may put a new file here at once: give it time (saves.py).
            quiet = max(quiet or 0.0, self.replace_quiet)
        self.queue.enqueue(op, quiet=quiet, version=version)

    def _local_name(self, kind: str, name: str) -> bool:
        return kind != KIND_DIR and self.names.local_only(name)

    def _touch_dir(self, pdir: NodeRow) -> None:
        # Directory times are local: the server keeps no directory mtimes.
        now = time.time_ns()
        self.replica.update_node(pdir.id, mtime_ns=now, ctime_ns=now)

    def _storing(self, stored: list[str]) -> Callable[[bytes], str]:
        """A store into the cache that lists in *stored* each block it holds there for the caller."""
        def store(data: bytes) -> str:
            h = self._store_block(data)
            stored.append(h)
            return h

        return store

    def _touch_dirs(self, src_dir: NodeRow, dst_dir: NodeRow) -> None:
        """A rename's folders; one statement when it stays in its folder (rsync's, an editor's save)."""
        self._touch_dir(src_dir)
        if dst_dir.id != src_dir.id:
            self._touch_dir(dst_dir)

    def _unlink_entry(self, pdir: NodeRow, name: str, row: NodeRow) -> None:
        """Remove ``pdir/name`` (naming *row*) here and on the server; call inside a transaction."""
        self.replica.remove_entry(pdir.id, name)
        gone = not self.replica.entries_of(row.id)
        if gone:
            self.replica.set_orphan(row.id)
        else:
            self.replica.update_node(row.id)  # ctime: one name less, as ext4
        if not row.local:
            # A save may put a new file in its place (saves.py) -- only a file the server
            # has: one made here and not yet sent has no version to keep.  A file that
            # keeps another name (git links its packs into place, then unlinks the
            # temporary name) is not going away: its name goes at once.
            replaced = gone and row.kind == KIND_FILE and row.seq != 0
            self._send(Delete(id=row.id, parent=pdir.id, name=name), replaced=replaced)
            self.saves.left(pdir.id, name, row)
        self._touch_dir(pdir)

    def _born(self, row: NodeRow, parent: NodeId, name: str) -> Create | Symlink:
        """The op that creates *row* at ``parent/name`` on the server, content and all."""
        if row.kind == KIND_SYMLINK:
            return Symlink(id=row.id, parent=parent, name=name, target=row.target, mtime_ns=row.mtime_ns,
                           uid=row.uid, gid=row.gid)
        return Create(id=row.id, parent=parent, name=name, mode=row.mode, mtime_ns=row.mtime_ns, size=row.size,
                      blocks=row.blocks, uid=row.uid, gid=row.gid)

    def unlink(self, parent: int, name: str) -> None:
        self._changing()
        pdir = self._dir(parent)
        row = self.replica.lookup(pdir.id, name)
        if row is None:
            raise FsError(errno.ENOENT)
        if row.kind == KIND_DIR:
            raise FsError(errno.EISDIR)
        self._settle_attrs(row.ino)
        with self._db.tx():
            self._unlink_entry(pdir, name, row)
        self._maybe_drop(row.ino)

    def rmdir(self, parent: int, name: str) -> None:
        self._changing()
        pdir = self._dir(parent)
        row = self.replica.lookup(pdir.id, name)
        if row is None:
            raise FsError(errno.ENOENT)
        if row.kind != KIND_DIR:
            raise FsError(errno.ENOTDIR)
        if self.replica.has_children(row.id):
            raise FsError(errno.ENOTEMPTY)
        with self._db.tx():
            self._unlink_entry(pdir, name, row)
        self._maybe_drop(row.ino)

    def _is_inside(self, node: str, ancestor: str) -> bool:
        """True if directory *node* is *ancestor* or below it."""
        seen = 0
        while node != ancestor:
            parents = self.replica.entries_of(node)
            if not parents or seen > 4096:
                return False
            node = parents[0][0]
            seen += 1
        return True

    def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, *,
               noreplace: bool = False) -> None:
        """Move an entry, replacing what the new name holds unless *noreplace* (then EEXIST)."""
        self._changing()
        src_dir = self._dir(old_parent)
        dst_dir = self._dir(new_parent)
        check_name(new_name)
        row = self.replica.lookup(src_dir.id, old_name)
        if row is None:
            raise FsError(errno.ENOENT)
        target = self.replica.lookup(dst_dir.id, new_name)
        if row.kind == KIND_DIR and self._is_inside(dst_dir.id, row.id):
            raise FsError(errno.EINVAL)
        if target is not None:
            if target.id == row.id:
                return
            if noreplace:
                raise FsError(errno.EEXIST)
            if row.kind == KIND_DIR and target.kind != KIND_DIR:
                raise FsError(errno.ENOTDIR)
            if row.kind != KIND_DIR and target.kind == KIND_DIR:
                raise FsError(errno.EISDIR)
            if target.kind == KIND_DIR and self.replica.has_children(target.id):
                raise FsError(errno.ENOTEMPTY)
            self._settle_attrs(target.ino)
        if self._settle_attrs(row.ino):
            row = self._row(row.ino)  # a local-only file that starts to sync is born with them
        to_local = self._local_name(row.kind, new_name)
        with self._db.tx():
            if target is not None:
                self._unlink_entry(dst_dir, new_name, target)
            self.replica.remove_entry(src_dir.id, old_name)
            self.replica.set_entry(dst_dir.id, new_name, row.id)
            self._touch_dirs(src_dir, dst_dir)
            if row.local and not to_local:
                # A local-only file under a name that syncs: the server gets it now.
                self.replica.update_node(row.id, local=0)
                self._send(self._born(row, dst_dir.id, new_name), name=new_name)
                self._release_blocks(list(row.blocks))
            elif not row.local and to_local:
                # Renamed to a lock/swap-like name: it leaves the server, stays here.
                self._send(Delete(id=row.id, parent=src_dir.id, name=old_name))
                self.replica.remap(row.id, new_node_id())
                moved = self.replica.get(row.ino)
                assert moved is not None
                self.replica.update_node(moved.id, local=1)
                self._hold_blocks(list(row.blocks))
            elif not row.local:
                self.replica.update_node(row.id)  # ctime
                self._send(
                    Rename(id=row.id, parent=src_dir.id, name=old_name, new_parent=dst_dir.id, new_name=new_name),
                    # No replace quiet period: editors move a document away to a temporary
                    # name (``~WRL0001.tmp``, ``notes.txt~``), whose own wait is longer.
                    # git's ``index.lock`` renamed to ``index`` waited a second for nothing.
                    name=new_name,
                )
                self.saves.left(src_dir.id, old_name, row)
                arrived = self.replica.get(row.ino)
                if arrived is not None:
                    self.saves.arrived(dst_dir.id, new_name, arrived)
        if target is not None:
            self._maybe_drop(target.ino)

    def link(self, ino: int, new_parent: int, new_name: str) -> FileAttr:
        """A hard link: one more entry for the same node."""
        self._changing()
        row = self._row(ino)
        if row.kind == KIND_DIR:
            raise FsError(errno.EPERM)
        if row.orphan:
            raise FsError(errno.ENOENT)
        pdir = self._new_entry_checks(new_parent, new_name)
        self._settle_attrs(ino)
        with self._db.tx():
            self.replica.set_entry(pdir.id, new_name, row.id)
            self._touch_dir(pdir)
            self.replica.update_node(row.id)  # ctime
            if not row.local:
                self._send(Link(id=row.id, parent=pdir.id, name=new_name), name=new_name)
        return self.getattr(ino)

    def mknod(self, parent: int, name: str, mode: int, rdev: int, caller: Caller | None = None) -> FileAttr:
        """FIFOs, sockets and device nodes: stored and synced, opened by the kernel only."""
        self._changing()
        if stat.S_ISREG(mode) or not stat.S_IFMT(mode):
            raise FsError(errno.EPERM, "regular files are made with create")
        pdir = self._new_entry_checks(parent, name)
        node = new_node_id()
        with self._db.tx():
            row = self.replica.add_node(node, KIND_SPECIAL, mode & (0o7777 | stat.S_IFMT(mode)), rdev=rdev,
                                        owner=self.owners.new_node(caller, pdir.mode, pdir.gid))
            self.replica.set_entry(pdir.id, name, node)
            self._touch_dir(pdir)
            self._send(Mknod(id=node, parent=pdir.id, name=name, mode=row.mode, rdev=rdev, mtime_ns=row.mtime_ns,
                             uid=row.uid, gid=row.gid), name=name)
        return self.attr(row)

    def exchange(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """The two names swap their nodes atomically (rename(2)'s RENAME_EXCHANGE)."""
        self._changing()
        src_dir, dst_dir = self._dir(old_parent), self._dir(new_parent)
        one = self.replica.lookup(src_dir.id, old_name)
        two = self.replica.lookup(dst_dir.id, new_name)
        if one is None or two is None:
            raise FsError(errno.ENOENT)
        if one.id == two.id:
            return
        if (one.kind == KIND_DIR and self._is_inside(dst_dir.id, one.id)) or (
            two.kind == KIND_DIR and self._is_inside(src_dir.id, two.id)
        ):
            raise FsError(errno.EINVAL)
        if one.local or two.local:
            raise FsError(errno.EXDEV, "cannot exchange a local-only file")
        self._settle_attrs(one.ino)
        self._settle_attrs(two.ino)
        with self._db.tx():
            self.replica.set_entry(src_dir.id, old_name, two.id)
            self.replica.set_entry(dst_dir.id, new_name, one.id)
            self._touch_dirs(src_dir, dst_dir)
            self._send(Rename(id=one.id, parent=src_dir.id, name=old_name, new_parent=dst_dir.id, new_name=new_name,
                              exchange=two.id))

    # -- extended attributes -------------------------------------------------
    @staticmethod
    def _xattr_name(name: str) -> str:
        if not name.startswith(XATTR_KEPT):
            # Only the user namespace is stored and synced; security.* and
            # trusted.* mean nothing on another machine.
            raise FsError(errno.EOPNOTSUPP)
        if len(name.encode()) > XATTR_NAME_MAX:
            raise FsError(errno.ERANGE)
        return name

    def getxattr(self, ino: int, name: str) -> bytes:
        # `ls -l` asks every file for security.selinux and system.posix_acl_access.
        # EOPNOTSUPP from _xattr_name, before any look-up, not ENODATA: coreutils
        # stops asking a device that answered "not supported" (ls.c,
        # getfilecon_cache and file_has_acl_cache), two requests in all instead of
        # two a file.  (ENOSYS would silence the kernel for user.* too.)
        self._xattr_name(name)
        xattrs = self.replica.xattrs_of(ino)
        if xattrs is None:
            raise FsError(errno.ENOENT)
        value = xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA)
        return base64.b64decode(value)

    def listxattr(self, ino: int) -> list[str]:
        return sorted(self._row(ino).xattrs)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        self._changing()
        row = self._row(ino)
        self._xattr_name(name)
        if len(value) > XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG)
        xattrs = dict(row.xattrs)
        xattrs[name] = base64.b64encode(value).decode()
        if sum(len(k) + len(v) * 3 // 4 for k, v in xattrs.items()) > XATTR_TOTAL_MAX:
            raise FsError(errno.ENOSPC)
        self._set_xattrs(row, xattrs, {name: xattrs[name]})

    def removexattr(self, ino: int, name: str) -> None:
        self._changing()
        row = self._row(ino)
        if name not in row.xattrs:
            raise FsError(errno.ENODATA)
        xattrs = dict(row.xattrs)
        del xattrs[name]
        self._set_xattrs(row, xattrs, {name: None})

    def _set_xattrs(self, row: NodeRow, xattrs: dict[str, str], change: dict[str, str | None]) -> None:
        with self._db.tx():
            self.replica.update_node(row.id, xattrs=xattrs)
            if not row.local and not row.orphan:
                self._send(SetAttr(id=row.id, xattrs=change))

    # -- attributes ------------------------------------------------------------
    async def setattr(
        self, ino: int, *, mode: int | None = None, size: int | None = None, mtime_ns: int | None = None,
        fh: int | None = None, uid: int | None = None, gid: int | None = None, caller: Caller | None = None,
        touch: bool = False,
    ) -> FileAttr:
        """Change *ino*'s attributes; *uid*/*gid* are numbers as shown here (chown rules: owners.py).

        *touch*: the change time moves even if nothing else does (chown(f, -1, -1), as ext4).
        """
        self._changing()
        row = self._row(ino)
        owner = self._owner_changes(row, uid, gid, caller)
        if owner and all(getattr(row, field) == value for field, value in owner.items()):
            # chown to the owner it has (tar and cp -a as root, SQLite on each journal): the
            # change time moves and nothing goes to the server.
            owner, touch = {}, True
        if size is not None:
            if row.kind == KIND_DIR:
                raise FsError(errno.EISDIR)
            if row.kind != KIND_FILE:
                raise FsError(errno.EINVAL)
            if size < 0:
                raise FsError(errno.EINVAL)
            temporary = ino not in self._work
            work = self._working_copy(row)
            try:
                await work.truncate(size)
                self._mtime[ino] = time.time_ns() if mtime_ns is None else mtime_ns
                work.mtime_set = mtime_ns is not None
                if temporary:
                    await self._seal(ino)
            finally:
                if temporary:
                    self._close_working_copy(ino)
        changes: dict[str, Any] = {}
        if mode is not None:
            changes["mode"] = stat.S_IFMT(row.mode) | (mode & 0o7777)  # a special node keeps its type
            if changes["mode"] == row.mode:
                # chmod to the mode it has (rsync, right after it made its temporary file with
                # that mode): as for chown above, the change time moves and nothing is sent.
                del changes["mode"]
                touch = True
        if mtime_ns is not None:
            if ino in self._work:
                self._mtime[ino] = mtime_ns
                self._work[ino].mtime_set = True
            changes["mtime_ns"] = mtime_ns
        if (changes or owner or touch) and row.kind == KIND_FILE and ino in self._work and self._nursery is not None:
            self._hold_attrs(ino, {**changes, **owner})
        elif changes or owner:
            with self._db.tx():
                self.replica.update_node(row.id, **changes, **owner)
                if row.kind != KIND_DIR or "mode" in changes or owner:
                    # Directory mtimes stay local (see _touch_dir): a directory's setattr carries no mtime.
                    uid, gid = chown_fields(owner)
                    op = SetAttr(id=row.id, mode=changes.get("mode"),
                                 mtime_ns=None if row.kind == KIND_DIR else changes.get("mtime_ns"), uid=uid, gid=gid)
                    if not row.orphan and not row.local:
                        self._send(op)
        elif touch:
            with self._db.tx():
                self.replica.update_node(row.id)  # ctime, which stays on this machine
        return self.getattr(ino)

    def _hold_attrs(self, ino: int, changes: dict[str, Any]) -> None:
        """Keep *changes* to a file open for writing in memory until its close (`_seal`, `_settle_attrs`).

        tar sets a file's times, owner and mode before it closes it: three
        transactions and three rewrites of the queued create, where the close's
        own transaction can carry them (5–13 % more of `tar xf`'s files a second).  What
        is held shows at once (`_row`, `attr`).  A crash loses it as it loses the
        bytes written since the last fsync; an fsync writes it first.
        """
        held = self._attrs.setdefault(ino, {})
        held.update(changes, ctime_ns=time.time_ns())
        if ino not in self._attrs_due:
            self._attrs_due[ino] = trio.current_time() + ATTRS_DUE
            self._attrs_waiting.set()

    def _settle_attrs(self, ino: int) -> bool:
        """Write what is held for *ino* into its row and the queue now (before an fsync, before its names
        change); True if anything was.  Dropped only once committed: a failed transaction keeps it for the close.
        """
        held = self._attrs.get(ino)
        if held is None:
            return False
        row = self.replica.get(ino)
        if row is not None:
            with self._db.tx():
                self.replica.update_node(row.id, **held)
                sent = {k: held[k] for k in ("mode", "mtime_ns") if k in held}
                owner: dict[str, int | None] = {k: held[k] for k in ("uid", "gid") if k in held}
                if (sent or owner) and not row.orphan and not row.local:
                    uid, gid = chown_fields(owner)
                    self._send(SetAttr(id=row.id, mode=sent.get("mode"), mtime_ns=sent.get("mtime_ns"),
                                       uid=uid, gid=gid))
        self._drop_attrs(ino)
        return True

    def _drop_attrs(self, ino: int) -> None:
        """What was held for *ino* is in its row now (or its file is gone)."""
        self._attrs.pop(ino, None)
        self._attrs_due.pop(ino, None)

    async def _attrs_when_due(self) -> None:
        """Write held attributes `ATTRS_DUE` after they were set, for files that stay open."""
        while True:
            while not self._attrs_due:  # a close may take them all before this task runs
                self._attrs_waiting = trio.Event()
                await self._attrs_waiting.wait()
            await trio.sleep_until(min(self._attrs_due.values()))
            now = trio.current_time()
            for ino in [ino for ino, due in self._attrs_due.items() if due <= now]:
                try:
                    self._settle_attrs(ino)
                except Exception:  # the database failing: still held, the close tries again
                    self._attrs_due.pop(ino, None)
                    log.exception("could not write the attributes of inode %d", ino)

    def _owner_changes(self, row: NodeRow, uid: int | None, gid: int | None,
                       caller: Caller | None) -> dict[str, int | None]:
        """The stored owner and group chown(*uid*, *gid*) sets on *row*; EPERM where POSIX refuses."""
        stored: dict[str, int | None] = {}
        if uid is not None:
            stored["uid"] = self.owners.stored_uid(uid)
        if gid is not None:
            stored["gid"] = self.owners.stored_gid(gid)
        self.owners.check_chown(caller, row.uid, row.gid, stored)
        return stored

    # -- files -----------------------------------------------------------------
    def _working_copy(self, row: NodeRow) -> WorkingCopy:
        work = self._work.get(row.ino)
        if work is None:
            # A fresh name each time: the previous copy may still be being removed.
            self._copies += 1
            path = self._work_dir / f"{row.ino}.{self._copies}"
            work = WorkingCopy(path, row.size, row.blocks, self._load)
            if self._nursery is not None:
                work.spawn = self._nursery.start_soon
                work.store = self._store_block
                if self._early_upload is not None:
                    work.offer = functools.partial(self._offer, row.ino)
            self._work[row.ino] = work
        return work

    def _offer(self, ino: int, h: str, data: bytes) -> None:
        """Send a finished block of a file still being written early, unless it stays on this machine."""
        row = self.replica.get(ino)
        if self._early_upload is not None and row is not None and not row.local and not row.orphan:
            self._early_upload(h, data)

    def _close_working_copy(self, ino: int) -> None:
        work = self._work.get(ino)
        if work is not None and work.handles == 0:
            self._settle_attrs(ino)  # the seal failed or found its node gone
            if self._nursery is not None and not work.in_memory:
                # Removing a big file takes a while: not on the request path.
                self._nursery.start_soon(trio.to_thread.run_sync, work.close)
            else:
                work.close()
            del self._work[ino]
            self._mtime.pop(ino, None)
            if self.fsynced.has(ino):
                with self._db.tx():
                    self.fsynced.forget(ino)  # its node went away unsealed: nothing left to keep
            self._release_blocks(list(work.ahead_stored))  # hashed ahead, never sealed
            work.ahead_stored.clear()
            self.on_settled()

    async def _load(self, h: Any) -> Content:
        with _fetch_errors(h):
            return await self.source.get(h)

    def _open_handle(self, row: NodeRow, how: OpenMode) -> Handle:
        handle = self.handles.open(
            row.ino, readable=how.read, writable=how.write, append=how.append, size=row.size, blocks=row.blocks,
        )
        if how.write:
            self._working_copy(row).handles += 1
        return handle

    def create(self, parent: int, name: str, mode: int, how: OpenMode,
               caller: Caller | None = None) -> tuple[int, FileAttr]:
        self._changing()
        pdir = self._new_entry_checks(parent, name)
        node = new_node_id()
        local = self._local_name(KIND_FILE, name)
        with self._db.tx():
            row = self.replica.add_node(node, KIND_FILE, mode & 0o7777, local=local, owner=self.owners.new_node(caller, pdir.mode, pdir.gid))
            self.replica.set_entry(pdir.id, name, node)
            self._touch_dir(pdir)
            if not local:
                self._send(self._born(row, pdir.id, name), name=name)
                if self.saves.arrived(pdir.id, name, row):
                    row = self.replica.get(row.ino) or row
        handle = self._open_handle(row, how)
        self._seen[row.ino] = row.blocks
        return handle.fh, self.attr(row)

    async def open(self, ino: int, how: OpenMode) -> tuple[int, bool]:
        """Open *ino*; return the handle and whether the kernel may keep its cached pages.

        Close-to-open: the kernel's pages stay valid only if the content is the
        version this machine last opened or wrote.  A read that was in flight
        when a remote change arrived can leave old pages behind; the next open
        drops them.
        """
        row = self._row(ino)
        if row.kind == KIND_DIR:
            raise FsError(errno.EISDIR)
        if row.kind != KIND_FILE:
            raise FsError(errno.EINVAL)
        if how.write or how.append or how.truncate:
            self._changing()
        handle = self._open_handle(row, how)
        keep = ino in self._work or self._seen.get(ino) == row.blocks
        self._seen[ino] = row.blocks
        if how.truncate and handle.writable:
            await self._work[ino].truncate(0)
            self._mtime[ino] = time.time_ns()
        return handle.fh, keep

    async def read(self, fh: int, offset: int, length: int) -> Content | memoryview:
        """Up to *length* bytes at *offset*: a view of a block held in memory where one can be.

        The kernel copies a reply out at once, so a 1 MiB read of a downloaded
        block costs no copy here (docs/benchmarks.md).
        """
        handle = self.handles.get(fh)
        if not handle.readable:
            raise FsError(errno.EBADF)
        work = self._work.get(handle.ino)
        if work is not None:
            return await work.read(offset, length)
        if offset + length > handle.size:
            await self._follow_append(handle)
        end = min(offset + length, handle.size)
        if offset >= end:
            return b""
        # The kernel's read-ahead sends a file's pages a little out of order.
        sequential = handle.read_end >= 0 and abs(offset - handle.read_end) <= _SEQUENTIAL_SLACK
        handle.read_end = end
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        parts = []
        for index in range(first, last + 1):
            start = index * BLOCK_SIZE
            lo = max(0, offset - start)
            whole = min(handle.size - start, BLOCK_SIZE)
            size = min(end - start, BLOCK_SIZE) - lo
            # A read of a whole block (a small file) wants it all, like one going on from the last.
            streaming = sequential or size == whole
            parts.append(await self._read_block(handle.blocks[index], lo, size, streaming, whole))
        if sequential and self._nursery is not None:
            # Read-ahead once the asked-for bytes are here, and only for a program
            # reading on: the next blocks load while it works through this one.
            self.source.prefetch(self._nursery, list(handle.blocks[last + 1 : last + 1 + READ_AHEAD_BLOCKS]))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _follow_append(self, handle: Handle) -> None:
        """Let a reader asking past the version it opened go on into a newer one that only appends.

        Another machine appended to a file open here (a log, ``tail -f``): the
        kernel took the new size, and reads past the old end found nothing.
        The reader keeps one whole version otherwise (close-to-open): only a
        version whose first bytes are all of the opened one may follow it.
        """
        row = self.replica.get(handle.ino)
        if row is None or row.size <= handle.size or row.blocks == handle.blocks:
            return
        full = handle.size // BLOCK_SIZE
        if row.blocks[:full] != handle.blocks[:full]:
            return
        tail = handle.size - full * BLOCK_SIZE
        if tail:
            # Blocks are named by their bytes: the old last block must begin the new one.
            try:
                old = await self._read_block(handle.blocks[full], 0, tail, True, tail)
                new = await self._read_block(
                    row.blocks[full], 0, tail, True, min(row.size - full * BLOCK_SIZE, BLOCK_SIZE)
                )
            except FsError:
                return  # not to be had now: the reader keeps its version
            if bytes(old) != bytes(new):
                return
        handle.size, handle.blocks = row.size, row.blocks

    async def _read_block(
        self, h: Any, offset: int, length: int, streaming: bool, size: int | None = None
    ) -> Content | memoryview:
        with _fetch_errors(h):
            return await self.source.read(h, offset, length, streaming=streaming, size=size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._changing()
        handle = self.handles.get(fh)
        if not handle.writable:
            raise FsError(errno.EBADF)
        work = self._work[handle.ino]
        written = await work.write(offset, data)
        self._mtime[handle.ino] = time.time_ns()
        work.mtime_set = False
        return written

    async def _seal(self, ino: int) -> None:
        """Turn a working copy's changes into a queued update of its node."""
        work = self._work.get(ino)
        if work is None or not (work.changed or ino in self._mtime):
            self._settle_attrs(ino)  # opened for writing, not written: a chmod alone
            return
        stored: list[str] = []
        store = self._storing(stored)
        try:
            sealed = await work.seal(store)
            # Blocks hashed ahead are held like the seal's own until the queue holds them.
            stored.extend(work.ahead_stored)
            work.ahead_stored.clear()
            row = self.replica.get(ino)
            if row is None or sealed is None:
                return
            size, blocks = sealed
            mtime = self._mtime.pop(ino, row.mtime_ns)
            self._seen[ino] = blocks  # the kernel's pages are what was just written
            with self._db.tx():
                self._sealed(row, size, blocks, mtime, self._attrs.get(ino))
                self.fsynced.forget(ino)  # the queue holds this content, and what it fsync'd
            self._drop_attrs(ino)
            work.grows_in_file = False
        finally:
            # The queue item protects the blocks now; drop the seal's own hold.
            self._release_blocks(stored)

    def _sealed(self, row: NodeRow, size: int, blocks: tuple[BlockHash, ...], mtime: int,
                held: dict[str, Any] | None = None) -> None:
        """Give *row* its new content, and the attributes *held* for it, and queue them; call inside a transaction."""
        # The content's own mtime (a write after a utimens moves it) and change time win.
        attrs = {k: v for k, v in (held or {}).items() if k in ("mode", "uid", "gid")}
        self.replica.update_node(row.id, size=size, blocks=blocks, mtime_ns=mtime, **attrs)
        if row.local:
            # Local-only files live only in the cache: hold the new version, free the old.
            self._hold_blocks(list(blocks))
            self._release_blocks(list(row.blocks))
        elif not row.orphan:
            self._send(Update(id=row.id, size=size, blocks=tuple(blocks), mtime_ns=mtime, mode=attrs.get("mode")))
            owner: dict[str, int | None] = {k: attrs[k] for k in ("uid", "gid") if k in attrs}
            if owner:
                uid, gid = chown_fields(owner)  # an update carries no owner
                self._send(SetAttr(id=row.id, uid=uid, gid=gid))

    async def seal_all(self) -> None:
        """Seal every file still open for writing: the front end ended under its writers."""
        for ino in list(self._work):
            try:
                await self._seal(ino)
            except (FsError, OSError) as exc:
                log.warning("could not seal inode %d, open for writing when the front end ended: %s", ino, exc)

    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle.writable:
            await self._seal(handle.ino)

    async def fsync(self, fh: int) -> None:
        handle = self.handles.get(fh)
        self._settle_attrs(handle.ino)  # attributes are part of what an fsync makes durable
        work = self._work.get(handle.ino) if handle.writable else None
        if work is not None and (work.changed or handle.ino in self._mtime):
            await self._keep(handle.ino, work)
            return
        if handle.writable:
            # The sealed version (blocks, replica row, queue item) is what a restart
            # shows; the working copy itself is dropped then, so it needs no fsync.
            await self._seal(handle.ino)
            row = self.replica.get(handle.ino)
            if row is not None:
                # The queued update names these blocks: they must outlive a power loss too.
                # The cache and the state database are synced side by side (an fsync each).
                async with trio.open_nursery() as both:
                    both.start_soon(trio.to_thread.run_sync, self._sync_blocks, [str(h) for h in row.blocks])
                    both.start_soon(self._db.synced)
                return
        await self._db.synced()

    async def fsyncdir(self) -> None:
        """Make the folder's entries durable: they are rows of the state database."""
        await self._db.synced()

    async def _keep(self, ino: int, work: WorkingCopy) -> None:
        """Make an open file's current bytes survive a crash without sealing them (fsynced.py).

        One transaction records where the bytes are; then the state database's
        log, the working-copy file (none while the copy is memory) and blocks
        the record names that no fsync synced yet are synced side by side.
        When the last record already stands for the copy (it grows, and only
        its file changed since), the file alone is synced: one fsync, on the
        event loop while fsyncs are quick (quicksync.py).
        """
        changes = work.changes
        work.fsyncs += 1
        if work.in_memory and work.fsyncs >= FSYNCS_IN_MEMORY:
            # fsync'd again and again (a log, a database): a copy in memory is written into its
            # row whole at every fsync, a file's growing row is written once (fsynced.py).
            work.to_file()
        snap = dataclasses.replace(await work.snapshot(), mtime_ns=self._mtime.get(ino))
        work.grows_in_file = snap.grows
        last = self.fsynced.last(ino)
        if last is not None and snap.follows(last):
            await FSYNCS.run(work.sync)
        else:
            with self._db.tx():
                self.fsynced.record(ino, snap)
            unsynced = [h for h in snap.hashes if h not in work.synced]
            if snap.inline is None or unsynced:
                async with trio.open_nursery() as each:
                    each.start_soon(self._db.synced)
                    if snap.inline is None:
                        each.start_soon(trio.to_thread.run_sync, work.sync)
                    if unsynced:
                        each.start_soon(trio.to_thread.run_sync, self._sync_blocks, unsynced)
            else:
                await self._db.synced()  # the record holds every byte: no task to start beside it
            work.synced.update(unsynced)
            # Only now may a later fsync rely on the record: one that raced this one, or
            # came after it failed, must not take an unsynced record for a durable one.
            self.fsynced.durable(ino, snap)
        work.fsynced_changes = changes
        self._seal_later(ino)

    def _seal_later(self, ino: int) -> None:
        """Seal *ino* once it has been left alone for SEAL_AFTER_FSYNC after this fsync."""
        if self._nursery is None:
            return
        first = ino not in self._seal_due
        self._seal_due[ino] = trio.current_time() + SEAL_AFTER_FSYNC
        if first:
            self._nursery.start_soon(self._seal_when_quiet, ino)

    async def _seal_when_quiet(self, ino: int) -> None:
        while True:
            due = self._seal_due[ino]
            await trio.sleep_until(due)
            if self._seal_due[ino] == due:
                break  # no fsync since
        del self._seal_due[ino]
        work = self._work.get(ino)
        if work is not None and self.fsynced.has(ino) and work.changes == work.fsynced_changes:
            # Not written since the fsync: what is sealed is what the fsync made durable.
            try:
                await self._seal(ino)
            except (OSError, FsError) as exc:
                # A full cache, say: the fsync'd bytes are kept all the same, and close() seals again.
                log.warning("could not seal a file left open after its fsync: %s", exc)

    async def release(self, fh: int) -> None:
        handle = self.handles.close(fh)
        if handle.writable:
            work = self._work.get(handle.ino)
            if work is not None:
                try:
                    await self._seal(handle.ino)
                finally:
                    work.handles -= 1
                    self._close_working_copy(handle.ino)
        self._maybe_drop(handle.ino)

    def statfs(self) -> FsStats:
        """The local disk's room (where working copies and the cache grow), and the store's file count."""
        files, _ = self.replica.totals()
        if not hasattr(os, "statvfs"):
            # Windows: bytes only; the store itself bounds nothing by count.
            usage = shutil.disk_usage(self._work_dir)
            return FsStats(block_size=4096, total_bytes=usage.total, free_bytes=usage.free,
                           available_bytes=usage.free, files=files + 2**32, free_files=2**32)
        st = os.statvfs(self._work_dir)
        return FsStats(
            block_size=st.f_frsize, total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bfree * st.f_frsize,
            available_bytes=st.f_bavail * st.f_frsize, files=max(st.f_files, files), free_files=st.f_ffree,
        )

    def remember(self, ino: int) -> None:
        """The front end handed *ino* out (a lookup count to keep until `forget`)."""
        self.inodes.remember(ino)

    def node_id(self, ino: int) -> NodeId:
        return self._row(ino).id

    @staticmethod
    def root() -> int:
        return ROOT_INO


@contextlib.contextmanager
def _fetch_errors(h: Any) -> Iterator[None]:
    """Turn a block that cannot be had into the errno a reader sees."""
    try:
        yield
    except Offline as exc:
        raise FsError(errno.ENETUNREACH, "file content is not available offline") from exc
    except RemoteError as exc:
        log.error("cannot fetch block %s: %s", h, exc)
        raise FsError(errno.EIO) from exc
