"""One set of file-behaviour tests, run against the bare core and through every front end.

A `Target` is the store as a test sees it, by path: the bare core driven in
this process (`CoreTarget`: no kernel, no server; fast), a mounted
machine (`MountTarget`: the FUSE front end through the kernel), and a synced
folder (`FolderTarget`: real files, watched; every answer waits until another
machine's mount shows the same), and the drive letter (`drive_target`: the
WinFsp operations over a bare core, called as WinFsp calls them).  A front end
that is added gets a target here and passes the same tests, so every way a
machine shows the store behaves alike.

Errors come out as `OSError` with the errno on every target: the core's
`FsError` is translated exactly as a front end translates it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import trio

from cache import BlockCache
from websync_fs.blocksource import BlockSource
from websync_fs.folder.corepaths import CorePaths
from websync_fs.errors import Offline
from websync_fs.replica import Replica
from websync_fs.statedb import StateDb
from websync_fs.vfs import OpenMode, Vfs
from websync_fs.writeback import WriteBackQueue

class Target(Protocol):
    """The store by path; every method raises OSError(errno) as a local file system would."""

    async def write(self, path: str, data: bytes) -> None: ...
    async def append(self, path: str, data: bytes) -> None: ...
    async def read(self, path: str) -> bytes: ...
    async def mkdir(self, path: str) -> None: ...
    async def rmdir(self, path: str) -> None: ...
    async def unlink(self, path: str) -> None: ...
    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None: ...
    async def listdir(self, path: str) -> list[str]: ...
    async def kind_size_mode(self, path: str) -> tuple[str, int, int]: ...
    async def symlink(self, target: str, path: str) -> None: ...
    async def readlink(self, path: str) -> str: ...
    async def chmod(self, path: str, mode: int) -> None: ...
    async def truncate(self, path: str, size: int) -> None: ...


class MountTarget:
    """A mounted machine, through the kernel (ordinary system calls on its mount point)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, path: str) -> Path:
        return self.root / path

    async def write(self, path: str, data: bytes) -> None:
        self._p(path).write_bytes(data)

    async def append(self, path: str, data: bytes) -> None:
        with open(self._p(path), "ab") as f:
            f.write(data)

    async def read(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    async def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    async def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    async def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None:
        if noreplace:
            # renameat2(RENAME_NOREPLACE) has no Python wrapper; link+unlink is not it.
            # os.link would refuse folders, so ask the kernel directly.
            _renameat2_noreplace(self._p(src), self._p(dst))
        else:
            os.rename(self._p(src), self._p(dst))

    async def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._p(path)))

    async def kind_size_mode(self, path: str) -> tuple[str, int, int]:
        st = os.lstat(self._p(path))
        return _kind(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0, stat.S_IMODE(st.st_mode)

    async def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._p(path))

    async def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    async def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    async def truncate(self, path: str, size: int) -> None:
        os.truncate(self._p(path), size)


class FolderTarget(MountTarget):
    """A synced folder: changes made to its files, answers given once a mount elsewhere agrees.

    Writes go to the folder as any program's would; each read-like answer
    comes from the folder too, but only after *mirror* (another machine's
    mount of the same store) shows the same, so every change is checked to
    have reached the store unchanged.
    """

    #: Seconds an answer waits for the other machine (changes arrive within a second or two).
    AGREE_WITHIN = 30.0

    def __init__(self, root: Path, mirror: MountTarget) -> None:
        super().__init__(root)
        self.mirror = mirror

    async def _agreed(self, ask: Callable[[MountTarget], Awaitable[Any]]) -> Any:
        mine: Any = None
        with trio.move_on_after(self.AGREE_WITHIN):
            while True:
                mine = await ask(self)
                try:
                    if await ask(self.mirror) == mine:
                        return mine
                except OSError:
                    pass
                await trio.sleep(0.05)
        raise AssertionError(f"the mount never showed what the folder holds: {mine!r}")

    async def read(self, path: str) -> bytes:
        return await self._agreed(lambda t: MountTarget.read(t, path))  # type: ignore[no-any-return]

    async def listdir(self, path: str) -> list[str]:
        async def names(t: MountTarget) -> list[str]:
            return [n for n in await MountTarget.listdir(t, path) if not n.startswith(".websync-")]

        return await self._agreed(names)  # type: ignore[no-any-return]

    async def kind_size_mode(self, path: str) -> tuple[str, int, int]:
        return await self._agreed(lambda t: MountTarget.kind_size_mode(t, path))  # type: ignore[no-any-return]

    async def readlink(self, path: str) -> str:
        return await self._agreed(lambda t: MountTarget.readlink(t, path))  # type: ignore[no-any-return]


