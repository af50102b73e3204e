"""Schema version 4: users' quotas and when each device was last seen (quotas.py, accounts.py)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # Nullable columns without defaults: SQLite adds them in place, no table copy.
    op.add_column("users", sa.Column("quota_bytes", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("quota_nodes", sa.BigInteger(), nullable=True))
    op.add_column("devices", sa.Column("last_seen_ns", sa.BigInteger(), nullable=True))
    # Devices of before were seen at some unknown time: count them seen now, or the
    # idle limit (serve --device-idle-days) would log out at once every machine that
    # logged in long ago and is in daily use.
    op.execute(sa.text("UPDATE devices SET last_seen_ns = :now").bindparams(now=time.time_ns()))
