"""What the store keeps of the past: a file's versions and the trash of deleted nodes.

A file's current content is version ``nodes.version``; each content an update
replaced is a ``versions`` row under the number it had, so numbers never change.
A version's time is when the commit that wrote it was applied (server clock).

The trash is every deleted node whose deleting commit lies within the
retention window, newest first, with the place it was deleted from; the
``restore`` op brings one back.  Nothing is purged yet: the window only
decides what the trash shows and what ``restore`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select

from ._exceptions import NotFound
from .protocol import BlockHash, NodeId
from .schema import batches, blocks_from_text, nodes, versions

__all__ = ["DEFAULT_RETENTION_S", "TrashItem", "Version", "read_trash", "read_versions"]

#: How long deleted nodes stay in the trash (and restorable): 30 days.
DEFAULT_RETENTION_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Version:
    """One content of a file; the last of a listing is the current one."""

    version: int
    seq: int
    size: int
    mtime_ns: int
    blocks: tuple[BlockHash, ...]
    device: str
    time: float  # commit time, seconds since the epoch
    current: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version, "seq": self.seq, "size": self.size, "mtime_ns": self.mtime_ns,
            "blocks": list(self.blocks), "device": self.device, "time": self.time, "current": self.current,
        }  # fmt: skip


@dataclass(frozen=True)
class TrashItem:
    """A deleted node: where it was, when and by which device it was deleted."""

    node: NodeId
    kind: str
    parent: NodeId
    name: str
    path: str
    size: int
    device: str
    time: float
    seq: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "node": self.node, "kind": self.kind, "parent": self.parent, "name": self.name, "path": self.path,
            "size": self.size, "device": self.device, "time": self.time, "seq": self.seq,
        }  # fmt: skip


def read_versions(conn: Connection, store_id: str, node_id: str) -> list[Version]:
    """A node's versions, oldest first and the current one last; `NotFound` if unknown."""
    node = conn.execute(select(nodes).where(nodes.c.store == store_id, nodes.c.id == node_id)).first()
    if node is None:
        raise NotFound(f"there is no node {node_id} in store {store_id}")
    old = conn.execute(
        select(versions).where(versions.c.store == store_id, versions.c.node == node_id).order_by(versions.c.version)
    ).all()
    return [_version(row, current=False) for row in old] + [_version(node, current=True)]


def read_trash(conn: Connection, store_id: str, since_ns: int) -> list[TrashItem]:
    """Nodes deleted by commits at or after *since_ns*, newest first."""
    query = (
        select(nodes, batches.c.time_ns.label("deleted_ns"), batches.c.device.label("deleted_by"))
        .join(batches, and_(batches.c.store == nodes.c.store, batches.c.seq == nodes.c.seq))
        .where(nodes.c.store == store_id, nodes.c.deleted.is_(True), batches.c.time_ns >= since_ns)
        .order_by(nodes.c.seq.desc(), nodes.c.id)
    )
    return [
        TrashItem(
            node=NodeId(row.id), kind=row.kind, parent=NodeId(row.trash_parent or ""), name=row.trash_name or "",
            path=row.trash_path or "", size=row.size, device=row.deleted_by, time=row.deleted_ns / 1e9, seq=row.seq,
        )  # fmt: skip
        for row in conn.execute(query)
    ]


def _version(row: Any, *, current: bool) -> Version:
    return Version(
        version=row.version, seq=row.seq, size=row.size, mtime_ns=row.mtime_ns, blocks=blocks_from_text(row.blocks),
        device=row.device, time=row.written_ns / 1e9, current=current,
    )  # fmt: skip
