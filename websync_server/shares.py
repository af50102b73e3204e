"""Shared folders: a store of its own, owned by the sharer, with members who may read or also write.

A shared folder is a store like a user's own (``stores`` row, its own tree,
journal, history and trash), told apart by its ``name``.  Its owner is the user
who made it: the owner's quota pays for it (its blocks lie in the owner's block
folder, its nodes count among the owner's), the owner adds and removes members,
and the owner's retention settings apply.  Members are rows of ``shares``; a
read-only member may read everything of the store and change nothing.

Blocks.  Knowing a hash must not let anyone read another user's bytes
(blocks.py), and a member reaches the owner's block folder only through the
shared folder, so a member:

- reads a block only if the folder names it (a file, a kept version or the
  trash);
- hears "present" from ``blocks/missing`` only for such blocks and for blocks
  a member sent for this folder (``share_blocks``; the collector drops a row
  with the block it frees), so asking never tells whether the owner holds
  some content elsewhere;
- commits only blocks of those two kinds, so no member can name a hash of the
  owner's private files and then read it through the folder;
- always hears "stored" (201) from an upload, whether the block was new.

Stamp.  Each user has a ``shares_stamp`` that moves, in the transaction that
changes them, whenever their `Shares.listed` would read otherwise: a folder
made or shared with them, a member added or removed, a mode changed, an owner
or member removed with their account (removal.py).  The answer to ``changes``
of their own store carries it, so a running client learns of the change with
its next answer; after the commit every long poll of their own stores (and of
the folder's) is woken, in every server process (notifier.py, listener.py).
Changes of membership take one lock (`SHARES_LOCK`): each moves the stamps of
several users, and two such transactions locking user rows in opposite orders
would deadlock on PostgreSQL.

The blocks a folder names are read from the database once and kept with the
store's seq; a block not among them is looked up again only if the folder has
had commits since, and then only in the rows those commits wrote.  Blocks the
folder named once stay readable to members after its history lets them go
(they saw them then).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select, union, update

from ._exceptions import Forbidden, InvalidRequest, NotFound
from .database import Database
from .protocol import BlockHash, InvalidName, validate_name
from .schema import blocks_from_text, nodes, share_blocks, shares, stores, users, versions
from .store import new_store

__all__ = ["SHARES_LOCK", "Access", "Member", "ShareInfo", "Shares", "touch_stamps"]

audit = logging.getLogger("websync_server.audit")

#: Members of one shared folder, and shared folders one user owns: a household's sizes, with room.
MEMBERS_MAX = 64
SHARES_MAX = 256
_NAMED_CACHE_MAX = 1024  # shared folders whose block sets are kept in memory
#: Hashes asked about in one statement: SQLite takes at most 32,766 values in one, and a
#: member's "which blocks are missing" may name 250,000.
_IN_MAX = 1000
#: Held by every transaction that moves shares stamps (`Database.lock`).
SHARES_LOCK = "websync.shares"


@dataclass(frozen=True)
class Access:
    """What a user may do with a store: its owner's id and name (whose blocks and quota), and how."""

    owner_id: int
    owner: str
    member: bool  # not the owner
    read_only: bool
    folder: str = ""  # the shared folder's name (a member's messages name it)


@dataclass(frozen=True)
class Member:
    """A member of a shared folder."""

    user: str
    read_only: bool

    def to_wire(self) -> dict[str, object]:
        return {"user": self.user, "read_only": self.read_only}


@dataclass(frozen=True)
class ShareInfo:
    """A shared folder as its owner and members see it."""

    store: str
    name: str
    owner: str
    read_only: bool  # for the one asking
    members: tuple[Member, ...]

    def to_wire(self) -> dict[str, object]:
        return {"store": self.store, "name": self.name, "owner": self.owner, "read_only": self.read_only,
                "members": [m.to_wire() for m in self.members]}  # fmt: skip


