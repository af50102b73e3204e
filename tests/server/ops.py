"""Wire ops for server tests, built the way a client sends them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websync_server.protocol import ROOT_ID, new_node_id

MTIME = 1_700_000_000_000_000_000


def mkdir(name: str, parent: str = ROOT_ID, id: str | None = None, mode: int = 0o755) -> dict[str, Any]:
    return {"op": "mkdir", "id": id or new_node_id(), "parent": parent, "name": name, "mode": mode,
            "mtime_ns": MTIME}  # fmt: skip


def create(
    name: str, parent: str = ROOT_ID, id: str | None = None, size: int = 0, blocks: Sequence[str] | None = None,
    mode: int = 0o644,
) -> dict[str, Any]:  # fmt: skip
    return {"op": "create", "id": id or new_node_id(), "parent": parent, "name": name, "mode": mode,
            "mtime_ns": MTIME, "size": size, "blocks": list(blocks or [])}  # fmt: skip


def symlink(name: str, target: str, parent: str = ROOT_ID, id: str | None = None) -> dict[str, Any]:
    return {"op": "symlink", "id": id or new_node_id(), "parent": parent, "name": name, "target": target,
            "mtime_ns": MTIME}  # fmt: skip


def update(id: str, base: int, size: int = 0, blocks: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"op": "update", "id": id, "base": base, "size": size, "blocks": list(blocks or []),
            "mtime_ns": MTIME + 1, **extra}  # fmt: skip


def setattr_(id: str, **fields: Any) -> dict[str, Any]:
    return {"op": "setattr", "id": id, **fields}


def rename(
    id: str, name: str, new_name: str, parent: str = ROOT_ID, new_parent: str = ROOT_ID, replace: str | None = None,
    exchange: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    op = {"op": "rename", "id": id, "parent": parent, "name": name, "new_parent": new_parent, "new_name": new_name}
    if replace is not None:
        op["replace"] = replace
    if exchange is not None:
        op["exchange"] = exchange
    return op


def delete(id: str, name: str, parent: str = ROOT_ID, base: int | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"op": "delete", "id": id, "parent": parent, "name": name}
    if base is not None:
        op["base"] = base
    return op


def link(id: str, name: str, parent: str = ROOT_ID) -> dict[str, Any]:
    return {"op": "link", "id": id, "parent": parent, "name": name}


def mknod(name: str, mode: int, rdev: int = 0, parent: str = ROOT_ID, id: str | None = None) -> dict[str, Any]:
    return {"op": "mknod", "id": id or new_node_id(), "parent": parent, "name": name, "mode": mode, "rdev": rdev,
            "mtime_ns": MTIME}  # fmt: skip


def restore(id: str, name: str, parent: str = ROOT_ID) -> dict[str, Any]:
    return {"op": "restore", "id": id, "parent": parent, "name": name}
