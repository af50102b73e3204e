"""The change journal: "what changed in a store since cursor C", one page at a time.

There is no log table.  Every node and entry row carries the seq of the commit
that last changed it, so the changes since C are the rows with ``seq > C``, each
once in its latest state, read in seq order from the ``(store, seq)`` indexes:
O(changes since C), never O(store size) or O(history).

Paging.  A page holds at most ``limit`` records, except that it always ends on a
whole commit -- a client must never apply half a rename -- so one commit bigger
than ``limit`` is sent whole.  The cursor of a page that is cut short is the seq
of its last commit, and ``more`` says to ask again at once.

Cursor 0 is a listing: only live rows (no tombstones), and the final cursor is
the store's seq, so the client skips the tombstones it never needed.

Forms.  A page is `Changes` (records as objects, the default on the wire) or,
for ``format=compact``, `ChangeRows` built straight from the table rows: a
first listing of a big store is mostly the cost per record.

Reset.  A cursor below the store's tombstone horizon may have missed a removal
whose tombstone was purged (the collector, gc.py, compacts the journal), and a
cursor above the store's seq comes from a future this server doesn't have (the
database was restored from a backup); both answer ``reset`` and the client
lists again from 0.  The second also says ``ahead``, and so does a cursor past
the seq a store had in the backup it was restored from: ``restore`` moves the
seq and horizon of every store far forward (backup.py) and records the old seq
under ``meta`` key ``restored_seq.STORE``, so that a machine which saw the lost
commits learns it, however many commits the restored server has made since.

The intermediate cursors of a paged listing can lie below the horizon, so a
purge that raises the horizon while a listing is under way sends that client
back to 0 -- correct, and the collector raises it at most once a run, to
commits older than ``journal_days``, so a large listing always finishes.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Select, Table, select, union_all
from sqlalchemy.engine import Row

from ._exceptions import InvalidRequest, NotFound
from .protocol import ENTRY_ROW, NODE_ROW, ChangeRows, Changes, compact_node
from .schema import entries, entry_from_row, meta, node_from_row, nodes, stores

__all__ = ["DEFAULT_LIMIT", "LIMIT_MAX", "RESTORED_KEY", "read_changes"]

DEFAULT_LIMIT = 10_000
#: Larger ``limit`` values are lowered to this; ``more`` tells the client to go on.
LIMIT_MAX = 10_000
#: ``meta`` key (+ store id) of a store's seq in the backup it was restored from.
RESTORED_KEY = "restored_seq."


def read_changes(
    conn: Connection, store_id: str, cursor: int, limit: int = DEFAULT_LIMIT, *, compact: bool = False
) -> Changes | ChangeRows:
    """Return the page of changes after *cursor*; *conn* must be in a snapshot transaction.

    With *compact* the page is `ChangeRows`, built straight from the table rows.
    """
    if cursor < 0:
        raise InvalidRequest("cursor must not be negative")
    if limit < 1:
        raise InvalidRequest("limit must be at least 1")
    limit = min(limit, LIMIT_MAX)
    store = conn.execute(select(stores.c.seq, stores.c.horizon).where(stores.c.id == store_id)).first()
    if store is None:
        raise NotFound(f"there is no store {store_id}")
    answer = ChangeRows if compact else Changes
    if cursor > store.seq:
        return answer(cursor=0, reset=True, ahead=True)
    if 0 < cursor < store.horizon:
        return answer(cursor=0, reset=True, ahead=_past_restore(conn, store_id, cursor))
    return _Page(conn, store_id, live_only=cursor == 0, compact=compact).read(cursor, limit, store.seq)


def _past_restore(conn: Connection, store_id: str, cursor: int) -> bool:
    """True if the store was restored from a backup older than *cursor*."""
    seq = conn.execute(select(meta.c.value).where(meta.c.key == RESTORED_KEY + store_id)).scalar()
    return seq is not None and cursor > int(seq)


class _Page:
    """One page of the journal of one store, read in a single snapshot."""

    def __init__(self, conn: Connection, store_id: str, *, live_only: bool, compact: bool = False) -> None:
        self._conn = conn
        self._store = store_id
        self._live_only = live_only
        self._compact = compact

    def read(self, cursor: int, limit: int, store_seq: int) -> Changes | ChangeRows:
        # Where the page ends is found from the seqs alone, inside the database;
        # then only the rows sent are read (reading limit+1 whole rows of each
        # table and dropping half cost a first listing about half its time).
        bounds = self._bounds(cursor, limit)
        if len(bounds) < 2:
            return self._changes(self._rows(nodes, after=cursor), self._rows(entries, after=cursor), store_seq,
                                 more=False)
        last_seq, next_seq = bounds
        # Equal: the page would split commit last_seq, so it ends before it.
        end = last_seq if next_seq != last_seq else last_seq - 1
        node_rows = self._rows(nodes, after=cursor, upto=end)
        entry_rows = self._rows(entries, after=cursor, upto=end)
        if node_rows or entry_rows:
            top = max(node_rows[-1].seq if node_rows else 0, entry_rows[-1].seq if entry_rows else 0)
            return self._changes(node_rows, entry_rows, top, more=True)
        # A single commit bigger than the page: send it whole.
        whole_nodes = self._rows(nodes, after=last_seq - 1, upto=last_seq)
        whole_entries = self._rows(entries, after=last_seq - 1, upto=last_seq)
        more = bool(self._rows(nodes, after=last_seq, limit=1) or self._rows(entries, after=last_seq, limit=1))
        return self._changes(whole_nodes, whole_entries, last_seq if more else store_seq, more=more)

    def _bounds(self, cursor: int, limit: int) -> list[int]:
        """The seqs of the limit-th and the next record after *cursor* (fewer if there are not so many)."""
        # The first limit+1 records overall are among the first limit+1 of each
        # table: two bounded index range scans, merged.
        arms = [self._live(select(t.c.seq).where(t.c.store == self._store, t.c.seq > cursor), t)
                .order_by(t.c.seq).limit(limit + 1).subquery() for t in (nodes, entries)]
        both = union_all(select(arms[0].c.seq), select(arms[1].c.seq)).subquery()
        query = select(both.c.seq).order_by(both.c.seq).offset(limit - 1).limit(2)
        return list(self._conn.execute(query).scalars().all())

    def _live(self, query: Select[Any], table: Table) -> Select[Any]:
        if not self._live_only:
            return query
        return query.where(nodes.c.deleted.is_(False) if table is nodes else entries.c.node.is_not(None))

    def _rows(
        self, table: Table, *, after: int, upto: int | None = None, limit: int | None = None
    ) -> list[Row[Any]]:
        """Rows of *table* with seq above *after* and at most *upto*, in seq order."""
        # Only the columns sent, in the order of the compact form.
        columns = [table.c[name] for name in (NODE_ROW if table is nodes else ENTRY_ROW)]
        query = select(*columns).where(table.c.store == self._store, table.c.seq > after)
        if upto is not None:
            query = query.where(table.c.seq <= upto)
        query = self._live(query, table).order_by(table.c.seq)
        if limit is not None:
            query = query.limit(limit)
        return list(self._conn.execute(query).all())

    def _changes(
        self, node_rows: list[Row[Any]], entry_rows: list[Row[Any]], cursor: int, *, more: bool
    ) -> Changes | ChangeRows:
        if self._compact:
            return ChangeRows(
                cursor=cursor,
                nodes=[_compact_node(r) for r in node_rows],
                entries=[list(r) for r in entry_rows],
                more=more,
            )
        return Changes(
            cursor=cursor,
            nodes=tuple(node_from_row(r) for r in node_rows),
            entries=tuple(entry_from_row(r) for r in entry_rows),
            more=more,
        )


def _compact_node(r: Row[Any]) -> list[Any]:
    """A ``nodes`` row (its columns in ``NODE_ROW`` order) in the compact form, without a `Node` in between."""
    row = list(r)
    row[7] = [] if row[7] == "[]" else json.loads(row[7])
    row[9] = bool(row[9])
    row[11] = {} if row[11] == "{}" else json.loads(row[11])
    return compact_node(row)