def _renameat2_noreplace(src: Path, dst: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_noreplace = -100, 1
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


class _NoServer:
    """A core with no server: everything it reads was written here and is in its cache."""

    async def get_block(self, h: str) -> bytes:
        raise Offline("no server in the contract tests")

    async def get_block_range(self, h: str, offset: int, length: int) -> tuple[bytes, bool]:
        raise Offline("no server in the contract tests")


class CoreTarget:
    """The bare core in this process: paths resolved by lookup, handles opened and closed as a kernel would.

    Path resolution and the one translation of `FsError` are the synced
    folder's (`CorePaths`), which drives the core by path the same way.
    """

    def __init__(self, vfs: Vfs) -> None:
        self.vfs = vfs
        self._paths = CorePaths(vfs)
        self._call = self._paths.call
        self._ino = self._paths.ino
        self._parent = self._paths.parent

    async def _open(self, path: str, how: OpenMode, create: bool) -> int:
        parent, name = await self._parent(path)
        try:
            ino = await self._ino(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT or not create:
                raise
            fh, _ = await self._call(self.vfs.create, parent, name, 0o644, how)
            return fh
        if (await self._call(self.vfs.getattr, ino)).mode & stat.S_IFDIR:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        fh, _ = await self._call(self.vfs.open, ino, how)
        return fh

    async def _close(self, fh: int) -> None:
        await self._call(self.vfs.flush, fh)
        await self._call(self.vfs.release, fh)

    async def write(self, path: str, data: bytes) -> None:
        fh = await self._open(path, OpenMode(read=False, write=True, truncate=True), create=True)
        try:
            await self._call(self.vfs.write, fh, 0, data)
        finally:
            await self._close(fh)

    async def append(self, path: str, data: bytes) -> None:
        fh = await self._open(path, OpenMode(read=False, write=True, append=True), create=True)
        try:
            size = (await self._call(self.vfs.getattr, await self._ino(path))).size
            await self._call(self.vfs.write, fh, size, data)
        finally:
            await self._close(fh)

    async def read(self, path: str) -> bytes:
        fh = await self._open(path, OpenMode(), create=False)
        try:
            parts, offset = [], 0
            while chunk := await self._call(self.vfs.read, fh, offset, 1 << 20):
                parts.append(chunk)
                offset += len(chunk)
            return b"".join(parts)
        finally:
            await self._close(fh)

    async def mkdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.vfs.mkdir, parent, name, 0o755)

    async def rmdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.vfs.rmdir, parent, name)

    async def unlink(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.vfs.unlink, parent, name)

    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None:
        (old_parent, old_name), (new_parent, new_name) = await self._parent(src), await self._parent(dst)
        await self._call(self.vfs.rename, old_parent, old_name, new_parent, new_name, noreplace=noreplace)

    async def listdir(self, path: str) -> list[str]:
        ino = await self._ino(path)
        return sorted(name for name, _ in await self._call(self.vfs.listdir, ino))

    async def kind_size_mode(self, path: str) -> tuple[str, int, int]:
        attr = await self._call(self.vfs.getattr, await self._ino(path))
        kind = _kind(attr.mode)
        return kind, attr.size if kind == "file" else 0, stat.S_IMODE(attr.mode)

    async def symlink(self, target: str, path: str) -> None:
        parent, name = await self._parent(path)
        await self._call(self.vfs.symlink, parent, name, target)

    async def readlink(self, path: str) -> str:
        return await self._call(self.vfs.readlink, await self._ino(path))

    async def link(self, src: str, dst: str) -> None:
        """A hard link *dst* to the file *src*."""
        parent, name = await self._parent(dst)
        await self._call(self.vfs.link, await self._ino(src), parent, name)

    async def chmod(self, path: str, mode: int) -> None:
        await self._call(self.vfs.setattr, await self._ino(path), mode=mode)

    async def truncate(self, path: str, size: int) -> None:
        await self._call(self.vfs.setattr, await self._ino(path), size=size)


def drive_target(vfs: Vfs) -> Any:
    """The WinFsp front end over *vfs*, called from threads as WinFsp calls it (needs the `winfspy` fixture)."""
    from tests.winfsp.drive import DriveTarget
    from websync_fs.winfsp.ops import WinFspOperations
    from websync_fs.winfsp.security import security_sddl
    from winfspy.plumbing import SecurityDescriptor

    security = SecurityDescriptor.from_string(security_sddl("S-1-5-21-1-2-3-1001"))
    return DriveTarget(WinFspOperations(vfs, trio.lowlevel.current_trio_token(), security))


@asynccontextmanager
async def core_target(root: Path) -> AsyncIterator[CoreTarget]:
    """A bare core over its own state database and cache under *root*, running in a nursery."""
    (root / "work").mkdir(parents=True)
    db = StateDb(root / "state.db")
    cache = BlockCache(root / "blocks", 1 << 30)
    replica = Replica(db)
    queue = WriteBackQueue(db, quiet=3600, protect=cache.protect, unprotect=cache.unprotect)

    def store_block(data: bytes) -> str:
        return cache.add(data, protect=True)

    vfs = Vfs(db, replica, queue, BlockSource(cache, _NoServer()), store_block, cache.unprotect,  # type: ignore[arg-type]
              root / "work", hold_blocks=cache.protect, sync_blocks=cache.sync)
    try:
        async with trio.open_nursery() as nursery:
            vfs.start(nursery)
            yield CoreTarget(vfs)
            nursery.cancel_scope.cancel()
    finally:
        cache.close()
        db.close()
