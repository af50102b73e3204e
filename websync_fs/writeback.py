"""The durable write-back queue: changes waiting for the server.

Each item is one commit operation of docs/protocol.md (``mkdir``, ``create``,
``update``, ...) for one node, kept in order in SQLite.  The queue knows the
operations' shapes, so it can coalesce them, but nothing about files, blocks or
HTTP: the uploader takes batches from it and reports back.

Item state machine::

    (file open, unsealed writes: "dirty", in the working copy, not here)
        |  close / fsync seals the file and enqueues
        v
    queued --take()--> uploading --done()--> (row deleted: committed)
       ^                   |   |
       +------fail()-------+   +-- no answer (cut connection, timeout): stays
             back to queued,       uploading under its batch id; the uploader
             attempts+1,           sends the same ops under that id again before
             ready_at = now +      anything else, until the server answers
             backoff (refused, or
             the blocks never went up)

What happens on a crash (kill -9, power cut) in each state:

* dirty     -- bytes written since the last close/fsync are in the working copy
               only; they are dropped at start-up (close-to-open: what was
               closed or fsync'd is in the queue, that is the promise).
* queued    -- the row is durable; it is sent after start-up.
* uploading -- the row keeps its batch id; start-up resends the *same* batch
               first.  The server applies a batch id once, so a batch that was
               committed just before the crash is not applied twice.
* committed -- the row is gone; the follower brings the server's state.

Coalescing (only into items still ``queued``, never into one being uploaded):

* update after create/update of the same node -> one item with the newest content,
  except a save that replaced the file (``version=True``, saves.py): what it
  replaced is kept as a version, so it stays an item of its own;
* setattr after create/mkdir/symlink/update/setattr -> merged into that item;
* delete of a node created here and never sent -> every item of the node is
  dropped and nothing is sent (a temporary file costs no traffic);
* rename of a file or symlink created here and never sent -> its create moves
  to the new name (and to the end of the queue, after whatever made the new parent);
* neither of the two for a node a queued RENAME_EXCHANGE moves: the exchange
  needs it on the server where it was made (``in_exchange``).

Items dropped unsent (coalesced away, settled by the uploader) are reported to
``on_drop`` listeners: a remote record the follower deferred for them has
nothing left to wait for, and no commit will come to say so.

The queue is a table of the state database (statedb.py), so a local change and
its queue item commit in one transaction.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from websync_server.protocol import (
    OP_CREATE,
    OP_DELETE,
    OP_LINK,
    OP_MKDIR,
    OP_MKNOD,
    OP_RENAME,
    OP_SETATTR,
    OP_SYMLINK,
    OP_UPDATE,
    Op,
)

from .statedb import StateDb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    op TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    batch TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    ready_at REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    -- Copies of the op's entry fields, so dependency questions are index look-ups.
    parent TEXT,
    name TEXT,
    new_parent TEXT,
    new_name TEXT
);
CREATE INDEX IF NOT EXISTS items_node ON items (node);
CREATE INDEX IF NOT EXISTS items_parent ON items (parent);
CREATE INDEX IF NOT EXISTS items_new_parent ON items (new_parent);
-- The other node of a queued RENAME_EXCHANGE: it must reach the server as it was.
CREATE INDEX IF NOT EXISTS items_exchange ON items (json_extract(op, '$.exchange'))
    WHERE json_extract(op, '$.exchange') IS NOT NULL;
-- The few items that failed, and those of the batch on its way: the status and the
-- uploader ask for them often, and a scan of a big queue took 15 ms each time.
CREATE INDEX IF NOT EXISTS items_failed ON items (n) WHERE error != '';
CREATE INDEX IF NOT EXISTS items_uploading ON items (n) WHERE state = 'uploading';
"""

_BORN = (OP_CREATE, OP_MKDIR, OP_SYMLINK, OP_MKNOD)
_CONTENT = (OP_CREATE, OP_UPDATE)


