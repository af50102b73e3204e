"""The store's self-examination: does the database agree with itself and with the block files?

``websync-server check`` runs `check` and prints its `CheckReport` (JSON with
``--json``); the exit status is 0 only when it found no problem.  What is
checked, in one read snapshot of the database (safe while the server runs):

- the database passes SQLite's ``integrity_check`` and ``foreign_key_check``;
- every block a live file or a kept version names is on disk, every file's
  blocks add up to its size, and (with *rehash*) every block file's bytes hash
  to its name;
- every live entry names a live node in a live folder, every live node but
  the root has an entry, no deleted node has one, every folder leads up to the
  root;
- no commit is half-applied: every row's seq belongs to a recorded batch (or
  to the store's creation, or lies at or below the horizon, where the
  collector forgot the batch), no row is newer than the store's seq, no two
  batches share a seq.

Block files named by nothing are *orphans*: not a problem (an upload waits
for its commit, or the next collection frees them), but listed.

``--repair`` (`repair`) changes only what it can prove safe: it moves block
files whose bytes do not match their name, and files in the block tree that
are not blocks, into ``DATA/quarantine/`` (nothing is deleted); removes the
temporary files of uploads no process is writing; and frees orphans older
than the grace period through the collector's sweep, which re-checks every
commit made meanwhile (gc.py).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from .blocks import Blocks, BlockStore
from .database import Database
from .protocol import KIND_DIR, KIND_FILE, ROOT_ID, BlockHash, is_block_hash
from .schema import batches, blocks_from_text, entries, nodes, stores, users, versions

if TYPE_CHECKING:
    from .services import Services

__all__ = ["QUARANTINE_DIR", "CheckReport", "Problem", "check", "check_database", "repair"]

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
_Files = dict[str, list[tuple[str, int, tuple[str, ...]]]]
#: Block files hashed per progress log line.
_LOG_EVERY = 100_000


@dataclass(frozen=True)
class Problem:
    """One broken invariant: what kind, whose, and a sentence."""

    kind: str  # database, block, tree, journal, stray
    user: str
    message: str
    path: str = ""  # the file concerned, if any


@dataclass
class CheckReport:
    """All a check found; ``ok`` when there is no problem (orphans are no problem)."""

    problems: list[Problem] = field(default_factory=list)
    orphans: dict[str, int] = field(default_factory=dict)  # user -> unnamed block files
    counts: dict[str, int] = field(default_factory=dict)  # users, stores, nodes, blocks checked
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "problems": [asdict(p) for p in self.problems], "orphans": self.orphans,
            "counts": self.counts, "repaired": self.repaired, "seconds": round(self.seconds, 3),
        }  # fmt: skip


def check(
    data_dir: Path, *, rehash: bool = True, db: Database | None = None, blocks_dir: Path | None = None,
    objects: Blocks | None = None,
) -> CheckReport:
    """Check the server state in *data_dir* (its database and blocks unless *db* and *blocks_dir* are given).

    *objects*: blocks in object storage instead of a folder (the scaled set-up).
    """
    from .services import BLOCKS_DIR

    blocks_dir = blocks_dir or data_dir / BLOCKS_DIR
    started = time.monotonic()
    own = db is None
    database = db or Database.open_in(data_dir)
    try:
        report, named, files = check_database(database)
    finally:
        if own:
            database.close()
    if objects is not None:
        _check_objects(objects, named, report, rehash=rehash)
        _check_sizes(objects, files, report)
    else:
        _check_blocks(blocks_dir, named, report, rehash=rehash)
        _check_sizes(BlockStore(blocks_dir), files, report)
    report.seconds = time.monotonic() - started
    return report


def check_database(db: Database) -> tuple[CheckReport, dict[str, dict[str, set[str]]], _Files]:
    """The database's problems; per user the blocks named by live files and by all rows, and the live files."""
    report = CheckReport()
    named: dict[str, dict[str, set[str]]] = {}
    files: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {}
    with db.read() as conn:
        if db.is_sqlite:
            result = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
            if result != "ok":
                report.problems.append(Problem("database", "", f"sqlite integrity_check: {result}"))
            for row in conn.exec_driver_sql("PRAGMA foreign_key_check"):
                report.problems.append(Problem("database", "", f"foreign key broken: {tuple(row)}"))
        owners = conn.execute(
            select(stores.c.id, stores.c.seq, stores.c.horizon, users.c.name).join(users, users.c.id == stores.c.owner)
        ).all()
        report.counts["users"] = len({o.name for o in owners})
        report.counts["stores"] = len(owners)
        for row in owners:
            mine = named.setdefault(row.name, {"live": set(), "all": set()})
            store_check = _StoreCheck(conn, row.id, row.name, row.seq, row.horizon, report, mine)
            store_check.run()
            files.setdefault(row.name, []).extend(store_check.files)
    return report, named, files


