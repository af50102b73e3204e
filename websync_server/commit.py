"""Applying one commit batch, op by op, inside the store's write transaction.

`Batch` checks each op's precondition and writes its effect; a failed
precondition raises `CommitConflict` and the caller's transaction rolls back the
ops already written, so nothing of a refused batch is ever visible.

Every row an op writes takes the batch's seq.  ``rename`` and ``link`` write
entries only, never the node, so they don't invalidate another device's pending
``update`` of the node.  A ``base`` precondition guards against *other*
devices' changes, so earlier ops of the same batch don't count: ``base`` is
compared with the seq the node had before the batch, and a node the batch
created passes any ``base`` (the client can't know the seq its batch gets).

The ``node`` of a conflict is, per docs/protocol.md, the node holding the name
for ``exists`` and the node the op names for every other reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import Connection, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import BindParameter

from ._exceptions import CommitConflict, InvalidRequest
from .ops import (
    OWNER,
    PERMISSION_BITS,
    SYMLINK_MODE,
    Create,
    Delete,
    Link,
    Mkdir,
    Mknod,
    Op,
    Rename,
    Restore,
    SetAttr,
    Symlink,
    Update,
    xattr_size,
)
from .protocol import (
    CONFLICT_CHANGED,
    CONFLICT_CYCLE,
    CONFLICT_EXISTS,
    CONFLICT_MISSING,
    CONFLICT_NOT_DIR,
    CONFLICT_NOT_EMPTY,
    KIND_DIR,
    KIND_FILE,
    KIND_SPECIAL,
    KIND_SYMLINK,
    ROOT_ID,
    XATTR_TOTAL_MAX,
    Conflict,
    NodeId,
)
from .schema import batches, blocks_to_text, entries, node_from_row, nodes, versions

__all__ = ["DEPTH_MAX", "WALK_MAX", "Batch"]

#: Levels a folder may lie below the root.  Deeper trees are an attack, not a
#: home folder; the bound also bounds what one walk up the tree can cost.
DEPTH_MAX = 256
#: Levels one batch may walk up the tree in all (a few microseconds each): the
#: costliest batch takes ~0.1 s of the writer.  A client splits a refused batch.
WALK_MAX = 20_000

# The statements run for every op, built once: building and cache-keying a Core
# statement per call was most of the cost of a big batch.
_S: BindParameter[str] = bindparam("b_store")
_ID: BindParameter[str] = bindparam("b_id")
_PARENT: BindParameter[str] = bindparam("b_parent")
_NAME: BindParameter[str] = bindparam("b_name")
_NODE = select(nodes).where(nodes.c.store == _S, nodes.c.id == _ID)
_ENTRY = select(entries).where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.name == _NAME)
_FIRST_CHILD = (
    select(entries.c.name).where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.node.is_not(None)).limit(1)
)
# Directories have one live entry, so for a directory this is *the* place.
_A_PLACE = select(entries.c.parent, entries.c.name).where(entries.c.store == _S, entries.c.node == _ID).limit(1)
_UPDATE_NODE = update(nodes).where(nodes.c.store == _S, nodes.c.id == _ID)
_SET_ENTRY = (
    update(entries)
    .where(entries.c.store == _S, entries.c.parent == _PARENT, entries.c.name == _NAME)
    .values(node=bindparam("b_node"), seq=bindparam("b_seq"))
)
# A directory and its ancestors, nearest first, by name; no deeper than :b_limit.
# Directories have one live entry, so each level yields one row.
_UP = text(
    "WITH RECURSIVE up(id, name, depth) AS ("
    # The casts: PostgreSQL types the recursive term by its first part, where
    # bare parameters and literals are text, not the columns' VARCHAR.
    " SELECT CAST(:b_id AS VARCHAR), CAST('' AS VARCHAR), 0"
    " UNION ALL"
    " SELECT e.parent, e.name, up.depth + 1 FROM up JOIN entries AS e ON e.store = :b_store AND e.node = up.id"
    " WHERE up.id <> 'root' AND up.depth < :b_limit"
    ") SELECT id, name, depth FROM up ORDER BY depth"
)
# The commit at a time: the one that wrote a node's content, by its ``written_ns``.
_WROTE = select(func.max(batches.c.seq)).where(batches.c.store == _S, batches.c.time_ns == bindparam("b_time"))
_COMMIT_TIME = select(batches.c.time_ns).where(batches.c.store == _S, batches.c.seq == bindparam("b_seq")).limit(1)


@dataclass(frozen=True)
class _Place:
    """Where a directory is: it and its ancestors (nearest first), the names from the root down."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    #: The walk stopped at `DEPTH_MAX` levels without reaching the root.
    cut: bool


