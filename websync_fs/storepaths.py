"""Paths inside the store, to and from nodes of the replica.

A *store path* is what a person sees below the mount point, written with ``/``
and without a leading one: ``Photos/2023/beach.jpg``; the root is ``""``.  The
CLI turns a path on the local disk into a store path (`store_path`); the mount
process resolves store paths against its replica (`resolve`) and names nodes
by their current path (`path_of`).  Symbolic links inside the store are never
followed: a store path names the link itself.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from websync_server.protocol import ROOT_ID

from .conflicts import conflict_name
from .errors import WebSyncError
from .replica import NodeRow, Replica

#: Deeper than any real tree; stops a walk up a damaged replica from looping.
MAX_DEPTH = 4096


class BadPath(WebSyncError):
    """A path that is not inside the store, or names nothing there."""

    exit_code = 2


def split(path: str) -> list[str]:
    """The names of a store path, refusing ``.`` and ``..`` (a store path is already normal)."""
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise BadPath(f"{path!r} is not a path inside the store ('.' and '..' are not allowed)")
    return parts


def resolve(replica: Replica, path: str) -> NodeRow:
    """The node at store path *path*; `BadPath` if nothing is there."""
    row = replica.by_id(ROOT_ID)
    assert row is not None, "the replica always has its root"
    walked: list[str] = []
    for name in split(path):
        if row.kind != "dir":
            raise BadPath(f"{'/'.join(walked)} is not a folder, so {path} does not exist")
        child = replica.lookup(row.id, name)
        if child is None:
            raise BadPath(f"{path} does not exist in the store")
        walked.append(name)
        row = child
    return row


def locate(replica: Replica, path: str) -> tuple[str, str, NodeRow | None]:
    """(parent id, name, node or None) of store path *path*, whose folder must exist.

    For commands that name something that may not be there (restore from the trash).
    """
    parts = split(path)
    if not parts:
        raise BadPath("the top folder itself cannot be named here")
    folder = resolve(replica, "/".join(parts[:-1]))
    if folder.kind != "dir":
        raise BadPath(f"{'/'.join(parts[:-1])} is not a folder")
    return folder.id, parts[-1], replica.lookup(folder.id, parts[-1])


def mountpoint_of(status_file: Path) -> str | None:
    """Where this home's tree is while it runs (its status file says): a mount point or a synced folder."""
    import json

    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return status.get("mountpoint") or status.get("folder") or None if status.get("pid") else None


def path_of(replica: Replica, node: str) -> str | None:
    """The current store path of *node*, or None if it has no name (deleted, or not known)."""
    names: list[str] = []
    current = node
    for _ in range(MAX_DEPTH):
        if current == ROOT_ID:
            return "/".join(reversed(names))
        entries = replica.entries_of(current)
        if not entries:
            return None
        parent, name = entries[0]  # hard links do not exist yet: one entry per node
        names.append(name)
        current = parent
    return None


def free_conflict_name(replica: Replica, parent: str, name: str, device: str, also: str | None = None) -> str:
    """The name of *device*'s conflict copy of *name*, free in folder *parent* and in folder *also* if given."""
    folders = (parent,) if also is None else (parent, also)
    return conflict_name(name, device, taken=lambda n: any(replica.has_entry(f, n) for f in folders),
                         folder=path_of(replica, parent))


def ancestors(replica: Replica, node: str) -> list[str]:
    """*node* and every folder above it up to the root, nearest first ([] if it has no name)."""
    chain = [node]
    current = node
    for _ in range(MAX_DEPTH):
        if current == ROOT_ID:
            return chain
        entries = replica.entries_of(current)
        if not entries:
            return []
        current = entries[0][0]
        chain.append(current)
    return []


def store_path(argument: str, mountpoint: str | None, *, cwd: str | None = None) -> str:
    """Turn a command-line *argument* into a store path.

    A path that lies inside *mountpoint* (absolute, or relative to the working
    directory) becomes the part below it.  Anything else is taken as a path
    inside the store (``Photos/2023``), so it works when nothing is mounted;
    an absolute path outside the mount point is an error.
    """
    base = cwd or os.getcwd()
    absolute = os.path.normpath(os.path.join(base, os.path.expanduser(argument)))
    if mountpoint:
        for root in _spellings(mountpoint):
            inside = _below(absolute, root)
            if inside is not None:
                return inside
        # The argument may reach the mount point through a symbolic link outside it.
        parent = os.path.realpath(os.path.dirname(absolute))
        for root in _spellings(mountpoint):
            inside = _below(os.path.join(parent, os.path.basename(absolute)), root)
            if inside is not None:
                return inside
    if os.path.isabs(os.path.expanduser(argument)):
        where = f"the WebSync folder {mountpoint}" if mountpoint else "a mounted WebSync folder"
        raise BadPath(f"{argument} is not inside {where}")
    return "/".join(split(PurePosixPath(argument).as_posix()))


def readings(argument: str, mountpoint: str | None, *, cwd: str | None = None) -> list[tuple[str, str]]:
    """The store paths *argument* may mean, the likelier first, each with how it was read.

    Inside the mount a relative path is first read from the current folder
    (``rapid.txt`` in folder ``ed`` is ``ed/rapid.txt``), then as a store path
    (``ed/rapid.txt`` typed in folder ``ed`` may mean just that); the command
    takes the first that names something and says which it tried when none does.
    """
    first = store_path(argument, mountpoint, cwd=cwd)
    found = [(first, "from the current folder" if _relative_inside(argument, mountpoint, cwd) else "")]
    if found[0][1]:
        try:
            literal = "/".join(split(PurePosixPath(argument).as_posix()))
        except BadPath:
            return found
        if literal != first:
            found.append((literal, "as a path in the store"))
    return found


def _relative_inside(argument: str, mountpoint: str | None, cwd: str | None) -> bool:
    if not mountpoint or os.path.isabs(os.path.expanduser(argument)):
        return False
    here = os.path.normpath(cwd or os.getcwd())
    return any(_below(here, root) is not None for root in _spellings(mountpoint))


def _spellings(mountpoint: str) -> list[str]:
    plain = os.path.normpath(mountpoint)
    real = os.path.realpath(Path(plain).parent) + os.sep + Path(plain).name
    return [plain] if real == plain else [plain, os.path.normpath(real)]


def _below(path: str, root: str) -> str | None:
    if path == root:
        return ""
    prefix = root.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        return path[len(prefix):].replace(os.sep, "/")
    return None