class _StoreCheck:
    """The database invariants of one store (see the module docstring)."""

    def __init__(
        self, conn: Connection, store: str, user: str, seq: int, horizon: int, report: CheckReport,
        named: dict[str, set[str]],
    ) -> None:  # fmt: skip
        self.conn, self.store, self.user = conn, store, user
        self.seq, self.horizon = seq, horizon
        self.report, self.named = report, named
        #: Live files (id, size, blocks): their sizes are checked against the block files.
        self.files: list[tuple[str, int, tuple[str, ...]]] = []

    def problem(self, kind: str, message: str) -> None:
        self.report.problems.append(Problem(kind, self.user, f"store {self.store}: {message}"))

    def run(self) -> None:
        c = self.conn
        node_rows = {r.id: r for r in c.execute(select(nodes).where(nodes.c.store == self.store))}
        entry_rows = list(c.execute(select(entries).where(entries.c.store == self.store)))
        batch_seqs = [r.seq for r in c.execute(select(batches.c.seq).where(batches.c.store == self.store))]
        for v in c.execute(select(versions.c.node, versions.c.blocks).where(versions.c.store == self.store)):
            self.named["all"].update(blocks_from_text(v.blocks))
        self.report.counts["nodes"] = self.report.counts.get("nodes", 0) + len(node_rows)
        for node in node_rows.values():
            blocks = blocks_from_text(node.blocks)
            self.named["all"].update(blocks)
            if node.kind == KIND_FILE and not node.deleted:
                self.named["live"].update(blocks)
                self.files.append((node.id, node.size, blocks))
        self._tree(node_rows, entry_rows)
        self._seqs(node_rows, entry_rows, batch_seqs)

    def _tree(self, node_rows: dict[str, Any], entry_rows: list[Any]) -> None:
        places: dict[str, list[str]] = {}
        for e in entry_rows:
            if e.node is None:
                continue
            node, parent = node_rows.get(e.node), node_rows.get(e.parent)
            if node is None or node.deleted:
                self.problem("tree", f"entry {e.parent}/{e.name} names node {e.node}, which is not live")
            if parent is None or parent.deleted or parent.kind != KIND_DIR:
                self.problem("tree", f"entry {e.parent}/{e.name} is in {e.parent}, which is not a live folder")
            places.setdefault(e.node, []).append(e.parent)
        for node_id, node in node_rows.items():
            if node_id != ROOT_ID and not node.deleted and node_id not in places:
                self.problem("tree", f"live node {node_id} has no entry")
            if node.deleted and node_id in places:
                self.problem("tree", f"deleted node {node_id} still has an entry")
            if node.kind == KIND_DIR and not node.deleted and not self._reaches_root(node_id, places):
                self.problem("tree", f"folder {node_id} is not reachable from the root")

    @staticmethod
    def _reaches_root(node_id: str, places: dict[str, list[str]]) -> bool:
        seen: set[str] = set()
        current = node_id
        while current != ROOT_ID:
            if current in seen or current not in places:
                return False
            seen.add(current)
            current = places[current][0]
        return True

    def _seqs(self, node_rows: dict[str, Any], entry_rows: list[Any], batch_seqs: list[int]) -> None:
        known = set(batch_seqs) | {1}
        if len(known - {1}) != len(batch_seqs):
            self.problem("journal", "two batches share a seq")
        for kind, rows in (("node", list(node_rows.values())), ("entry", entry_rows)):
            for r in rows:
                if r.seq > self.seq:
                    self.problem("journal", f"{kind} row with seq {r.seq} is newer than the store's seq {self.seq}")
                elif r.seq not in known and r.seq > self.horizon:
                    self.problem("journal", f"{kind} row with seq {r.seq} belongs to no recorded batch (half-applied)")


