"""Pinned folders and files: kept in the cache for offline use, fetched as they change.

A pin names a node, so it follows its folder through renames, and is a row of
the state database (statedb.py)::

    pins(node TEXT PRIMARY KEY,   the pinned folder or file
         path TEXT NOT NULL,      its store path when last seen, shown once it is gone
         since REAL NOT NULL)     when it was pinned (Unix time)

The `Pinner` of a mount keeps every block of every file under a pin protected
in the cache (never evicted, never counted as reclaimable) and fetches the
absent ones in the background.  In memory it keeps which blocks it holds for
which file, the files under each pin, and the blocks still to fetch.

Reconciling
-----------
`reconcile` walks every pinned tree in the replica and compares it with what
it holds: blocks of new and changed files are protected *before* the replaced
ones are unprotected (a block moving between files is never evictable, not
even for a moment), and the absent ones are queued for fetching.  It runs at
start-up (before the mount's first put: protection is not persisted), on every
pin and unpin, after each batch the follower applies (``Applier.on_content``),
after each local change is queued (``WriteBackQueue.on_enqueue``: a local edit
in a pinned folder must be held once the queue lets go of its blocks), and
whenever the journal cursor moves (a rename into a pinned folder carries no
content change).  A run walks whole pinned trees, so runs are spaced by at
least `SPACING` times the duration of the last one, bounding the share of the
event loop it takes.

A pinned block's states::

    absent --reconcile--> queued --worker--> fetching --put--> present (protected)
                            ^                    |
                            +-- server offline --+  (retried with backoff)
                                                 |
                              failed <-----------+  (not on the server, bad bytes,
                                                     disk full: retried at the next
                                                     pin, change of its file or start)

Vanished files
--------------
A file that disappears from a pinned tree without an unpin -- deleted, moved
out, or merely not listed yet while the follower lists the whole tree again
after a journal reset -- stays protected for `GRACE` seconds; only if it is
still gone then is it released.  So neither a reset nor a folder moved out and
back within that time lets pinned data be evicted.  `unpin` releases at once.

Concurrency: everything runs on the mount's event loop.  `reconcile`,
`progress` and the workers' taking of a block contain no ``await``, so each is
atomic with respect to the others: a worker never sees a half-reconciled state.

A crash in any state loses nothing: pins are durable, a block is put whole or
not at all (see cache._blocks), and the first reconcile after a restart finds
whatever is still absent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import trio

from websync_server.protocol import BLOCK_SIZE, BlockHash

from cache import CacheError, CorruptBlock

from .blocksource import Content
from .errors import Offline, RemoteError
from .follower import backoff
from .replica import NodeRow, Replica
from .statedb import StateDb
from .storepaths import ancestors, path_of

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (
    node TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    since REAL NOT NULL
);
"""

#: Seconds between checks of the journal cursor.
POLL = 1.0
#: A reconcile waits this many times the duration of the previous one.
SPACING = 9.0
#: Blocks fetched at once.
WORKERS = 4
#: Seconds a file that vanished from under its pin stays protected (see "Vanished files").
GRACE = 120.0


@dataclass(frozen=True)
class Pin:
    node: str
    path: str
    since: float


class PinTable:
    """The durable list of pins."""

    def __init__(self, db: StateDb) -> None:
        self._db = db
        db.conn.executescript(_SCHEMA)

    def all(self) -> list[Pin]:
        rows = self._db.execute("SELECT node, path, since FROM pins ORDER BY path, node").fetchall()
        return [Pin(node, path, since) for node, path, since in rows]

    def add(self, node: str, path: str) -> bool:
        """Pin *node*; False if it was pinned already."""
        with self._db.tx():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO pins (node, path, since) VALUES (?, ?, ?)", (node, path, time.time())
            )
        return cursor.rowcount > 0

    def remove(self, node: str) -> bool:
        """Unpin *node*; False if it was not pinned."""
        with self._db.tx():
            cursor = self._db.execute("DELETE FROM pins WHERE node = ?", (node,))
        return cursor.rowcount > 0

    def set_path(self, node: str, path: str) -> None:
        with self._db.tx():
            self._db.execute("UPDATE pins SET path = ? WHERE node = ?", (path, node))


class PinCache(Protocol):
    """What the pinner needs of the content cache (`cache.BlockCache` has it)."""

    def protect(self, hashes: Iterable[str]) -> None: ...
    def unprotect(self, hashes: Iterable[str]) -> None: ...
    def present(self, hashes: Iterable[str]) -> dict[str, int]: ...
    def contains(self, h: str) -> bool: ...
    def put(self, h: str, data: Content) -> None: ...


Download = Callable[[BlockHash], Awaitable[Content]]


@dataclass(frozen=True)
class Progress:
    """How much of some pins is local."""

    files: int
    files_local: int
    bytes: int
    bytes_local: int
    #: Blocks still to fetch (queued or being fetched).
    waiting: int
    #: Blocks whose fetch failed for good (until the next pin, change or start).
    failed: int
    #: Fetch attempts in a row that found the server unreachable.
    failures: int
    error: str

    @property
    def done(self) -> bool:
        return self.waiting == 0

    def to_json(self) -> dict[str, object]:
        return {
            "files": self.files, "files_local": self.files_local, "bytes": self.bytes,
            "bytes_local": self.bytes_local, "waiting_blocks": self.waiting, "failed_blocks": self.failed,
            "failures": self.failures, "error": self.error, "done": self.done,
        }


