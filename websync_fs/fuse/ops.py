"""The pyfuse3 adapter: decode arguments, call one core method, translate errors once.

Nothing here knows SQL, HTTP or cache policy.  The kernel is told about remote
changes through `notify()`, which hands the work to a thread: pyfuse3's
invalidate calls block until the kernel is done and must not run inside a
request handler.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ..errors import FsError
from ..invalidation import Invalidation
from ..owners import Caller
from ..vfs import FileAttr, OpenMode, Vfs

log = logging.getLogger(__name__)

#: A read-only extended attribute: where the file's content is (filestate.py).
STATE_XATTR = b"user.websync.state"

#: Attributes and entries stay in the kernel this long; remote changes
#: invalidate them at once, so the timeout only bounds a missed notification.
TIMEOUT = 60.0
#: Seconds the kernel remembers that a name is not there.
MISSING_TIMEOUT = 1.0
#: The block size a file shows (st_blksize): programs size their reads and writes by
#: it (cp, stdio buffers).  At 1 MiB each write request carries 1 MiB, which the
#: kernel passes whole (FUSE's max_pages), instead of eight of 128 KiB: `cp -a` of
#: photos ran 20 % faster.  NFS shows its 1 MiB wsize the same way.
BLKSIZE = 1024 * 1024

P = ParamSpec("P")
T = TypeVar("T")


def translate(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn core errors into `FUSEError`; only FUSEError may leave a handler."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            # A full disk is the user's to fix, not a fault of ours: the writer gets ENOSPC.
            level = logging.WARNING if exc.errno in (errno.ENOSPC, errno.EDQUOT) else logging.ERROR
            log.log(level, "%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


#: A directory entry as readdir shows it: name, attributes, and the operations of the store it is in.
Listed = tuple[str, FileAttr, "FuseOperations"]


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


#: The attributes a setattr may carry (pyfuse3.SetattrFields.update_*).
_SETTABLE = ("atime", "ctime", "gid", "mode", "mtime", "size", "uid")


def caller(ctx: Any) -> Caller | None:
    """Who makes a request, from pyfuse3's RequestContext (None: not known, as for tests' direct calls)."""
    return None if ctx is None else Caller(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid)


def open_mode(flags: int) -> OpenMode:
    """The core's open mode for open(2) *flags*."""
    access = flags & os.O_ACCMODE
    return OpenMode(read=access != os.O_WRONLY, write=access in (os.O_WRONLY, os.O_RDWR),
                    append=bool(flags & os.O_APPEND), truncate=bool(flags & os.O_TRUNC))


