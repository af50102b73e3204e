"""The ceiling: a minimal in-memory pyfuse3 file system, mounted as WebSync mounts.

Every FUSE request costs the Python stack (pyfuse3, trio, the kernel round
trip) some 100 µs here before a file system does any work.  This one does
none beyond keeping the tree (and `user.*` extended attributes) in
dictionaries, with the mount options, entry and attribute timeouts and
page-cache answers of WebSync's front end (`websync_fs/fuse`), so the kernel
sends it the requests it sends WebSync and a small-file row's "vs ceiling"
ratio says how much of WebSync's time is its own work.  Tests and benchmarks
only.  Run::

    .venv/bin/python -m tests.bench.ceiling MOUNTPOINT     # until SIGINT/SIGTERM
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from websync_fs.fuse.ops import BLKSIZE, TIMEOUT
from websync_fs.vfs import XATTR_KEPT

_XATTR_KEPT = XATTR_KEPT.encode()


@dataclass
class _Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    target: bytes = b""
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


class CeilingOps(pyfuse3.Operations):
    """A tree in memory: the least a pyfuse3 file system can do per request."""

    enable_writeback_cache = False  # as WebSync's front end

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, _Node] = {pyfuse3.ROOT_INODE: _Node(stat.S_IFDIR | 0o755, nlink=2)}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.dirs: dict[int, list[tuple[bytes, int]]] = {}
        self.next_fh = 0

    def _node(self, ino: int) -> _Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        n = self._node(ino)
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink, e.st_uid, e.st_gid = ino, n.mode, n.nlink, n.uid, n.gid
        e.st_size = len(n.target) if stat.S_ISLNK(n.mode) else len(n.data)
        e.st_blksize, e.st_blocks = BLKSIZE, (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = n.mtime_ns
        e.st_ctime_ns = n.ctime_ns
        e.entry_timeout = e.attr_timeout = TIMEOUT
        e.generation = 0
        return e

    def _child(self, parent: int, name: bytes) -> int:
        ino = self._node(parent).children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return ino

    def _make(self, parent: int, name: bytes, mode: int, ctx: Any, target: bytes = b"") -> pyfuse3.EntryAttributes:
        pdir = self._node(parent)
        if name in pdir.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        self.nodes[ino] = _Node(mode, target=target, nlink=2 if stat.S_ISDIR(mode) else 1,
                                uid=ctx.uid if ctx else 0, gid=ctx.gid if ctx else 0)
        pdir.children[name] = ino
        pdir.mtime_ns = time.time_ns()
        return self._entry(ino)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._entry(parent_inode)
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        if fields.update_size:
            del n.data[attr.st_size:]
            n.data.extend(bytes(attr.st_size - len(n.data)))
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
        n.ctime_ns = time.time_ns()
        return self._entry(inode)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self._node(inode).target

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, mode, ctx)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> tuple[Any, Any]:
        entry = self._make(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return pyfuse3.FileInfo(fh=entry.st_ino, keep_cache=True), entry

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        pdir = self._node(new_parent_inode)
        if new_name in pdir.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        pdir.children[new_name] = inode
        self._node(inode).nlink += 1
        return self._entry(inode)

    def _drop(self, ino: int) -> None:
        n = self._node(ino)
        n.nlink -= 1
        if n.nlink <= 0 or stat.S_ISDIR(n.mode):
            del self.nodes[ino]

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ino = self._child(parent_inode, name)
        del self.nodes[parent_inode].children[name]
        self._drop(ino)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ino = self._child(parent_inode, name)
        if self._node(ino).children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del self.nodes[parent_inode].children[name]
        self._drop(ino)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        ino = self._child(parent_inode_old, name_old)
        target = self._node(parent_inode_new).children.get(name_new)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if self._node(target).children:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self._drop(target)
        del self.nodes[parent_inode_old].children[name_old]
        self.nodes[parent_inode_new].children[name_new] = ino

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        n = self._node(inode)
        if flags & os.O_TRUNC:
            n.data.clear()
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self._node(fh).data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        data = self._node(fh).data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    # Extended attributes of the user namespace, as WebSync keeps them.  Without them the
    # kernel is told ENOSYS once and stops asking; a file system that has them is asked for
    # security.capability before every write (file_remove_privs), a request per write that
    # WebSync pays and the ceiling must pay too (docs/benchmarks.md).
    @staticmethod
    def _kept(name: bytes) -> None:
        if not name.startswith(_XATTR_KEPT):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        self._kept(name)
        try:
            return self._node(inode).xattrs[name]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENODATA) from None

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._kept(name)
        self._node(inode).xattrs[name] = value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._kept(name)
        if self._node(inode).xattrs.pop(name, None) is None:
            raise pyfuse3.FUSEError(errno.ENODATA)

    async def opendir(self, inode: int, ctx: Any) -> int:
        self.next_fh += 1
        self.dirs[self.next_fh] = sorted(self._node(inode).children.items())
        return self.next_fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        listing = self.dirs.get(fh, [])
        for index in range(start_id, len(listing)):
            name, ino = listing[index]
            if ino in self.nodes and not pyfuse3.readdir_reply(token, name, self._entry(ino), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    async def statfs(self, ctx: Any) -> Any:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 24
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.bench.ceiling MOUNTPOINT", file=sys.stderr)
        return 2
    options = set(pyfuse3.default_options) | {"fsname=websync-ceiling", "subtype=ceiling"}
    if os.geteuid() == 0:
        options.add("allow_other")  # as the other mounts it is compared with may be
    pyfuse3.init(CeilingOps(), argv[0], options)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
