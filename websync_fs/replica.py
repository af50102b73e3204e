"""The local metadata replica: the whole tree of the store, without contents.

Every lookup, getattr, readdir and statfs is answered from here, so browsing is
instant and works offline.  The change follower keeps it current from the
server's journal; local operations change it at once and queue the same change
for the server.

Schema (tables of the state database, statedb.py):

``nodes``   one row per node.  ``ino`` is the local inode number: assigned once,
            never reused (AUTOINCREMENT), stable across restarts.  ``id`` is the
            server's node id; it can be *remapped* (a conflict turns the local
            file into a new server node) without the kernel seeing a new inode.
            ``seq`` is the last server seq seen for the node (0: not yet on the
            server) and is the precondition of the next update.  ``orphan`` marks
            a node with no entries left that an open handle or the kernel still
            uses; it is purged on forget and at start-up.  ``local`` marks a
            node that never leaves this machine (a lock or swap file, names.py).
            ``uid``/``gid`` are the owner and group chown set, NULL for the
            store's owner (shown as the mounting user, owners.py).
``entries`` (parent id, name) -> node id, with the entry's server seq.
``deferred_nodes``, ``deferred_entries``  remote states the follower received
            for records that have local changes waiting for upload; applied
            when the queue settles them (see follower.py).
``gone``    entries our own commits removed, with the commit's seq, until the
            journal cursor passes it: an answer computed before our commit
            must not bring the entry back (a folder at two names is an
            error to the kernel).
``meta``    the journal cursor and other small values.
"""

from __future__ import annotations

import functools
import json
import time
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from websync_server.protocol import KIND_DIR, ROOT_ID, BlockHash, Entry, Node, NodeId

from .statedb import StateDb