class FuseOperations(pyfuse3.Operations):  # type: ignore[misc]
    """The kernel's requests for one engine's core, inode numbers offset by `base`."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, vfs: Vfs, base: int = 0) -> None:
        super().__init__()
        self.vfs = vfs
        #: Added to every inode number the kernel is told: a shared folder shown inside the
        #: mount answers inodes of its own range (grafts.py); the user's own store's is 0.
        self.base = base
        #: Open directories: the inode, and its listing once the first readdir asked for it.
        self._dirs: dict[int, tuple[int, list[Listed] | None]] = {}
        self._next_dir = 0
        self._send, self._receive = trio.open_memory_channel[Invalidation](math.inf)
        #: The state word of an inode (filestate.py), shown as the xattr user.websync.state.
        self.file_state: Callable[[int], str] | None = None
        #: Set once the kernel's INIT is answered: settings it made (read-ahead) can change now.
        self.initialized = trio.Event()
        #: Entries shown at the top beside the store's own: the shared folders' roots (grafts.py).
        self.grafted: Callable[[], list[Listed]] = lambda: []

    def init(self) -> None:
        self.initialized.set()

    # -- kernel cache invalidation -------------------------------------------
    def notify(self, inv: Invalidation) -> None:
        self._send.send_nowait(inv)

    async def invalidator(self) -> None:
        async for inv in self._receive:
            await trio.to_thread.run_sync(_invalidate, inv, self.base)

    def _entry(self, attr: FileAttr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self.base + attr.ino
        entry.generation = 0
        entry.entry_timeout = TIMEOUT
        entry.attr_timeout = TIMEOUT
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = BLKSIZE
        entry.st_blocks = (attr.size + 511) // 512
        entry.st_atime_ns = attr.mtime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        return entry

    def _remembered(self, attr: FileAttr) -> pyfuse3.EntryAttributes:
        self.vfs.remember(attr.ino)
        return self._entry(attr)

    # -- metadata --------------------------------------------------------------
    @translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            return self._remembered(self.vfs.lookup(parent_inode, _name(name)))
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # A name that is not there is remembered by the kernel as such (inode 0): SQLite
        # looks for its journal and log at every commit, git and Python for files they may
        # make.  A name that appears behind the kernel's back drops it like any other entry
        # (`Invalidation.entries`); one made here replaces it in the kernel itself.  Briefly:
        # an invalidation racing this very look-up finds no entry yet to drop, and the
        # kernel would then keep the stale answer for as long as it was told.
        missing = pyfuse3.EntryAttributes()
        missing.st_ino = 0
        missing.entry_timeout = MISSING_TIMEOUT
        return missing

    @translate
    async def root_entry(self) -> pyfuse3.EntryAttributes:
        """The store's root as an entry looked up: a shared folder's, shown inside the mount (grafts.py)."""
        return self._remembered(self.vfs.getattr(self.vfs.root()))

    @translate
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self.vfs.getattr(inode))

    @translate
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        result = await self.vfs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            caller=caller(ctx),
            # chown(f, -1, -1) comes as a setattr of nothing, which moves ctime on ext4.
            touch=fields.update_ctime or not any(getattr(fields, f"update_{name}") for name in _SETTABLE),
        )
        return self._entry(result)

    @translate
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(self.vfs.readlink(inode))

    @translate
    async def opendir(self, inode: int, ctx: Any) -> int:
        # Listed at the first readdir, not here: SQLite opens the folder only to fsync it,
        # at every commit, and a listing costs as much as the folder is big.
        self._next_dir += 1
        self._dirs[self._next_dir] = (inode, None)
        return self._next_dir

    @translate
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        inode, listing = self._dirs.get(fh, (0, []))
        if listing is None:
            listing = [(name, attr, self) for name, attr in self.vfs.listdir(inode)]
            if inode == self.vfs.root():
                listing += self.grafted()
            self._dirs[fh] = (inode, listing)
        for index in range(start_id, len(listing)):
            name, attr, ops = listing[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), ops._entry(attr), index + 1):
                break
            ops.vfs.remember(attr.ino)

    @translate
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @translate
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = self.vfs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = st.block_size
        data.f_blocks = st.total_bytes // st.block_size
        data.f_bfree = st.free_bytes // st.block_size
        data.f_bavail = st.available_bytes // st.block_size
        data.f_files = st.files
        data.f_ffree = data.f_favail = st.free_files
        data.f_namemax = st.name_max
        return data

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                self.vfs.forget(inode, count)
            except Exception:  # forget cannot report errors; never let it kill the loop
                log.exception("forget(%d) failed", inode)

    # -- namespace ---------------------------------------------------------------
    @translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._remembered(self.vfs.mkdir(parent_inode, _name(name), mode, caller(ctx)))

    @translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.vfs.rmdir(parent_inode, _name(name))

    @translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.vfs.unlink(parent_inode, _name(name))

    @translate
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            self.vfs.exchange(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new))
        else:
            self.vfs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new),
                            noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._remembered(self.vfs.symlink(parent_inode, _name(name), os.fsdecode(target), caller(ctx)))

    @translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._remembered(self.vfs.link(inode, new_parent_inode, _name(new_name)))

    @translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._remembered(self.vfs.mknod(parent_inode, _name(name), mode, rdev, caller(ctx)))

    # -- extended attributes -------------------------------------------------------
    @translate
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name == STATE_XATTR and self.file_state is not None:
            return self.file_state(inode).encode()
        return self.vfs.getxattr(inode, _name(name))

    @translate
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        # The computed state is not listed: cp -a, rsync -X and tar --xattrs
        # copy what is listed, and a machine-local state must not travel.
        return [os.fsencode(n) for n in self.vfs.listxattr(inode)]

    @translate
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if name == STATE_XATTR:
            return  # computed, never stored; ignored so that cp -a and rsync -X copy into the mount
        self.vfs.setxattr(inode, _name(name), value)

    @translate
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if name == STATE_XATTR:
            raise FsError(errno.EPERM, "user.websync.state is computed, not stored")
        self.vfs.removexattr(inode, _name(name))

    # -- files -------------------------------------------------------------------
    @translate
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = self.vfs.create(parent_inode, _name(name), mode, open_mode(flags), caller(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._remembered(attr)

    @translate
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh, keep = await self.vfs.open(inode, open_mode(flags))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @translate
    # pyfuse3 replies from any buffer (its stub says bytes): a view spares a 1 MiB copy.
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:  # type: ignore[override]
        return await self.vfs.read(fh, off, size)

    @translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.vfs.write(fh, off, buf)

    @translate
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh)

    @translate
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsyncdir()

    @translate
    async def release(self, fh: int) -> None:
        await self.vfs.release(fh)


def _invalidate(inv: Invalidation, base: int = 0) -> None:
    for parent, name in inv.entries:
        _quietly(pyfuse3.invalidate_entry, base + parent, os.fsencode(name))
    for ino in inv.inodes:
        _quietly(pyfuse3.invalidate_inode, base + ino, False)
    for ino in set(inv.attrs) - set(inv.inodes):
        _quietly(pyfuse3.invalidate_inode, base + ino, True)


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except OSError as exc:
        # ENOENT: the kernel does not know this inode or entry: nothing to drop.
        # ENOSYS: the kernel has not finished mounting yet: it caches nothing.
        if exc.errno not in (errno.ENOENT, errno.ENOSYS):
            log.warning("%s%r failed: %s", fn.__name__, args, exc)
