"""Per-user bounds on stored bytes and on files and folders, set with ``websync-server user set``.

The rule for bytes: a user is charged for the distinct blocks the server
holds for them (``blocks/USER/``), each once, at its length.  That is every
block of their current files, kept versions and trash, plus uploads not yet
committed until the collector's grace period frees them (gc.py) -- so
copying a file costs nothing, and deleting one frees its bytes only when the
trash and history that still name them expire.  A block upload that would go
past the quota is refused with `QuotaExceeded` (507) before anything is
stored; the client keeps the change queued and sends it once there is room.

The rule for nodes: the live (not deleted) files, folders, links and special
nodes of the user's stores.  A commit that makes more nodes than it deletes,
past the bound, is refused whole.

Counting is cheap on purpose: the bytes on disk of a user with a quota are
summed once (one walk of their block folder), raised by each block stored
here, and summed again once a collection (in this process or another) has
removed blocks -- seen by its generation number (gc.py) when the bounds are
read -- or after `RECOUNT_S` whatever happened.  Bounds are read from the database at
most every `LIMITS_TTL_S`, so ``user set`` on a running server takes effect
within seconds.  Uploads in flight at once may pass the quota by a block each;
with several server processes (PostgreSQL) each counts its own uploads between
recounts, so a user may pass the quota by what the others stored within
`RECOUNT_S`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from ._exceptions import InvalidRequest, QuotaExceeded
from .blocks import Blocks
from .database import Database
from .gc import gc_generation
from .protocol import BlockHash
from .schema import batches, nodes, stores, users

__all__ = ["Limits", "Quotas", "format_size", "parse_size"]

#: Seconds the bounds of a user are used before the database is asked again.
LIMITS_TTL_S = 5.0
#: Seconds after which a user's stored bytes are summed from disk again.
RECOUNT_S = 300.0
#: The ops of a commit that make a live node (protocol.md).
_MAKING_OPS = frozenset({"create", "mkdir", "symlink", "mknod", "restore"})
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """A user's bounds; None: unbounded."""

    bytes: int | None = None
    nodes: int | None = None


