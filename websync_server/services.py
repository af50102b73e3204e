"""The server's components wired together over one data directory.

This is the only module that knows every layer: the HTTP app and the CLI get
their database, accounts, metadata store, block store and notifier from here.

Data directory layout::

    DATA/websync.db      metadata (SQLite, WAL: also websync.db-wal, -shm)
    DATA/blocks/USER/ab/cd/HASH
    DATA/blocks/.incoming/   temporary files of uploads in flight
    DATA/server.log      the server's log (written by the CLI)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

from .accounts import Accounts
from .blocks import BlockStore
from .database import DB_FILENAME, Database, sqlite_url
from .notifier import Notifier
from .store import MetadataStore

__all__ = ["Services", "prepare_data_dir"]

BLOCKS_DIR = "blocks"
LOG_FILENAME = "server.log"


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory if needed (private to its owner) and return it absolute."""
    data_dir = data_dir.expanduser().absolute()
    # 0700: the database holds password hashes and the blocks hold users' files.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
        raise PermissionError(f"the data directory {data_dir} is not writable")
    return data_dir


@dataclass
class Services:
    """Every component of a running server; build with `Services.open`, end with `close`."""

    data_dir: Path
    db: Database
    accounts: Accounts
    store: MetadataStore
    blocks: BlockStore
    notifier: Notifier

    @classmethod
    def open(
        cls, data_dir: Path, *, database_url: str | None = None, hasher: PasswordHasher | None = None
    ) -> Services:
        """Open (creating on first use) the server state in *data_dir*.

        *database_url* replaces the embedded SQLite database, e.g. with a
        PostgreSQL URL; blocks stay in the data directory.
        """
        data_dir = prepare_data_dir(data_dir)
        blocks = BlockStore(data_dir / BLOCKS_DIR)
        blocks.open()
        db = Database.open(database_url or sqlite_url(data_dir / DB_FILENAME))
        notifier = Notifier()
        return cls(
            data_dir=data_dir,
            db=db,
            accounts=Accounts(db, hasher),
            store=MetadataStore(db, blocks, on_commit=notifier.notify),
            blocks=blocks,
            notifier=notifier,
        )

    def close(self) -> None:
        """Release waiters and database connections."""
        self.notifier.close()
        self.db.close()
