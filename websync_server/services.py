"""The server's components wired together over one data directory.

This is the only module that knows every layer: the HTTP app and the CLI get
their database, accounts, metadata store, block store and notifier from here.

Data directory layout::

    DATA/websync.db      metadata (SQLite, WAL: also websync.db-wal, -shm),
                         unless ``--database`` names another database
    DATA/blocks/USER/ab/cd/HASH   unless ``--blocks`` names another folder
    DATA/blocks/.incoming/   temporary files of uploads in flight
    DATA/server.log      the server's log (written by the CLI)
    DATA/gc.lock         held by a collection or a backup (gc.py)

The directory is 0700 and the database and log 0600 (`prepare_data_dir`);
the CLI runs with umask 077, so every file the server makes is private too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from argon2 import PasswordHasher

from .accounts import Accounts
from .admission import Admission
from .blocks import Blocks, BlockStore
from .guesses import Guesses
from .database import DB_FILENAME, Database, sqlite_url
from .gc import Collector, Schedule
from .notifier import Notifier
from .quotas import Quotas
from .shares import Shares
from .store import MetadataStore

if TYPE_CHECKING:
    from .listener import Listener

__all__ = ["Services", "prepare_data_dir"]

BLOCKS_DIR = "blocks"
LOG_FILENAME = "server.log"


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory if needed, make it and its secrets private, and return it absolute.

    The database holds password hashes and the blocks hold users' files, so
    the directory and its blocks folder are 0700 and the database and log files 0600 whatever they
    were (a restored backup or a copied folder keeps its old modes).  A
    directory that can't be made private (another user's) stops the server
    with the reason rather than serving from it.
    """
    data_dir = data_dir.expanduser().absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
        raise PermissionError(f"the data directory {data_dir} is not writable")
    _make_private(data_dir, 0o700)
    for path in data_dir.iterdir():
        if path.name.startswith((DB_FILENAME, LOG_FILENAME)) and path.is_file():
            _make_private(path, 0o600)
        elif path.name == BLOCKS_DIR and path.is_dir():
            _make_private(path, 0o700)
    return data_dir


def _make_private(path: Path, mode: int) -> None:
    if os.name == "nt":
        return  # NTFS permissions are ACLs: the folder inherits the profile's
    if stat.S_IMODE(path.stat().st_mode) == mode:
        return
    try:
        os.chmod(path, mode)
    except PermissionError as exc:
        raise PermissionError(
            exc.errno, f"can't make {path} private (mode {mode:o}); run the server as its owner"
        ) from exc


def open_blocks(where: Path | str | None, data_dir: Path) -> Blocks:
    """The block store named by ``--blocks`` (a folder or ``s3://...``; default DATA/blocks), opened."""
    from .objects import ObjectBlockStore, is_object_url

    blocks: Blocks
    if isinstance(where, str) and is_object_url(where):
        blocks = ObjectBlockStore(where)
    else:
        blocks = BlockStore(Path(where).expanduser().absolute() if where else data_dir / BLOCKS_DIR)
    blocks.open()
    return blocks


@dataclass
class Services:
    """Every component of a running server; build with `Services.open`, end with `close`."""

    data_dir: Path
    db: Database
    accounts: Accounts
    store: MetadataStore
    blocks: Blocks
    notifier: Notifier
    admission: Admission
    guesses: Guesses
    quotas: Quotas
    shares: Shares
    schedule: Schedule | None = None
    listener: Listener | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        database_url: str | None = None,
        blocks_dir: Path | str | None = None,
        hasher: PasswordHasher | None = None,
        device_idle_s: float = 0.0,
    ) -> Services:
        """Open (creating on first use) the server state in *data_dir*.

        *database_url* replaces the embedded SQLite database, e.g. with a
        PostgreSQL URL; *blocks_dir* replaces ``DATA/blocks`` with another
        folder, or with object storage (``s3://BUCKET[/PREFIX]``, objects.py).
        A device unseen for *device_idle_s* (0: no limit) is logged out.
        """
        data_dir = prepare_data_dir(data_dir)
        blocks = open_blocks(blocks_dir, data_dir)
        db = Database.open(database_url or sqlite_url(data_dir / DB_FILENAME))
        notifier = Notifier()
        return cls(
            data_dir=data_dir,
            db=db,
            accounts=Accounts(db, hasher, device_idle_s),
            store=MetadataStore(db, blocks, on_commit=notifier.notify),
            blocks=blocks,
            notifier=notifier,
            admission=Admission(),
            guesses=Guesses(),
            quotas=Quotas(db, blocks),
            shares=Shares(db, on_change=notifier.wake),
        )

    def listen_for_other_processes(self) -> None:
        """Wake long polls on commits made by other processes too (PostgreSQL only; listener.py)."""
        if self.db.is_sqlite:
            return  # one process per SQLite database: its own commits are all there are
        from .listener import Listener

        self.listener = Listener(self.db.engine.url.render_as_string(hide_password=False), self.notifier)
        self.listener.start()

    def collector(self) -> Collector:
        """A collector of this server's unnamed blocks and expired history (gc.py)."""
        return Collector(self.db, self.blocks)

    def schedule_collection(self, interval_s: float) -> None:
        """Collect every *interval_s* in the background until `close`."""
        self.schedule = Schedule(self.collector(), self.db, self.data_dir, interval_s)
        self.schedule.start()

    def close(self) -> None:
        """Stop the scheduled collection and the listener, release waiters, password threads and database connections."""
        if self.schedule is not None:
            self.schedule.close()
        if self.listener is not None:
            self.listener.close()
        self.notifier.close()
        self.admission.close()
        self.db.close()
