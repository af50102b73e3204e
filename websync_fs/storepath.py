"""Paths as people type them, turned into nodes of the replica.

A command may name a file by its path on a mount (``~/WebSync/docs/a.txt``) or
by its path inside the store (``docs/a.txt``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from websync_server.protocol import ROOT_ID, NodeId

from .errors import ConfigError
from .home import Home
from .replica import NodeRow, Replica


def mountpoint(home: Home) -> Path | None:
    try:
        status = json.loads(home.status_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    mp = status.get("mountpoint") or ""
    return Path(mp) if mp and status.get("pid") else None


def store_path(home: Home, given: str) -> PurePosixPath:
    """The path of *given* inside the store."""
    mp = mountpoint(home)
    candidate = Path(given).expanduser()
    if mp is not None and (candidate.is_absolute() or Path.cwd().resolve().is_relative_to(mp)):
        absolute = Path(os.path.abspath(candidate))
        try:
            return PurePosixPath(absolute.relative_to(mp).as_posix())
        except ValueError:
            raise ConfigError(f"{given} is not inside the WebSync folder {mp}") from None
    if candidate.is_absolute():
        raise ConfigError(f"{given} is not inside a mounted WebSync folder; give a path inside the store")
    return PurePosixPath(given)


def resolve(replica: Replica, path: PurePosixPath) -> tuple[NodeId, str, NodeRow | None]:
    """(parent id, name, row or None) of *path*; the parent must exist."""
    parent = NodeId(ROOT_ID)
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        root = replica.by_id(ROOT_ID)
        return parent, "", root
    for part in parts[:-1]:
        row = replica.lookup(parent, part)
        if row is None or row.kind != "dir":
            raise ConfigError(f"no folder {part!r} in the store on the way to {path}")
        parent = row.id
    return parent, parts[-1], replica.lookup(parent, parts[-1])


def path_of(replica: Replica, node: str) -> str:
    """The store path of *node* (first entry), for messages."""
    parts: list[str] = []
    while node != ROOT_ID:
        places = replica.entries_of(node)
        if not places:
            return "?/" + "/".join(reversed(parts))
        node, name = places[0]
        parts.append(name)
    return "/".join(reversed(parts))
