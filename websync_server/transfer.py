"""Moving a single box onto the scaled set-up: every row into another database, every block into other storage.

``websync-server migrate --data DATA --to postgresql://... --blocks s3://...``
copies the SQLite database of DATA row by row into the target database (made
with the same schema, which must hold no users yet) and every block file into
the target block store, then checks the target holds as many rows and blocks.
Device tokens are rows like any other, so every machine keeps its login: point
its server URL (or the DNS name, or the load balancer) at the new set-up.

Run it with the server stopped.  Machines keep their changes queued meanwhile
(their write-back queues are durable) and send them to the new set-up once it
answers; nothing committed is left behind, because the copy reads one snapshot
of a database nobody writes.  The source is only read: until the new set-up
serves, the old one can be started again as it was.  A copy interrupted
half-way leaves a target that is not empty; empty it and run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select

from ._exceptions import InvalidRequest
from .blocks import Blocks, BlockStore
from .database import Database
from .protocol import BlockHash
from .schema import meta, metadata, users

__all__ = ["TransferReport", "copy_blocks", "copy_database"]

log = logging.getLogger(__name__)

_ROWS = 5000  # rows read and written at a time
_BLOCKS = 1000  # blocks asked about at a time ("which of these do you lack")


@dataclass
class TransferReport:
    """What a migration copied."""

    rows: dict[str, int] = field(default_factory=dict)
    blocks: int = 0
    block_bytes: int = 0
    blocks_there: int = 0

    def summary(self) -> str:
        rows = ", ".join(f"{n} {table}" for table, n in self.rows.items() if n)
        return (f"copied {rows}; {self.blocks} blocks ({self.block_bytes} bytes), "
                f"{self.blocks_there} blocks were there already")  # fmt: skip


def copy_database(source: Database, target: Database, report: TransferReport) -> None:
    """Copy every row of *source* into the empty schema of *target*, in one transaction of each."""
    with source.read() as src, target.write() as dst:
        if dst.execute(select(func.count()).select_from(users)).scalar_one():
            raise InvalidRequest("the target database already has users; migrate only into an empty one")
        # The target's own meta rows (schema version, creation time) give way to the source's.
        dst.execute(delete(meta))
        for table in metadata.sorted_tables:  # parents before children: foreign keys hold throughout
            copied = 0
            rows = src.execute(select(table).execution_options(yield_per=_ROWS)).mappings()
            while chunk := [dict(row) for row in rows.fetchmany(_ROWS)]:
                dst.execute(insert(table), chunk)
                copied += len(chunk)
            report.rows[table.name] = copied
        target.continue_ids(dst)
        for table in metadata.sorted_tables:
            there = dst.execute(select(func.count()).select_from(table)).scalar_one()
            if there != report.rows[table.name]:
                raise InvalidRequest(f"the target has {there} rows of {table.name}, not {report.rows[table.name]}")


def copy_blocks(
    source: Blocks, target: Blocks, report: TransferReport, progress: Callable[[int], None] = lambda n: None,
    *, users: list[str] | None = None,
) -> None:
    """Copy every block of every user (the folder's, or *users*) from *source* to *target*, skipping what it has."""
    if users is None:
        assert isinstance(source, BlockStore), "object storage lists no users: name them"
        users = [p.name for p in source.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for user in sorted(users):
        pending: list[BlockHash] = []
        for stored in source.files(user):
            pending.append(stored.block)
            if len(pending) >= _BLOCKS:
                _copy_some(source, target, user, pending, report, progress)
                pending = []
        _copy_some(source, target, user, pending, report, progress)


def _copy_some(
    source: Blocks, target: Blocks, user: str, blocks: list[BlockHash], report: TransferReport,
    progress: Callable[[int], None],
) -> None:  # fmt: skip
    lacking = target.missing(user, blocks) if blocks else []
    report.blocks_there += len(blocks) - len(lacking)
    for block in lacking:
        data = source.read(user, block).data
        target.put(user, block, data)  # checks the bytes against the hash once more
        report.blocks += 1
        report.block_bytes += len(data)
    progress(len(blocks))
