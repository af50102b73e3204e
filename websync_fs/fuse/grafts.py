"""Shared folders inside the mount: one kernel mount, an engine per store, told apart by inode number.

A user's mount shows, at the top of their own tree, every folder shared with
them (and every folder they share), as Dropbox and Nextcloud do.  Each such
*graft* is the shared folder's place on this machine (home.py) run by a
`Client` of its own -- replica, queue, cache, follower and uploader on the
folder's store -- inside the mount's process, so a member's change arrives
through the same long poll and as fast as the user's own.

Inode numbers keep the engines apart: the own store answers every number
below ``2**SLOT_SHIFT``; graft *k* answers ``k << SLOT_SHIFT`` plus its own
number (`FuseOperations.base`), file and directory handles likewise.  A slot
is never reused within a process, so a number the kernel still holds after a
folder was unshared can only reach nothing (ESTALE).

At the top, a graft is named as the folder is; when the own tree has an entry
of that name, or two folders share it, as ``NAME (OWNER)`` (as `websync
shares` lists it).  Names at the top that a graft shows cannot be made,
removed or renamed (EEXIST, EBUSY), and nothing moves between stores
(EXDEV: programs copy and delete, as across any two file systems).

Which folders are shown, and when one starts or stops, is sharedfolders.py's
to say, for every front end.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ..client import Client, Engine
from ..errors import ConfigError, WebSyncError
from ..home import Home
from ..invalidation import Invalidation
from ..sharedfolders import SharedFolders, top_names
from ..vfs import XATTR_KEPT
from .ops import FuseOperations, Listed

_XATTR_KEPT = XATTR_KEPT.encode()

log = logging.getLogger(__name__)

SLOT_SHIFT = 48
_LOCAL = (1 << SLOT_SHIFT) - 1
ROOT = pyfuse3.ROOT_INODE


class Graft:
    """One shared folder shown in the mount: its share record, slot, client and operations."""

    def __init__(self, share: dict[str, Any], slot: int, client: Client) -> None:
        self.share = share
        self.slot = slot
        self.client = client
        self.ops = FuseOperations(client.vfs, base=slot << SLOT_SHIFT)
        client.front_notify = self.ops.notify
        self.ops.file_state = client.states.xattr
        self.scope = trio.CancelScope()
        client.front_end_now = self.scope.cancel


class GraftedOperations(pyfuse3.Operations):  # type: ignore[misc]
    """The kernel's requests, each handed to the store its inode or handle belongs to."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, own: FuseOperations) -> None:
        super().__init__()
        self.own = own
        self.grafts: dict[int, Graft] = {}
        own.grafted = self._top_entries

    # -- which store ---------------------------------------------------------
    def _part(self, number: int) -> tuple[FuseOperations, int]:
        slot = number >> SLOT_SHIFT
        if not slot:
            return self.own, number
        graft = self.grafts.get(slot)
        if graft is None:
            raise pyfuse3.FUSEError(errno.ESTALE)  # a folder no longer shown (unshared)
        return graft.ops, number & _LOCAL

    def top_names(self) -> dict[str, Graft]:
        """The grafts by the name each has at the top of the mount now."""
        return top_names(self.grafts.values(), lambda graft: graft.share, self._own_has)

    def name_of(self, graft: Graft, otherwise: str) -> str:
        """The name *graft* has at the top of the mount now (*otherwise* while it is not shown)."""
        return next((name for name, shown in self.top_names().items() if shown is graft), otherwise)

    def _own_has(self, name: str) -> bool:
        try:
            self.own.vfs.lookup(ROOT, name)
        except WebSyncError:
            return False
        return True

    def _graft_at(self, parent: int, name: bytes) -> Graft | None:
        return self.top_names().get(os.fsdecode(name)) if parent == ROOT and self.grafts else None

    def _top_entries(self) -> list[Listed]:
        listed: list[Listed] = []
        for name, graft in self.top_names().items():
            try:
                listed.append((name, graft.ops.vfs.getattr(graft.ops.vfs.root()), graft.ops))
            except WebSyncError:
                continue
        return listed

    def _no_graft(self, parent: int, name: bytes, code: int) -> FuseOperations:
        """The store of *parent*, unless *name* in it is a graft's (then *code*)."""
        if self._graft_at(parent, name) is not None:
            raise pyfuse3.FUSEError(code)
        return self._part(parent)[0]

    def _same_store(self, one: int, two: int) -> tuple[FuseOperations, int, int]:
        ops, a = self._part(one)
        other, b = self._part(two)
        if ops is not other:
            raise pyfuse3.FUSEError(errno.EXDEV)
        return ops, a, b

    # -- shown and hidden ----------------------------------------------------
    def show(self, graft: Graft) -> None:
        self.grafts[graft.slot] = graft
        self._top_changed()

    def hide(self, graft: Graft, names: Sequence[str]) -> None:
        self.grafts.pop(graft.slot, None)
        self._top_changed(names)

    def _top_changed(self, names: Sequence[str] = ()) -> None:
        """The top's listing changed: drop the kernel's entries of the names involved and the top's attributes."""
        shown = list(names) + list(self.top_names())
        self.own.notify(Invalidation(entries=[(ROOT, n) for n in shown], attrs=[ROOT]))

    # -- requests --------------------------------------------------------------
    def init(self) -> None:
        self.own.init()

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        graft = self._graft_at(parent_inode, name)
        if graft is not None:
            return await graft.ops.root_entry()
        ops, local = self._part(parent_inode)
        return await ops.lookup(local, name, ctx)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        ops, local = self._part(inode)
        entry = await ops.getattr(local, ctx)
        if inode == ROOT:
            entry.st_nlink += len(self.grafts)  # each shown folder's ".." (find counts on it)
        return entry

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        ops, local = self._part(inode)
        return await ops.setattr(local, attr, fields, None if fh is None else fh & _LOCAL, ctx)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        ops, local = self._part(inode)
        return await ops.readlink(local, ctx)

    async def opendir(self, inode: int, ctx: Any) -> int:
        ops, local = self._part(inode)
        return ops.base + await ops.opendir(local, ctx)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        ops, local = self._part(fh)
        await ops.readdir(local, start_id, token)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        ops, local = self._part(fh)
        await ops.fsyncdir(local, datasync)

    async def releasedir(self, fh: int) -> None:
        ops, local = self._part(fh)
        await ops.releasedir(local)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        return await self.own.statfs(ctx)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        by_part: dict[int, list[tuple[int, int]]] = {}
        for inode, count in inode_list:
            by_part.setdefault(inode >> SLOT_SHIFT, []).append((inode & _LOCAL, count))
        for slot, inodes in by_part.items():
            ops = self.own if not slot else getattr(self.grafts.get(slot), "ops", None)
            if ops is not None:  # a folder no longer shown forgot everything with its engine
                await ops.forget(inodes)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        ops = self._no_graft(parent_inode, name, errno.EEXIST)
        return await ops.mkdir(parent_inode & _LOCAL, name, mode, ctx)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ops = self._no_graft(parent_inode, name, errno.EBUSY)
        await ops.rmdir(parent_inode & _LOCAL, name, ctx)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ops = self._no_graft(parent_inode, name, errno.EISDIR)
        await ops.unlink(parent_inode & _LOCAL, name, ctx)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        if self._graft_at(parent_inode_old, name_old) or self._graft_at(parent_inode_new, name_new):
            raise pyfuse3.FUSEError(errno.EBUSY)
        ops, old, new = self._same_store(parent_inode_old, parent_inode_new)
        await ops.rename(old, name_old, new, name_new, flags, ctx)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        ops = self._no_graft(parent_inode, name, errno.EEXIST)
        return await ops.symlink(parent_inode & _LOCAL, name, target, ctx)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        self._no_graft(new_parent_inode, new_name, errno.EEXIST)
        ops, local, parent = self._same_store(inode, new_parent_inode)
        return await ops.link(local, parent, new_name, ctx)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        ops = self._no_graft(parent_inode, name, errno.EEXIST)
        return await ops.mknod(parent_inode & _LOCAL, name, mode, rdev, ctx)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not name.startswith(_XATTR_KEPT):
            # The kernel asks for security.capability before every write (to drop it): answered
            # here, as the store would, without a look-up.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        ops, local = self._part(inode)
        return await ops.getxattr(local, name, ctx)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        ops, local = self._part(inode)
        return await ops.listxattr(local, ctx)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        ops, local = self._part(inode)
        await ops.setxattr(local, name, value, ctx)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        ops, local = self._part(inode)
        await ops.removexattr(local, name, ctx)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ops = self._no_graft(parent_inode, name, errno.EEXIST)
        info, entry = await ops.create(parent_inode & _LOCAL, name, mode, flags, ctx)
        info.fh += ops.base
        return info, entry

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        ops, local = self._part(inode)
        info = await ops.open(local, flags, ctx)
        info.fh += ops.base
        return info

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:  # type: ignore[override]
        ops, local = self._part(fh)
        return await ops.read(local, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        ops, local = self._part(fh)
        return await ops.write(local, off, buf)

    async def flush(self, fh: int) -> None:
        ops, local = self._part(fh)
        await ops.flush(local)

    async def fsync(self, fh: int, datasync: bool) -> None:
        ops, local = self._part(fh)
        await ops.fsync(local, datasync)

    async def release(self, fh: int) -> None:
        ops, local = self._part(fh)
        await ops.release(local)


class Grafts:
    """The mount's side of the shared folders (sharedfolders.py): each shown as a graft of the router."""

    def __init__(self, home: Home, own: Client, mountpoint: Path, router: GraftedOperations) -> None:
        self.mountpoint = mountpoint
        self.router = router
        self.folders = SharedFolders(home, own.remote, self._serve)
        self._slots = 0

    async def _serve(self, share: dict[str, Any], place: Home, shown: Callable[[Engine], None]) -> None:
        """Run one shared folder's client as a graft until it is unshared or the mount ends."""
        client = Client(place, self.mountpoint / str(share["name"]))
        self._slots += 1
        graft = Graft(share, self._slots, client)
        client.stop = self._refuse_stop
        client.shown_place = lambda: self.mountpoint / self.router.name_of(graft, str(share["name"]))
        try:
            with graft.scope:
                await client.first_sync(lambda records: None)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(graft.ops.invalidator)
                    await client.start(nursery)
                    self.router.show(graft)
                    shown(client)
                    log.info("showing shared folder %s of %s", share["name"], share["owner"])
                    await trio.sleep_forever()
        finally:
            self.router.hide(graft, [self.router.name_of(graft, str(share["name"]))])
            with trio.CancelScope(shield=True):
                client.write_status_final()
                await client.close()

    async def _refuse_stop(self) -> None:
        raise ConfigError(f"this shared folder is part of the mount at {self.mountpoint}; unmount that")
