"""The metadata store: commits batches atomically and answers questions about stores.

A commit is one database transaction (`Database.write`): it locks the store row,
returns the recorded seq if the batch id was seen before (an idempotent retry),
applies each op (``commit.py``) and records the batch.  Any failed precondition
raises `CommitConflict` out of the transaction, which rolls it back, so a batch
is applied whole or not at all -- also across kill -9, because nothing is
visible before the transaction commits.

Blocks first, metadata second: the blocks a batch names must be durable on the
server before the commit is accepted (``blocks.py`` fsyncs them before answering
the PUT), so a committed node never names a block that is not there.  The
blocks are checked before the write lock is taken (a stat each); the garbage
collector (``gc.py``) may remove a block between that check and the commit, so
a commit looks at the collector's generation in ``meta`` inside its transaction
and checks its blocks again when a collection removed anything meanwhile.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

from sqlalchemy import Connection, insert, select, update

from . import history, journal, retention
from ._exceptions import InvalidRequest, NotFound
from .commit import Batch
from .database import Database
from .gc import gc_generation
from .ops import Create, Op, Update, block_hashes, parse_batch_id, parse_ops
from .protocol import BLOCK_SIZE, KIND_DIR, ROOT_ID, BlockHash, ChangeRows, Changes, NodeState, is_node_id
from .schema import batches, blocks_to_text, entries, entry_from_row, node_from_row, nodes, stores, users

__all__ = ["BlockSizes", "MetadataStore", "new_store"]

ROOT_MODE = 0o755
# Settings changed by ``websync-server retention`` reach a running server within this.
_SETTINGS_TTL_S = 10.0


class BlockSizes(Protocol):
    """What the store needs of the block store: the sizes of those of a user's blocks that are present."""

    def sizes(self, user: str, blocks: Iterable[BlockHash]) -> dict[BlockHash, int]: ...


def new_store(conn: Connection, owner: int, name: str | None = None) -> str:
    """Create an empty store (just its root directory) for user *owner*; return its id.

    *name* is a shared folder's (shares.py); None makes the user's own store.
    The store's creation is its commit 1, so a first listing from cursor 0
    returns the root.
    """
    store_id = uuid.uuid4().hex
    now = time.time_ns()
    conn.execute(insert(stores).values(id=store_id, owner=owner, seq=1, horizon=0, created_ns=now, name=name))
    conn.execute(
        insert(nodes).values(
            store=store_id, id=ROOT_ID, kind=KIND_DIR, mode=ROOT_MODE, size=0, mtime_ns=now,
            blocks=blocks_to_text([]), target="", seq=1, deleted=False, device="", version=1, written_ns=now,
            rdev=0, xattrs="{}",
        )
    )  # fmt: skip
    return store_id


