"""Schema version 6: the owner and group of each node (NULL: the store's owner)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # Nullable columns without defaults: SQLite adds them in place, no table copy, and
    # every node of before is the store owner's, as every machine showed it.
    op.add_column("nodes", sa.Column("uid", sa.BigInteger(), nullable=True))
    op.add_column("nodes", sa.Column("gid", sa.BigInteger(), nullable=True))
