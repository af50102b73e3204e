"""Schema version 3: indexes the collector's retention queries use (gc.py)."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Old versions are purged by replacement time, the journal horizon found by commit time:
    # without these each daily collection would read every version and batch row.
    op.create_index("versions_by_replaced", "versions", ["store", "replaced_ns"])
    op.create_index("batches_by_time", "batches", ["store", "time_ns"])
