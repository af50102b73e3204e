"""The collector: purges what retention lets go, compacts the journal and frees unnamed blocks.

A run has three phases, each in short transactions so commits and reads never
wait long (every statement works in chunks of `CHUNK` rows or blocks):

1. **Purge** (per store, with the owner's `retention.Retention`): versions
   replaced before ``version_days`` ago; the content and versions of nodes
   deleted before ``trash_days`` ago (the node row stays as the journal's
   record of the deletion until the horizon passes it); and the journal's
   tombstones -- removed entries, deleted nodes out of the trash, batch
   records -- of commits older than ``journal_days``.  The store's
   ``horizon`` is raised first, so a cursor older than what is kept gets a
   ``reset`` (journal.py).  A batch record still dating a node in the trash
   is kept.
2. **Mark** (one read snapshot): every block named by a node or kept version,
   per user, and each store's seq in that snapshot.
3. **Sweep** (per chunk of candidates): a block file named by nothing,
   older than the run's start minus ``grace_hours``, goes -- each chunk
   inside a write transaction that first looks at every row committed since
   the mark (``seq`` above the snapshot's) and spares what they name, and
   raises the collector's *generation* in ``meta``.

Why no commit can lose a block: a commit checks its blocks exist, then takes
the write lock and compares the generation it read before the check with the
current one; when a sweep ran in between it checks the blocks again, inside
its transaction (``store.py``).  A sweep chunk runs in a write transaction
too, so it is either before the commit -- the commit sees the new generation
and finds the block gone: it is refused, nothing is half-committed -- or
after it, and then the commit's rows are above the mark's seq and the sweep
spares their blocks.  On PostgreSQL the sweep locks the user's store rows
(``FOR UPDATE``), which is what serializes commits there.  A client that
uploads or asks about a block the collector then frees learns it on its
commit (400 "upload it first") and uploads it again on its retry;
`BlockStore` refreshes the time of a block it reports present, so that
takes a day of grace to happen at all.

One run at a time per data directory, and none during a backup: both hold
``DATA/gc.lock`` (an ``flock``), which also works between processes (the
server's daily run and ``websync-server gc`` beside it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from .blocks import Blocks, StoredBlock
from .database import Database
from .retention import Retention, read_retention
from .schema import batches, entries, meta, nodes, share_blocks, stores, users, versions

__all__ = ["LOCK_FILENAME", "Collector", "Report", "Schedule", "collection_lock", "gc_generation"]

log = logging.getLogger(__name__)

LOCK_FILENAME = "gc.lock"
#: Rows or blocks per transaction: each one holds the write lock for a few ms at most.
CHUNK = 256
#: Block files removed per write transaction: each removal holds every commit of the user
#: back, and 256 a transaction cost commits 2.3 s at p99 (docs/benchmarks.md).
SWEEP_CHUNK = 32
_GENERATION = "gc_generation"
_LAST_RUN = "gc_last_ns"
_FOREVER_DAYS = 1e5  # retention that keeps everything (a repair expires nothing); fits int64 ns


def gc_generation(conn: Connection) -> int:
    """How many sweeps have removed blocks so far (a commit compares it; see the module doc)."""
    value = conn.execute(select(meta.c.value).where(meta.c.key == _GENERATION)).scalar()
    return int(value) if value is not None else 0


@contextmanager
def collection_lock(data_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold ``DATA/gc.lock``; yields False (holding nothing) if *wait* is off and it is taken."""
    fd = os.open(data_dir / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


@dataclass
class Report:
    """What a collection freed (or, with ``dry_run``, would free)."""

    dry_run: bool = False
    versions: int = 0  # version rows purged
    trash: int = 0  # deleted nodes whose content left the trash
    tombstones: int = 0  # journal rows purged (removed entries, deleted nodes, batch records)
    blocks: int = 0  # block files removed
    bytes: int = 0  # their size
    kept_blocks: int = 0  # block files still named (or within the grace period)
    seconds: float = 0.0
    users: dict[str, dict[str, int]] = field(default_factory=dict)  # per user: blocks, bytes

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"{verb} {self.blocks} blocks ({self.bytes / 2**20:.1f} MiB); purged {self.versions} old versions, "
            f"{self.trash} trash items, {self.tombstones} journal records; {self.kept_blocks} blocks kept; "
            f"{self.seconds:.1f} s"
        )


@dataclass
class _Mark:
    """The mark phase's result: blocks named per user, and each store's seq then."""

    named: dict[str, set[bytes]]
    seqs: dict[str, int]
    stores_of: dict[str, list[str]]


