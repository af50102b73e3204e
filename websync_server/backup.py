"""Online backups of a server's data directory, and restoring one into a new data directory.

A backup is ``DEST/websync.db`` and ``DEST/blocks/USER/ab/cd/HASH``, the same
layout as a data directory, so a backup can be served after `restore`.

Consistency while clients keep working:

1. The collector is held off (``DATA/gc.lock``, gc.py) for the whole backup,
   so no block leaves the data directory meanwhile.
2. The database is copied with SQLite's online backup API into a temporary
   file: one read transaction, a consistent snapshot of a moment, taken while
   commits go on (WAL: readers and the writer do not wait for each other).
3. Then the blocks: every block the snapshot names was on disk before its
   commit (store.py), and nothing removes blocks now, so copying the block
   files present after the snapshot copies every block it names.  A block
   already in DEST with the right size is not copied again (blocks never
   change): a second backup into the same DEST copies only new blocks.
4. The new database replaces the old one in DEST, and only then are the
   blocks the new snapshot no longer needs removed from DEST.  A backup cut
   short at any point leaves DEST a consistent backup (the old one or the new).

`restore` copies a backup into an empty data directory and moves each
store's journal forward (`Timeline`), so that every machine lists its store
again: one whose cursor is past the backup learns it is ahead of the server
and sends again what it has that the server no longer knows.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from .blocks import Blocks, BlockStore, _fsync_dir
from .database import DB_FILENAME, Database
from .gc import collection_lock
from .journal import RESTORED_KEY
from .protocol import is_block_hash
from .schema import meta, stores
from .schema import users as users_table

__all__ = ["JUMP", "CopyReport", "backup", "backup_scaled", "restore"]

#: How far `restore` moves each store's seq: more commits than any server makes
#: between a backup and a restore, so a cursor from before the restore is never
#: mistaken for one of the restored journal.
JUMP = 1 << 40
_INCOMING = ".incoming"


@dataclass
class CopyReport:
    """What a backup or restore copied."""

    seqs: dict[str, int] = field(default_factory=dict)  # store -> seq in the copied database
    database_bytes: int = 0
    blocks_copied: int = 0
    blocks_present: int = 0  # already in the destination
    blocks_removed: int = 0  # no longer needed in the destination
    bytes_copied: int = 0
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, what: str) -> str:
        return (
            f"{what}: database {self.database_bytes / 2**20:.1f} MiB, {self.blocks_copied} blocks copied "
            f"({self.bytes_copied / 2**20:.1f} MiB), {self.blocks_present} already there, "
            f"{self.blocks_removed} removed; {self.seconds:.1f} s"
        )


def backup(data_dir: Path, dest: Path) -> CopyReport:
    """Back up the data directory *data_dir* into *dest* while the server may run."""
    started = time.monotonic()
    report = CopyReport()
    dest.mkdir(parents=True, exist_ok=True)
    with collection_lock(data_dir):
        temp = dest / f"{DB_FILENAME}.partial"
        _copy_database(data_dir / DB_FILENAME, temp)
        report.database_bytes = temp.stat().st_size
        report.seqs = _seqs(temp)
        wanted = _copy_blocks(data_dir / "blocks", dest / "blocks", report)
        _fsync_dir(temp)  # (an fsync through a read-only descriptor: files too)
        os.replace(temp, dest / DB_FILENAME)
        _fsync_dir(dest)
    for path in list(_block_files(dest / "blocks")):
        if _relative(path, dest / "blocks") not in wanted:
            path.unlink()
            report.blocks_removed += 1
    report.seconds = time.monotonic() - started
    return report


def backup_scaled(data_dir: Path, db: Database, objects: Blocks, dest: Path) -> CopyReport:
    """Back up a database elsewhere (PostgreSQL) and its object storage into *dest*, in a single box's layout.

    The rows are read in one snapshot (REPEATABLE READ) into a new SQLite file,
    then every block of the snapshot's users is copied (what DEST has already
    is skipped, what the snapshot no longer has is removed after the database
    is in place), so `restore` makes a single box of it and `migrate` moves
    that onto the scaled set-up again.  Collections wait on this machine's
    lock; run it where the collections run (docs/operations.md).
    """
    from .transfer import TransferReport, copy_blocks, copy_database

    started = time.monotonic()
    report = CopyReport()
    dest.mkdir(parents=True, exist_ok=True)
    with collection_lock(data_dir):
        staging = dest / f"{DB_FILENAME}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        target = Database.open_in(staging)
        try:
            copy_database(db, target, TransferReport())
            with target.read() as conn:
                users_now = [name for (name,) in conn.execute(select(users_table.c.name))]
        finally:
            target.close()
        temp = dest / f"{DB_FILENAME}.partial"
        _copy_database(staging / DB_FILENAME, temp)  # one self-contained file, as `backup` leaves
        shutil.rmtree(staging)
        report.database_bytes = temp.stat().st_size
        report.seqs = _seqs(temp)
        folder = BlockStore(dest / "blocks")
        folder.open()
        copied = TransferReport()
        copy_blocks(objects, folder, copied, users=users_now)
        report.blocks_copied, report.bytes_copied, report.blocks_present = (
            copied.blocks, copied.block_bytes, copied.blocks_there)
        wanted = {f"{user}/{stored.block}" for user in users_now for stored in objects.files(user)}
        os.sync()
        _fsync_dir(temp)
        os.replace(temp, dest / DB_FILENAME)
        _fsync_dir(dest)
    for path in list(_block_files(dest / "blocks")):
        if f"{path.relative_to(dest / 'blocks').parts[0]}/{path.name}" not in wanted:
            path.unlink()
            report.blocks_removed += 1
    report.seconds = time.monotonic() - started
    return report


def restore(data_dir: Path, source: Path) -> CopyReport:
    """Restore the backup in *source* into *data_dir*, which must hold no database yet."""
    started = time.monotonic()
    if not (source / DB_FILENAME).is_file():
        raise FileNotFoundError(f"{source} holds no backup ({DB_FILENAME} is missing)")
    if (data_dir / DB_FILENAME).exists():
        raise FileExistsError(f"{data_dir} already holds a database; restore into a new data directory")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    report = CopyReport()
    temp = data_dir / f"{DB_FILENAME}.partial"
    _copy_database(source / DB_FILENAME, temp)
    report.database_bytes = temp.stat().st_size
    _copy_blocks(source / "blocks", data_dir / "blocks", report)
    _fsync_dir(temp)
    os.replace(temp, data_dir / DB_FILENAME)
    db = Database.open_in(data_dir)  # migrates an older schema
    try:
        report.seqs = Timeline(db).move_forward()
    finally:
        db.close()
    report.seconds = time.monotonic() - started
    return report


class Timeline:
    """Moves restored stores' journals forward so that no old cursor fits the new journal."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def move_forward(self) -> dict[str, int]:
        """Set each store's seq and horizon `JUMP` ahead, remembering its seq at the backup."""
        moved = {}
        with self._db.write() as conn:
            for store_id, seq in conn.execute(select(stores.c.id, stores.c.seq)).all():
                conn.execute(update(stores).where(stores.c.id == store_id).values(seq=seq + JUMP, horizon=seq + JUMP))
                conn.execute(meta.delete().where(meta.c.key == RESTORED_KEY + store_id))
                conn.execute(meta.insert().values(key=RESTORED_KEY + store_id, value=str(seq)))
                moved[store_id] = seq
        return moved


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database *source* (which may be in use) at *target*."""
    target.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            # One step (pages=-1): one read transaction, one moment; in WAL mode
            # commits go on meanwhile and the copy does not restart.
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
        finally:
            dst.close()
    finally:
        src.close()


def _copy_blocks(source: Path, target: Path, report: CopyReport) -> set[str]:
    """Copy block files missing in *target*; the relative paths of all source blocks."""
    wanted: set[str] = set()
    made: set[Path] = set()
    for path in _block_files(source):
        rel = _relative(path, source)
        wanted.add(rel)
        final = target / rel
        size = path.stat().st_size
        try:
            if final.stat().st_size == size:
                report.blocks_present += 1
                continue
        except FileNotFoundError:
            pass
        if final.parent not in made:
            final.parent.mkdir(parents=True, exist_ok=True)
            made.add(final.parent)
        temp = final.with_name(final.name + ".partial")
        shutil.copyfile(path, temp)
        os.replace(temp, final)
        report.blocks_copied += 1
        report.bytes_copied += size
    if made:
        os.sync()  # one flush for every copied block, rather than an fsync each
    return wanted


def _block_files(root: Path) -> Iterator[Path]:
    """The block files under a ``blocks`` directory (uploads in flight excluded)."""
    if not root.is_dir():
        return
    for user in sorted(os.scandir(root), key=lambda e: e.name):
        if user.name == _INCOMING or not user.is_dir(follow_symlinks=False):
            continue
        for folder, _dirs, files in os.walk(user.path):
            for name in files:
                if is_block_hash(name):
                    yield Path(folder) / name


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _seqs(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(database)
    try:
        return {row[0]: int(row[1]) for row in conn.execute("SELECT id, seq FROM stores")}
    finally:
        conn.close()
