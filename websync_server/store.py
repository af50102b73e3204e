"""The metadata store: applies commit batches atomically and answers node queries.

A commit is one database transaction (`Database.write`): it locks the store row,
returns the recorded seq if the batch id was seen before (an idempotent retry),
applies each op after checking its precondition, and records the batch.  Any
failed precondition raises `CommitConflict` out of the transaction, which rolls
it back, so a batch is applied whole or not at all -- also across kill -9,
because nothing is visible before the transaction commits.

Every row the commit touches takes the store's next seq; a rename touches only
entries, never the node, so renaming a file never invalidates another device's
pending ``update`` of it.

A ``base`` precondition guards against other devices' changes, so changes made
by earlier ops of the same batch don't count: an op's ``base`` is compared with
the seq the node had before the batch, and a node created by the batch passes
any ``base`` (the client can't know the seq its batch will get).

Blocks first, metadata second: the blocks a batch names must be durable on the
server before the commit is accepted (``blocks.py`` fsyncs them before answering
the PUT), so a committed node never names a block that is not there.  Blocks
are immutable and (until a garbage collector exists) never removed, so checking
them before taking the write lock is safe; a future collector must spare blocks
younger than the longest commit.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, NoReturn, Protocol

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import BindParameter

from . import journal
from ._exceptions import CommitConflict, InvalidRequest, NotFound
from .database import Database
from .ops import Create, Delete, Mkdir, Op, Rename, SetAttr, Symlink, Update, SYMLINK_MODE, block_hashes
from .ops import parse_batch_id, parse_ops
from .protocol import (
    BLOCK_SIZE,
    CONFLICT_CHANGED,
    CONFLICT_CYCLE,
    CONFLICT_EXISTS,
    CONFLICT_MISSING,
    CONFLICT_NOT_DIR,
    CONFLICT_NOT_EMPTY,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    ROOT_ID,
    BlockHash,
    Changes,
    Conflict,
    NodeId,
    NodeState,
    is_node_id,
)
from .schema import batches, blocks_to_text, entries, entry_from_row, node_from_row, nodes, stores, users, versions

__all__ = ["BlockSizes", "MetadataStore", "new_store"]

ROOT_MODE = 0o755
# A directory tree deeper than this is corrupt (or an attack), not a real tree.
_MAX_DEPTH = 10_000

# The statements a commit runs for every op, built once: building and cache-
# keying a Core statement per call was most of the cost of a big batch.
_S: BindParameter[str] = bindparam("b_store")
_ID: BindParameter[str] = bindparam("b_id")
_PARENT: BindParameter[str] = bindparam("b_parent")
_NAME: BindParameter[str] = bindparam("b_name")
_NODE = select(nodes).where(nodes.c.store == _S, nodes.c.id == _ID)
_ENTRY = select(entries).where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.name == _NAME)
_FIRST_CHILD = (
    select(entries.c.name).where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.node.is_not(None)).limit(1)
)
# Directories have one live entry, so this is "the parent" of a directory.
_A_PARENT = select(entries.c.parent).where(entries.c.store == _S, entries.c.node == _ID).limit(1)
_UPDATE_NODE = update(nodes).where(nodes.c.store == _S, nodes.c.id == _ID)
_SET_ENTRY = (
    update(entries)
    .where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.name == _NAME)
    .values(node=bindparam("b_node"), seq=bindparam("b_seq"))
)


class BlockSizes(Protocol):
    """What the store needs of the block store: the size of a user's block, if present."""

    def size(self, user: str, block: BlockHash) -> int | None: ...


def new_store(conn: Connection, owner: int) -> str:
    """Create an empty store (just its root directory) for user *owner*; return its id.

    The store's creation is its commit 1, so a first listing from cursor 0
    returns the root.
    """
    store_id = uuid.uuid4().hex
    now = time.time_ns()
    conn.execute(insert(stores).values(id=store_id, owner=owner, seq=1, horizon=0, created_ns=now))
    conn.execute(
        insert(nodes).values(
            store=store_id, id=ROOT_ID, kind=KIND_DIR, mode=ROOT_MODE, size=0, mtime_ns=now,
            blocks=blocks_to_text([]), target="", seq=1, deleted=False, device="",
        )
    )  # fmt: skip
    return store_id