class Collector:
    """Runs collections over one server's database and block store."""

    def __init__(self, db: Database, blocks: Blocks) -> None:
        self._db = db
        self._blocks = blocks

    def run(
        self,
        *,
        dry_run: bool = False,
        trash_days: float | None = None,
        version_days: float | None = None,
        grace_hours: float | None = None,
        purge: bool = True,
    ) -> Report:
        """One collection; the caller holds `collection_lock`.

        *trash_days* and *version_days* override the settings for this run
        (0 empties the trash and the history now); *grace_hours* overrides the
        grace of uploads never committed.  Without *purge* nothing expires:
        only blocks that nothing names at all are freed.
        """
        started = time.monotonic()
        now = time.time_ns()
        with self._db.read() as conn:
            settings = read_retention(conn).overridden(trash_days, version_days)
        report = Report(dry_run=dry_run)
        if not purge:
            settings = settings.overridden(_FOREVER_DAYS, _FOREVER_DAYS)
        elif not dry_run:
            for store_id, owner in self._stores():
                self._purge(store_id, settings.for_user(owner), now, report)
        grace_ns = settings.grace_ns if grace_hours is None else int(grace_hours * 3600e9)
        marked = self._mark(settings, now)
        for user, named in marked.named.items():
            self._sweep(user, named, marked, now - grace_ns, report, dry_run=dry_run)
        report.seconds = time.monotonic() - started
        log.info("collection: %s", report.summary())
        return report

    def _stores(self) -> list[tuple[str, int]]:
        with self._db.read() as conn:
            return [(r.id, r.owner) for r in conn.execute(select(stores.c.id, stores.c.owner))]

    # -- 1. purge --------------------------------------------------------------------------

    def _purge(self, store_id: str, keep: Retention, now: int, report: Report) -> None:
        horizon = self._raise_horizon(store_id, now - keep.journal_ns)
        report.versions += self._chunked(
            select(versions.c.id).where(versions.c.store == store_id, versions.c.replaced_ns < now - keep.version_ns),
            lambda conn, ids: conn.execute(delete(versions).where(versions.c.id.in_(ids))),
        )
        out_of_trash = _deleted_before(now - keep.trash_ns)
        report.trash += self._chunked(
            select(nodes.c.id).where(nodes.c.store == store_id, out_of_trash, nodes.c.blocks != "[]"),
            lambda conn, ids: self._empty_trash(conn, store_id, ids),
        )
        report.tombstones += self._chunked(
            select(entries.c.parent, entries.c.name).where(
                entries.c.store == store_id, entries.c.node.is_(None), entries.c.seq <= horizon
            ),
            lambda conn, keys: [
                conn.execute(delete(entries).where(
                    entries.c.store == store_id, entries.c.parent == parent, entries.c.name == name,
                    entries.c.node.is_(None),
                ))  # fmt: skip
                for parent, name in keys
            ],
            whole=True,
        )
        # A deleted node leaves once its deletion is past the horizon and out of the trash.
        report.tombstones += self._chunked(
            select(nodes.c.id).where(nodes.c.store == store_id, out_of_trash, nodes.c.seq <= horizon),
            lambda conn, ids: self._forget_nodes(conn, store_id, ids),
        )
        in_trash = select(nodes.c.seq).where(nodes.c.store == store_id, nodes.c.deleted.is_(True))
        report.tombstones += self._chunked(
            select(batches.c.batch).where(
                batches.c.store == store_id, batches.c.seq <= horizon, batches.c.seq.not_in(in_trash)
            ),
            lambda conn, ids: conn.execute(
                delete(batches).where(batches.c.store == store_id, batches.c.batch.in_(ids))
            ),
        )

    def _raise_horizon(self, store_id: str, before_ns: int) -> int:
        """Raise the store's horizon to its last commit before *before_ns*; the horizon now."""
        with self._db.write() as conn:
            current = conn.execute(select(stores.c.horizon).where(stores.c.id == store_id)).scalar_one()
            found = conn.execute(
                select(func.max(batches.c.seq)).where(batches.c.store == store_id, batches.c.time_ns < before_ns)
            ).scalar()
            if found is not None and found > current:
                conn.execute(update(stores).where(stores.c.id == store_id).values(horizon=found))
                return int(found)
            return int(current)

    def _empty_trash(self, conn: Connection, store_id: str, ids: list[str]) -> None:
        """Drop the content and history of deleted nodes; the rows stay as journal records."""
        conn.execute(delete(versions).where(versions.c.store == store_id, versions.c.node.in_(ids)))
        conn.execute(
            update(nodes)
            .where(nodes.c.store == store_id, nodes.c.id.in_(ids), nodes.c.deleted.is_(True))
            .values(blocks="[]", size=0)
        )

    def _forget_nodes(self, conn: Connection, store_id: str, ids: list[str]) -> None:
        named = select(entries.c.parent).where(entries.c.store == store_id, entries.c.parent.in_(ids))
        parents = {r.parent for r in conn.execute(named)}  # a removed name under it still refers to it
        gone = [i for i in ids if i not in parents]
        conn.execute(delete(versions).where(versions.c.store == store_id, versions.c.node.in_(gone)))
        conn.execute(
            delete(nodes).where(nodes.c.store == store_id, nodes.c.id.in_(gone), nodes.c.deleted.is_(True))
        )

    def _chunked(self, query: Any, act: Any, *, whole: bool = False) -> int:
        """Run *act* on the rows of *query* in write transactions of `CHUNK` rows; how many."""
        done = 0
        while True:
            with self._db.write() as conn:
                rows = conn.execute(query.limit(CHUNK)).all()
                if not rows:
                    return done
                act(conn, [tuple(r) for r in rows] if whole else [r[0] for r in rows])
            done += len(rows)
            if len(rows) < CHUNK:
                return done

    # -- 2. mark ---------------------------------------------------------------------------

    def _mark(self, settings: Retention, now: int) -> _Mark:
        """Blocks named by anything kept, per user, in one snapshot."""
        named: dict[str, set[bytes]] = {}
        seqs: dict[str, int] = {}
        stores_of: dict[str, list[str]] = {}
        with self._db.read() as conn:
            rows = conn.execute(select(stores.c.id, stores.c.seq, stores.c.owner, users.c.name).join(
                users, users.c.id == stores.c.owner)).all()  # fmt: skip
            for row in rows:
                seqs[row.id] = row.seq
                stores_of.setdefault(row.name, []).append(row.id)
                keep = settings.for_user(row.owner)
                into = named.setdefault(row.name, set())
                for text in _kept_block_lists(conn, row.id, now - keep.trash_ns, now - keep.version_ns):
                    _add_blocks(into, text)
        return _Mark(named, seqs, stores_of)

    # -- 3. sweep --------------------------------------------------------------------------

    def _sweep(
        self, user: str, named: set[bytes], marked: _Mark, older_than_ns: int, report: Report, *, dry_run: bool
    ) -> None:
        """Remove *user*'s block files named by nothing and older than *older_than_ns*."""
        freed = {"blocks": 0, "bytes": 0}
        chunk: list[StoredBlock] = []
        for stored in self._blocks.files(user):
            if bytes.fromhex(stored.block) in named:
                report.kept_blocks += 1
            elif stored.mtime_ns >= older_than_ns:
                report.kept_blocks += 1  # within the grace period: a commit may still name it
            else:
                chunk.append(stored)
                if len(chunk) >= SWEEP_CHUNK:
                    self._remove(user, chunk, marked, older_than_ns, report, freed, dry_run=dry_run)
                    chunk = []
        if chunk:
            self._remove(user, chunk, marked, older_than_ns, report, freed, dry_run=dry_run)
        if freed["blocks"]:
            report.users[user] = freed

    def _remove(
        self, user: str, chunk: list[StoredBlock], marked: _Mark, older_than_ns: int,
        report: Report, freed: dict[str, int], *, dry_run: bool,
    ) -> None:  # fmt: skip
        if dry_run:
            report.blocks += len(chunk)
            report.bytes += sum(stored.size for stored in chunk)
            freed["blocks"] += len(chunk)
            freed["bytes"] += sum(stored.size for stored in chunk)
            return
        with self._db.write() as conn:
            store_ids = marked.stores_of.get(user, [])
            # PostgreSQL: wait for (and hold off) commits to this user's stores.
            conn.execute(select(stores.c.id).where(stores.c.id.in_(store_ids)).with_for_update()).all()
            since: set[bytes] = set()
            for store_id in store_ids:
                for text in _block_lists_since(conn, store_id, marked.seqs[store_id]):
                    _add_blocks(since, text)
            generation = gc_generation(conn) + 1
            conn.execute(delete(meta).where(meta.c.key == _GENERATION))
            conn.execute(insert(meta).values(key=_GENERATION, value=str(generation)))
            removed: list[str] = []
            for stored in chunk:
                if bytes.fromhex(stored.block) in since:
                    report.kept_blocks += 1
                    continue
                if not self._blocks.remove(user, stored.block, older_than_ns):
                    report.kept_blocks += 1  # uploaded again since the listing, or gone already
                    continue
                report.blocks += 1
                report.bytes += stored.size
                freed["blocks"] += 1
                freed["bytes"] += stored.size
                removed.append(stored.block)
            # A member's upload that is gone no longer lets members name the hash (shares.py).
            conn.execute(delete(share_blocks).where(share_blocks.c.store.in_(store_ids),
                                                    share_blocks.c.hash.in_(removed)))  # fmt: skip