class Shares:
    """Shared folders on a `Database`: membership, access checks and the blocks members may use."""

    def __init__(self, db: Database, on_change: Callable[[Collection[str]], None] | None = None) -> None:
        self._db = db
        #: Told, after the commit, the stores whose long polls must hear that shares changed (`Notifier.wake`).
        self.on_change = on_change or (lambda stores: None)
        self._lock = threading.Lock()
        self._named: dict[str, tuple[int, frozenset[str]]] = {}  # store -> (seq, blocks it names)

    # -- membership ------------------------------------------------------------

    def share(self, owner_id: int, owner: str, name: object, member: object, read_only: object) -> ShareInfo:
        """Share folder *name* of *owner* with *member*: made on first use, a member's mode changed later."""
        if not isinstance(name, str) or not isinstance(member, str) or not isinstance(read_only, bool):
            raise InvalidRequest("name and user must be strings, read_only true or false")
        try:
            validate_name(name)
        except InvalidName as exc:
            raise InvalidRequest(f"a shared folder's name: {exc}") from None
        if member == owner:
            raise InvalidRequest("a folder is shared with other users; its owner has it already")
        info, woken = self._add(owner_id, name, member, read_only)
        self.on_change(woken)
        mode = "read-only" if read_only else "read-write"
        audit.info("folder %r (%s) of user %s shared with user %s, %s", name, info.store, owner, member, mode)
        return info

    def _add(self, owner_id: int, name: str, member: str, read_only: bool) -> tuple[ShareInfo, list[str]]:
        """Make folder *name* if needed and put *member* in it with *read_only*, in one transaction.

        Also the stores to wake: none when nothing changed.
        """
        with self._db.write() as conn:
            # Two requests of one owner on PostgreSQL make a folder and add members one after the other.
            self._db.lock(conn, SHARES_LOCK)
            member_id = conn.execute(select(users.c.id).where(users.c.name == member)).scalar()
            if member_id is None:
                raise NotFound(f"there is no user named {member!r} on this server")
            store = self._owned(conn, owner_id, name) or self._make(conn, owner_id, name)
            existing = conn.execute(
                select(shares.c.read_only).where(shares.c.store == store, shares.c.user_id == member_id)
            ).first()
            woken: list[str] = []
            if existing is None:
                count = conn.execute(select(func.count()).where(shares.c.store == store)).scalar_one()
                if count >= MEMBERS_MAX:
                    raise InvalidRequest(f"a folder is shared with at most {MEMBERS_MAX} users")
                conn.execute(insert(shares).values(store=store, user_id=member_id, read_only=read_only,
                                                   created_ns=time.time_ns()))  # fmt: skip
                woken = touch_stamps(self._db, conn, [store])
            elif bool(existing.read_only) != read_only:
                conn.execute(update(shares).where(shares.c.store == store, shares.c.user_id == member_id)
                             .values(read_only=read_only))  # fmt: skip
                woken = touch_stamps(self._db, conn, [store])
            return self._info(conn, store, owner_id), woken

    def unshare(self, caller_id: int, caller: str, store: str, member: str) -> None:
        """Remove *member* from shared folder *store*: its owner removes anyone, a member only themself."""
        with self._db.write() as conn:
            self._db.lock(conn, SHARES_LOCK)
            row = conn.execute(select(stores.c.owner, stores.c.name).where(stores.c.id == store)).first()
            member_id = conn.execute(select(users.c.id).where(users.c.name == member)).scalar()
            if row is None or row.name is None or not self._may_see(conn, caller_id, store, row.owner):
                raise NotFound(f"there is no shared folder {store}")
            if caller_id != row.owner and caller_id != member_id:
                raise Forbidden("only the folder's owner removes other members")
            woken = touch_stamps(self._db, conn, [store])  # the member leaving too, so before the delete
            removed = conn.execute(delete(shares).where(shares.c.store == store, shares.c.user_id == member_id))
            if member_id is None or removed.rowcount == 0:
                raise NotFound(f"user {member!r} is not a member of shared folder {row.name!r}")
        # The removed member's polls of the folder go back and hear 403 now, not when their wait runs out.
        self.on_change(woken)
        audit.info("folder %r (%s) no longer shared with user %s: removed by user %s", row.name, store, member, caller)

    def stamp(self, user_id: int) -> int:
        """*user_id*'s shares stamp: it moves whenever `listed` would read otherwise."""
        with self._db.read() as conn:
            return int(conn.execute(select(users.c.shares_stamp).where(users.c.id == user_id)).scalar() or 0)

    def listed(self, user_id: int) -> list[ShareInfo]:
        """The shared folders *user_id* owns or is a member of, by name."""
        with self._db.read() as conn:
            member_of = select(shares.c.store).where(shares.c.user_id == user_id)
            found = conn.execute(
                select(stores.c.id).where(stores.c.name.is_not(None))
                .where((stores.c.owner == user_id) | stores.c.id.in_(member_of))
                .order_by(stores.c.name, stores.c.id)
            ).scalars().all()  # fmt: skip
            return [self._info(conn, store, user_id) for store in found]

    def access(self, user_id: int, store: str) -> Access:
        """How *user_id* may use *store*: `NotFound` for no such store, `Forbidden` for one not theirs."""
        with self._db.read() as conn:
            row = conn.execute(
                select(stores.c.owner, users.c.name, shares.c.read_only, stores.c.name.label("folder"))
                .join(users, users.c.id == stores.c.owner)
                .outerjoin(shares, (shares.c.store == stores.c.id) & (shares.c.user_id == user_id))
                .where(stores.c.id == store)
            ).first()  # fmt: skip
        if row is None:
            raise NotFound(f"there is no store {store}")
        if row.owner == user_id:
            return Access(row.owner, row.name, member=False, read_only=False)
        if row.read_only is None:
            raise Forbidden(f"store {store} belongs to another user")
        return Access(row.owner, row.name, member=True, read_only=bool(row.read_only), folder=str(row.folder or store))

    def check_reachable(self, user_id: int, wanted: Iterable[str]) -> None:
        """Refuse (`Forbidden`) unless *user_id* owns or is a member of every store in *wanted*."""
        wanted = set(wanted)
        with self._db.read() as conn:
            member_of = select(shares.c.store).where(shares.c.user_id == user_id)
            found = set(conn.execute(
                select(stores.c.id).where(stores.c.id.in_(wanted))
                .where((stores.c.owner == user_id) | stores.c.id.in_(member_of))
            ).scalars())  # fmt: skip
        for store in sorted(wanted - found):
            raise Forbidden(f"store {store} is neither yours nor shared with you")

    def _owned(self, conn: Connection, owner_id: int, name: str) -> str | None:
        return conn.execute(select(stores.c.id).where(stores.c.owner == owner_id, stores.c.name == name)).scalar()

    def _make(self, conn: Connection, owner_id: int, name: str) -> str:
        owned = conn.execute(
            select(func.count()).where(stores.c.owner == owner_id, stores.c.name.is_not(None))
        ).scalar_one()
        if owned >= SHARES_MAX:
            raise InvalidRequest(f"a user owns at most {SHARES_MAX} shared folders")
        return new_store(conn, owner_id, name)

    def _may_see(self, conn: Connection, user_id: int, store: str, owner_id: int) -> bool:
        return user_id == owner_id or conn.execute(
            select(shares.c.store).where(shares.c.store == store, shares.c.user_id == user_id)
        ).first() is not None

    def _info(self, conn: Connection, store: str, viewer_id: int) -> ShareInfo:
        row = conn.execute(
            select(stores.c.name, users.c.name.label("owner")).join(users, users.c.id == stores.c.owner)
            .where(stores.c.id == store)
        ).one()  # fmt: skip
        members = conn.execute(
            select(users.c.id, users.c.name, shares.c.read_only).join(users, users.c.id == shares.c.user_id)
            .where(shares.c.store == store).order_by(users.c.name)
        ).all()  # fmt: skip
        read_only = any(m.id == viewer_id and m.read_only for m in members)
        listed = tuple(Member(m.name, bool(m.read_only)) for m in members)
        return ShareInfo(store, row.name, row.owner, read_only, listed)

    # -- blocks ------------------------------------------------------------------

    def readable(self, store: str, blocks: Iterable[BlockHash]) -> set[BlockHash]:
        """Those of *blocks* a member may read through *store*: the ones it names."""
        wanted = set(blocks)
        named = self._named_blocks(store, refresh=False)
        if not wanted <= named:
            named = self._named_blocks(store, refresh=True)
        return {b for b in wanted if b in named}

    def usable(self, store: str, blocks: Iterable[BlockHash]) -> set[BlockHash]:
        """Those of *blocks* a member may name in a commit to *store*: named by it, or sent for it."""
        wanted = set(blocks)
        found = self.readable(store, wanted)
        rest = wanted - found
        if rest:
            with self._db.read() as conn:
                found.update(BlockHash(h) for h in self._sent(conn, store, rest))
        return found

    def check_usable(self, store: str, blocks: Iterable[BlockHash]) -> None:
        """Refuse a member's commit naming a block neither the folder nor its members' uploads have."""
        wanted = set(blocks)
        for block in sorted(wanted - self.usable(store, wanted)):
            raise InvalidRequest(f"block {block} is not on the server; upload it before committing")

    def record_upload(self, store: str, blocks: Iterable[BlockHash]) -> None:
        """Remember that a member sent *blocks* for *store*."""
        with self._db.write() as conn:
            known = self._sent(conn, store, set(blocks))
            new = [{"store": store, "hash": b} for b in set(blocks) - known]
            if new:
                conn.execute(insert(share_blocks), new)

    @staticmethod
    def _sent(conn: Connection, store: str, blocks: set[BlockHash]) -> set[str]:
        """Those of *blocks* members sent for *store*, asked _IN_MAX at a time."""
        wanted = sorted(blocks)
        sent: set[str] = set()
        for start in range(0, len(wanted), _IN_MAX):
            part = wanted[start:start + _IN_MAX]
            sent.update(conn.execute(select(share_blocks.c.hash).where(
                share_blocks.c.store == store, share_blocks.c.hash.in_(part))).scalars())  # fmt: skip
        return sent

    def _named_blocks(self, store: str, *, refresh: bool) -> frozenset[str]:
        with self._lock:
            cached = self._named.get(store)
        if cached is not None and not refresh:
            return cached[1]
        with self._db.read() as conn:
            seq = conn.execute(select(stores.c.seq).where(stores.c.id == store)).scalar()
            if seq is None:
                return frozenset()
            if cached is not None and cached[0] == seq:
                return cached[1]
            # Only what changed since the set was read: content written since, and content
            # replaced since (a version made of a state the set may never have seen).
            since = cached[0] if cached is not None else -1
            lists = conn.execute(union(
                select(nodes.c.blocks).where(nodes.c.store == store, nodes.c.seq > since, nodes.c.blocks != "[]"),
                select(versions.c.blocks).where(versions.c.store == store, versions.c.replaced_seq > since),
            )).scalars()  # fmt: skip
            named: frozenset[str] = frozenset(h for text in lists for h in blocks_from_text(text))
            if cached is not None:
                named |= cached[1]
        with self._lock:
            if len(self._named) >= _NAMED_CACHE_MAX:
                self._named.clear()
            self._named[store] = (seq, named)
        return named


def touch_stamps(db: Database, conn: Connection, folders: Iterable[str]) -> list[str]:
    """Move the shares stamps of the owners and members of shared *folders*, in *conn*'s transaction.

    Returns the stores whose long polls must hear it (each such user's own
    store, and the folders), announced to the other server processes for when
    the transaction commits; the caller wakes its own process after the commit.
    Call with `SHARES_LOCK` held, before deleting the rows that name the users.
    """
    folders = list(folders)
    if not folders:
        return []
    owners = select(stores.c.owner).where(stores.c.id.in_(folders))
    members = select(shares.c.user_id).where(shares.c.store.in_(folders))
    concerned = union(owners, members).subquery()
    ids = select(concerned.c[0])
    conn.execute(update(users).where(users.c.id.in_(ids)).values(shares_stamp=users.c.shares_stamp + 1))
    own = conn.execute(select(stores.c.id).where(stores.c.owner.in_(ids), stores.c.name.is_(None))).scalars()
    woken = sorted({*own, *folders})
    db.announce_wake(conn, woken)
    return woken
