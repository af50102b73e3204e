"""Removing a user with everything of theirs: stores, history, trash, devices, settings and blocks.

The rows go in one write transaction, so a failure leaves the user whole.
Their block folder is then renamed into ``blocks/.incoming`` (one atomic
step: a user of the same name added later starts empty) and deleted there;
blocks an upload in flight puts back under the old name belong to no one and
the collector frees them.
"""

from __future__ import annotations


import shutil
from pathlib import Path

from sqlalchemy import delete, select

from ._exceptions import InvalidRequest
from .accounts import audit
from .blocks import Blocks
from .database import Database
from .schema import batches, devices, entries, meta, nodes, share_blocks, shares, stores, users, versions
from .shares import SHARES_LOCK, touch_stamps

__all__ = ["remove_user"]

def remove_user(db: Database, blocks: Blocks, name: str) -> int:
    """Delete user *name* and all their data; return how many files and folders went with them."""
    with db.write() as conn:
        user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
        if user_id is None:
            raise InvalidRequest(f"there is no user named {name!r}")
        mine = select(stores.c.id).where(stores.c.owner == user_id)
        # Everyone who shares a folder with them sees it go (shares.py); their long polls hear it
        # at once from a server on PostgreSQL, else with their next answer.
        db.lock(conn, SHARES_LOCK)
        member_of = select(shares.c.store).where(shares.c.user_id == user_id)
        folders = conn.execute(select(stores.c.id).where(stores.c.name.is_not(None))
                               .where((stores.c.owner == user_id) | stores.c.id.in_(member_of))).scalars().all()
        touch_stamps(db, conn, folders)
        # Their memberships in others' shared folders go; their own shared folders go with them.
        conn.execute(delete(shares).where(shares.c.user_id == user_id))
        # Children first: entries and versions name nodes, nodes and batches name stores.
        for table in (entries, versions, batches, shares, share_blocks):
            conn.execute(delete(table).where(table.c.store.in_(mine)))
        removed = conn.execute(delete(nodes).where(nodes.c.store.in_(mine), nodes.c.id != "root")).rowcount
        conn.execute(delete(nodes).where(nodes.c.store.in_(mine)))
        conn.execute(delete(stores).where(stores.c.owner == user_id))
        conn.execute(delete(devices).where(devices.c.user_id == user_id))
        conn.execute(delete(meta).where(meta.c.key.startswith(f"u{user_id}.")))  # per-user retention
        conn.execute(delete(users).where(users.c.id == user_id))
    for stored in list(blocks.files(name)):  # a folder or a bucket alike (blocks.Blocks)
        blocks.remove(name, stored.block, older_than_ns=1 << 62)
    root = getattr(blocks, "root", None)
    if isinstance(root, Path):
        shutil.rmtree(root / name, ignore_errors=True)  # the emptied folders of a local block store
    audit.info("user %s removed with %d files and folders and all their devices", name, removed)
    return removed
