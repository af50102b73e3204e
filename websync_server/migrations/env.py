"""Alembic's environment: migrations run on the connection the server hands over (see __init__)."""

from __future__ import annotations

from alembic import context

from websync_server.schema import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters a table by copying it; Alembic does that in batch mode.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
