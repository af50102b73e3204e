"""Schema migrations with Alembic: each schema version is a revision named by its number.

The ``meta`` table's ``schema_version`` stays the server's record of the
schema; Alembic's ``alembic_version`` table follows it.  Revision ``0002`` is
the schema of the first release (version 2, before migrations existed), so a
database made by that release is *stamped* 0002 on first open and upgraded to
the head.  A new database is created at the head by ``create_all`` and stamped.

To change the schema: edit ``schema.py``, raise ``SCHEMA_VERSION``, and add
``versions/NNNN_what.py`` (``revision = "NNNN"``, ``down_revision`` the one
before) whose ``upgrade()`` turns the previous schema into the new one with
``alembic.op`` (batch operations on SQLite, which can't alter columns).
Migrations run inside the server's opening write transaction: a failure
leaves the database as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["revision_of", "stamp", "upgrade"]

_HERE = Path(__file__).resolve().parent


def revision_of(schema_version: int) -> str:
    """The Alembic revision of a schema version."""
    return f"{schema_version:04d}"


def upgrade(conn: Connection, found: int, target: int) -> None:
    """Migrate the schema on *conn* from version *found* to *target*."""
    from alembic import command  # only here: Alembic takes a quarter second to import, every start

    config = _config(conn)
    command.stamp(config, revision_of(found), purge=True)
    command.upgrade(config, revision_of(target))


def stamp(conn: Connection, version: int) -> None:
    """Record that the schema on *conn* is at *version* (a database created at the head)."""
    from alembic import command

    command.stamp(_config(conn), revision_of(version), purge=True)


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = conn
    return config
