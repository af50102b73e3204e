"""Schema version 5: shared folders -- a store's name, its members, the blocks members sent (shares.py)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Nullable without a default: SQLite adds it in place; every existing store is its owner's own.
    op.add_column("stores", sa.Column("name", sa.String(255), nullable=True))
    op.create_index("stores_by_name", "stores", ["owner", "name"], unique=True)
    # The server's create_all made the new tables already, before migrating (database.py).
    if sa.inspect(op.get_bind()).has_table("shares"):
        return
    op.create_table(
        "shares",
        sa.Column("store", sa.String(32), sa.ForeignKey("stores.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("store", "user_id"),
    )
    op.create_index("shares_by_user", "shares", ["user_id"])
    op.create_table(
        "share_blocks",
        sa.Column("store", sa.String(32), sa.ForeignKey("stores.id"), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("store", "hash"),
    )
