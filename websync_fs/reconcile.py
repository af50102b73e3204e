"""The self-check: this machine's tree against the server's, and the repair of what differs.

The queue and the follower keep the replica in step with the server change by
change; the self-check is the backstop that makes "every machine ends with the
server's tree" hold even where a rule of theirs has a gap.  When the machine is
quiet (nothing queued, no file open for writing, the journal caught up), it
lists the server's whole tree and compares it with the replica at the same
journal cursor.  Any difference then is a divergence, and is repaired so that
nothing is lost:

=================================================  ==========================================
what differs                                       repair
=================================================  ==========================================
an entry here names a node the server has          the server's placement is taken (the
elsewhere                                          entry here is stale)
an entry here names a node the server never had,   the node goes up again under a fresh id:
or whose content the server never had              at its name, or under a conflict name if
                                                   the server holds another node there; its
                                                   folders come back with it (content not in
                                                   the cache goes if the server holds it)
an entry here names a node the server deleted,     the deletion is taken (its bytes are in
with content the server has                        the server's history and trash)
an entry on the server is missing here             the server's entry is taken
a node's content or mode differs, and this         the server's node is taken
machine last saw an older version
a node's content differs at the version the        the server's node is taken; this
server has, and the server never had ours          machine's content goes up beside it as
                                                   a conflict copy (never over newer bytes)
=================================================  ==========================================

Lock, owner and swap files (``local`` nodes) never leave the machine and are
not differences.  The check runs after every settled conflict and every
remote change that had to wait for local work (at most every `MIN_GAP`
seconds), at start-up when the last run left one due, every `INTERVAL`
seconds, and on request (``websync status --check``).  Every repair is logged and kept as a notice
that ``websync status`` shows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio

from websync_server.protocol import (
    KIND_DIR,
    KIND_SPECIAL,
    KIND_SYMLINK,
    ROOT_ID,
    BlockHash,
    Create,
    Link,
    Mkdir,
    Mknod,
    Node,
    NodeId,
    Op,
    Symlink,
    Update,
    new_node_id,
)

from .conflicts import conflict_name
from .errors import NotFound, Offline, RemoteError
from .remote import Remote
from .replica import NodeRow, Replica
from .storepaths import free_conflict_name, path_of
from .invalidation import Invalidation, Notify
from .writeback import WriteBackQueue

log = logging.getLogger(__name__)

#: Seconds between two checks when nothing else asks for one.
INTERVAL = 3600.0
#: Least time between two checks the machine starts by itself (each lists the whole store).
MIN_GAP = 20.0
#: Longest pause between tries while the machine is busy or the journal keeps moving.
QUIET_CAP = 30.0
#: Notices kept for `websync status`.
NOTICES = 50
#: Nodes the check asks the server about one by one at most (the rest are kept, to be safe).
ASK_MOST = 200
#: Block hashes in one question to the server about which it lacks.
ASK_BLOCKS = 1000


@dataclass
class Listing:
    """The server's live tree at one journal cursor."""

    cursor: int
    nodes: dict[str, Node] = field(default_factory=dict)
    entries: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Comparison:
    """How the replica differs from a `Listing` taken at the same cursor."""

    #: Entries here that the server does not have (or where it has another node).
    local_only: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Entries of the server missing here (or where this machine has another node).
    server_only: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Nodes on both sides whose content, kind or mode differ: (ours, theirs).
    changed: list[tuple[NodeRow, Node]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.local_only or self.server_only or self.changed)


async def list_server(remote: Remote) -> Listing:
    """The server's whole live tree, page by page (later pages supersede earlier records)."""
    listing = Listing(cursor=0)
    cursor = 0
    while True:
        changes = await remote.changes(cursor)
        for node in changes.nodes:
            if node.deleted:
                listing.nodes.pop(node.id, None)
            else:
                listing.nodes[node.id] = node
        for entry in changes.entries:
            if entry.node is None:
                listing.entries.pop((entry.parent, entry.name), None)
            else:
                listing.entries[(entry.parent, entry.name)] = entry.node
        cursor = listing.cursor = changes.cursor
        if not changes.more:
            return listing


def _differs(row: NodeRow, node: Node) -> bool:
    return (row.kind, row.mode, row.size, tuple(row.blocks), row.target, row.uid, row.gid) != (
        node.kind, node.mode, node.size, tuple(node.blocks), node.target, node.uid, node.gid
    )