def parse_size(text: str) -> int:
    """Bytes of a size such as ``50G``, ``1.5T``, ``700MiB`` or ``4096`` (binary units)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise InvalidRequest(f"{text!r} is not a size; give one like 50G, 700M or 1.5T")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def format_size(n: int) -> str:
    """A size for people, in binary units (``50.0 GiB``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class Quotas:
    """Checks uploads and commits against their user's bounds; blocking calls, for worker threads."""

    def __init__(self, db: Database, blocks: Blocks) -> None:
        self._db = db
        self._blocks = blocks
        self._lock = threading.Lock()  # guards the two dicts' read-modify-write of a user's count
        self._limits: dict[str, tuple[Limits, float]] = {}  # user -> (bounds, when read)
        self._stored: dict[str, tuple[int, float]] = {}  # user -> (bytes on disk, when summed)
        self._generation = -1  # of the collections, when the counts were last found valid

    def limits(self, user: str) -> Limits:
        """The bounds of *user* (read again after `LIMITS_TTL_S`)."""
        cached = self._limits.get(user)
        now = time.monotonic()
        if cached is not None and now - cached[1] < LIMITS_TTL_S:
            return cached[0]
        with self._db.read() as conn:
            row = conn.execute(select(users.c.quota_bytes, users.c.quota_nodes).where(users.c.name == user)).first()
            generation = gc_generation(conn)
        if generation != self._generation:
            self._generation = generation
            self._stored.clear()  # a collection removed blocks: count them again
        found = Limits(row.quota_bytes, row.quota_nodes) if row is not None else Limits()
        self._limits[user] = (found, now)
        return found

    def set_limits(self, user: str, **changes: int | None) -> Limits:
        """Change *user*'s bounds (``bytes=``, ``nodes=``; None removes one) and return those in force."""
        columns = {f"quota_{name}": value for name, value in changes.items()}
        with self._db.write() as conn:
            if conn.execute(select(users.c.id).where(users.c.name == user)).scalar() is None:
                raise InvalidRequest(f"there is no user named {user!r}")
            if columns:
                conn.execute(update(users).where(users.c.name == user).values(**columns))
        self._limits.pop(user, None)
        return self.limits(user)

    def put_block(self, user: str, block: BlockHash, data: bytes | Sequence[bytes]) -> bool:
        """Store a block as `BlockStore.put` does, unless it would take *user* past their byte quota."""
        quota = self.limits(user).bytes
        if quota is None:
            return self._blocks.put(user, block, data)
        size = len(data) if isinstance(data, bytes) else sum(len(piece) for piece in data)
        if self._blocks.size(user, block) is None:
            self._check_room(user, quota, size)
        created = self._blocks.put(user, block, data)
        if created:
            self._count(user, size)
        return created

    def put_blocks(self, user: str, blocks: Sequence[tuple[BlockHash, bytes]]) -> int:
        """Store many blocks as `BlockStore.put_many` does, unless the new ones would take *user* past their quota."""
        quota = self.limits(user).bytes
        if quota is None:
            return self._blocks.put_many(user, blocks)
        sizes = {block: len(data) for block, data in blocks}
        present = self._blocks.sizes(user, sizes)
        adding = sum(size for block, size in sizes.items() if block not in present)
        if adding:
            self._check_room(user, quota, adding)
        created = self._blocks.put_many(user, blocks)
        if created:
            self._count(user, adding)
        return created

    def _count(self, user: str, size: int) -> None:
        with self._lock:
            known = self._stored.get(user)
            if known is not None:
                self._stored[user] = (known[0] + size, known[1])

    def _check_room(self, user: str, quota: int, size: int) -> None:
        used = self.stored_bytes(user)
        if used + size > quota:
            raise QuotaExceeded(
                f"user {user} is over their quota: {format_size(used)} of {format_size(quota)} stored, "
                f"this change needs {format_size(size)} more; delete files (the trash and old versions count "
                "until they expire) or ask the server's owner for more room"
            )

    def stored_bytes(self, user: str) -> int:
        """The bytes of *user*'s block files, each block once (summed again after `RECOUNT_S`)."""
        known = self._stored.get(user)
        now = time.monotonic()
        if known is not None and now - known[1] < RECOUNT_S:
            return known[0]
        total = sum(stored.size for stored in self._blocks.files(user))  # a folder walk, or a bucket listing
        with self._lock:
            self._stored[user] = (total, now)
        return total

    def check_commit(self, user: str, store: str, batch: Any, ops: Any) -> None:
        """Refuse a commit that would take *user* past their bound on nodes (`QuotaExceeded`).

        A batch the store applied already passes: its commit answers as the
        first time did, so a client that sends it again never hears "refused"
        of a batch that went (and may take the refusal as "not applied").
        """
        bound = self.limits(user).nodes
        if bound is None or not isinstance(ops, list) or not isinstance(batch, str):
            return  # a malformed batch is the commit's to refuse
        # A batch's own deletes count against what it makes: a user at the bound can
        # always replace files and free room, and a batch that makes none passes.
        making = sum(1 for op in ops if isinstance(op, dict) and op.get("op") in _MAKING_OPS)
        making -= sum(1 for op in ops if isinstance(op, dict) and op.get("op") == "delete")
        if making <= 0:
            return
        with self._db.read() as conn:
            if conn.execute(select(batches.c.seq).where(batches.c.store == store, batches.c.batch == batch)).first():
                return
            owner = select(stores.c.owner).where(stores.c.id == store).scalar_subquery()
            mine = select(stores.c.id).where(stores.c.owner == owner)
            # Each store's root is a node the user never made: not counted.
            live = conn.execute(
                select(func.count()).select_from(nodes)
                .where(nodes.c.store.in_(mine), nodes.c.deleted.is_(False), nodes.c.id != "root")
            ).scalar_one()  # fmt: skip
        if live + making > bound:
            raise QuotaExceeded(
                f"user {user} is at their bound of {bound} files and folders ({live} exist); "
                "delete some or ask the server's owner for a higher bound"
            )
