"""Owners and groups of nodes, and the rules POSIX gives for changing them.

A node's owner and group are numbers set by chown(2), synced as they are, or
None: *the store's owner*, the person who mounts it.  A machine shows None as
the uid and gid of whoever mounted the store there, so a person's own files are
theirs on every machine whatever their uid is on each (docs/posix.md, "Owners").
A number set explicitly is shown as that number everywhere, whether or not
the machine has such a user (as tar and NFS do).

Permission checks on modes, sticky folders, utimensat and the clearing of
set-id bits are the kernel's (the mount uses ``default_permissions``, and the
kernel's ``setattr_prepare``/``notify_change``/``may_delete`` act on the owner
this module reports).  What the kernel leaves to a file system is here: who
owns a new node (the caller, or a setgid folder's group), and the chown rules
again, so that a front end without such a kernel (or a caller of the core)
meets the same answers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from websync_server.protocol import OWNER

from .errors import FsError

ROOT = 0


@dataclass(frozen=True)
class Caller:
    """Who asks: the file-system uid and gid of the calling process (FUSE's request context)."""

    uid: int
    gid: int
    pid: int = 0

    def in_group(self, gid: int) -> bool:
        """Whether *gid* is the caller's group or one of its supplementary groups."""
        return gid == self.gid or gid in self.groups()

    def groups(self) -> frozenset[int]:
        """The supplementary groups of the calling process, from /proc (empty when it is gone)."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("Groups:"):
                        return frozenset(int(g) for g in line.split()[1:])
        except (OSError, ValueError):
            pass
        return frozenset()


@dataclass(frozen=True)
class Owners:
    """The mounting user (who "the store's owner" is on this machine) and the ownership rules.

    *uid_map*/*gid_map* show a number the store keeps as another one on this
    machine (the store's -> here), and store it back as the store's number.
    """

    uid: int
    gid: int
    uid_map: Mapping[int, int] = field(default_factory=dict)
    gid_map: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def of_this_process(cls, uid_map: Mapping[int, int] | None = None,
                        gid_map: Mapping[int, int] | None = None) -> Owners:
        # Windows has no uids: the store's owner is all there is.
        return cls(getattr(os, "getuid", lambda: ROOT)(), getattr(os, "getgid", lambda: ROOT)(),
                   dict(uid_map or {}), dict(gid_map or {}))

    def shown_uid(self, stored: int | None) -> int:
        return self.uid if stored is None else self.uid_map.get(stored, stored)

    def shown_gid(self, stored: int | None) -> int:
        return self.gid if stored is None else self.gid_map.get(stored, stored)

    def stored_uid(self, uid: int) -> int | None:
        """What the store keeps for *uid* here: None (the store's owner) for the mounting user."""
        return None if uid == self.uid else _stored(self.uid_map, uid)

    def stored_gid(self, gid: int) -> int | None:
        return None if gid == self.gid else _stored(self.gid_map, gid)

    def new_node(self, caller: Caller | None, parent_mode: int, parent_gid: int | None,
                 ) -> tuple[int | None, int | None]:
        """Stored owner and group of a node *caller* makes in a folder of *parent_mode* and group."""
        if caller is None:
            return None, parent_gid if parent_mode & stat.S_ISGID else None
        uid = self.stored_uid(caller.uid)
        # A setgid folder hands its group down (ext4's inode_init_owner).
        gid = parent_gid if parent_mode & stat.S_ISGID else self.stored_gid(caller.gid)
        return uid, gid

    def check_chown(self, caller: Caller | None, owner: int | None, group: int | None,
                    change: dict[str, int | None]) -> None:
        """Raise EPERM unless *caller* may give a node of stored *owner*/*group* the stored *change*.

        *change* holds ``uid`` and/or ``gid`` (None: the store's owner).  As chown(2):
        root may give anything; the owner may only change the group, to one they are
        in; "changing" to the present value is allowed to the owner alone.
        """
        if caller is None or caller.uid == ROOT:
            return
        is_owner = self.shown_uid(owner) == caller.uid
        if "uid" in change and not (is_owner and change["uid"] == owner):
            raise FsError(errno.EPERM, "only root may give a file away")
        if "gid" in change:
            if not is_owner:
                raise FsError(errno.EPERM, "only the owner or root may change the group")
            gid = change["gid"]
            if gid != group and not caller.in_group(self.shown_gid(gid)):
                raise FsError(errno.EPERM, "the owner may only choose a group they are in")


def _stored(shown: Mapping[int, int], here: int) -> int:
    """The store's number that *shown* maps to *here*, or *here* itself."""
    return next((store for store, local in shown.items() if local == here), here)


def chown_fields(stored: dict[str, int | None]) -> tuple[int | None, int | None]:
    """A chown's stored owner and group as a setattr's ``uid`` and ``gid``.

    Not in *stored*: None, unchanged; None in it (the store's owner): `OWNER`.
    """

    def field(key: str) -> int | None:
        if key not in stored:
            return None
        value = stored[key]
        return OWNER if value is None else value

    return field("uid"), field("gid")
