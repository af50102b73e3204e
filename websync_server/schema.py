"""The metadata schema: SQLAlchemy Core tables, and rows turned into wire models.

The same tables serve SQLite (the embedded default) and PostgreSQL, so everything
here is portable Core: no SQLite-only types, defaults or SQL.  The schema is
created with ``create_all`` on first start; the ``meta`` table records its
version, and an older database is migrated with Alembic (``migrations/``).

Invariants the store keeps (``commit.py`` is the only writer of the trees):

- Every store has a ``root`` dir node that is never deleted or renamed.
- An entry with ``node = NULL`` is a tombstone: a removed name, kept so the
  journal can report the removal.  A node with ``deleted`` true is a tombstone
  for the node; it keeps its last content (size, blocks) so it can be restored.
- A node is ``deleted`` exactly when no live entry names it (root excepted).
- ``seq`` of every row is the store seq of the commit that last changed the row,
  and ``stores.seq`` is the highest of them: the journal is "rows with
  ``seq > cursor``", served from the ``(store, seq)`` indexes.
- A directory has at most one live entry (no hard links to directories), which is
  what lets ``rename`` find a directory's ancestors for the cycle check.
- ``nodes.version`` numbers a file's contents: 1 when created, +1 per update;
  each replaced content is a ``versions`` row under its own number, so version
  numbers never change.  ``nodes.device`` is the device that wrote the current
  content.
- A deleted node remembers where it was (``trash_parent``, ``trash_name``,
  ``trash_path``) so the trash can list it and ``restore`` can put it back; the
  commit that deleted it is ``batches`` row ``seq = nodes.seq``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Row

from .protocol import BlockHash, Entry, Node, NodeId

__all__ = [
    "SCHEMA_VERSION",
    "batches",
    "blocks_from_text",
    "blocks_to_text",
    "devices",
    "entries",
    "entry_from_row",
    "meta",
    "metadata",
    "node_from_row",
    "nodes",
    "share_blocks",
    "shares",
    "stores",
    "users",
    "versions",
]

# 2: versions, trash places, hard links, special nodes, extended attributes.
# 3: indexes for the collector's retention queries (migrations/versions/0003_*).
# 4: quotas of users, when each device was last seen (migrations/versions/0004_*).
# 5: shared folders: stores with a name, their members, blocks members sent (0005_shares).
# 6: owner and group of nodes (migrations/versions/0006_owners.py).
# 7: each user's shares stamp (migrations/versions/0007_shares_stamp.py).
SCHEMA_VERSION = 7

metadata = MetaData()

# Ids of nodes are "root" or 32 hex digits; store ids are 32 hex digits.
_ID = String(32)
# PostgreSQL counts VARCHAR length in characters, so 255 holds every name of at
# most 255 UTF-8 bytes (protocol.NAME_MAX); SQLite ignores the length.
_NAME = String(255)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    # argon2 encoded hash (parameters and salt included), never the password.
    Column("password_hash", Text, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    # Bounds set with ``websync-server user set`` (quotas.py); NULL: none.
    Column("quota_bytes", BigInteger, nullable=True),
    Column("quota_nodes", BigInteger, nullable=True),
    # Moved whenever the user's list of shared folders would read otherwise (shares.py).
    Column("shares_stamp", BigInteger, nullable=False, server_default="0"),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    # The name the client chose at login, made unique among the user's live
    # devices at login (accounts.py); no constraint, since revoked devices and
    # rows from before that rule keep theirs.
    Column("name", _NAME, nullable=False),
    # SHA-256 of the bearer token: a copy of the database never yields a token.
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_ns", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False),
    # When the token last authenticated, to `accounts.LAST_SEEN_STEP_S`; NULL: never since login.
    Column("last_seen_ns", BigInteger, nullable=True),
)

stores = Table(
    "stores",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("owner", Integer, ForeignKey("users.id"), nullable=False, index=True),
    # The seq of the store's latest commit; a commit takes seq + 1.
    Column("seq", BigInteger, nullable=False),
    # Tombstones with seq <= horizon may have been purged: a cursor below it
    # can have missed a removal and gets a reset.
    Column("horizon", BigInteger, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    # NULL: the owner's own store (one per user); else a shared folder's name (shares.py).
    Column("name", _NAME, nullable=True),
    # One shared folder per name and owner, also when two requests make it at once
    # (NULLs are distinct here on SQLite and PostgreSQL alike).
    Index("stores_by_name", "owner", "name", unique=True),
)

# The members of a shared folder other than its owner (``stores.owner``).
shares = Table(
    "shares",
    metadata,
    Column("store", _ID, ForeignKey("stores.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("read_only", Boolean, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("store", "user_id"),
    Index("shares_by_user", "user_id"),
)

# Blocks a member uploaded for a shared folder: the owner's block folder holds
# them, and a member's commit may name only these and blocks the folder names.
share_blocks = Table(
    "share_blocks",
    metadata,
    Column("store", _ID, ForeignKey("stores.id"), nullable=False),
    Column("hash", String(64), nullable=False),
    PrimaryKeyConstraint("store", "hash"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("store", _ID, ForeignKey("stores.id"), nullable=False),
    Column("id", _ID, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("mode", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    # JSON array of block hashes; a file's whole block list is read and written
    # together, so a side table would only cost joins.
    Column("blocks", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("device", _NAME, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("written_ns", BigInteger, nullable=False),  # when the current content was committed
    Column("rdev", BigInteger, nullable=False),  # device number of a special node
    Column("xattrs", Text, nullable=False),  # JSON object: user.* name -> base64 value
    # Owner and group as numbers set by chown; NULL: the store's owner (shown as the
    # mounting user on every machine, docs/posix.md).
    Column("uid", BigInteger, nullable=True),
    Column("gid", BigInteger, nullable=True),
    # Where a deleted node was: the entry it lost last and its path then.
    Column("trash_parent", _ID, nullable=True),
    Column("trash_name", _NAME, nullable=True),
    Column("trash_path", Text, nullable=True),
    PrimaryKeyConstraint("store", "id"),
    Index("nodes_by_seq", "store", "seq"),
)

entries = Table(
    "entries",
    metadata,
    Column("store", _ID, nullable=False),
    Column("parent", _ID, nullable=False),
    Column("name", _NAME, nullable=False),
    Column("node", _ID, nullable=True),  # NULL: a removed name (tombstone)
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("store", "parent", "name"),
    ForeignKeyConstraint(["store", "parent"], ["nodes.store", "nodes.id"]),
    # MATCH SIMPLE: not checked while node is NULL, which is what tombstones need.
    ForeignKeyConstraint(["store", "node"], ["nodes.store", "nodes.id"]),
    Index("entries_by_seq", "store", "seq"),
    Index("entries_by_node", "store", "node"),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("store", _ID, nullable=False),
    Column("node", _ID, nullable=False),
    # The replaced content as it was: its number, the node's seq then, size,
    # blocks, mtime, the device that wrote it and when (server clock).
    Column("version", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("blocks", Text, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("device", _NAME, nullable=False),
    Column("written_ns", BigInteger, nullable=False),
    # The commit that replaced it, and when.
    Column("replaced_seq", BigInteger, nullable=False),
    Column("replaced_ns", BigInteger, nullable=False),
    ForeignKeyConstraint(["store", "node"], ["nodes.store", "nodes.id"]),
    Index("versions_by_node", "store", "node"),
    Index("versions_by_replaced", "store", "replaced_ns"),
)

batches = Table(
    "batches",
    metadata,
    Column("store", _ID, ForeignKey("stores.id"), nullable=False),
    Column("batch", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("device", _NAME, nullable=False),
    Column("time_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("store", "batch"),
    # When and by whom commit N was made: version times, trash entries.
    Index("batches_by_seq", "store", "seq"),
    Index("batches_by_time", "store", "time_ns"),
)


def blocks_to_text(blocks: tuple[BlockHash, ...] | list[BlockHash]) -> str:
    """The ``blocks`` column's JSON text for a block list."""
    return json.dumps(list(blocks), separators=(",", ":"))


def blocks_from_text(text: str) -> tuple[BlockHash, ...]:
    """The block list stored in a ``blocks`` column."""
    return tuple(BlockHash(h) for h in json.loads(text))


def node_from_row(row: Row[Any]) -> Node:
    """The wire model of a ``nodes`` row."""
    return Node(
        id=NodeId(row.id),
        kind=row.kind,
        mode=row.mode,
        size=row.size,
        mtime_ns=row.mtime_ns,
        seq=row.seq,
        blocks=() if row.blocks == "[]" else blocks_from_text(row.blocks),  # the common case, without a parse
        target=row.target,
        deleted=bool(row.deleted),
        device=row.device,
        rdev=row.rdev,
        xattrs={} if row.xattrs == "{}" else json.loads(row.xattrs),
        uid=row.uid,
        gid=row.gid,
    )


def entry_from_row(row: Row[Any]) -> Entry:
    """The wire model of an ``entries`` row."""
    return Entry(
        parent=NodeId(row.parent),
        name=row.name,
        node=NodeId(row.node) if row.node is not None else None,
        seq=row.seq,
    )