def compare(replica: Replica, listing: Listing) -> Comparison:
    """What differs between the replica and *listing* (taken at the replica's cursor)."""
    nodes = replica.all_nodes()
    ours = {key: node for key, node in replica.all_entries().items() if node in nodes and not nodes[node].local}
    out = Comparison()
    for key, node in ours.items():
        if listing.entries.get(key) != node:
            out.local_only[key] = node
    for key, node in listing.entries.items():
        if ours.get(key) != node:
            out.server_only[key] = node
    for node_id, theirs in listing.nodes.items():
        row = nodes.get(node_id)
        if node_id != ROOT_ID and row is not None and not row.orphan and _differs(row, theirs):
            out.changed.append((row, theirs))
    return out


class Reconciler:
    """Runs the self-check when the machine is quiet, and repairs what it finds."""

    def __init__(
        self, replica: Replica, queue: WriteBackQueue, remote: Remote, notify: Notify,
        device: str, writing: Callable[[], bool], has_blocks: Callable[[list[str]], bool],
        busy: Callable[[str], bool] = lambda node: False,
    ) -> None:
        self.replica = replica
        self.queue = queue
        self.remote = remote
        self.notify = notify
        self.device = device
        self._writing = writing
        self._busy = busy
        self._has_blocks = has_blocks
        self._due = trio.Event()
        #: Nodes whose content here is one of the server's versions (found by `_ask`).
        self._known_content: set[str] = set()
        #: Files whose content neither the cache nor the server holds (found by `_ask_blocks`).
        self._unsendable: set[str] = set()
        #: Called when a notice is added (the mount rewrites its status file).
        self.on_notice: Callable[[], None] = lambda: None
        self.last_check = 0.0
        self.last_result: list[str] = []
        if self.replica.meta("check_due"):
            self._due.set()

    # -- when ------------------------------------------------------------------------
    def due(self, note: str = "") -> None:
        """Ask for a check at the next quiet moment (a conflict was settled, say), keeping *note*."""
        if note or not self.replica.meta("check_due"):
            with self.replica.tx():
                self.replica.set_meta("check_due", "1")
                if note:
                    self._remember([note])
        self._due.set()

    def quiet(self) -> bool:
        """Nothing waits to go up and nobody writes: the replica should equal the server's tree."""
        return len(self.queue) == 0 and not self._writing()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last = -MIN_GAP
        while True:
            with trio.move_on_after(INTERVAL):
                await self._due.wait()
            self._due = trio.Event()
            await trio.sleep_until(last + MIN_GAP)
            await self._check_when_quiet()
            last = trio.current_time()

    async def _check_when_quiet(self) -> None:
        """Check and repair once the machine is quiet and the journal caught up, however long that takes."""
        pause = 1.0
        while True:
            try:
                if await self.check(repair=True, wait=True) is not None:
                    return
            except (Offline, RemoteError) as exc:
                log.info("self-check postponed: %s", exc)
            # Busy, or the journal moved while the tree was listed: a listing costs the
            # server O(store), so tries thin out while other machines keep changing things.
            await trio.sleep(pause)
            pause = min(QUIET_CAP, pause * 2)

    # -- the check ---------------------------------------------------------------------
    async def check(self, *, repair: bool, wait: bool = False) -> list[str] | None:
        """Compare with the server; the differences as sentences, or None when not quiet/in step.

        With *repair*, what differs is repaired (see the module's table).  Without
        *wait*, a machine that is busy or behind the journal is compared anyway
        and its differences may be work in progress.
        """
        if wait and not self.quiet():
            return None
        listing = await list_server(self.remote)
        if wait and (not self.quiet() or listing.cursor != self.replica.cursor):
            return None  # moved on meanwhile: a later try compares like with like
        found = compare(self.replica, listing)
        described = self.describe(found, listing)
        if repair and found and self.quiet() and listing.cursor == self.replica.cursor:
            self._known_content.clear()
            asked = await self._ask(found, listing)
            if self.quiet() and listing.cursor == self.replica.cursor:  # still: no await since
                self._repair(found, listing, asked)
            else:
                return None
        elif repair:
            with self.replica.tx():
                self.replica.set_meta("check_due", "")
        self.last_check = time.time()
        self.last_result = described
        return described

    async def resync(self) -> None:
        """Take the server's whole tree after a journal reset, keeping what only this machine has.

        A reset comes when this machine's cursor is older than the journal
        keeps (it missed removals), or newer than the server's (the server was
        restored from an older backup and lost commits).  Either way the tree is
        listed again and compared as the self-check does, with one difference:
        content here that the server has in none of its versions is newer work
        the server lost, and goes up again as the file's next version.  Changes
        still queued here are left to the queue.
        """
        listing = await list_server(self.remote)
        found = compare(self.replica, listing)
        pending_nodes, pending_entries = self.queue.pending_nodes(), self.queue.pending_entries()
        found.local_only = {k: n for k, n in found.local_only.items()
                            if n not in pending_nodes and k not in pending_entries}
        moving = self.queue.moving_nodes()
        found.server_only = {k: n for k, n in found.server_only.items() if k not in pending_entries and n not in moving}
        found.changed = [(r, n) for r, n in found.changed if r.id not in pending_nodes and not self._busy(r.id)]
        self._known_content.clear()
        asked = await self._ask(found, listing)
        log.warning("journal reset: listing the whole tree again (%d difference(s) with this machine)",
                    len(found.local_only) + len(found.server_only) + len(found.changed))
        self._repair(found, listing, asked, newer_here=True)
        with self.replica.tx():
            self.replica.cursor = listing.cursor

    async def _ask(self, found: Comparison, listing: Listing) -> dict[str, Node | None]:
        """The server's state of each node named here but not live there (None: never heard of).

        A file whose content here is one of the server's versions of it comes
        back with those blocks, so `_keeps` sees the server has its bytes.
        """
        asked: dict[str, Node | None] = {}
        nodes = self.replica.all_nodes()
        for node in set(found.local_only.values()):
            if node in listing.nodes or node in asked or len(asked) >= ASK_MOST:
                continue
            try:
                theirs: Node | None = (await self.remote.node_state(NodeId(node))).node
            except NotFound:
                theirs = None
            row = nodes.get(node)
            if theirs is not None and row is not None and row.kind == "file" and theirs.blocks != row.blocks:
                kept = await self.remote.versions(NodeId(node))
                if any(tuple(v.get("blocks", ())) == tuple(row.blocks) for v in kept):
                    theirs = replace(theirs, blocks=row.blocks)
            asked[node] = theirs
        for row, theirs in found.changed[:ASK_MOST]:
            if row.kind == "file" and row.blocks != theirs.blocks:
                kept = await self.remote.versions(theirs.id)
                if any(tuple(v.get("blocks", ())) == tuple(row.blocks) for v in kept):
                    self._known_content.add(row.id)
        await self._ask_blocks([nodes[n] for n in asked if n in nodes])
        return asked

    async def _ask_blocks(self, rows: list[NodeRow]) -> None:
        """Note the files whose content is in neither the cache nor the server (`_unsendable`).

        A file whose blocks the server holds can still go up, as the uploader
        sends only the blocks the server lacks: a node never sent may hold
        bytes this machine never read (another machine's file moved over one
        edited here, say).
        """
        lacking = [row for row in rows if row.kind == "file" and row.blocks and not self._has_blocks(list(row.blocks))]
        hashes = sorted({h for row in lacking for h in row.blocks})
        gone: set[str] = set()
        for start in range(0, len(hashes), ASK_BLOCKS):
            gone.update(await self.remote.missing([BlockHash(h) for h in hashes[start:start + ASK_BLOCKS]]))
        self._unsendable = {row.id for row in lacking if gone.intersection(row.blocks)}

    def describe(self, found: Comparison, listing: Listing) -> list[str]:
        """Each difference as a sentence naming the path."""
        here = _Paths(self.replica.all_entries())
        there = _Paths(listing.entries)
        lines = []
        for key, node in sorted(found.local_only.items(), key=lambda kv: here.of_key(kv[0])):
            lines.append(f"{here.of_key(key)}: here, not on the server" + (
                f" (the server has it at {there.of(node)})" if node in listing.nodes else ""))
        for key in sorted(found.server_only, key=there.of_key):
            lines.append(f"{there.of_key(key)}: on the server, not here")
        for row, theirs in found.changed:
            lines.append(f"{there.of(theirs.id)}: content or mode differs (here seq {row.seq}, server seq {theirs.seq})")
        return lines

    # -- the repair ----------------------------------------------------------------------
    def _keeps(self, row: NodeRow, theirs: Node | None) -> bool:
        """True if node *row*, not live on the server, holds something the server never had."""
        if row.kind != "file":
            return theirs is None
        if theirs is not None and tuple(theirs.blocks) == tuple(row.blocks):
            return False
        if row.id in self._unsendable:
            log.error("self-check: the content of %s (%s) is neither in the cache nor on the server: it cannot be sent",
                      path_of(self.replica, row.id) or "no name", row.id)
            return False
        return True

    def _repair(self, found: Comparison, listing: Listing, asked: dict[str, Node | None], *,
                newer_here: bool = False) -> None:
        """Make the replica the server's tree, sending up first what only this machine has."""
        nodes = self.replica.all_nodes()
        entries = self.replica.all_entries()
        children: dict[str, list[tuple[str, str]]] = {}
        for (parent, name), node in entries.items():
            children.setdefault(parent, []).append((name, node))
        keep = self._kept(found, listing, asked, nodes, children)
        inv = Invalidation()
        notices: list[str] = []
        with self.replica.tx():
            for (parent, name), node in found.local_only.items():
                if node not in keep:
                    self._remove_entry(parent, name, inv)
            for (parent, name), node in found.server_only.items():
                if node in listing.nodes:
                    self.replica.apply_node(listing.nodes[node])
                here = self.replica.lookup(parent, name)
                if here is not None and here.id in keep:
                    continue  # ours goes up under a conflict name below
                self._set_entry(parent, name, node, inv)
            for row, theirs in found.changed:
                self._changed(row, theirs, inv, notices, newer_here=newer_here)
            self._send_kept(keep, found, listing, nodes, children, inv, notices)
            self.replica.forget_all_deferred()
            self.replica.orphan_unnamed()
            self.replica.set_meta("check_due", "")
            self._remember(notices or [f"{len(found.local_only) + len(found.server_only)} entries repaired"])
        for line in notices:
            log.warning("self-check: %s", line)
        if inv:
            self.notify(inv)

    def _kept(self, found: Comparison, listing: Listing, asked: dict[str, Node | None],
              nodes: dict[str, NodeRow], children: dict[str, list[tuple[str, str]]]) -> set[str]:
        """Nodes named only here that must go up: new content, and the folders holding it."""
        keep: set[str] = set()

        def visit(node: str) -> bool:
            row = nodes.get(node)
            if row is None or node in listing.nodes:
                return False
            inner = [visit(child) for name, child in children.get(node, []) if (node, name) in found.local_only]
            mine = self._keeps(row, asked.get(node)) if node in asked or len(asked) < ASK_MOST else True
            if any(inner) or mine:
                keep.add(node)
                return True
            return False

        for node in set(found.local_only.values()):
            visit(node)
        return keep

    def _send_kept(self, keep: set[str], found: Comparison, listing: Listing, nodes: dict[str, NodeRow],
                   children: dict[str, list[tuple[str, str]]], inv: Invalidation, notices: list[str]) -> None:
        """Queue the making of each kept node, folders first, under a fresh id (a second name: a link)."""
        placed = [(parent, name, node) for (parent, name), node in found.local_only.items() if node in keep]
        fresh: dict[str, NodeId] = {}
        for parent, name, node in sorted(placed, key=lambda p: self._depth(p[0])):
            row = nodes[node]
            parent = fresh.get(parent, parent)
            new_name = name
            if listing.entries.get((parent, name)) not in (None, node):
                new_name = conflict_name(name, self.device, taken=lambda n: (
                    (parent, n) in listing.entries or self.replica.lookup(parent, n) is not None),
                    folder=path_of(self.replica, parent))
                self._remove_entry(parent, name, inv)
            second = node in fresh  # a second name of a kept file (a hard link): a link, not a second file
            if not second:
                fresh[node] = new_node_id()
                self.replica.remap(node, fresh[node])
            self._set_entry(parent, new_name, fresh[node], inv)
            op = Link(id=fresh[node], parent=NodeId(parent), name=new_name) if second else self._making(
                row, fresh[node], NodeId(parent), new_name)
            self.queue.enqueue(op, quiet=0)
            notices.append(f"{new_name!r} was only on this machine: sent to the server"
                           + (f" (its name {name!r} is taken there)" if new_name != name else ""))

    def _depth(self, node: str) -> int:
        depth = 0
        while node != ROOT_ID and depth < 4096:
            places = self.replica.entries_of(node)
            if not places:
                break
            node = places[0][0]
            depth += 1
        return depth

    @staticmethod
    def _making(row: NodeRow, node: NodeId, parent: NodeId, name: str) -> Op:
        """The op that makes *row* on the server as *node* at ``parent/name``."""
        if row.kind == KIND_DIR:
            return Mkdir(id=node, parent=parent, name=name, mode=row.mode, mtime_ns=row.mtime_ns, uid=row.uid,
                         gid=row.gid)
        if row.kind == KIND_SYMLINK:
            return Symlink(id=node, parent=parent, name=name, target=row.target, mtime_ns=row.mtime_ns, uid=row.uid,
                           gid=row.gid)
        if row.kind == KIND_SPECIAL:
            return Mknod(id=node, parent=parent, name=name, mode=row.mode, rdev=row.rdev, mtime_ns=row.mtime_ns,
                         uid=row.uid, gid=row.gid)
        return Create(id=node, parent=parent, name=name, mode=row.mode, mtime_ns=row.mtime_ns, size=row.size,
                      blocks=row.blocks, uid=row.uid, gid=row.gid)

    def _changed(self, row: NodeRow, node: Node, inv: Invalidation, notices: list[str], *,
                 newer_here: bool = False) -> None:
        """A node on both sides that differs: the server's version is taken, ours kept if it is new.

        Content here that the server has in none of its versions goes up: as
        the file's next version when this machine is known to be ahead
        (*newer_here*, after a reset), else as a conflict copy beside it (an
        update could replace newer bytes on the server, a copy replaces nothing).
        """
        new_here = (row.kind == "file" and row.blocks != node.blocks and row.id not in self._known_content
                    and self._has_blocks(list(row.blocks)))
        places = self.replica.entries_of(row.id)
        if new_here and newer_here:
            self.replica.set_seqs([(node.seq, row.id)])  # the base the update goes on
            self.queue.enqueue(Update(id=row.id, size=row.size, blocks=row.blocks, mtime_ns=row.mtime_ns), quiet=0)
            notices.append(f"{places[0][1] if places else row.id!r}: a version the server had lost, sent again")
            return
        if new_here and places:
            parent, name = places[0]
            copy = new_node_id()
            copy_name = free_conflict_name(self.replica, parent, name, self.device)
            self.replica.add_node(copy, row.kind, row.mode, size=row.size, mtime_ns=row.mtime_ns, blocks=row.blocks,
                                  owner=(row.uid, row.gid))
            self.replica.set_entry(parent, copy_name, copy)
            self._touched(parent, copy_name, inv)
            self.queue.enqueue(self._making(self.replica.by_id(copy) or row, copy, parent, copy_name), quiet=0)
            notices.append(f"{name!r} here differed from the server's: kept as {copy_name!r}")
        self.replica.set_seqs([(0, row.id)])  # let the server's version in
        self.replica.apply_node(node)
        inv.inodes.append(row.ino)

    def _remove_entry(self, parent: str, name: str, inv: Invalidation) -> None:
        self.replica.remove_entry(parent, name)
        self._touched(parent, name, inv)

    def _set_entry(self, parent: str, name: str, node: str, inv: Invalidation) -> None:
        self.replica.set_entry(parent, name, node)
        self._touched(parent, name, inv)

    def _touched(self, parent: str, name: str, inv: Invalidation) -> None:
        row = self.replica.by_id(parent)
        if row is not None:
            inv.entries.append((row.ino, name))
            inv.attrs.append(row.ino)

    def notices(self) -> list[str]:
        """The latest repairs and settlements, oldest first, for `websync status`."""
        return list(json.loads(self.replica.meta("notices", "[]")))

    def _remember(self, lines: list[str]) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        kept = json.loads(self.replica.meta("notices", "[]"))
        kept += [f"{stamp} {line}" for line in lines]
        self.replica.set_meta("notices", json.dumps(kept[-NOTICES:]))
        self.on_notice()


class _Paths:
    """Store paths from a map of entries ``(parent, name) -> node``."""

    def __init__(self, entries: dict[tuple[str, str], str]) -> None:
        self._place = {node: key for key, node in entries.items()}

    def of(self, node: str) -> str:
        parts: list[str] = []
        while node != ROOT_ID and node in self._place and len(parts) < 4096:
            parent, name = self._place[node]
            parts.append(name)
            node = parent
        return "/".join(reversed(parts)) or "/"

    def of_key(self, key: tuple[str, str]) -> str:
        parent = self.of(key[0])
        return key[1] if parent == "/" else f"{parent}/{key[1]}"
