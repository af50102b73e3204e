"""Space per user: bytes of current files, of history, of the trash, and on disk, beside their quota.

The first three count file sizes as users see them (a block shared by two
files counts twice); ``disk`` is what the user's block directory takes, each
block once -- the figure the collector (gc.py) lowers, and close to what the
quota charges (quotas.py counts block lengths, this the space allocated).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from .blocks import Blocks
from .database import Database
from .schema import nodes, stores, users, versions

__all__ = ["Usage", "read_usage"]


@dataclass(frozen=True)
class Usage:
    """One user's space."""

    user: str
    current: int
    history: int
    trash: int
    disk: int
    blocks: int  # block files on disk
    quota: int | None = None  # bytes the user may store (quotas.py); None: no bound
    max_nodes: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


def read_usage(db: Database, blocks_root: Path | None, objects: Blocks | None = None) -> list[Usage]:
    """Every user's space, by user name; *objects*: blocks in object storage, not under *blocks_root*."""
    with db.read() as conn:
        owners = conn.execute(
            select(users.c.id, users.c.name, users.c.quota_bytes, users.c.quota_nodes).order_by(users.c.name)
        ).all()
        sums = {row.id: _sums(conn, row.id) for row in owners}
    out = []
    for row in owners:
        if objects is not None:
            # A bucket charges stored bytes, not allocated ones: the objects' lengths.
            sizes = [stored.size for stored in objects.files(row.name)]
            count, disk = len(sizes), sum(sizes)
        else:
            assert blocks_root is not None
            count, disk = _disk(blocks_root / row.name)
        out.append(Usage(row.name, *sums[row.id], disk=disk, blocks=count, quota=row.quota_bytes,
                         max_nodes=row.quota_nodes))  # fmt: skip
    return out


def _sums(conn: Connection, owner: int) -> tuple[int, int, int]:
    mine = select(stores.c.id).where(stores.c.owner == owner)
    live = nodes.c.store.in_(mine) & (nodes.c.kind == "file")
    current = conn.execute(select(func.sum(nodes.c.size)).where(live, nodes.c.deleted.is_(False))).scalar()
    trash = conn.execute(select(func.sum(nodes.c.size)).where(live, nodes.c.deleted.is_(True))).scalar()
    history = conn.execute(select(func.sum(versions.c.size)).where(versions.c.store.in_(mine))).scalar()
    return int(current or 0), int(history or 0), int(trash or 0)


def _disk(root: Path) -> tuple[int, int]:
    """Block files under *root* and their bytes (what they take, not their length)."""
    count = total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            count += 1
            total += st.st_blocks * 512
    return count, total