class MetadataStore:
    """Stores' trees, commits and journal, on a `Database`."""

    def __init__(self, db: Database, blocks: BlockSizes) -> None:
        self._db = db
        self._blocks = blocks

    def owner(self, store_id: str) -> int | None:
        """The user id owning *store_id*, or None for an unknown store."""
        with self._db.read() as conn:
            return conn.execute(select(stores.c.owner).where(stores.c.id == store_id)).scalar()

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
            user = conn.execute(
                select(users.c.name).join(stores, stores.c.owner == users.c.id).where(stores.c.id == store_id)
            ).scalar()
        if user is None:
            raise NotFound(f"there is no store {store_id}")
        self._check_blocks(user, parsed)
        with self._db.write() as conn:
            # FOR UPDATE serializes commits to one store on PostgreSQL; SQLite
            # already holds the database write lock (BEGIN IMMEDIATE).
            seq = conn.execute(select(stores.c.seq).where(stores.c.id == store_id).with_for_update()).scalar_one()
            done = conn.execute(
                select(batches.c.seq).where(batches.c.store == store_id, batches.c.batch == batch)
            ).scalar()
            if done is not None:
                return int(done)
            seq += 1
            now = time.time_ns()
            applier = _Commit(conn, store_id, seq, device, now)
            for index, op in enumerate(parsed):
                applier.apply(index, op)
            conn.execute(update(stores).where(stores.c.id == store_id).values(seq=seq))
            conn.execute(insert(batches).values(store=store_id, batch=batch, seq=seq, device=device, time_ns=now))
        return seq

    def changes(self, store_id: str, cursor: int, limit: int = journal.DEFAULT_LIMIT) -> Changes:
        """Nodes and entries changed after *cursor*; see `journal.read_changes`."""
        with self._db.read() as conn:
            return journal.read_changes(conn, store_id, cursor, limit)

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

    def _check_blocks(self, user: str, ops: list[Op]) -> None:
        """Refuse content whose blocks are missing or don't add up to its size."""
        sizes: dict[BlockHash, int] = {}
        for block in sorted(block_hashes(ops)):
            size = self._blocks.size(user, block)
            if size is None:
                raise InvalidRequest(f"block {block} is not on the server; upload it before committing")
            sizes[block] = size
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


