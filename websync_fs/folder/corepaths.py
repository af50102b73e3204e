"""The core driven by path, as a program would drive a local file system.

The synced folder knows paths; the core knows inodes and handles.  This
module resolves one to the other through the core's lookups and opens,
writes, flushes and releases files as a kernel would, so the core's save
detection, quiet periods and conflict rules apply to the folder exactly as to
the mount.  The core's `FsError` is translated here, once, into `OSError`
with the same errno.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import FsError
from ..replica import ROOT_INO, NodeRow
from ..vfs import OpenMode, Vfs

#: Bytes moved per core read or write call.
CHUNK = 1 << 20


class ChangedMeanwhile(Exception):
    """The replica's node changed after the caller looked at it: look again before writing."""


class CorePaths:
    """Path-based calls on one `Vfs`; every error leaves as OSError(errno)."""

    def __init__(self, vfs: Vfs, to_core: Callable[[str], str] = lambda path: path, *,
                 stored: Callable[[int, str], str] = lambda parent, name: name) -> None:
        self.vfs = vfs
        #: The core's path of a folder path: where the folder shows aliases, the original names.
        self.to_core = to_core
        #: The store name of a name in folder (inode) *parent*, where the front end resolves them
        #: folder by folder (the WinFsp drive: aliases, and any case finds a name).
        self.stored = stored

    async def call(self, fn: Callable[..., Any], *args: object, **kw: object) -> Any:
        try:
            result = fn(*args, **kw)
            return await result if isinstance(result, Awaitable) else result
        except FsError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno)) from exc

    async def ino(self, path: str) -> int:
        return await self._ino(self.to_core(path))

    async def _ino(self, path: str) -> int:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            ino = (await self.call(self._lookup, ino, part)).ino
        return ino

    def _lookup(self, parent: int, name: str) -> Any:
        return self.vfs.lookup(parent, self.stored(parent, name))

    async def row(self, path: str) -> NodeRow | None:
        """The replica's node at *path*, or None."""
        try:
            ino = await self.ino(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        return self.vfs.replica.get(ino)

    async def parent(self, path: str) -> tuple[int, str]:
        head, _, name = self.to_core(path).rpartition("/")
        return await self._ino(head), name

    async def write_file(self, path: str, src: BinaryIO, mode: int, mtime_ns: int, seen: NodeRow | None) -> NodeRow:
        """Make *path* hold what *src* reads, then its mode and mtime: one version on the server.

        Returns the node as the close left it: the uploader may settle a conflict
        before the caller looks again, and put another machine's version there.

        *seen* is the node the caller decided on.  A remote change applied since
        (the follower runs meanwhile) would otherwise become the base of this
        write and be overwritten without a conflict: ChangedMeanwhile instead.
        The check and the open run with no checkpoint between them, and an open
        writer holds later remote changes back (`Vfs.busy`).
        """
        parent, name = await self.parent(path)
        how = OpenMode(read=False, write=True, truncate=True)
        existing = await self.row(path)
        if (existing is None) != (seen is None) or (
                existing is not None and seen is not None and (existing.id, existing.seq) != (seen.id, seen.seq)):
            raise ChangedMeanwhile(path)
        if existing is None:
            fh, attr = await self.call(self.vfs.create, parent, name, mode & 0o7777, how)
            ino = attr.ino
        else:
            if existing.kind == "dir":
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            ino = existing.ino
            fh, _ = await self.call(self.vfs.open, ino, how)
        try:
            offset = 0
            while chunk := src.read(CHUNK):
                await self.call(self.vfs.write, fh, offset, chunk)
                offset += len(chunk)
            await self.call(self.vfs.setattr, ino, mode=mode & 0o7777, mtime_ns=mtime_ns)
            await self.call(self.vfs.flush, fh)
            written = self.vfs.replica.get(ino)  # no checkpoint since the seal
        finally:
            await self.call(self.vfs.release, fh)
        if written is None:
            raise OSError(errno.ENOENT, f"{path} went while it was written")
        return written

    async def read_file(self, ino: int, dst: BinaryIO) -> int:
        """Copy the content of file *ino* into *dst*; returns the bytes copied."""
        fh, _ = await self.call(self.vfs.open, ino, OpenMode())
        try:
            offset = 0
            while chunk := await self.call(self.vfs.read, fh, offset, CHUNK):
                dst.write(chunk)
                offset += len(chunk)
            return offset
        finally:
            await self.call(self.vfs.release, fh)

    async def set_attrs(self, path: str, mode: int, mtime_ns: int | None) -> None:
        await self.call(self.vfs.setattr, await self.ino(path), mode=mode & 0o7777, mtime_ns=mtime_ns)

    async def set_mtime(self, path: str, mtime_ns: int) -> None:
        """The modification time alone: a symlink's (it has no mode of its own)."""
        await self.call(self.vfs.setattr, await self.ino(path), mtime_ns=mtime_ns)

    async def chown(self, path: str, uid: int | None, gid: int | None) -> None:
        """Give *path* owner *uid* and group *gid* as shown here (None: unchanged), as root's chown would."""
        await self.call(self.vfs.setattr, await self.ino(path), uid=uid, gid=gid)

    def shown_owner(self, row: NodeRow) -> tuple[int, int]:
        """The uid and gid this machine shows for *row* (the store's owner as the syncing user)."""
        return self.vfs.owners.shown_uid(row.uid), self.vfs.owners.shown_gid(row.gid)

    async def mkdir(self, path: str, mode: int) -> None:
        parent, name = await self.parent(path)
        await self.call(self.vfs.mkdir, parent, name, mode & 0o7777)

    async def symlink(self, path: str, target: str) -> None:
        parent, name = await self.parent(path)
        await self.call(self.vfs.symlink, parent, name, target)

    async def remove(self, path: str, is_dir: bool) -> None:
        parent, name = await self.parent(path)
        await self.call(self.vfs.rmdir if is_dir else self.vfs.unlink, parent, name)

    async def rename(self, src: str, dst: str) -> None:
        (op, on), (np, nn) = await self.parent(src), await self.parent(dst)
        await self.call(self.vfs.rename, op, on, np, nn)


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "special"


def join(root: Path, rel: str) -> Path:
    return root / rel if rel else root
