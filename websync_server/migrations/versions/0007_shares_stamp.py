"""Schema version 7: a stamp per user that moves with their list of shared folders (shares.py)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    # A constant default: SQLite adds the column in place, no table copy; every user starts at 0.
    op.add_column("users", sa.Column("shares_stamp", sa.BigInteger(), nullable=False, server_default="0"))
