"""What the store keeps of the past: a file's versions and the trash of deleted nodes.

A file's current content is version ``nodes.version``; each content an update
replaced is a ``versions`` row under the number it had, so numbers never change.
A version's time is when the commit that wrote it was applied (server clock).

The trash is every deleted node whose deleting commit lies within the
retention window, newest first, with the place it was deleted from; the
``restore`` op brings one back.  Each version and trash item says until when
it is kept (``until``, seconds since the epoch); the collector (``gc.py``)
purges what is past that, per the retention settings (``retention.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select

from ._exceptions import NotFound
from .protocol import BlockHash, NodeId
from .schema import batches, blocks_from_text, nodes, versions

__all__ = ["TrashItem", "Version", "read_trash", "read_versions"]


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
    until: float | None = None  # kept until then (None: the current one, kept while the file is)

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version, "seq": self.seq, "size": self.size, "mtime_ns": self.mtime_ns,
            "blocks": list(self.blocks), "device": self.device, "time": self.time, "current": self.current,
            "until": self.until,
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
    until: float = 0.0  # restorable until then

    def to_wire(self) -> dict[str, Any]:
        return {
            "node": self.node, "kind": self.kind, "parent": self.parent, "name": self.name, "path": self.path,
            "size": self.size, "device": self.device, "time": self.time, "seq": self.seq, "until": self.until,
        }  # fmt: skip


def read_versions(conn: Connection, store_id: str, node_id: str, keep_ns: int) -> list[Version]:
    """A node's versions, oldest first and the current one last; `NotFound` if unknown.

    A replaced version is kept *keep_ns* after it was replaced.
    """
    node = conn.execute(select(nodes).where(nodes.c.store == store_id, nodes.c.id == node_id)).first()
    if node is None:
        raise NotFound(f"there is no node {node_id} in store {store_id}")
    old = conn.execute(
        select(versions).where(versions.c.store == store_id, versions.c.node == node_id).order_by(versions.c.version)
    ).all()
    return [_version(row, current=False, until=(row.replaced_ns + keep_ns) / 1e9) for row in old] + [
        _version(node, current=True, until=None)
    ]


def read_trash(conn: Connection, store_id: str, since_ns: int, keep_ns: int) -> list[TrashItem]:
    """Nodes deleted by commits at or after *since_ns*, newest first; each kept *keep_ns*."""
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
            until=(row.deleted_ns + keep_ns) / 1e9,
        )  # fmt: skip
        for row in conn.execute(query)
    ]


def _version(row: Any, *, current: bool, until: float | None) -> Version:
    return Version(
        version=row.version, seq=row.seq, size=row.size, mtime_ns=row.mtime_ns, blocks=blocks_from_text(row.blocks),
        device=row.device, time=row.written_ns / 1e9, current=current, until=until,
    )  # fmt: skip
