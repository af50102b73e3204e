"""Schema version 5: the owner and group of each node (NULL: the store's owner)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Nullable columns without defaults: SQLite adds them in place, no table copy, and
    # every node of before is the store owner's, as every machine showed it.
    op.add_column("nodes", sa.Column("uid", sa.BigInteger(), nullable=True))
    op.add_column("nodes", sa.Column("gid", sa.BigInteger(), nullable=True))