ROOT_INO = 1
#: Listings remembered (`Replica.folder_listing`): at most this many folders and entries in all.
LISTINGS_MAX = 1000
LISTED_MAX = 20_000  # about 10 MB (500 bytes an entry)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    blocks TEXT NOT NULL DEFAULT '[]',
    target TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL DEFAULT 0,
    orphan INTEGER NOT NULL DEFAULT 0,
    local INTEGER NOT NULL DEFAULT 0,
    rdev INTEGER NOT NULL DEFAULT 0,
    xattrs TEXT NOT NULL DEFAULT '{}',
    uid INTEGER,
    gid INTEGER
);
CREATE TABLE IF NOT EXISTS entries (
    parent TEXT NOT NULL,
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_node ON entries (node);
CREATE TABLE IF NOT EXISTS deferred_nodes (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deferred_entries (
    parent TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (parent, name)
);
CREATE TABLE IF NOT EXISTS gone (
    parent TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class NodeRow:
    ino: int
    id: NodeId
    kind: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    blocks: tuple[BlockHash, ...]
    target: str
    seq: int
    orphan: bool
    local: bool
    rdev: int = 0
    xattrs: dict[str, str] = field(default_factory=dict, hash=False)
    uid: int | None = None  # None: the store's owner
    gid: int | None = None


_COLS = "ino, id, kind, mode, size, mtime_ns, ctime_ns, blocks, target, seq, orphan, local, rdev, xattrs, uid, gid"


class NodeStat(NamedTuple):
    """What a listing shows of a node: the columns of its attributes, without its block list
    or extended attributes (a readdir of ten files spent half its time making full rows)."""

    ino: int
    id: NodeId
    kind: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    target: str
    orphan: bool
    rdev: int
    uid: int | None
    gid: int | None


_STAT_COLS = ", ".join("n." + c for c in NodeStat._fields)


_NCOLS = ", ".join("n." + c.strip() for c in _COLS.split(","))
#: A node's link count as `Vfs.attr` computes it (orphans: 0); a folder's (2 + subfolders)
#: is -1 here and is counted by `Replica.count_subdirs`, which remembers it.
_LINKS = (
    "CASE WHEN n.kind = 'dir' THEN -1"
    " WHEN n.orphan THEN 0 ELSE max(1, (SELECT count(*) FROM entries l WHERE l.node = n.id)) END"
)


@functools.lru_cache(maxsize=4096)
def _blocks(text: str) -> tuple[BlockHash, ...]:
    # A file's row is read several times for each request about it: its block list is
    # decoded once (tuples of strings are immutable, so the rows may share it).
    return tuple(json.loads(text))


def _row(r: tuple[Any, ...] | None) -> NodeRow | None:
    if r is None:
        return None
    return NodeRow(
        ino=r[0], id=NodeId(r[1]), kind=r[2], mode=r[3], size=r[4], mtime_ns=r[5], ctime_ns=r[6],
        blocks=_blocks(r[7]), target=r[8], seq=r[9], orphan=bool(r[10]),
        local=bool(r[11]), rdev=r[12], xattrs={} if r[13] == "{}" else json.loads(r[13]), uid=r[14], gid=r[15],
    )


class Replica:
    """Synchronous access to the replica database (called on the event loop: fast, local)."""

    def __init__(self, db: StateDb) -> None:
        self.state = db
        self._db = db.conn
        db.ensure_columns("nodes", {
            "local": "INTEGER NOT NULL DEFAULT 0", "rdev": "INTEGER NOT NULL DEFAULT 0",
            "xattrs": "TEXT NOT NULL DEFAULT '{}'", "uid": "INTEGER", "gid": "INTEGER",
        })
        self._db.executescript(_SCHEMA)
        #: Subfolders of each folder counted lately (folder id -> count).  Counting reads every
        #: entry of the folder, and the kernel asks for a folder's attributes after every change
        #: in it: a file made in a folder of 10,000 cost 10,000 rows.  Every write of entries
        #: that may change a count forgets it (a file's entry does not); counts are kept only
        #: outside a transaction, so a rolled-back change is never remembered.
        self._subdirs: dict[str, int] = {}
        #: Folders listed lately (folder inode -> the folder, its listing), all read under
        #: `_listings_mark`.  find, file managers and shells list the same folders again and
        #: again; any write to the database, here or by another connection, moves the mark
        #: (`_mark`) and the next listing forgets them all, so none is ever shown stale.
        self._listings: OrderedDict[int, tuple[NodeStat, list[tuple[str, NodeStat, int]]]] = OrderedDict()
        self._listings_mark: tuple[int, int] | None = None
        self._listed = 0  # entries in `_listings`
        if self.get(ROOT_INO) is None:
            now = time.time_ns()
            self._db.execute(
                f"INSERT INTO nodes ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (ROOT_INO, ROOT_ID, "dir", 0o755, 0, now, now, "[]", "", 0, 0, 0, 0, "{}", None, None),
            )

    def tx(self) -> AbstractContextManager[None]:
        return self.state.tx()

    # -- reading -------------------------------------------------------------
    def get(self, ino: int) -> NodeRow | None:
        return _row(self._db.execute(f"SELECT {_COLS} FROM nodes WHERE ino=?", (ino,)).fetchone())

    def is_orphan(self, ino: int) -> bool:
        """True if inode *ino* is a node no entry names (the kernel forgets thousands at once)."""
        return self._db.execute("SELECT 1 FROM nodes WHERE ino=? AND orphan=1", (ino,)).fetchone() is not None

    def xattrs_of(self, ino: int) -> dict[str, str] | None:
        """The extended attributes of inode *ino* (None: no such node); cheaper than `get`."""
        row = self._db.execute("SELECT xattrs FROM nodes WHERE ino=?", (ino,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def by_id(self, node: str) -> NodeRow | None:
        return _row(self._db.execute(f"SELECT {_COLS} FROM nodes WHERE id=?", (node,)).fetchone())

    def lookup(self, parent: str, name: str) -> NodeRow | None:
        return _row(
            self._db.execute(
                f"SELECT {', '.join('n.' + c.strip() for c in _COLS.split(','))} FROM entries e "
                "JOIN nodes n ON n.id = e.node WHERE e.parent=? AND e.name=?",
                (parent, name),
            ).fetchone()
        )

    def named_with(self, part: str) -> list[tuple[str, NodeRow]]:
        """Every entry whose name holds *part* (conflict copies), with its node, by name."""
        rows = self._db.execute(
            f"SELECT e.name, {_NCOLS} FROM entries e JOIN nodes n ON n.id = e.node"
            " WHERE instr(e.name, ?) > 0 ORDER BY e.name", (part,),
        ).fetchall()
        return [(r[0], _row(r[1:])) for r in rows]  # type: ignore[misc]

    def is_empty(self) -> bool:
        """True if the replica holds nothing but the root (a machine that never listed the tree)."""
        return self._db.execute("SELECT count(*) FROM nodes").fetchone()[0] <= 1 and not self.has_children(ROOT_ID)

    def has_entry(self, parent: str, name: str) -> bool:
        """True if ``parent/name`` is an entry here (whatever it names)."""
        return self._db.execute(
            "SELECT 1 FROM entries WHERE parent=? AND name=?", (parent, name)
        ).fetchone() is not None

    def names(self, parent: str) -> list[str]:
        """The names in folder *parent*, and nothing else (cheap: no node is read)."""
        return [r[0] for r in self._db.execute("SELECT name FROM entries WHERE parent=?", (parent,))]

    def children(self, parent: str, after: str = "", limit: int = -1) -> list[tuple[str, NodeRow]]:
        cols = ", ".join("n." + c.strip() for c in _COLS.split(","))
        rows = self._db.execute(
            f"SELECT e.name, {cols} FROM entries e JOIN nodes n ON n.id = e.node "
            "WHERE e.parent=? AND e.name > ? ORDER BY e.name LIMIT ?",
            (parent, after, limit),
        ).fetchall()
        return [(r[0], _row(r[1:])) for r in rows]  # type: ignore[misc]

    def listing(self, parent: str) -> list[tuple[str, NodeStat, int]]:
        """Every entry of *parent* with its node's attributes and link count, in one query (for readdir)."""
        rows = self._db.execute(
            f"SELECT e.name, {_STAT_COLS}, {_LINKS} FROM entries e JOIN nodes n ON n.id = e.node"
            " WHERE e.parent=? ORDER BY e.name",
            (parent,),
        ).fetchall()
        return [(r[0], *self._linked(r[1:])) for r in rows]

    def folder_listing(self, ino: int) -> tuple[NodeStat, list[tuple[str, NodeStat, int]]] | None:
        """Node *ino*'s attributes and, if it is a folder, its `listing` (None: no such node).

        Remembered until the database changes: a second listing of an unchanged folder
        reads nothing (find -ls right after ls -lR read every folder twice).
        """
        mark = self._mark()
        if mark is None or mark != self._listings_mark:
            self._listings.clear()
            self._listings_mark, self._listed = mark, 0
        known = self._listings.get(ino)
        if known is not None:
            self._listings.move_to_end(ino)
            return known
        node = self.stat(ino)
        if node is None:
            return None
        entries = self.listing(node.id) if node.kind == KIND_DIR else []
        if mark is not None and len(entries) <= LISTED_MAX:
            self._listings[ino] = (node, entries)
            self._listed += len(entries)
            while self._listed > LISTED_MAX or len(self._listings) > LISTINGS_MAX:
                self._listed -= len(self._listings.popitem(last=False)[1][1])
        return node, entries

    def _mark(self) -> tuple[int, int] | None:
        """What every write moves: this connection's changed rows and others' commits (None in a
        transaction, which may yet roll back: what it reads is not remembered)."""
        if self._db.in_transaction:
            return None
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        return self._db.total_changes, int(version)

    def stat(self, ino: int) -> NodeStat | None:
        """Node *ino*'s attributes alone: cheaper than `get` where they are all that is asked."""
        r = self._db.execute(f"SELECT {_STAT_COLS} FROM nodes n WHERE n.ino=?", (ino,)).fetchone()
        return None if r is None else NodeStat._make(r)

    def with_links(self, ino: int) -> tuple[NodeStat, int] | None:
        """Node *ino*'s attributes and link count in one query (for getattr: `stat` is the commonest call)."""
        r = self._db.execute(f"SELECT {_STAT_COLS}, {_LINKS} FROM nodes n WHERE n.ino=?", (ino,)).fetchone()
        return None if r is None else self._linked(r)

    def lookup_with_links(self, parent: str, name: str) -> tuple[NodeStat, int] | None:
        """The attributes and link count of the node named ``parent/name`` in one query (for lookup)."""
        r = self._db.execute(
            f"SELECT {_STAT_COLS}, {_LINKS} FROM entries e JOIN nodes n ON n.id = e.node WHERE e.parent=? AND e.name=?",
            (parent, name),
        ).fetchone()
        return None if r is None else self._linked(r)

    def _linked(self, r: tuple[Any, ...]) -> tuple[NodeStat, int]:
        node = NodeStat._make(r[:-1])
        return node, (2 + self.count_subdirs(node.id) if r[-1] < 0 else r[-1])

    def has_children(self, parent: str) -> bool:
        return self._db.execute("SELECT 1 FROM entries WHERE parent=? LIMIT 1", (parent,)).fetchone() is not None

    def count_subdirs(self, parent: str) -> int:
        known = self._subdirs.get(parent)
        if known is not None:
            return known
        (count,) = self._db.execute(
            "SELECT count(*) FROM entries e JOIN nodes n ON n.id=e.node WHERE e.parent=? AND n.kind='dir'",
            (parent,),
        ).fetchone()
        if not self._db.in_transaction:
            self._subdirs[parent] = count
        return int(count)

    def entries_of(self, node: str) -> list[tuple[NodeId, str]]:
        rows = self._db.execute("SELECT parent, name FROM entries WHERE node=?", (node,)).fetchall()
        return [(NodeId(p), n) for p, n in rows]

    def entry_seq(self, parent: str, name: str) -> int:
        """The newest seq we know for entry ``parent/name`` (also if our commit removed it)."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT seq FROM entries WHERE parent=?1 AND name=?2), 0),"
            " coalesce((SELECT seq FROM gone WHERE parent=?1 AND name=?2), 0))",
            (parent, name),
        ).fetchone()
        return int(row[0])

    def holds_node(self, node: Node) -> bool:
        """True if the replica holds *node*'s record already, or newer (a commit of ours coming back)."""
        row = self._db.execute("SELECT seq FROM nodes WHERE id=?", (node.id,)).fetchone()
        return row is not None and 0 < node.seq <= row[0]

    def holds_entry(self, entry: Entry) -> bool:
        """True if the replica's entry is *entry* as of its seq or newer (a commit of ours coming back)."""
        row = self._db.execute(
            "SELECT node, seq FROM entries WHERE parent=? AND name=?", (entry.parent, entry.name)
        ).fetchone()
        if entry.node is not None:
            return row is not None and row[0] == entry.node and row[1] >= entry.seq
        if row is not None:
            return False
        gone = self._db.execute(
            "SELECT seq FROM gone WHERE parent=? AND name=?", (entry.parent, entry.name)
        ).fetchone()
        return gone is not None and gone[0] >= entry.seq

    def mark_gone(self, parent: str, name: str, seq: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO gone (parent, name, seq) VALUES (?,?,?)", (parent, name, seq))

    def prune_gone(self, cursor: int) -> None:
        self._db.execute("DELETE FROM gone WHERE seq <= ?", (cursor,))

    def local_blocks(self) -> list[str]:
        """Blocks of local-only files: kept in the cache for as long as the files exist."""
        out: list[str] = []
        for (raw,) in self._db.execute("SELECT blocks FROM nodes WHERE local=1"):
            out.extend(json.loads(raw))
        return out

    def totals(self) -> tuple[int, int]:
        """Number of live nodes and their total size."""
        row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM nodes WHERE orphan=0").fetchone()
        return int(row[0]), int(row[1])

    def all_nodes(self) -> dict[str, NodeRow]:
        """Every node by id (for the self-check: one query, not one a node)."""
        rows = self._db.execute(f"SELECT {_COLS} FROM nodes").fetchall()
        return {r[1]: _row(r) for r in rows}  # type: ignore[misc]

    def all_entries(self) -> dict[tuple[str, str], str]:
        """Every entry, ``(parent, name) -> node``."""
        return {(p, n): node for p, n, node in self._db.execute("SELECT parent, name, node FROM entries")}

    # -- writing -------------------------------------------------------------
    def add_node(
        self, node: NodeId, kind: str, mode: int, *, size: int = 0, mtime_ns: int | None = None,
        blocks: tuple[BlockHash, ...] = (), target: str = "", seq: int = 0, local: bool = False,
        rdev: int = 0, xattrs: dict[str, str] | None = None, owner: tuple[int | None, int | None] = (None, None),
    ) -> NodeRow:
        """A new node; *owner* is its stored uid and gid (None: the store's owner)."""
        if kind == KIND_DIR:
            self._subdirs.clear()  # an entry may have named it before it came
        now = time.time_ns()
        mtime = now if mtime_ns is None else mtime_ns
        cur = self._db.execute(
            "INSERT INTO nodes (id, kind, mode, size, mtime_ns, ctime_ns, blocks, target, seq, local, rdev, xattrs,"
            " uid, gid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (node, kind, mode, size, mtime, now, json.dumps(blocks), target, seq, int(local), rdev,
             json.dumps(xattrs or {}), *owner),
        )
        row = self.get(int(cur.lastrowid or 0))
        assert row is not None
        return row

    def set_seqs(self, seqs: Iterable[tuple[int, str]]) -> None:
        """Record the server's version (seq, node) of each node: bookkeeping, so no ctime moves.

        ext4 moves a file's ctime when the file changes, never when a copy of it
        lands elsewhere.  git's index compares ctimes: an upload that moved them
        made the next ``git status`` read again every file that had gone up.
        """
        self._db.executemany("UPDATE nodes SET seq=? WHERE id=?", seqs)

    def update_node(self, node: str, **fields: Any) -> None:
        if "blocks" in fields:
            fields["blocks"] = json.dumps(list(fields["blocks"]))
        if "xattrs" in fields:
            fields["xattrs"] = json.dumps(fields["xattrs"])
        fields.setdefault("ctime_ns", time.time_ns())
        assigns = ", ".join(f"{k}=?" for k in fields)
        self._db.execute(f"UPDATE nodes SET {assigns} WHERE id=?", (*fields.values(), node))

    def _entry_changes(self, parent: str, name: str, node: str | None = None) -> None:
        """Forget *parent*'s subfolder count if ``parent/name`` names a folder, or is to name *node*, one."""
        if parent not in self._subdirs:
            return
        kinds = self._db.execute(
            "SELECT (SELECT n.kind FROM entries e JOIN nodes n ON n.id = e.node WHERE e.parent=? AND e.name=?),"
            " (SELECT kind FROM nodes WHERE id=?)", (parent, name, node),
        ).fetchone()
        if KIND_DIR in kinds:
            del self._subdirs[parent]

    def set_entry(self, parent: str, name: str, node: str, seq: int = 0) -> None:
        self._entry_changes(parent, name, node)
        self._db.execute(
            "INSERT OR REPLACE INTO entries (parent, name, node, seq) VALUES (?,?,?,?)", (parent, name, node, seq)
        )
        # A node named again is no orphan (a rename can remove its old entry first).
        self._db.execute("UPDATE nodes SET orphan=0 WHERE id=? AND orphan=1", (node,))

    def set_entry_seq(self, parent: str, name: str, seq: int) -> None:
        self._db.execute("UPDATE entries SET seq=? WHERE parent=? AND name=?", (seq, parent, name))

    def remove_entry(self, parent: str, name: str) -> None:
        self._entry_changes(parent, name)
        self._db.execute("DELETE FROM entries WHERE parent=? AND name=?", (parent, name))

    def drop_node(self, node: str) -> None:
        # A folder some entry still names would count one less; a file leaves every count as it
        # was (files are dropped at every forget after a mass delete).
        if self._db.execute("DELETE FROM nodes WHERE id=? RETURNING kind", (node,)).fetchall() == [(KIND_DIR,)]:
            self._subdirs.clear()
        self._db.execute("DELETE FROM deferred_nodes WHERE id=?", (node,))

    def set_orphan(self, node: str, orphan: bool = True) -> None:
        self._db.execute("UPDATE nodes SET orphan=? WHERE id=?", (int(orphan), node))

    def purge_orphans(self, keep: Collection[str] = ()) -> int:
        """Forget nodes no entry names, except *keep* (queued items still send their content)."""
        self._subdirs.clear()
        gone = [r[0] for r in self._db.execute("SELECT id FROM nodes WHERE orphan=1") if r[0] not in keep]
        self._db.executemany("DELETE FROM nodes WHERE id=?", [(n,) for n in gone])
        return len(gone)

    def remap(self, old: str, new: NodeId, seq: int = 0) -> None:
        """Give node *old* the server id *new*, keeping its inode number."""
        self._subdirs.clear()
        with self.tx():
            self._db.execute("UPDATE nodes SET id=?, seq=? WHERE id=?", (new, seq, old))
            self._db.execute("UPDATE entries SET node=? WHERE node=?", (new, old))
            self._db.execute("UPDATE entries SET parent=? WHERE parent=?", (new, old))
            # A node that an entry names is no orphan, whatever *old* was (a folder deleted here,
            # folded into the one made again elsewhere, kept its flag: named, it listed as gone).
            self._db.execute(
                "UPDATE nodes SET orphan=0 WHERE id=?1 AND orphan=1 AND EXISTS (SELECT 1 FROM entries WHERE node=?1)",
                (new,),
            )

    # -- remote state ------------------------------------------------------------
    def apply_node(self, node: Node) -> tuple[NodeRow | None, bool]:
        """Make the replica hold the server's *node*; return (old row, content changed)."""
        old = self.by_id(node.id)
        if old is not None and 0 < node.seq <= old.seq:
            # An answer computed before our own newer commit: ours is newer.
            return old, False
        if node.deleted:
            if old is not None and not self.entries_of(node.id):
                # Entries still naming it are removed by their own records, which orphan it
                # then: until they come, it is a file here, and an edit of it goes up (and
                # meets the delete as a conflict: the edit is kept) instead of nowhere.
                self.set_orphan(node.id)
            return old, old is not None
        if old is None:
            self.add_node(
                node.id, node.kind, node.mode, size=node.size, mtime_ns=node.mtime_ns,
                blocks=node.blocks, target=node.target, seq=node.seq, rdev=node.rdev, xattrs=node.xattrs,
                owner=(node.uid, node.gid),
            )
            return None, False
        changed = old.blocks != node.blocks or old.size != node.size or old.target != node.target
        self.update_node(
            node.id, kind=node.kind, mode=node.mode, size=node.size, mtime_ns=node.mtime_ns,
            blocks=node.blocks, target=node.target, seq=node.seq, orphan=0, rdev=node.rdev, xattrs=node.xattrs,
            uid=node.uid, gid=node.gid,
        )
        return old, changed

    def apply_entry(self, entry: Entry) -> NodeId | None:
        """Make the replica hold the server's *entry*; return the node it named before."""
        row = self._db.execute(
            "SELECT node FROM entries WHERE parent=? AND name=?", (entry.parent, entry.name)
        ).fetchone()
        before = NodeId(row[0]) if row else None
        if self.entry_seq(entry.parent, entry.name) > entry.seq:
            return before  # older than what our own commit already made of this entry
        if entry.node is None:
            self.remove_entry(entry.parent, entry.name)
        else:
            self.set_entry(entry.parent, entry.name, entry.node, entry.seq)
        return before

    def load(self, nodes: list[list[Any]], entries: list[list[Any]]) -> None:
        """Take a page of the first listing into a replica that has nothing of its own yet.

        The records are the compact arrays of the wire (`ChangeRows`, checked
        in shape there), taken without a `Node` a record, one statement a table
        instead of a few queries a record: 200,000 files arrive in seconds.
        Later pages may say again (or remove) what earlier ones said, if
        commits came meanwhile: the last word wins.
        """
        now = time.time_ns()
        live: list[tuple[Any, ...]] = []
        deleted: list[tuple[Any]] = []
        for r in nodes:
            n = len(r)
            if n > 9 and r[9]:
                deleted.append((r[0],))
            elif r[0] != ROOT_ID:
                # Columns as NODE_ROW orders them; a field left out holds its default.
                live.append((
                    r[0], r[1], r[2], r[3], r[4], now, json.dumps(r[7]) if n > 7 and r[7] else "[]",
                    r[8] if n > 8 else "", r[5], r[10] if n > 10 else 0,
                    json.dumps(r[11]) if n > 11 and r[11] else "{}",
                    r[12] if n > 12 else None, r[13] if n > 13 else None,
                ))
        self._subdirs.clear()
        self._db.executemany("DELETE FROM nodes WHERE id=?", deleted)
        self._db.executemany(
            "INSERT OR REPLACE INTO nodes (id, kind, mode, size, mtime_ns, ctime_ns, blocks, target, seq, rdev, xattrs,"
            " uid, gid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            live,
        )
        self._db.executemany("DELETE FROM entries WHERE parent=? AND name=?",
                             [(e[0], e[1]) for e in entries if e[2] is None])
        self._db.executemany("INSERT OR REPLACE INTO entries (parent, name, node, seq) VALUES (?,?,?,?)",
                             [e for e in entries if e[2] is not None])

    def defer_node(self, node: Node) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO deferred_nodes (id, data) VALUES (?, ?)", (node.id, json.dumps(node.to_wire()))
        )

    def defer_entry(self, entry: Entry) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO deferred_entries (parent, name, data) VALUES (?,?,?)",
            (entry.parent, entry.name, json.dumps(entry.to_wire())),
        )

    def deferred(self) -> tuple[list[Node], list[Entry]]:
        # One statement: every close of a written file asks, and both tables are most often empty.
        rows = self._db.execute(
            "SELECT 1, data FROM deferred_nodes UNION ALL SELECT 0, data FROM deferred_entries"
        ).fetchall()
        nodes = [Node.from_wire(json.loads(d)) for is_node, d in rows if is_node]
        entries = [Entry.from_wire(json.loads(d)) for is_node, d in rows if not is_node]
        return nodes, entries

    def drop_superseded(self, nodes: set[str], entries: set[tuple[str, str]], seq: int) -> None:
        """Forget deferred remote states older than our own commit *seq* that touched them."""
        for node in nodes:
            self._db.execute("DELETE FROM deferred_nodes WHERE id=? AND json_extract(data, '$.seq') < ?", (node, seq))
        for parent, name in entries:
            self._db.execute(
                "DELETE FROM deferred_entries WHERE parent=? AND name=? AND json_extract(data, '$.seq') < ?",
                (parent, name, seq),
            )

    def forget_deferred_node(self, node: str) -> None:
        self._db.execute("DELETE FROM deferred_nodes WHERE id=?", (node,))

    def forget_deferred_entry(self, parent: str, name: str) -> None:
        self._db.execute("DELETE FROM deferred_entries WHERE parent=? AND name=?", (parent, name))

    def forget_all_deferred(self) -> None:
        self._db.execute("DELETE FROM deferred_nodes")
        self._db.execute("DELETE FROM deferred_entries")

    def orphan_unnamed(self) -> None:
        """Mark every node that no entry names an orphan, and every named one not."""
        self._db.execute(
            "UPDATE nodes SET orphan = (id != ? AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.node = nodes.id))",
            (ROOT_ID,),
        )

    def clear_remote_state(self) -> None:
        """Forget everything that came from the server (a journal reset)."""
        self._subdirs.clear()
        with self.tx():
            self._db.execute("DELETE FROM deferred_nodes")
            self._db.execute("DELETE FROM deferred_entries")
            self._db.execute("DELETE FROM entries WHERE seq > 0")

    # -- meta ------------------------------------------------------------------------
    def meta(self, key: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def cursor(self) -> int:
        return int(self.meta("cursor", "0"))

    @cursor.setter
    def cursor(self, value: int) -> None:
        self.set_meta("cursor", str(value))


def with_seq(row: NodeRow, seq: int) -> NodeRow:
    return replace(row, seq=seq)