@dataclass
class Item:
    n: int
    node: str
    op: dict[str, Any]
    state: str
    batch: str | None
    attempts: int
    ready_at: float

    @property
    def blocks(self) -> list[str]:
        return list(self.op.get("blocks", ()))


#: The fields of an op that name a node.
NODE_REFS = ("id", "parent", "new_parent", "replace", "exchange")


def _entry_fields(op: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    return op.get("parent"), op.get("name"), op.get("new_parent"), op.get("new_name")


def _refs(op: dict[str, Any]) -> tuple[set[str], set[tuple[str, str]]]:
    """The folders an op works in and the entries it changes."""
    nodes: set[str] = set()
    keys: set[tuple[str, str]] = set()
    if "parent" in op:
        nodes.add(op["parent"])
        if "name" in op:
            keys.add((op["parent"], op["name"]))
    if "new_parent" in op:
        nodes.add(op["new_parent"])
        keys.add((op["new_parent"], op["new_name"]))
    return nodes, keys


def _item(r: tuple[Any, ...]) -> Item:
    return Item(n=r[0], node=r[1], op=json.loads(r[2]), state=r[3], batch=r[4], attempts=r[5], ready_at=r[6])


_ICOLS = "n, node, op, state, batch, attempts, ready_at"
#: Longest any change waits for its time (the uploader's refusal backoff is 600 s): a due time
#: further ahead was set by a clock since set back, and is due now.
LONGEST_WAIT = 900.0
#: A file whose content was taken for upload this recently is still being changed when
#: it changes again: its next change waits the full quiet period (WriteBackQueue.enqueue).
RECENT = 2.0
#: Nodes remembered as lately taken before the old ones are swept out.
RECENT_MAX = 4096

#: A sum of the queued bytes is reused for this many times as long as it took to make:
#: the status, written every 2 s, must not stall the event loop for a big queue.
BYTES_REUSE = 20

_ANCHOR = (time.time(), time.monotonic())


def clock() -> float:
    """Wall-clock seconds that do not step while the process runs: the queue's due times.

    Due times are stored as wall time, so they mean the same after a restart.
    Within a process they advance with the monotonic clock: a wall clock set
    back (NTP, a machine resumed) would otherwise make every queued change
    wait as long as the step.
    """
    return _ANCHOR[0] + (time.monotonic() - _ANCHOR[1])


BlocksCallback = Callable[[Iterable[str]], None]


class WriteBackQueue:
    def __init__(
        self, db: StateDb, quiet: float = 0.2, *, first_quiet: float | None = None,
        protect: BlocksCallback | None = None, unprotect: BlocksCallback | None = None,
    ) -> None:
        self.state = db
        self._db = db.conn
        added = db.ensure_columns("items", {"parent": "TEXT", "name": "TEXT", "new_parent": "TEXT", "new_name": "TEXT"})
        self._db.executescript(_SCHEMA)
        if added:
            with self._tx():
                for item in self.items():
                    self._store(item.n, item.op)
        now = clock()
        if self._db.execute("SELECT 1 FROM items WHERE ready_at>? LIMIT 1", (now + LONGEST_WAIT,)).fetchone():
            with self._tx():  # set by a clock since set back: due now
                self._db.execute("UPDATE items SET ready_at=? WHERE ready_at>?", (now, now + LONGEST_WAIT))
        self.quiet = quiet
        self.first_quiet = quiet if first_quiet is None else first_quiet
        self._taken_at: dict[str, float] = {}  # node -> when its content was last taken (RECENT)
        self._protect_cb = protect or (lambda h: None)
        self._unprotect_cb = unprotect or (lambda h: None)
        self._listeners: list[Callable[[], None]] = []
        self._drop_listeners: list[Callable[[], None]] = []
        self._ready_at = 0.0
        self._hint: float | None = None
        self._bytes = (0, -math.inf)  # the last sum of pending_bytes, and until when it may serve

    def on_enqueue(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def on_drop(self, fn: Callable[[], None]) -> None:
        """Call *fn* after a transaction that dropped items unsent (coalesced away, settled).

        Remote records waiting for those items (follower.py) may apply now:
        nothing is committed for them, so no commit will say so.
        """
        self._drop_listeners.append(fn)

    def _dropped(self) -> None:
        for fn in self._drop_listeners:
            self.state.after_commit(fn)

    def _protect(self, hashes: Iterable[str]) -> None:
        # Protect at once: a block must never be evictable while an item may need it.
        self._protect_cb(list(hashes))

    def _unprotect(self, hashes: Iterable[str]) -> None:
        # Unprotect only once the item's removal is committed.
        hashes = list(hashes)
        if hashes:
            self.state.after_commit(lambda: self._unprotect_cb(hashes))

    # -- reading -------------------------------------------------------------
    def items(self, node: str | None = None, limit: int = -1) -> list[Item]:
        """Queued items (of *node*, if given) in order; the first *limit* of them (-1: all)."""
        if node is None:
            rows = self._db.execute(f"SELECT {_ICOLS} FROM items ORDER BY n LIMIT ?", (limit,))
        else:
            rows = self._db.execute(f"SELECT {_ICOLS} FROM items WHERE node=? ORDER BY n LIMIT ?", (node, limit))
        return [_item(r) for r in rows]

    def nodes_placed_at(self, parent: str, name: str) -> set[str]:
        """Nodes that queued items put at ``parent/name`` (made there, or moved or linked there)."""
        rows = self._db.execute(
            "SELECT node FROM items WHERE parent=? AND name=? AND json_extract(op, '$.op') IN (?,?,?,?,?)"
            " UNION SELECT node FROM items WHERE new_parent=? AND new_name=?",
            (parent, name, *_BORN, OP_LINK, parent, name),
        )
        return {r[0] for r in rows}

    def in_exchange(self, node: str) -> bool:
        """Whether a queued RENAME_EXCHANGE moves *node* (its own, or another node's with it)."""
        row = self._db.execute(
            "SELECT 1 FROM items WHERE json_extract(op, '$.exchange') = ?1 UNION ALL"
            " SELECT 1 FROM items WHERE node = ?1 AND json_extract(op, '$.exchange') IS NOT NULL LIMIT 1",
            (node,),
        ).fetchone()
        return row is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])

    def pending_bytes(self) -> int:
        """Bytes of content the queued changes carry, as the status shows them.

        SQLite sums them: decoding every op here took 0.25 s of the event loop
        for 100,000 queued changes (an afternoon offline), at every status write.
        Even its sum takes 60 ms at that size, so a sum serves for BYTES_REUSE
        times as long as it took; an empty queue is 0 at once.
        """
        if self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None:
            return 0
        total, until = self._bytes
        start = clock()
        if start < until:
            return total
        (total,) = self._db.execute("SELECT coalesce(sum(json_extract(op, '$.size')), 0) FROM items").fetchone()
        end = clock()
        self._bytes = (int(total), end + BYTES_REUSE * (end - start))
        return int(total)

    def all_blocks(self) -> list[str]:
        """Every block a queued item needs: to protect in the cache after a restart."""
        out: list[str] = []
        for item in self.items():
            out.extend(item.blocks)
        return out

    def pending_nodes(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT DISTINCT node FROM items")}

    def pending_entries(self) -> set[tuple[str, str]]:
        # UNION ALL: the set drops the twins.  SQLite's UNION sorted them out in a
        # temporary tree first, 2.5x the time for a big queue (0.27 s for 100,000).
        rows = self._db.execute(
            "SELECT parent, name FROM items WHERE name IS NOT NULL"
            " UNION ALL SELECT new_parent, new_name FROM items WHERE new_name IS NOT NULL"
        )
        return {(p, n) for p, n in rows}

    def moving_nodes(self) -> set[str]:
        """Nodes a queued rename moves (either node of an exchange): where they are is this machine's to say."""
        rows = self._db.execute(
            "SELECT node FROM items WHERE new_name IS NOT NULL"
            " UNION ALL SELECT json_extract(op, '$.exchange') FROM items WHERE json_extract(op, '$.exchange') IS NOT NULL"
        )
        return {n for (n,) in rows}

    def pending_parents(self) -> set[str]:
        """Folders that queued items create things in or move things into."""
        rows = self._db.execute(
            "SELECT parent FROM items WHERE name IS NOT NULL"
            " UNION ALL SELECT new_parent FROM items WHERE new_parent IS NOT NULL"
        )
        return {p for (p,) in rows}

    def has_ready(self, now: float | None = None) -> bool:
        """True if some queued item's time has come by *now* (it may still be held back)."""
        row = self._db.execute(
            "SELECT 1 FROM items WHERE state='queued' AND ready_at <= ? LIMIT 1",
            (clock() if now is None else now,),
        ).fetchone()
        return row is not None

    def next_ready_at(self, now: float | None = None) -> float | None:
        """When the next item waiting for its time after *now* becomes ready (None: none waits).

        Items that are ready but held back wait for one of these, so an
        uploader sleeping until then does not spin.
        """
        row = self._db.execute(
            "SELECT min(ready_at) FROM items WHERE state='queued' AND ready_at > ?",
            (clock() if now is None else now,),
        ).fetchone()
        return row[0]

    def last_ready_at(self, after: float) -> float | None:
        """When the last queued item becomes ready, of those due within a quiet period *after* (None: none is).

        For the uploader's gathering: what waits longer (a temporary name's 3 s)
        is not on its way to a batch leaving at *after*.
        """
        return self._db.execute(
            "SELECT max(ready_at) FROM items WHERE state='queued' AND ready_at <= ?", (after + self._longest_quiet,)
        ).fetchone()[0]

    @property
    def _longest_quiet(self) -> float:
        return max(self.quiet, self.first_quiet)

    # -- enqueueing ----------------------------------------------------------
    def enqueue(self, new: Op, quiet: float | None = None, *, version: bool = False) -> None:
        """Add *op* for the server, coalescing it with what is already queued.

        A change waits *first_quiet* for the changes a program makes with it
        (a write, a chmod, a rename); one to a file whose content was taken for
        upload within RECENT seconds waits the longer *quiet*, so a file that
        keeps changing (a log, a database) goes up once its writer pauses, not
        at every change.  *quiet* overrides both (temporary files wait longer, see
        names.py); a merged item keeps the later time.  An update with
        *version* is never folded into the content queued before it: that
        content becomes a version on the server.
        """
        op = new.to_wire()  # the queue keeps ops in their wire form, which is also its durable record
        now = clock()
        if quiet is None:
            quiet = self.quiet if now - self._taken_at.get(op["id"], -math.inf) < RECENT else self.first_quiet
        self._ready_at = now + quiet
        self._hint = min(self._hint or self._ready_at, self._ready_at)
        with self.state.tx():
            if not self._coalesce(op, version):
                self._append(op)
            for fn in self._listeners:
                self.state.after_commit(fn)

    def hurry(self, node: str) -> None:
        """Make *node*'s queued changes ready now where they wait only the queue's quiet period.

        For a front end that knows a change is whole (the synced folder waited
        for the writer and read the file unchanged): a second quiet period only
        delays it.  Longer waits (temporary names, a replaced file) are kept.
        """
        now = clock()
        with self.state.tx():
            hurried = self._db.execute(
                "UPDATE items SET ready_at=? WHERE node=? AND state='queued' AND ready_at>? AND ready_at<=?",
                (now, node, now, now + self._longest_quiet),
            ).rowcount
            if hurried:
                self._hint = now
                for fn in self._listeners:
                    self.state.after_commit(fn)

    def retry_refused(self) -> None:
        """Make every change waiting out a refusal ready now: what refused it changed (a folder made writable)."""
        now = clock()
        with self.state.tx():
            again = self._db.execute(
                "UPDATE items SET ready_at=? WHERE error != '' AND state='queued' AND ready_at>?", (now, now),
            ).rowcount
            if again:
                self._hint = now
                for fn in self._listeners:
                    self.state.after_commit(fn)

    def ready_hint(self) -> float:
        """The soonest ready time of the changes queued since the last call (0: none known).

        For the uploader, woken by every enqueue: a change waiting its quiet
        period only needs its sleep to end sooner.
        """
        hint, self._hint = self._hint, None
        return 0.0 if hint is None else hint

    def _insert(self, op: dict[str, Any], ready_at: float) -> None:
        self._db.execute(
            "INSERT INTO items (node, op, ready_at, parent, name, new_parent, new_name) VALUES (?,?,?,?,?,?,?)",
            (op["id"], json.dumps(op), ready_at, *_entry_fields(op)),
        )

    def _store(self, n: int, op: dict[str, Any], ready_at: float | None = None) -> None:
        """Write *op* back into item *n* (and its ready time, if given)."""
        self._db.execute(
            "UPDATE items SET op=?, node=?, parent=?, name=?, new_parent=?, new_name=?,"
            " ready_at=coalesce(?, ready_at) WHERE n=?",
            (json.dumps(op), op["id"], *_entry_fields(op), ready_at, n),
        )

    def _append(self, op: dict[str, Any]) -> None:
        self._insert(op, self._ready_at)
        self._protect(op.get("blocks", ()))

    def _rewrite(self, item: Item, op: dict[str, Any]) -> None:
        ready_at = max(item.ready_at, self._ready_at)
        if op["id"] == item.node and _entry_fields(op) == _entry_fields(item.op):
            # A merge (setattr, update) leaves the indexed columns as they were: writing
            # them again rewrote a page of each index, 5 pages a commit instead of 2.
            self._db.execute("UPDATE items SET op=?, ready_at=? WHERE n=?", (json.dumps(op), ready_at, item.n))
        else:
            self._store(item.n, op, ready_at)
        # Only what the merge changed: a setattr folded into a create keeps its blocks, and
        # their protect, unprotect and the cache-size check behind it were three calls a merge.
        if list(op.get("blocks", ())) == list(item.blocks):
            return  # a setattr's merge (chmod, utimens after a write): no block comes or goes
        new, old = Counter(op.get("blocks", ())), Counter(item.blocks)
        self._protect((new - old).elements())
        self._unprotect((old - new).elements())

    def _last(self, node: str) -> Item | None:
        row = self._db.execute(f"SELECT {_ICOLS} FROM items WHERE node=? ORDER BY n DESC LIMIT 1", (node,)).fetchone()
        return None if row is None else _item(row)

    def _coalesce(self, op: dict[str, Any], version: bool = False) -> bool:
        kind = op["op"]
        node = op["id"]
        if kind in (OP_UPDATE, OP_SETATTR):
            return self._merge(op, self._last(node), version)
        if kind not in (OP_DELETE, OP_RENAME):
            return False  # a new node, a link: nothing queued is folded into it
        return self._fold_away(op, self.items(node))

    def _merge(self, op: dict[str, Any], last: Item | None, version: bool) -> bool:
        """Fold an update or setattr into *last*, the node's last queued item, where it can go."""
        if last is None or last.state != "queued":
            return False
        kind = op["op"]
        if kind == OP_UPDATE and last.op["op"] in _CONTENT and not version:
            merged = dict(last.op)
            merged.update({k: op[k] for k in ("size", "blocks", "mtime_ns", "mode") if k in op})
            self._rewrite(last, merged)
            return True
        if kind == OP_SETATTR and last.op["op"] in (*_BORN, OP_UPDATE, OP_SETATTR):
            if last.op["op"] == OP_UPDATE and ("uid" in op or "gid" in op):
                return False  # an update carries no owner: keep the setattr apart
            merged = dict(last.op)
            merged.update({k: op[k] for k in ("mode", "mtime_ns", "uid", "gid") if k in op})
            if "xattrs" in op:
                if last.op["op"] == OP_SETATTR:
                    merged["xattrs"] = {**last.op.get("xattrs", {}), **op["xattrs"]}
                elif last.op["op"] == OP_UPDATE:
                    return False  # an update carries no attributes: keep the setattr apart
                else:
                    # A node born here carries its attributes in its birth op.
                    born = {k: v for k, v in {**last.op.get("xattrs", {}), **op["xattrs"]}.items() if v is not None}
                    merged["xattrs"] = born
            self._rewrite(last, merged)
            return True
        return False

    def _fold_away(self, op: dict[str, Any], items: list[Item]) -> bool:
        """Drop a never-sent node's items for its delete, or move its lone birth for its rename."""
        kind = op["op"]
        node = op["id"]
        never_sent = bool(items) and all(i.state == "queued" for i in items) and items[0].op["op"] in _BORN
        linked = any(i.op["op"] == OP_LINK for i in items)  # a delete may remove one of several names
        # Dropped or moved to the end of the queue, a node an exchange swapped with another
        # would not be where that exchange needs it (nor would the other node move).
        if (kind == OP_DELETE and never_sent and not linked and not self.in_exchange(node)
                and not self._is_parent_of_queued(node)):
            for item in items:
                self._db.execute("DELETE FROM items WHERE n=?", (item.n,))
                self._unprotect(item.blocks)
            self._dropped()
            return True
        if (kind == OP_RENAME and never_sent and len(items) == 1 and items[0].op["op"] != OP_MKDIR
                and not op.get("exchange") and not self.in_exchange(node)):
            moved = dict(items[0].op, parent=op["new_parent"], name=op["new_name"])
            self._db.execute("DELETE FROM items WHERE n=?", (items[0].n,))
            self._insert(moved, self._ready_at)
            self._dropped()  # nothing queued names the old entry any more
            return True
        return False

    def _is_parent_of_queued(self, node: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM items WHERE node != ?1 AND (parent = ?1 OR new_parent = ?1) LIMIT 1", (node,)
        ).fetchone()
        return row is not None

    # -- the uploader's side -------------------------------------------------
    def inflight(self) -> list[Item]:
        """Items of a batch that was being sent when the client stopped."""
        rows = self._db.execute(f"SELECT {_ICOLS} FROM items WHERE state='uploading' ORDER BY n")
        return [_item(r) for r in rows]

    def take(self, max_ops: int = 1000, max_bytes: int = 256 * 1024 * 1024) -> list[Item]:
        """Mark the ready items that nothing earlier holds back as one batch and return it.

        An item that is not ready yet (quiet period, backoff) holds back every
        later item that changes the same node or entry, that works inside the
        node (a file in a new folder), or that changes the folder the held item
        works in (a folder's delete after a file's move out of it).  Unrelated
        items go ahead.
        """
        now = clock()
        batch_id = uuid.uuid4().hex
        taken: list[Item] = []
        held_own: set[str] = set()  # nodes of held items
        held_parents: set[str] = set()  # folders held items work in
        held_keys: set[tuple[str, str]] = set()
        held_move = False  # a rename or delete is held: the tree's shape must change in order
        size = 0
        # Items after the last ready one cannot go (not ready, or being sent): leave them
        # undecoded.  A burst of deletes, each waiting its replace quiet period, keeps
        # hundreds queued behind the few that are ready, and the uploader takes often.
        (last,) = self._db.execute(
            "SELECT max(n) FROM items WHERE state='queued' AND ready_at <= ?", (now,)
        ).fetchone()
        if last is None:
            return []
        # Read only as far as the batch goes: fetching all of a big queue (100,000 changes
        # after a day offline) took 0.16 s of the event loop for every batch of 1,000.
        rows = self._db.execute(f"SELECT {_ICOLS} FROM items WHERE n <= ? ORDER BY n", (last,))
        for item in map(_item, rows):
            parents, keys = _refs(item.op)
            node = item.op["id"]
            moves = item.op["op"] in (OP_RENAME, OP_DELETE)
            blocked = (
                item.state != "queued" or item.ready_at > now or node in held_own or node in held_parents
                or bool(parents & held_own) or bool(keys & held_keys) or (moves and held_move)
            )
            item_size = int(item.op.get("size", 0))
            if not blocked and taken and (len(taken) >= max_ops or size + item_size > max_bytes):
                break
            if blocked:
                held_own.add(node)
                held_parents |= parents
                held_keys |= keys
                # Moves depend on each other through ancestry the queue cannot see
                # (a folder may only enter another once it has left its own subtree).
                held_move = held_move or moves
                continue
            taken.append(item)
            size += item_size
        rows.close()
        if taken:
            with self._tx():
                for item in taken:
                    self._db.execute("UPDATE items SET state='uploading', batch=? WHERE n=?", (batch_id, item.n))
                    item.state, item.batch = "uploading", batch_id
            self._note_taken(taken, now)
        return taken

    def _note_taken(self, taken: list[Item], now: float) -> None:
        """Remember which files' content went up: their next change waits the full quiet period."""
        if len(self._taken_at) > RECENT_MAX:
            self._taken_at = {node: t for node, t in self._taken_at.items() if now - t < RECENT}
        for item in taken:
            # Only content: the create of a file still being written (empty, sent while
            # its writer goes on) says nothing about how often its content changes.
            if item.op["op"] in _CONTENT and item.op.get("blocks"):
                self._taken_at[item.node] = now

    def done(self, items: list[Item]) -> None:
        with self._tx():
            for item in items:
                self._db.execute("DELETE FROM items WHERE n=?", (item.n,))
                self._unprotect(item.blocks)

    def first_error(self, node: str | None = None) -> str:
        """Why the oldest change (of *node*, if given) that failed to go is still waiting ('' if none failed)."""
        where, args = ("AND node=?", (node,)) if node is not None else ("", ())
        row = self._db.execute(f"SELECT error FROM items WHERE error != '' {where} ORDER BY n LIMIT 1", args).fetchone()
        return str(row[0]) if row else ""

    def fail(self, items: list[Item], delay: float, error: str) -> None:
        """Put a batch back to queued; it is retried as a new batch after *delay*."""
        with self._tx():
            for item in items:
                self._db.execute(
                    "UPDATE items SET state='queued', batch=NULL, attempts=attempts+1, ready_at=?, error=? WHERE n=?",
                    (clock() + delay, error, item.n),
                )

    def replace(self, item: Item, new: Op | dict[str, Any] | None) -> None:
        """Swap the op of *item* (conflict resolution) or drop it with None.

        A dict is *item*'s own queued form rewritten (a new target name, a
        restore to go before it); a new op comes as a typed value.
        """
        op = new if new is None or isinstance(new, dict) else new.to_wire()
        with self._tx():
            if op is None:
                self._db.execute("DELETE FROM items WHERE n=?", (item.n,))
                self._dropped()
            else:
                self._store(item.n, op)
                self._protect(op.get("blocks", ()))
            self._unprotect(item.blocks)

    def remap(self, old: str, new: str, since: int = 0) -> None:
        """Rewrite every queued reference to node *old* as *new* (in items *since* and after)."""
        with self._tx():
            for item in self.items():
                if item.n < since:
                    continue
                op = item.op
                changed = False
                for key in NODE_REFS:
                    if op.get(key) == old:
                        op[key] = new
                        changed = True
                if changed:
                    self._store(item.n, op)

    def remap_entry(self, parent: str, name: str, new_parent: str, new_name: str, node: str) -> None:
        """Every item of *node* that names the entry ``parent/name`` now names ``new_parent/new_name``.

        Items of other nodes keep the name: they were put there after *node* left it.
        """
        with self._tx():
            for item in self.items(node):
                op = item.op
                changed = False
                if (op.get("parent"), op.get("name")) == (parent, name):
                    op.update(parent=new_parent, name=new_name)
                    changed = True
                if (op.get("new_parent"), op.get("new_name")) == (parent, name):
                    op.update(new_parent=new_parent, new_name=new_name)
                    changed = True
                if changed:
                    self._store(item.n, op)

    def _tx(self) -> AbstractContextManager[None]:
        return self.state.tx()