def _check_blocks(root: Path, named: dict[str, dict[str, set[str]]], report: CheckReport, *, rehash: bool) -> None:
    """Blocks named but missing or wrong, torn block files, stray files, orphans."""
    store = BlockStore(root)
    checked = 0
    for user, sets in sorted(named.items()):
        for block in sorted(sets["all"]):
            size = store.size(user, BlockHash(block))
            if size is None:
                kind = "a live file" if block in sets["live"] else "a version or a trash item"
                report.problems.append(Problem("block", user, f"block {block}, named by {kind}, is not on disk"))
        orphans = 0
        folder = root / user
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_dir():
                continue
            if not is_block_hash(path.name) or path.parent.parent.parent != folder:
                report.problems.append(Problem("stray", user, f"{path} is not a block file", str(path)))
                continue
            checked += 1
            if rehash and _digest(path) != path.name:
                report.problems.append(Problem("block", user, f"block file {path} does not hash to its name",
                                               str(path)))
            if path.name not in sets["all"]:
                orphans += 1
            if checked % _LOG_EVERY == 0:
                log.info("check: %d block files so far", checked)
        if orphans:
            report.orphans[user] = orphans
    report.counts["blocks"] = checked


def _check_objects(objects: Blocks, named: dict[str, dict[str, set[str]]], report: CheckReport, *,
                   rehash: bool) -> None:
    """`_check_blocks` for object storage: one listing a user, and each object read back when *rehash*.

    A bucket holds only keys the store wrote under a hash (no torn or stray
    files to find: an object appears whole or not at all).
    """
    checked = 0
    for user, sets in sorted(named.items()):
        present = {stored.block: stored.size for stored in objects.files(user)}
        for block in sorted(sets["all"]):
            if block not in present:
                kind = "a live file" if block in sets["live"] else "a version or a trash item"
                report.problems.append(Problem("block", user, f"block {block}, named by {kind}, is not stored"))
        for block in sorted(present):
            checked += 1
            if rehash and hashlib.sha256(objects.read(user, block).data).hexdigest() != block:
                report.problems.append(Problem("block", user, f"object of block {block} does not hash to its name"))
            if checked % _LOG_EVERY == 0:
                log.info("check: %d objects so far", checked)
        orphans = len(set(present) - sets["all"])
        if orphans:
            report.orphans[user] = orphans
    report.counts["blocks"] = checked


def _check_sizes(store: BlockStore | Blocks, files: _Files, report: CheckReport) -> None:
    """Every live file's blocks, all present, add up to its size."""
    for user, rows in files.items():
        for node_id, size, blocks in rows:
            sizes = [store.size(user, BlockHash(b)) for b in blocks]
            if None not in sizes and sum(s or 0 for s in sizes) != size:
                report.problems.append(Problem(
                    "block", user, f"node {node_id} has size {size} but its blocks hold {sum(s or 0 for s in sizes)} bytes"
                ))  # fmt: skip


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def repair(data_dir: Path, report: CheckReport, services: Services | None = None) -> list[str]:
    """Repair what *report* found that is safe to repair (see the module docstring); what was done.

    *services* are the server's components (opened on *data_dir*'s defaults when not given).
    """
    from .gc import Collector, collection_lock
    from .services import Services

    done: list[str] = []
    quarantine = data_dir / QUARANTINE_DIR
    for p in report.problems:
        if p.path and Path(p.path).exists():
            target = quarantine / p.user / Path(p.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # quarantined before: keep both
                target = target.with_name(f"{target.name}.{time.time_ns()}")
            shutil.move(p.path, target)
            done.append(f"moved {p.path} to {target}")
    own = services is None
    if services is None:
        services = Services.open(data_dir)
    try:
        incoming = services.blocks.root / ".incoming" if isinstance(services.blocks, BlockStore) else None
        for temp in incoming.iterdir() if incoming else ():
            if temp.stat().st_mtime < time.time() - 3600:
                temp.unlink(missing_ok=True)
                done.append(f"removed the stale upload {temp}")
        if report.orphans:
            with collection_lock(data_dir):
                # Only orphans: nothing of the history or trash expires in a repair.
                freed = Collector(services.db, services.blocks).run(purge=False)
            done.append(f"freed {freed.blocks} orphan block files ({freed.bytes} bytes)")
    finally:
        if own:
            services.close()
    for line in done:
        log.info("repair: %s", line)
    return done
