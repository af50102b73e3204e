"""Wire ops for server tests, built the way a client sends them: typed ops turned into their wire form.

The helpers return the wire dicts so a test can spoil a field on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websync_server.protocol import (
    ROOT_ID,
    BlockHash,
    Create,
    Delete,
    Link,
    Mkdir,
    Mknod,
    NodeId,
    Rename,
    Restore,
    Symlink,
    Update,
    new_node_id,
)

MTIME = 1_700_000_000_000_000_000


def _id(id: str | None) -> NodeId:
    return new_node_id() if id is None else NodeId(id)


def _blocks(blocks: Sequence[str] | None) -> tuple[BlockHash, ...]:
    return tuple(BlockHash(h) for h in blocks or ())


def mkdir(name: str, parent: str = ROOT_ID, id: str | None = None, mode: int = 0o755) -> dict[str, Any]:
    return Mkdir(id=_id(id), parent=NodeId(parent), name=name, mode=mode, mtime_ns=MTIME).to_wire()


def create(
    name: str, parent: str = ROOT_ID, id: str | None = None, size: int = 0, blocks: Sequence[str] | None = None,
    mode: int = 0o644,
) -> dict[str, Any]:  # fmt: skip
    return Create(id=_id(id), parent=NodeId(parent), name=name, mode=mode, mtime_ns=MTIME, size=size,
                  blocks=_blocks(blocks)).to_wire()  # fmt: skip


def symlink(name: str, target: str, parent: str = ROOT_ID, id: str | None = None) -> dict[str, Any]:
    return Symlink(id=_id(id), parent=NodeId(parent), name=name, target=target, mtime_ns=MTIME).to_wire()


def update(id: str, base: int, size: int = 0, blocks: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    wire = Update(id=NodeId(id), base=base, size=size, blocks=_blocks(blocks), mtime_ns=MTIME + 1).to_wire()
    return {**wire, **extra}


def setattr_(id: str, **fields: Any) -> dict[str, Any]:
    """A setattr with whatever *fields* the test gives, valid or not."""
    return {"op": "setattr", "id": id, **fields}


def rename(
    id: str, name: str, new_name: str, parent: str = ROOT_ID, new_parent: str = ROOT_ID, replace: str | None = None,
    exchange: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return Rename(
        id=NodeId(id), parent=NodeId(parent), name=name, new_parent=NodeId(new_parent), new_name=new_name,
        replace=None if replace is None else NodeId(replace), exchange=None if exchange is None else NodeId(exchange),
    ).to_wire()  # fmt: skip


def delete(id: str, name: str, parent: str = ROOT_ID, base: int | None = None) -> dict[str, Any]:
    return Delete(id=NodeId(id), parent=NodeId(parent), name=name, base=base).to_wire()


def link(id: str, name: str, parent: str = ROOT_ID) -> dict[str, Any]:
    return Link(id=NodeId(id), parent=NodeId(parent), name=name).to_wire()


def mknod(name: str, mode: int, rdev: int = 0, parent: str = ROOT_ID, id: str | None = None) -> dict[str, Any]:
    return Mknod(id=_id(id), parent=NodeId(parent), name=name, mode=mode, rdev=rdev, mtime_ns=MTIME).to_wire()


def restore(id: str, name: str, parent: str = ROOT_ID) -> dict[str, Any]:
    return Restore(id=NodeId(id), parent=NodeId(parent), name=name).to_wire()
