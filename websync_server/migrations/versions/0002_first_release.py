"""Schema version 2, the first release's: the base every later migration starts from."""

from __future__ import annotations

revision = "0002"
down_revision = None


def upgrade() -> None:
    """Nothing: databases at version 2 were made by ``create_all`` of that release."""