class MetadataStore:
    """Stores' trees, commits and journal, on a `Database`."""

    def __init__(
        self, db: Database, blocks: BlockSizes, retention_s: float | None = None,
        on_commit: Callable[[str, int], None] | None = None,
    ) -> None:
        self._db = db
        self._blocks = blocks
        #: Forces how long deleted nodes stay in the trash (else the retention settings say).
        self._forced_trash_ns = None if retention_s is None else int(retention_s * 1e9)
        self._settings = retention.Retention()
        self._settings_read = -math.inf
        #: Told ``(store, seq)`` once a commit is visible (the notifier wakes long polls).
        self.on_commit = on_commit or (lambda store, seq: None)

    def retention(self, owner: int) -> retention.Retention:
        """The retention settings for stores of user *owner* (re-read every few seconds)."""
        if time.monotonic() - self._settings_read > _SETTINGS_TTL_S:
            with self._db.read() as conn:
                self._settings = retention.read_retention(conn)
            self._settings_read = time.monotonic()
        return self._settings.for_user(owner)

    def _trash_ns(self, owner: int) -> int:
        return self._forced_trash_ns if self._forced_trash_ns is not None else self.retention(owner).trash_ns

    def commit(self, store_id: str, device: str, batch_id: object, ops: object) -> int:
        """Apply a batch of wire ops atomically and return the store's new seq.

        Raises `InvalidRequest` for a malformed batch or one naming blocks the
        server lacks, `NotFound` for an unknown store, and `CommitConflict` when
        a precondition fails.  A batch id seen before returns its first seq and
        changes nothing.
        """
        batch = parse_batch_id(batch_id)
        parsed = parse_ops(ops)
        with self._db.read() as conn:
            found = conn.execute(
                select(users.c.name, users.c.id)
                .join(stores, stores.c.owner == users.c.id)
                .where(stores.c.id == store_id)
            ).first()
            generation = gc_generation(conn)
        if found is None:
            raise NotFound(f"there is no store {store_id}")
        user, owner = found
        self._check_blocks(user, parsed)
        seq = self._apply(store_id, device, batch, parsed, user=user, generation=generation,
                          trash_ns=self._trash_ns(owner))
        # In the committing thread, before anything can cancel the request that
        # asked: a commit that is visible but never announced leaves every long
        # poll of the store waiting for the next one (docs/design.md).
        self.on_commit(store_id, seq)
        return seq

    def _apply(self, store_id: str, device: str, batch: str, parsed: list[Op], *, user: str, generation: int,
               trash_ns: int) -> int:
        """Apply *parsed* as one transaction; the store's new seq (or the first one of a batch seen before)."""
        with self._db.write() as conn:
            # FOR UPDATE serializes commits to one store on PostgreSQL; SQLite
            # already holds the database write lock (BEGIN IMMEDIATE).
            seq = conn.execute(select(stores.c.seq).where(stores.c.id == store_id).with_for_update()).scalar_one()
            if gc_generation(conn) != generation:
                self._check_blocks(user, parsed)  # a collection removed blocks since the first check
            done = conn.execute(
                select(batches.c.seq).where(batches.c.store == store_id, batches.c.batch == batch)
            ).scalar()
            if done is not None:
                return int(done)
            seq += 1
            now = time.time_ns()
            applier = Batch(conn, store_id, seq, device, now, trash_ns)
            for index, op in enumerate(parsed):
                applier.apply(index, op)
            conn.execute(update(stores).where(stores.c.id == store_id).values(seq=seq))
            conn.execute(insert(batches).values(store=store_id, batch=batch, seq=seq, device=device, time_ns=now))
            self._db.announce(conn, store_id, seq)
        return seq

    def positions(self, store_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``(seq, horizon)`` of each of *store_ids* that exists: where its journal stands."""
        with self._db.read() as conn:
            rows = conn.execute(select(stores.c.id, stores.c.seq, stores.c.horizon).where(stores.c.id.in_(store_ids)))
            return {r.id: (int(r.seq), int(r.horizon)) for r in rows}

    def changes(self, store_id: str, cursor: int, limit: int = journal.DEFAULT_LIMIT) -> Changes:
        """Nodes and entries changed after *cursor*; see `journal.read_changes`."""
        with self._db.read() as conn:
            changes = journal.read_changes(conn, store_id, cursor, limit)
        assert isinstance(changes, Changes)
        return changes

    def change_rows(self, store_id: str, cursor: int, limit: int = journal.DEFAULT_LIMIT) -> ChangeRows:
        """`changes` in the compact form (``format=compact``)."""
        with self._db.read() as conn:
            rows = journal.read_changes(conn, store_id, cursor, limit, compact=True)
        assert isinstance(rows, ChangeRows)
        return rows

    def node_state(self, store_id: str, node_id: str) -> NodeState:
        """A node (also when deleted) with the live entries naming it; `NotFound` if unknown."""
        if not is_node_id(node_id):
            raise InvalidRequest(f"{node_id!r} is not a node id")
        with self._db.read() as conn:
            row = conn.execute(select(nodes).where(nodes.c.store == store_id, nodes.c.id == node_id)).first()
            if row is None:
                raise NotFound(f"there is no node {node_id} in store {store_id}")
            names = conn.execute(
                select(entries).where(entries.c.store == store_id, entries.c.node == node_id).order_by(entries.c.seq)
            ).all()
        return NodeState(node=node_from_row(row), entries=tuple(entry_from_row(e) for e in names))

    def versions(self, store_id: str, node_id: str) -> list[history.Version]:
        """A node's versions, oldest first, the current one last; `NotFound` if unknown."""
        if not is_node_id(node_id):
            raise InvalidRequest(f"{node_id!r} is not a node id")
        with self._db.read() as conn:
            owner = conn.execute(select(stores.c.owner).where(stores.c.id == store_id)).scalar()
            keep_ns = self.retention(owner).version_ns if owner is not None else 0
            return history.read_versions(conn, store_id, node_id, keep_ns)

    def trash(self, store_id: str) -> list[history.TrashItem]:
        """Deleted nodes still within the retention window, newest first."""
        with self._db.read() as conn:
            owner = conn.execute(select(stores.c.owner).where(stores.c.id == store_id)).scalar()
        if owner is None:
            raise NotFound(f"there is no store {store_id}")
        trash_ns = self._trash_ns(owner)
        with self._db.read() as conn:
            return history.read_trash(conn, store_id, time.time_ns() - trash_ns, trash_ns)

    def _check_blocks(self, user: str, ops: list[Op]) -> None:
        """Refuse content whose blocks are missing or don't add up to its size."""
        wanted = sorted(block_hashes(ops))
        sizes = self._blocks.sizes(user, wanted)  # object storage: a listing, not a request per block
        for block in wanted:
            if block not in sizes:
                raise InvalidRequest(f"block {block} is not on the server; upload it before committing")
        for index, op in enumerate(ops):
            if not isinstance(op, (Create, Update)):
                continue
            # Clients find byte N in block N // BLOCK_SIZE, so every block but
            # the last must be full; a size mismatch would corrupt reads.
            if any(sizes[b] != BLOCK_SIZE for b in op.blocks[:-1]):
                raise InvalidRequest(f"op {index}: every block but the last must be {BLOCK_SIZE} bytes")
            total = sum(sizes[b] for b in op.blocks)
            if total != op.size:
                raise InvalidRequest(f"op {index}: size is {op.size} but the blocks hold {total} bytes")
