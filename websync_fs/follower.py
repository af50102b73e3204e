"""The change follower: keeps the replica current from the server's journal.

State machine::

    listing --(whole tree applied)--> following --(reset answer)--> listing
                                                    (a machine with a tree: merged by the
                                                    self-check's resync, nothing of its own lost)
                                        |   ^
                            (no answer) v   | (answer)
                                       offline   (retries with backoff, the mount keeps working)

    following --(403: a shared folder no longer shared with this user)--> refused
                (told once through ``on_forbidden``; the engine ends and drops the folder)

Each answer is applied in one transaction together with the new cursor, so a
crash at any point either re-applies the same changes (they are states, not
deltas: applying twice is harmless) or none.

A record that has local changes still waiting for the server (a queued item, or
a file open for writing here) is not applied: local work wins locally until the
queue settles it.  Such a record is *deferred* and applied by `settle()` once it
is no longer busy, unless the queue's own commit has already moved past it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection

import trio

from websync_server.protocol import KIND_DIR, ROOT_ID, ChangeRows, Changes, Entry, Node, NodeId

from .backoff import Backoff
from .errors import Forbidden, Offline, ReadOnly, RemoteError, Unauthorized
from .remote import Remote
from .replica import Replica
from .storepaths import ancestors
from .invalidation import Invalidation, Notify
from .writeback import WriteBackQueue

log = logging.getLogger(__name__)

WAIT = 30.0
#: Records of a first listing taken in one transaction (10 pages of the server's largest).
LOAD_BATCH = 100_000


class Applier:
    """Applies server records to the replica and tells the kernel what changed."""

    def __init__(self, replica: Replica, queue: WriteBackQueue, busy: Callable[[str], bool], notify: Notify) -> None:
        self.replica = replica
        self.queue = queue
        self.busy = busy
        self.notify = notify
        #: Called after each applied batch with the ids of files whose content
        #: changed or that are new (pinned folders fetch them in the background).
        self.on_content: Callable[[list[str]], None] = lambda ids: None
        #: Called when a record had to wait for local work: concurrent changes met.
        self.on_deferred: Callable[[], None] = lambda: None

    def _ino(self, node: str) -> int | None:
        row = self.replica.by_id(node)
        return row.ino if row else None

    def load(self, pages: list[ChangeRows]) -> None:
        """Take pages of the first listing of a machine with nothing of its own (no checks needed)."""
        if not pages:
            return
        with self.replica.tx():
            for page in pages:
                self.replica.load(page.nodes, page.entries)
            self.replica.cursor = pages[-1].cursor

    def apply(self, nodes: tuple[Node, ...] | list[Node], entries: tuple[Entry, ...] | list[Entry],
              cursor: int | None = None) -> None:
        # This machine's own commits come back here: what the replica holds already
        # needs no checks (and, for a page of nothing else, no look at the queue).
        moved = {e.node for e in entries if e.node is not None}
        nodes = [n for n in nodes if n.id != ROOT_ID and not self.replica.holds_node(n)]
        entries = [e for e in entries if not self.replica.holds_entry(e)]
        if not nodes and not entries:
            if cursor is not None:
                with self.replica.tx():
                    self.replica.cursor = cursor
                    self.replica.prune_gone(cursor)
            return
        pending_nodes = self.queue.pending_nodes()
        pending_entries = self.queue.pending_entries()
        inv = Invalidation()
        fetched: list[str] = []
        deferred = False
        with self.replica.tx():
            for node in nodes:
                if node.id in pending_nodes or self.busy(node.id):
                    self.replica.defer_node(node)
                    deferred = True
                    continue
                self._apply_node(node, inv)
                if node.kind == "file" and not node.deleted:
                    fetched.append(node.id)
            waiting = self._waiting(entries, pending_nodes, pending_entries, moved)
            for entry in entries:
                if (entry.parent, entry.name) in waiting:
                    self.replica.defer_entry(entry)
                    deferred = True
                    continue
                self._apply_entry(entry, inv)
            if cursor is not None:
                self.replica.cursor = cursor
                self.replica.prune_gone(cursor)
        if inv:
            self.notify(inv)
        if fetched:
            self.on_content(fetched)
        if deferred:
            self.on_deferred()

    def _local_node(self, entry: Entry) -> str | None:
        local = self.replica.lookup(entry.parent, entry.name)
        return local.id if local else None

    def _waiting(
        self, entries: Collection[Entry], pending_nodes: set[str], pending_entries: set[tuple[str, str]],
        moved: Collection[str] | None = None,
    ) -> set[tuple[str, str]]:
        """The entries among *entries* that must wait for local work, as ``(parent, name)``.

        A node that these same records name elsewhere was moved, not removed:
        its old name goes with the new one even while the node is busy, or a
        folder would have two names.  Unless a queued item names the old entry
        itself: then this machine put the node back there (``mv d b``, sent;
        ``mv b d``, queued; the answer to the first move arrives), the queue
        decides what the entry holds, and the node's new places wait with it.
        Applied, such a record would take the node from the name the queue is
        about to give it on the server: the machine would not show what the
        server keeps there, and could put something else at a name it believes
        free.

        A new place of a node that a queued rename moves waits too (the server
        refuses that rename, and the uploader then takes the server's
        placement), and so does a folder's new place inside itself here (the
        other machine moved ``a`` into ``b`` while this one moved ``b`` into
        ``a``).  Applied, either gave a folder two names or none, and a folder
        under itself is a tree without end to anything that walks it.  Such a
        node keeps its place here, old name and all, until the queue is done.
        So does a file whose new place waits because work here holds that name
        (its mode set here while the other machine moved a file over it): with
        no name here meanwhile, an edit of it waiting to go was dropped as
        deleted here too.
        """
        if moved is None:
            moved = {e.node for e in entries if e.node is not None}
        moving = self.queue.moving_nodes() if entries else set()
        # The folders these records name, with their places here: one look each, for both checks below.
        folders = {e.node: self.replica.entries_of(e.node) for e in entries
                   if e.node is not None and (row := self.replica.by_id(e.node)) is not None and row.kind == KIND_DIR}
        waiting: set[tuple[str, str]] = set()
        staying: set[str] = set()  # moved nodes that keep their place here for now
        for entry in entries:
            key = (entry.parent, entry.name)
            local = self._local_node(entry) if entry.node is None else None
            if local is not None and local in moved:
                if key in pending_entries:
                    waiting.add(key)
                    staying.add(local)
            elif entry.node is not None and (entry.node in moving or self._inside_itself(entry, folders)):
                waiting.add(key)
                staying.add(entry.node)
            elif self._entry_busy(entry, pending_nodes, pending_entries):
                waiting.add(key)
                if entry.node is not None:
                    staying.add(entry.node)  # its old name stays with it meanwhile
        if staying:
            # Its new names, and whatever would take its place here from it.
            waiting |= {(e.parent, e.name) for e in entries if e.node in staying or self._local_node(e) in staying}
        return waiting | self._kept_apart(entries, waiting, folders)

    @staticmethod
    def _kept_apart(entries: Collection[Entry], waiting: set[tuple[str, str]],
                    folders: dict[NodeId, list[tuple[NodeId, str]]]) -> set[tuple[str, str]]:
        """New places of folders whose place here stays meanwhile: they wait with it.

        A folder has one place.  While the record that frees its old one waits
        (the other machine made a new folder at the old name, and this one has
        a file not yet sent in the old folder), or no record here frees it,
        its new place waits too.
        """
        held: set[tuple[str, str]] = set()
        while True:  # a held place may be another folder's old one
            freed = {(e.parent, e.name) for e in entries} - waiting - held
            more = {(e.parent, e.name) for e in entries
                    if e.node in folders and (e.parent, e.name) in freed
                    and any(place != (e.parent, e.name) and place not in freed for place in folders[e.node])}
            if not more:
                return held
            held |= more

    def _inside_itself(self, entry: Entry, folders: Collection[str]) -> bool:
        """True if *entry* puts a folder (one of *folders*) under itself in this machine's tree."""
        return entry.node in folders and entry.node in ancestors(self.replica, entry.parent)

    def _entry_busy(self, entry: Entry, pending_nodes: set[str], pending_entries: set[tuple[str, str]]) -> bool:
        """True if applying *entry* would hide or replace something not yet uploaded."""
        if (entry.parent, entry.name) in pending_entries:
            return True
        local = self.replica.lookup(entry.parent, entry.name)
        if local is None or local.id == entry.node:
            return False
        # A folder that queued work happens inside (a new file in it) stays until
        # that work is settled: removing it would hide the file (uploader.py
        # brings the folder back on the server if it was deleted there).
        return (
            local.id in pending_nodes or self.busy(local.id) or local.local
            or any(parent == local.id for parent, _ in pending_entries)
        )

    def _apply_node(self, node: Node, inv: Invalidation) -> None:
        old, changed = self.replica.apply_node(node)
        self.replica.forget_deferred_node(node.id)
        if old is None:
            return
        if changed:
            inv.inodes.append(old.ino)
        elif (old.mode, old.mtime_ns, old.uid, old.gid) != (node.mode, node.mtime_ns, node.uid, node.gid):
            inv.attrs.append(old.ino)

    def _apply_entry(self, entry: Entry, inv: Invalidation) -> None:
        before = self.replica.apply_entry(entry)
        self.replica.forget_deferred_entry(entry.parent, entry.name)
        if before == entry.node:
            return
        parent = self._ino(entry.parent)
        if parent is not None:
            inv.entries.append((parent, entry.name))
            inv.attrs.append(parent)
        if before is not None and not self.replica.entries_of(before):
            self.replica.set_orphan(before)
            ino = self._ino(before)
            if ino is not None:
                inv.attrs.append(ino)

    def settle(self) -> None:
        """Apply deferred records that are no longer busy and still newer than ours."""
        nodes, entries = self.replica.deferred()
        if not nodes and not entries:
            return
        pending_nodes = self.queue.pending_nodes()
        pending_entries = self.queue.pending_entries()
        inv = Invalidation()
        with self.replica.tx():
            for node in nodes:
                if node.id in pending_nodes or self.busy(node.id):
                    continue
                row = self.replica.by_id(node.id)
                if row is not None and row.seq >= node.seq:
                    self.replica.forget_deferred_node(node.id)
                    continue
                self._apply_node(node, inv)
            waiting = self._waiting(entries, pending_nodes, pending_entries)
            for entry in entries:
                if (entry.parent, entry.name) in waiting:
                    continue
                if self.replica.entry_seq(entry.parent, entry.name) >= entry.seq:
                    self.replica.forget_deferred_entry(entry.parent, entry.name)
                    continue
                self._apply_entry(entry, inv)
        if inv:
            self.notify(inv)

    def reset(self) -> None:
        """Forget what came from the server before listing the whole tree again."""
        self.replica.clear_remote_state()
        self.replica.cursor = 0