class _Commit:
    """One batch being applied, op by op, inside a write transaction at one new seq."""

    def __init__(self, conn: Connection, store: str, seq: int, device: str, now_ns: int) -> None:
        self._conn = conn
        self._store = store
        self._seq = seq
        self._device = device
        self._now_ns = now_ns
        # Seq of each node before this batch first changed it; None: made by it.
        self._seq_before: dict[str, int | None] = {}

    def apply(self, index: int, op: Op) -> None:
        if isinstance(op, Mkdir):
            self._make(index, op.id, op.parent, op.name, kind=KIND_DIR, mode=op.mode, mtime_ns=op.mtime_ns)
        elif isinstance(op, Create):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_FILE, mode=op.mode, mtime_ns=op.mtime_ns,
                size=op.size, blocks=blocks_to_text(op.blocks),
            )  # fmt: skip
        elif isinstance(op, Symlink):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_SYMLINK, mode=SYMLINK_MODE, mtime_ns=op.mtime_ns,
                size=len(op.target.encode("utf-8")), target=op.target,
            )  # fmt: skip
        elif isinstance(op, Update):
            self._update(index, op)
        elif isinstance(op, SetAttr):
            self._setattr(index, op)
        elif isinstance(op, Rename):
            self._rename(index, op)
        else:
            self._delete(index, op)

    # -- the ops ---------------------------------------------------------------

    def _make(self, index: int, node_id: NodeId, parent: NodeId, name: str, **fields: Any) -> None:
        self._live_dir(index, parent)
        taken = self._entry(parent, name)
        if taken is not None and taken.node is not None:
            self._refuse(index, CONFLICT_EXISTS, f"{name!r} already exists", self._node(taken.node))
        existing = self._node(node_id)
        if existing is not None:
            # Ids are never reused, also not those of deleted nodes.
            self._refuse(index, CONFLICT_EXISTS, f"node {node_id} already exists", existing)
        values: dict[str, Any] = {"size": 0, "blocks": blocks_to_text([]), "target": ""}
        values.update(fields)
        self._conn.execute(
            insert(nodes),
            {"store": self._store, "id": node_id, "seq": self._seq, "deleted": False, "device": self._device, **values},
        )
        self._seq_before[node_id] = None
        self._set_entry(parent, name, node_id, exists=taken is not None)

    def _update(self, index: int, op: Update) -> None:
        row = self._live_node(index, op.id)
        if row.kind != KIND_FILE:
            raise InvalidRequest(f"op {index}: update needs a file, node {op.id} is a {row.kind}")
        self._check_base(index, row, op.base)
        self._conn.execute(
            insert(versions),
            {
                "store": self._store, "node": op.id, "seq": row.seq, "size": row.size, "blocks": row.blocks,
                "mtime_ns": row.mtime_ns, "device": row.device, "replaced_seq": self._seq, "time_ns": self._now_ns,
            },
        )  # fmt: skip
        values: dict[str, Any] = {
            "size": op.size, "blocks": blocks_to_text(op.blocks), "mtime_ns": op.mtime_ns,
            "seq": self._seq, "device": self._device,
        }  # fmt: skip
        if op.mode is not None:
            values["mode"] = op.mode
        self._update_node(row, **values)

    def _setattr(self, index: int, op: SetAttr) -> None:
        row = self._live_node(index, op.id)
        values: dict[str, Any] = {"seq": self._seq, "device": self._device}
        if op.mode is not None:
            values["mode"] = op.mode
        if op.mtime_ns is not None:
            values["mtime_ns"] = op.mtime_ns
        self._update_node(row, **values)

    def _rename(self, index: int, op: Rename) -> None:
        source = self._entry(op.parent, op.name)
        if source is None or source.node != op.id:
            self._refuse(index, CONFLICT_MISSING, f"{op.name!r} in {op.parent} is not node {op.id}", self._node(op.id))
        moved = self._node(op.id)
        assert moved is not None  # a live entry names it (foreign key)
        self._live_dir(index, op.new_parent)
        if moved.kind == KIND_DIR and self._is_inside(op.new_parent, op.id):
            self._refuse(index, CONFLICT_CYCLE, f"node {op.id} can't move into its own subtree", moved)
        if (op.parent, op.name) == (op.new_parent, op.new_name):
            return  # rename(2) of a name onto itself changes nothing
        target = self._entry(op.new_parent, op.new_name)
        if target is not None and target.node is not None:
            replaced = self._node(target.node)
            if op.replace is None or target.node != op.replace:
                self._refuse(index, CONFLICT_EXISTS, f"{op.new_name!r} already exists", replaced)
            assert replaced is not None
            if replaced.kind == KIND_DIR and self._has_entries(replaced.id):
                self._refuse(index, CONFLICT_NOT_EMPTY, f"directory {replaced.id} is not empty", replaced)
            self._remove_entry(op.new_parent, op.new_name, replaced.id)
        self._set_entry(op.parent, op.name, None, exists=True)
        self._set_entry(op.new_parent, op.new_name, op.id, exists=target is not None)

    def _delete(self, index: int, op: Delete) -> None:
        entry = self._entry(op.parent, op.name)
        row = self._node(op.id)
        if entry is None or entry.node != op.id or row is None:
            self._refuse(index, CONFLICT_MISSING, f"{op.name!r} in {op.parent} is not node {op.id}", row)
        if op.base is not None:
            self._check_base(index, row, op.base)
        if row.kind == KIND_DIR and self._has_entries(op.id):
            self._refuse(index, CONFLICT_NOT_EMPTY, f"directory {op.id} is not empty", row)
        self._remove_entry(op.parent, op.name, op.id)

    # -- reading ---------------------------------------------------------------

    def _node(self, node_id: str) -> Row[Any] | None:
        return self._conn.execute(_NODE, {"b_store": self._store, "b_id": node_id}).first()

    def _entry(self, parent: str, name: str) -> Row[Any] | None:
        """The entry row ``parent/name``, also a tombstone (``node`` None)."""
        return self._conn.execute(_ENTRY, {"b_store": self._store, "b_parent": parent, "b_name": name}).first()

    def _live_node(self, index: int, node_id: NodeId) -> Row[Any]:
        row = self._node(node_id)
        if row is None or row.deleted:
            self._refuse(index, CONFLICT_MISSING, f"node {node_id} does not exist", row)
        return row

    def _live_dir(self, index: int, node_id: NodeId) -> Row[Any]:
        row = self._live_node(index, node_id)
        if row.kind != KIND_DIR:
            self._refuse(index, CONFLICT_NOT_DIR, f"node {node_id} is not a directory", row)
        return row

    def _check_base(self, index: int, row: Row[Any], base: int) -> None:
        """Refuse with ``changed`` unless the node had seq *base* before this batch."""
        if row.id in self._seq_before:
            before = self._seq_before[row.id]
            if before is None or before == base:
                return
        elif row.seq == base:
            return
        self._refuse(index, CONFLICT_CHANGED, f"node {row.id} changed since seq {base}", row)

    def _has_entries(self, dir_id: str) -> bool:
        return self._conn.execute(_FIRST_CHILD, {"b_store": self._store, "b_parent": dir_id}).first() is not None

    def _is_inside(self, node_id: str, ancestor: str) -> bool:
        """Whether *node_id* is *ancestor* or lies below it, walking up the live entries."""
        current = node_id
        for _ in range(_MAX_DEPTH):
            if current == ancestor:
                return True
            if current == ROOT_ID:
                return False
            parent = self._conn.execute(_A_PARENT, {"b_store": self._store, "b_id": current}).scalar()
            if parent is None:
                return False  # a detached node: no path leads up to *ancestor*
            current = parent
        raise RuntimeError(f"store {self._store}: directory chain above {node_id} has no root")

    # -- writing ---------------------------------------------------------------

    def _update_node(self, row: Row[Any], **values: Any) -> None:
        self._seq_before.setdefault(row.id, row.seq)
        self._conn.execute(_UPDATE_NODE, {"b_store": self._store, "b_id": row.id, **values})

    def _set_entry(self, parent: str, name: str, node: str | None, *, exists: bool) -> None:
        """Point ``parent/name`` at *node* (None: a tombstone); *exists* if a row is there."""
        if exists:
            self._conn.execute(
                _SET_ENTRY,
                {"b_store": self._store, "b_parent": parent, "b_name": name, "b_node": node, "b_seq": self._seq},
            )
        else:
            self._conn.execute(
                insert(entries), {"store": self._store, "parent": parent, "name": name, "node": node, "seq": self._seq}
            )

    def _remove_entry(self, parent: str, name: str, node_id: str) -> None:
        """Tombstone ``parent/name``; a node left without entries becomes deleted."""
        self._set_entry(parent, name, None, exists=True)
        still_named = self._conn.execute(_A_PARENT, {"b_store": self._store, "b_id": node_id}).first()
        if still_named is None:
            row = self._node(node_id)
            assert row is not None  # the entry named it (foreign key)
            self._update_node(row, deleted=True, seq=self._seq, device=self._device)

    def _refuse(self, index: int, reason: str, message: str, row: Row[Any] | None) -> NoReturn:
        node = node_from_row(row) if row is not None else None
        raise CommitConflict(Conflict(index=index, reason=reason, message=f"op {index}: {message}", node=node))