def _deleted_before(cutoff_ns: int) -> Any:
    """SQL: the node row is deleted and its deletion (the batch of its seq) is older than *cutoff_ns*."""
    deleted_at = (
        select(batches.c.time_ns)
        .where(batches.c.store == nodes.c.store, batches.c.seq == nodes.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    return nodes.c.deleted.is_(True) & (func.coalesce(deleted_at, 0) < cutoff_ns)


def _kept_block_lists(conn: Connection, store_id: str, trash_cutoff: int, version_cutoff: int) -> Iterator[str]:
    """The ``blocks`` texts of a store's nodes and versions that retention keeps."""
    kept_node = ~_deleted_before(trash_cutoff)
    node_rows = select(nodes.c.blocks, kept_node.label("kept")).where(nodes.c.store == store_id)
    for row in conn.execute(node_rows.execution_options(yield_per=10_000)):
        if row.kept:
            yield row.blocks
    gone_nodes = select(nodes.c.id).where(nodes.c.store == store_id, ~kept_node)
    version_rows = select(versions.c.blocks).where(
        versions.c.store == store_id, versions.c.replaced_ns >= version_cutoff, versions.c.node.not_in(gone_nodes)
    )
    for row in conn.execute(version_rows.execution_options(yield_per=10_000)):
        yield row.blocks


def _block_lists_since(conn: Connection, store_id: str, seq: int) -> Iterator[str]:
    """The ``blocks`` texts of rows a store committed after *seq* (node contents and versions they replaced)."""
    for row in conn.execute(select(nodes.c.blocks).where(nodes.c.store == store_id, nodes.c.seq > seq)):
        yield row.blocks
    for row in conn.execute(
        select(versions.c.blocks).where(versions.c.store == store_id, versions.c.replaced_seq > seq)
    ):
        yield row.blocks


def _add_blocks(into: set[bytes], text: str) -> None:
    """Add the hashes of a ``blocks`` column (a JSON list of hex strings) as 32-byte keys."""
    if len(text) <= 2:
        return
    # The column is ["h1","h2",...] with no spaces (schema.blocks_to_text): slicing
    # is several times faster than json.loads and the collector reads every row.
    for quoted in text[1:-1].split(","):
        into.add(bytes.fromhex(quoted[1:-1]))


class Schedule:
    """Runs a collection every *interval_s* in a thread of its own; `close` stops it.

    The time of the last run is kept in ``meta`` so a server restarted more
    often than the interval still collects.  A run that finds the lock taken
    (a backup, or ``websync-server gc``) tries again at the next look.
    """

    #: How often the thread looks whether a run is due.
    LOOK_S = 60.0

    def __init__(self, collector: Collector, db: Database, data_dir: Path, interval_s: float) -> None:
        self._collector = collector
        self._db = db
        self._data_dir = data_dir
        self._interval_ns = int(interval_s * 1e9)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="websync-gc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(min(self.LOOK_S, self._interval_ns / 1e9)):
            try:
                if self._due():
                    self._run()
            except Exception:  # noqa: BLE001 - the next look tries again; the server keeps serving
                log.exception("the scheduled collection failed")

    def _due(self) -> bool:
        with self._db.read() as conn:
            last = conn.execute(select(meta.c.value).where(meta.c.key == _LAST_RUN)).scalar()
        return last is None or time.time_ns() - int(last) >= self._interval_ns

    def _run(self) -> None:
        with collection_lock(self._data_dir, wait=False) as held:
            if not held:
                log.info("a collection is due but another one or a backup runs; trying later")
                return
            self._collector.run()
        with self._db.write() as conn:
            conn.execute(delete(meta).where(meta.c.key == _LAST_RUN))
            conn.execute(insert(meta).values(key=_LAST_RUN, value=str(time.time_ns())))