class Follower:
    """Long-polls the journal and applies what it returns."""

    def __init__(
        self, remote: Remote, applier: Applier, on_state: Callable[[bool, str], None], retry: Backoff | None = None
    ) -> None:
        self.remote = remote
        self.applier = applier
        self.on_state = on_state
        #: Shared with every other caller of the server (client.py): any answer ends its waits.
        self.retry = retry or Backoff()
        self.online = False
        self.last_contact = 0.0
        #: Takes over a journal reset on a machine that has a tree (reconcile.py's resync).
        self.on_reset: Callable[[], Awaitable[None]] | None = None
        #: Told when the server refuses the store itself (403): it is not shared with this user any more.
        self.on_forbidden: Callable[[str], None] = lambda why: None
        #: Told the user's shares stamp when an answer carries one other than the last (the first one too):
        #: the shared folders they own or are a member of, or their modes, changed (own store only).
        self.on_shares: Callable[[int], None] | None = None
        self._shares: int | None = None

    def _mark(self, online: bool, error: str = "") -> None:
        if online != self.online or error:
            log.info("server is %s%s", "reachable" if online else "unreachable", f": {error}" if error else "")
        self.online = online
        if online:
            self.last_contact = time.time()
        self.on_state(online, error)

    async def catch_up(self, wait: float = 0, progress: Callable[[int], None] = lambda records: None) -> bool:
        """Fetch and apply changes once (all pages); True if any arrived.

        *progress* is told the records received so far after each page (a
        first listing of a big store takes a while).
        """
        cursor = self.applier.replica.cursor
        # A machine that has nothing yet takes its first listing in bulk.
        first = cursor == 0 and self.applier.replica.is_empty() and len(self.applier.queue) == 0
        if first:
            with self.applier.replica.state.large_cache():
                return await self._catch_up(cursor, wait, progress, first=True)
        return await self._catch_up(cursor, wait, progress, first=False)

    async def _catch_up(self, cursor: int, wait: float, progress: Callable[[int], None], *, first: bool) -> bool:
        got = False
        records = 0
        # Pages of a first listing wait here and go in together: one transaction
        # a page cost more in commits than in inserts.  Held in memory, not in
        # an open transaction: other tasks may write while a page is awaited.
        held: list[ChangeRows] = []
        while True:
            changes: Changes | ChangeRows
            if first:
                changes = await self.remote.change_rows(cursor, wait=wait)
            else:
                changes = await self.remote.changes(cursor, wait=wait)
            self._mark(True)
            self._heard_shares(changes.shares)
            if changes.reset:
                log.warning("journal cursor %d is not the server's any more; listing the whole tree again", cursor)
                held.clear()
                if self.on_reset is not None and not first:
                    # The self-check lists and merges, keeping what only this machine has.
                    await self.on_reset()
                    cursor = self.applier.replica.cursor
                    continue
                self.applier.reset()
                cursor = 0
                continue
            if changes.nodes or changes.entries:
                got = True
            records += len(changes.nodes) + len(changes.entries)
            if isinstance(changes, ChangeRows):
                held.append(changes)
                if not changes.more or sum(len(p.nodes) + len(p.entries) for p in held) >= LOAD_BATCH:
                    self.applier.load(held)
                    held = []
            else:
                self.applier.apply(changes.nodes, changes.entries, changes.cursor)
            progress(records)
            cursor = changes.cursor
            if not changes.more:
                return got
            wait = 0

    def _heard_shares(self, stamp: int | None) -> None:
        if stamp is None or stamp == self._shares:
            return  # an old server sends none, and a shared folder's journal never does
        self._shares = stamp
        if self.on_shares is not None:
            self.on_shares(stamp)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                # Back from a failure, ask without waiting: a long poll of a server with
                # nothing new would say "reachable" only when its wait ran out.
                await self.catch_up(wait=WAIT if self.online else 0)
                self.retry.answered()
            except Unauthorized as exc:
                self._mark(False, str(exc))
                await self.retry.wait(60)
            except Forbidden as exc:
                if isinstance(exc, ReadOnly):
                    raise  # reading never answers read_only: a bug, not a lost share
                self._mark(True, str(exc))
                self.on_forbidden(str(exc))  # a shared folder's engine ends here
                await self.retry.wait(60)
            except (Offline, RemoteError) as exc:
                self._mark(False, str(exc))
                await self.retry.wait(self.retry.failed())


def backoff(failures: int, base: float = 0.25, cap: float = 30.0) -> float:
    """Exponential backoff with a cap (0.25 s, 0.5 s, 1 s, ... 30 s)."""
    return min(cap, base * math.pow(2, max(0, failures - 1)))