def files_under(replica: Replica, row: NodeRow) -> Iterator[NodeRow]:
    """Every file at or below *row*, folder by folder in name order; symlinks are not followed."""
    if row.kind == "file":
        yield row
        return
    if row.kind != "dir":
        return
    stack = [row.id]
    while stack:
        folder = stack.pop()
        subdirs = []
        for _name, child in replica.children(folder):
            if child.kind == "file":
                yield child
            elif child.kind == "dir":
                subdirs.append(child.id)
        stack.extend(reversed(subdirs))


def block_sizes(size: int, count: int) -> list[int]:
    """The size of each of the *count* blocks of a file of *size* bytes."""
    if count == 0:
        return []
    return [BLOCK_SIZE] * (count - 1) + [size - (count - 1) * BLOCK_SIZE]


class Pinner:
    """Keeps pinned files protected and fetched; one per mount (or per CLI command when none runs)."""

    def __init__(
        self, table: PinTable, replica: Replica, cache: PinCache, download: Download | None = None,
        *, workers: int = WORKERS,
    ) -> None:
        self.table = table
        self._replica = replica
        self._cache = cache
        self._download = download
        self._workers = workers
        self._pins: set[str] = set()
        self._held: dict[str, tuple[str, ...]] = {}  # file node -> blocks protected for it
        self._vanished: dict[str, float] = {}  # held file node -> when it left every pin
        self._sizes: dict[str, int] = {}
        self._members: dict[str, list[str]] = {}  # pin node -> files under it
        # Blocks to fetch, in fetch order (a dict as an ordered set); disjoint from _inflight.
        self._queue: dict[str, None] = {}
        self._inflight: set[str] = set()
        self._failed: dict[str, str] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._poke = trio.Event()
        self._retry_at = 0.0
        self._last_run = 0.0
        self.failures = 0
        self.error = ""
        self.fetched_bytes = 0

    # -- what is pinned --------------------------------------------------------
    @property
    def pinned_blocks(self) -> set[str]:
        return {h for blocks in self._held.values() for h in blocks}

    def is_pinned(self, node: str) -> bool:
        """True if *node* is pinned or inside a pinned folder."""
        if not self._pins:
            return False
        return any(n in self._pins for n in ancestors(self._replica, node))

    def pinned_by(self, node: str) -> list[Pin]:
        """The pins that cover *node*, nearest first."""
        pins = {pin.node: pin for pin in self.table.all()}
        return [pins[n] for n in ancestors(self._replica, node) if n in pins]

    def members(self, pin: str) -> list[str]:
        return list(self._members.get(pin, ()))

    def pin(self, node: str, path: str) -> bool:
        """Pin *node* and start fetching what is absent; False if it was pinned already."""
        added = self.table.add(node, path)
        if added:
            log.info("pinned %s (node %s)", path or "/", node)
        self._retry_now()
        self.reconcile()
        return added

    def unpin(self, node: str) -> bool:
        """Unpin *node*: its blocks become evictable (they stay cached until evicted)."""
        removed = self.table.remove(node)
        if removed:
            log.info("unpinned node %s", node)
        self.reconcile(release=True)
        return removed

    def refetch(self, hashes: Iterable[str]) -> None:
        """Fetch *hashes* again if they are pinned (the cache dropped them, e.g. as corrupt)."""
        held = self.pinned_blocks
        for h in hashes:
            if h in held and h not in self._inflight:
                self._failed.pop(h, None)
                self._queue[h] = None
        self._lot.unpark_all()

    # -- triggers (callbacks the mount wires) ----------------------------------
    def changed(self, ids: list[str]) -> None:
        """`Applier.on_content`: files were added or changed remotely."""
        self.poke()

    def poke(self) -> None:
        """Something may have changed under a pin: reconcile soon."""
        if self._pins or self._held:  # else nothing can matter (see _reconciler); every change pokes
            self._poke.set()

    # -- reconciling -----------------------------------------------------------
    def reconcile(self, *, release: bool = False) -> None:
        """Hold exactly the blocks of the files under the pins; queue the absent ones.

        Files that left the pins are released after `GRACE` seconds, or at once
        with *release* (an unpin).
        """
        started = time.monotonic()
        pins = self.table.all()
        held: dict[str, tuple[str, ...]] = {}
        sizes: dict[str, int] = {}
        members: dict[str, list[str]] = {}
        for pin in pins:
            row = self._replica.by_id(pin.node)
            files = [] if row is None or row.orphan else list(files_under(self._replica, row))
            members[pin.node] = [f.id for f in files]
            for f in files:
                held[f.id] = f.blocks
                sizes[f.id] = f.size
            path = None if row is None else path_of(self._replica, pin.node)
            if path is not None and path != pin.path:
                self.table.set_path(pin.node, path)
        vanished: dict[str, float] = {}
        for node, blocks in self._held.items():
            if node in held:
                continue
            since = self._vanished.get(node, started)
            if not release and started - since < GRACE:
                held[node] = blocks  # still protected, but no longer a member of any pin
                vanished[node] = since
        added: list[str] = []
        removed: list[str] = []
        for node, blocks in held.items():
            before = self._held.get(node)
            if before != blocks:
                added.extend(blocks)
                if before:
                    removed.extend(before)
        for node, blocks in self._held.items():
            if node not in held:
                removed.extend(blocks)
        # Protect before unprotecting: see the module docstring.
        self._cache.protect(added)
        self._held, self._sizes, self._members, self._vanished = held, sizes, members, vanished
        self._pins = {pin.node for pin in pins}
        if removed or vanished:
            # Only members' blocks are fetched: a vanished file is kept, not completed.
            wanted = {h for node, blocks in held.items() if node not in vanished for h in blocks}
            self._queue = {h: None for h in self._queue if h in wanted}
            self._failed = {h: e for h, e in self._failed.items() if h in wanted}
        if added:
            present = self._cache.present(added)
            for h in added:
                if h not in present and h not in self._inflight:
                    self._failed.pop(h, None)
                    self._queue[h] = None
        self._cache.unprotect(removed)
        self._last_run = time.monotonic() - started
        if self._queue:
            self._lot.unpark_all()

    # -- progress ----------------------------------------------------------------
    def progress(self, pins: Iterable[str] | None = None) -> Progress:
        """How much of *pins* (default: all) is local."""
        chosen = list(self._members) if pins is None else list(pins)
        files = dict.fromkeys(f for p in chosen for f in self._members.get(p, ()))
        missing_blocks: set[str] = set()
        files_local = total = local = failed = 0
        for node in files:
            blocks = self._held.get(node, ())
            size = self._sizes.get(node, 0)
            total += size
            whole = True
            for h, n in zip(blocks, block_sizes(size, len(blocks))):
                if h in self._queue or h in self._inflight or h in self._failed:
                    whole = False
                    missing_blocks.add(h)
                else:
                    local += n
            files_local += whole
        waiting = sum(1 for h in missing_blocks if h not in self._failed)
        failed = len(missing_blocks) - waiting
        return Progress(len(files), files_local, total, local, waiting, failed, self.failures, self.error)

    # -- fetching ------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch queued blocks and reconcile when something changes, until cancelled."""
        if self._download is None:
            raise RuntimeError("a Pinner without a download function cannot fetch")
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._worker)
            task_status.started()
            await self._reconciler()

    async def _reconciler(self) -> None:
        cursor = self._replica.cursor
        while True:
            with trio.move_on_after(POLL):
                await self._poke.wait()
            poked = self._poke.is_set()
            self._poke = trio.Event()
            if not self._pins and not self._held:
                # Nothing pinned and nothing held: no change can matter, and `pin`
                # reconciles by itself.  Every local change pokes; a store of small
                # files without pins must not pay a reconcile for each.
                continue
            moved = self._replica.cursor
            expired = any(time.monotonic() - since >= GRACE for since in self._vanished.values())
            if not poked and moved == cursor and not expired:
                continue
            cursor = moved
            self.reconcile()
            await trio.sleep(self._last_run * SPACING)

    def reconnected(self) -> None:
        """The server answers again: blocks waiting out an offline back-off are fetched now."""
        self.failures = 0
        self._retry_at = 0.0
        self._lot.unpark_all()

    def _retry_now(self) -> None:
        for h in self._failed:
            self._queue[h] = None
        self._failed.clear()
        self.reconnected()

    async def _take(self) -> str:
        while True:
            if self._queue and trio.current_time() >= self._retry_at:
                h = next(iter(self._queue))
                del self._queue[h]
                self._inflight.add(h)
                return h
            with trio.move_on_at(self._retry_at if self._queue else float("inf")):
                await self._lot.park()

    async def _worker(self) -> None:
        while True:
            h = await self._take()
            try:
                await self._fetch(h)
            finally:
                self._inflight.discard(h)

    async def _fetch(self, h: str) -> None:
        assert self._download is not None
        if await trio.to_thread.run_sync(self._cache.contains, h):
            return  # a reader fetched it meanwhile
        try:
            data = await self._download(BlockHash(h))
            await trio.to_thread.run_sync(self._cache.put, h, data)
        except Offline as exc:
            if h in self.pinned_blocks:
                self._queue[h] = None
            self.failures += 1
            self.error = str(exc)
            self._retry_at = trio.current_time() + backoff(self.failures)
            log.info("pinned block %s not fetched (%s); retrying in %.1f s", h, exc, backoff(self.failures))
            return
        except (RemoteError, CorruptBlock, CacheError) as exc:
            log.warning("cannot fetch pinned block %s: %s", h, exc)
            self._failed[h] = str(exc)
            self.error = str(exc)
            return
        self.failures = 0
        self.error = ""
        self.fetched_bytes += len(data)