class Batch:
    """One batch being applied at one new seq; `apply` each op in order."""

    def __init__(
        self, conn: Connection, store: str, seq: int, device: str, now_ns: int, retention_ns: int
    ) -> None:
        self._conn = conn
        self._store = store
        self._seq = seq
        self._device = device
        self._now_ns = now_ns
        self._retention_ns = retention_ns
        # Seq of each node before this batch first changed it; None: made by it.
        self._seq_before: dict[str, int | None] = {}
        # Places of directories looked up by this batch; a folder move forgets them all.
        self._places: dict[str, _Place] = {}
        self._walked = 0  # levels walked up by _place, bounded by WALK_MAX

    def apply(self, index: int, op: Op) -> None:
        """Check op *index*'s precondition and write its effect, or raise `CommitConflict`."""
        if isinstance(op, Mkdir):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_DIR, mode=op.mode, mtime_ns=op.mtime_ns,
                xattrs=_xattrs_text(op.xattrs), uid=_stored_id(op.uid), gid=_stored_id(op.gid),
            )  # fmt: skip
        elif isinstance(op, Create):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_FILE, mode=op.mode, mtime_ns=op.mtime_ns,
                size=op.size, blocks=blocks_to_text(op.blocks), xattrs=_xattrs_text(op.xattrs), uid=_stored_id(op.uid), gid=_stored_id(op.gid),
            )  # fmt: skip
        elif isinstance(op, Symlink):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_SYMLINK, mode=SYMLINK_MODE, mtime_ns=op.mtime_ns,
                size=len(op.target.encode("utf-8")), target=op.target, xattrs=_xattrs_text(op.xattrs), uid=_stored_id(op.uid), gid=_stored_id(op.gid),
            )  # fmt: skip
        elif isinstance(op, Mknod):
            self._make(
                index, op.id, op.parent, op.name, kind=KIND_SPECIAL, mode=op.mode, mtime_ns=op.mtime_ns,
                rdev=op.rdev, xattrs=_xattrs_text(op.xattrs), uid=_stored_id(op.uid), gid=_stored_id(op.gid),
            )  # fmt: skip
        elif isinstance(op, Update):
            self._update(index, op)
        elif isinstance(op, SetAttr):
            self._setattr(index, op)
        elif isinstance(op, Rename):
            self._rename(index, op)
        elif isinstance(op, Delete):
            self._delete(index, op)
        elif isinstance(op, Link):
            self._link(index, op)
        else:
            self._restore(index, op)

    # -- the ops ---------------------------------------------------------------

    def _make(self, index: int, node_id: NodeId, parent: NodeId, name: str, **fields: Any) -> None:
        self._live_dir(index, parent, about=node_id)
        if fields["kind"] == KIND_DIR:
            self._check_depth(index, parent)
        taken = self._free_name(index, parent, name)
        existing = self._node(node_id)
        if existing is not None:
            # Ids are never reused, also not those of deleted nodes.
            self._refuse(index, CONFLICT_EXISTS, f"node {node_id} already exists", existing)
        values: dict[str, Any] = {
            "store": self._store, "id": node_id, "size": 0, "blocks": blocks_to_text([]), "target": "",
            "seq": self._seq, "deleted": False, "device": self._device, "version": 1, "written_ns": self._now_ns,
            "rdev": 0, "xattrs": "{}",
        }  # fmt: skip
        values.update(fields)
        self._conn.execute(insert(nodes), values)
        self._seq_before[node_id] = None
        if fields["kind"] == KIND_DIR:
            above = self._places[parent]  # looked up by _check_depth
            self._places[node_id] = _Place((node_id, *above.ids), (*above.names, name), above.cut)
        self._set_entry(parent, name, node_id, exists=taken is not None)

    def _update(self, index: int, op: Update) -> None:
        row = self._live_node(index, op.id)
        if row.kind != KIND_FILE:
            raise InvalidRequest(f"op {index}: update needs a file, node {op.id} is a {row.kind}")
        if op.base is None:  # parse_ops requires it; an op built in-process may not have it
            raise InvalidRequest(f"op {index}: update needs base")
        if not self._content_as_of(row, op.base):
            self._check_base(index, row, op.base)
        self._conn.execute(
            insert(versions),
            {
                "store": self._store, "node": op.id, "version": row.version, "seq": row.seq, "size": row.size,
                "blocks": row.blocks, "mtime_ns": row.mtime_ns, "device": row.device, "written_ns": row.written_ns,
                "replaced_seq": self._seq, "replaced_ns": self._now_ns,
            },
        )  # fmt: skip
        values: dict[str, Any] = {
            "size": op.size, "blocks": blocks_to_text(op.blocks), "mtime_ns": op.mtime_ns, "seq": self._seq,
            "device": self._device, "version": row.version + 1, "written_ns": self._now_ns,
        }  # fmt: skip
        if op.mode is not None:
            values["mode"] = _merge_mode(row.mode, op.mode)
        self._update_node(row, **values)

    def _setattr(self, index: int, op: SetAttr) -> None:
        row = self._live_node(index, op.id)
        if op.base is not None:
            self._check_base(index, row, op.base)
        values: dict[str, Any] = {"seq": self._seq}
        if op.mode is not None:
            values["mode"] = _merge_mode(row.mode, op.mode)
        if op.mtime_ns is not None:
            values["mtime_ns"] = op.mtime_ns
        if op.xattrs is not None:
            values["xattrs"] = _apply_xattrs(index, row.xattrs, op.xattrs)
        if op.uid is not None:
            values["uid"] = _stored_id(op.uid)
        if op.gid is not None:
            values["gid"] = _stored_id(op.gid)
        self._update_node(row, **values)

    def _rename(self, index: int, op: Rename) -> None:
        source = self._entry(op.parent, op.name)
        if source is None or source.node != op.id:
            self._refuse(index, CONFLICT_MISSING, f"{op.name!r} in {op.parent} is not node {op.id}", self._node(op.id))
        moved = self._node(op.id)
        assert moved is not None  # a live entry names it (foreign key)
        self._live_dir(index, op.new_parent, about=op.id)
        if moved.kind == KIND_DIR:
            if self._is_inside(index, op.new_parent, op.id):
                self._refuse(index, CONFLICT_CYCLE, f"node {op.id} can't move into its own subtree", moved)
            self._check_depth(index, op.new_parent)
            self._places.clear()  # every place below it changes
        target = self._entry(op.new_parent, op.new_name)
        if op.exchange is not None:
            self._exchange(index, op, moved, target)
            return
        if (op.parent, op.name) == (op.new_parent, op.new_name):
            return  # rename(2) of a name onto itself changes nothing
        if target is not None and target.node is not None:
            replaced = self._node(target.node)
            if op.replace is None or target.node != op.replace:
                self._refuse(index, CONFLICT_EXISTS, f"{op.new_name!r} already exists", replaced)
            assert replaced is not None
            if (replaced.kind == KIND_DIR) != (moved.kind == KIND_DIR):
                # rename(2) refuses this (EISDIR, ENOTDIR) and so does every client.
                kinds = "a folder over a file" if moved.kind == KIND_DIR else "a file over a folder"
                raise InvalidRequest(f"op {index}: a rename can't put {kinds}")
            if replaced.kind == KIND_DIR and self._has_entries(replaced.id):
                self._refuse(index, CONFLICT_NOT_EMPTY, f"directory {replaced.id} is not empty", moved)
            self._remove_entry(op.new_parent, op.new_name, replaced.id)
        self._set_entry(op.parent, op.name, None, exists=True)
        self._set_entry(op.new_parent, op.new_name, op.id, exists=target is not None)

    def _exchange(self, index: int, op: Rename, moved: Row[Any], target: Row[Any] | None) -> None:
        """Swap the nodes of the two entries (rename(2) with RENAME_EXCHANGE)."""
        if target is None or target.node != op.exchange:
            message = f"{op.new_name!r} in {op.new_parent} is not node {op.exchange}"
            self._refuse(index, CONFLICT_MISSING, message, moved)
        if (op.parent, op.name) == (op.new_parent, op.new_name):
            return  # both names are the same entry: nothing to swap
        other = self._node(target.node)
        assert other is not None  # a live entry names it (foreign key)
        if other.kind == KIND_DIR and self._is_inside(index, op.parent, other.id):
            self._refuse(index, CONFLICT_CYCLE, f"node {other.id} can't move into its own subtree", moved)
        if KIND_DIR in (moved.kind, other.kind):
            self._check_depth(index, op.new_parent if moved.kind == KIND_DIR else op.parent)
            self._check_depth(index, op.parent if other.kind == KIND_DIR else op.new_parent)
            self._places.clear()  # every place below them changes
        self._set_entry(op.parent, op.name, other.id, exists=True)
        self._set_entry(op.new_parent, op.new_name, op.id, exists=True)

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

    def _link(self, index: int, op: Link) -> None:
        row = self._live_node(index, op.id)
        if row.kind == KIND_DIR:
            raise InvalidRequest(f"op {index}: node {op.id} is a directory, which can't have hard links")
        self._live_dir(index, op.parent, about=op.id)
        taken = self._free_name(index, op.parent, op.name)
        self._set_entry(op.parent, op.name, op.id, exists=taken is not None)

    def _restore(self, index: int, op: Restore) -> None:
        row = self._node(op.id)
        if row is not None and not row.deleted:
            self._refuse(index, CONFLICT_EXISTS, f"node {op.id} is not deleted", row)
        if row is None or self._deleted_at(row) < self._now_ns - self._retention_ns:
            self._refuse(index, CONFLICT_MISSING, f"node {op.id} is not in the trash", row)
        self._live_dir(index, op.parent, about=op.id)
        if row.kind == KIND_DIR:
            self._check_depth(index, op.parent)
        taken = self._free_name(index, op.parent, op.name)
        # Content, version and history stay as they were; a folder comes back
        # empty because its entries were all removed before it was.
        self._update_node(row, deleted=False, seq=self._seq, trash_parent=None, trash_name=None, trash_path=None)
        self._set_entry(op.parent, op.name, op.id, exists=taken is not None)

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

    def _live_dir(self, index: int, dir_id: NodeId, *, about: NodeId) -> None:
        """Refuse unless *dir_id* is a live directory; a conflict reports node *about*."""
        row = self._node(dir_id)
        if row is None or row.deleted:
            self._refuse(index, CONFLICT_MISSING, f"directory {dir_id} does not exist", self._node(about))
        if row.kind != KIND_DIR:
            self._refuse(index, CONFLICT_NOT_DIR, f"node {dir_id} is not a directory", self._node(about))

    def _free_name(self, index: int, parent: str, name: str) -> Row[Any] | None:
        """Refuse with ``exists`` if ``parent/name`` is taken; return its tombstone row, if any."""
        entry = self._entry(parent, name)
        if entry is not None and entry.node is not None:
            self._refuse(index, CONFLICT_EXISTS, f"{name!r} already exists", self._node(entry.node))
        return entry

    def _check_base(self, index: int, row: Row[Any], base: int) -> None:
        """Refuse with ``changed`` unless the node had seq *base* before this batch."""
        if row.id in self._seq_before:
            before = self._seq_before[row.id]
            if before is None or before == base:
                return
        elif row.seq == base:
            return
        self._refuse(index, CONFLICT_CHANGED, f"node {row.id} changed since seq {base}", row)

    def _content_as_of(self, row: Row[Any], base: int) -> bool:
        """Whether *row*'s content is what it was at seq *base*, whatever else changed since.

        A mode or time set since (a ``touch``, a ``chmod`` on another machine)
        moves the node's seq but not its content: a new version made from the
        content at *base* replaces nothing unseen then, and refusing it made
        the other machine's real edit the conflict copy.  The content's own
        commit is found by its time (``written_ns`` is its batch's); one the
        journal no longer holds is taken as unknown.
        """
        if row.seq == base or row.id in self._seq_before:
            return False  # the plain check decides
        wrote = self._conn.execute(_WROTE, {"b_store": self._store, "b_time": row.written_ns}).scalar()
        return wrote is not None and int(wrote) <= base

    def _has_entries(self, dir_id: str) -> bool:
        return self._conn.execute(_FIRST_CHILD, {"b_store": self._store, "b_parent": dir_id}).first() is not None

    def _is_inside(self, index: int, node_id: str, ancestor: str) -> bool:
        """Whether directory *node_id* is *ancestor* or lies below it."""
        place = self._place(node_id)
        if ancestor in place.ids:
            return True
        if place.cut:
            raise InvalidRequest(f"op {index}: directory {node_id} is more than {DEPTH_MAX} levels deep")
        return False

    def _check_depth(self, index: int, parent: str) -> None:
        """Refuse a directory placed in *parent* if it would lie more than `DEPTH_MAX` levels deep."""
        place = self._place(parent)
        if place.cut or len(place.names) + 1 > DEPTH_MAX:
            raise InvalidRequest(f"op {index}: a folder can't lie more than {DEPTH_MAX} levels deep")

    def _path(self, parent: str, name: str) -> str:
        """The store path of ``parent/name`` (``docs/a.txt``); as far as known for a detached or cut chain."""
        return "/".join((*self._place(parent).names, name))

    def _place(self, dir_id: str) -> _Place:
        """Where directory *dir_id* is: one recursive query, remembered for the batch.

        One statement walks the whole chain (it was a query per level, 11 s
        for a batch at the bottom of 10,000 folders), and never more than
        `DEPTH_MAX` + 1 levels, so a tree made deep by moving subtrees costs
        no more.  A folder this batch makes is placed from its parent's place.
        """
        known = self._places.get(dir_id)
        if known is not None:
            return known
        rows = self._conn.execute(_UP, {"b_store": self._store, "b_id": dir_id, "b_limit": DEPTH_MAX + 1}).all()
        self._walked += len(rows)
        if self._walked > WALK_MAX:
            raise InvalidRequest(
                f"this batch walks more than {WALK_MAX} folder levels (deep folders moved often); split it"
            )
        top = rows[-1]
        cut = top.id != ROOT_ID and top.depth > DEPTH_MAX
        # rows[k].name is the name of rows[k - 1] inside rows[k]: the path runs from the top down.
        place = _Place(tuple(row.id for row in rows), tuple(row.name for row in reversed(rows[1:])), cut)
        self._places[dir_id] = place
        return place

    def _deleted_at(self, row: Row[Any]) -> int:
        """When the deleted node *row* was deleted (ns): the time of the commit of its seq."""
        if row.seq == self._seq:
            return self._now_ns  # by this very batch
        when = self._conn.execute(_COMMIT_TIME, {"b_store": self._store, "b_seq": row.seq}).scalar()
        return int(when) if when is not None else 0

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
        """Tombstone ``parent/name``; a node left without entries goes to the trash."""
        self._set_entry(parent, name, None, exists=True)
        if self._conn.execute(_A_PLACE, {"b_store": self._store, "b_id": node_id}).first() is not None:
            return  # another hard link still names it
        row = self._node(node_id)
        assert row is not None  # the entry named it (foreign key)
        self._places.pop(node_id, None)  # an empty folder: no other place lies below it
        self._update_node(
            row, deleted=True, seq=self._seq, trash_parent=parent, trash_name=name, trash_path=self._path(parent, name)
        )

    def _refuse(self, index: int, reason: str, message: str, row: Row[Any] | None) -> NoReturn:
        node = node_from_row(row) if row is not None else None
        raise CommitConflict(Conflict(index=index, reason=reason, message=f"op {index}: {message}", node=node))


def _xattrs_text(attrs: dict[str, str]) -> str:
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"))


def _stored_id(given: int | None) -> int | None:
    """A uid or gid as the ``nodes`` table keeps it: NULL for the store's owner."""
    return None if given is None or given == OWNER else given


def _merge_mode(stored: int, given: int) -> int:
    """New permission bits over the stored mode, keeping a special node's type bits."""
    return (stored & ~PERMISSION_BITS) | (given & PERMISSION_BITS)


def _apply_xattrs(index: int, stored: str, changes: dict[str, str | None]) -> str:
    """The node's attributes JSON after *changes*; `InvalidRequest` past the total limit."""
    attrs: dict[str, str] = json.loads(stored)
    for name, value in changes.items():
        if value is None:
            attrs.pop(name, None)
        else:
            attrs[name] = value
    total = sum(xattr_size(name, value) for name, value in attrs.items())
    if total > XATTR_TOTAL_MAX:
        raise InvalidRequest(f"op {index}: the node's attributes would take {total} bytes, over {XATTR_TOTAL_MAX}")
    return _xattrs_text(attrs)
