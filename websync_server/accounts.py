"""Users, their passwords and their devices' bearer tokens.

Passwords are kept only as argon2id hashes.  A login creates a device: a fresh
random token (``secrets.token_urlsafe(32)``, 256 bits) of which the database
keeps only the SHA-256, so a stolen copy of the database yields no token.  A
fast hash is right for tokens (unlike passwords they are random and long) and
lets every request be authenticated by one indexed lookup.

Each login makes a new device row, so two clients on one host that log in with
the same device name both keep working -- under different names: a device name
is unique among a user's live devices, and a name that is taken comes back with
a suffix (``vm``, ``vm-2``, ``vm-3``), which the answer carries.  A login that
presents the token it replaces (``replaces``: the same machine logging in
again) may take that device's name again.

A token that authenticated is remembered for `TOKEN_TRUST_S` seconds, so the
requests of a busy client (a block read is one request of ~2 ms) skip the
database and a trip to a worker thread.  The price: a token revoked from
another process (`websync-server user revoke`) keeps working that long.

Once that trust has run out, a token trusted within the last
`TOKEN_RECHECK_S` is still answered at once while the database is asked again
beside the request (`recheck`): a client back from a pause does not wait for
the database, which after a pause may have to come from disk (3-4 ms of a
5 ms cold block read here).  A revoked token is refused from the end of that
one check on, so revocation from another process takes `TOKEN_TRUST_S` plus
one request.

A device's ``last_seen_ns`` is written when its token is looked up in the
database and the stored time is older than `LAST_SEEN_STEP_S`: a busy device
costs a write every few minutes, not per request.  With a device idle limit
(``serve --device-idle-days``) a token whose device was not seen for that
long is revoked the next time it is shown, and refused.

Logins, devices added and removed, and password changes are audit lines in
the server log (logger ``websync_server.audit``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ._exceptions import InvalidRequest, NotFound, Unauthorized, UserExists
from .database import Database
from .schema import devices, stores, users
from .store import new_store

__all__ = [
    "PASSWORD_MIN",
    "Accounts",
    "DeviceInfo",
    "Identity",
    "Login",
    "UserInfo",
    "check_password_strength",
    "validate_user_name",
]

audit = logging.getLogger("websync_server.audit")
# A user's own store, not the shared folders they own (those have a name, shares.py).
_own_store = (stores.c.owner == users.c.id) & stores.c.name.is_(None)

# User names become directory names (blocks/<user>/), on file systems that may
# ignore case: lower-case ASCII only, and never a dot-file.
_USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEVICE_NAME_MAX = 255
#: Seconds an authenticated token is trusted without asking the database again.
TOKEN_TRUST_S = 2.0
#: Seconds after its trust ran out that a token is answered at once and checked beside the request.
TOKEN_RECHECK_S = 600.0
#: Seconds a token is trusted while its recheck runs, so requests arriving meanwhile start no more.
_RECHECK_GRACE_S = 1.0
_TRUSTED_MAX = 10_000
#: Seconds of resolution of a device's "last seen": the stored time is renewed once it is older.
LAST_SEEN_STEP_S = 600.0
#: Shortest password a person may choose (NIST SP 800-63B), and the longest one
#: hashed (argon2 takes any length; a megabyte password only costs us).
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
# The commonest passwords of the big public leaks that pass the length rule.
_COMMON_PASSWORDS = frozenset(
    "password password1 password123 12345678 123456789 1234567890 12345678910 qwertyuiop qwerty123 "
    "iloveyou princess sunshine football baseball superman starwars trustno1 welcome1 passw0rd "
    "abc12345 11111111 00000000 88888888 987654321 1q2w3e4r 1qaz2wsx zaq12wsx letmein1 changeme "
    "basketball whatever computer internet michael1 jennifer websync websync1".split()
)


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to: a device of a user, and that user's store."""

    user_id: int
    user: str
    device_id: int
    device: str
    store: str


@dataclass(frozen=True)
class Login:
    """A successful login: the new device's token (shown once) and its identity."""

    token: str
    identity: Identity


@dataclass(frozen=True)
class DeviceInfo:
    """A logged-in device as ``websync devices`` shows it."""

    id: int
    name: str
    created_ns: int
    last_seen_ns: int  # the login time if never seen since

    def to_wire(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "created_ns": self.created_ns, "last_seen_ns": self.last_seen_ns}


@dataclass(frozen=True)
class UserInfo:
    """A user as ``websync-server user list`` shows it."""

    name: str
    store: str
    devices: int
    created_ns: int


def validate_user_name(name: str) -> str:
    """Return *name* if it can name a user, else raise `InvalidRequest`."""
    if not _USER_NAME_RE.match(name):
        raise InvalidRequest(
            f"{name!r} can't be a user name: use 1 to 64 lower-case letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def check_password_strength(user: str, password: str) -> str:
    """Return *password* if it is strong enough for an account on the internet, else raise `InvalidRequest`.

    NIST SP 800-63B's rules for chosen passwords: at least `PASSWORD_MIN`
    characters, no upper bound worth meeting, and none of the passwords every
    guesser tries first.  Composition rules (a digit, a capital) only make
    passwords harder to remember, not to guess.
    """
    if len(password) < PASSWORD_MIN:
        raise InvalidRequest(f"the password must have at least {PASSWORD_MIN} characters")
    if len(password.encode("utf-8", "replace")) > PASSWORD_MAX:
        raise InvalidRequest(f"the password must have at most {PASSWORD_MAX} bytes")
    folded = password.casefold()
    if folded in _COMMON_PASSWORDS or folded == user.casefold() or len(set(folded)) < 3:
        raise InvalidRequest("that password is among the first that anyone guesses; choose another")
    return password


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Accounts:
    """Users and devices in the metadata database."""

    def __init__(self, db: Database, hasher: PasswordHasher | None = None, device_idle_s: float = 0.0) -> None:
        self._db = db
        self._hasher = hasher or PasswordHasher()
        #: Seconds a device may go unseen before its token stops working; 0: forever.
        self.device_idle_s = device_idle_s
        # digest -> (identity, when it stops being trusted); a dict's single
        # operations are atomic, so worker threads and the loop share it freely.
        self._trusted: dict[str, tuple[Identity, float]] = {}

    @cached_property
    def _dummy_hash(self) -> str:
        # Verified against when the user is unknown, so a wrong user name costs
        # as long as a wrong password and can't be told apart by timing.
        return self._hasher.hash(secrets.token_hex(16))

    def add_user(self, name: str, password: str) -> str:
        """Create a user with *password* and an empty store; return the store id."""
        validate_user_name(name)
        if not password:
            raise InvalidRequest("the password must not be empty")
        password_hash = self._hasher.hash(password)
        try:
            with self._db.write() as conn:
                user_id = conn.execute(
                    insert(users)
                    .values(name=name, password_hash=password_hash, created_ns=time.time_ns())
                    .returning(users.c.id)
                ).scalar_one()
                return new_store(conn, user_id)
        except IntegrityError as exc:
            raise UserExists(f"a user named {name!r} already exists") from exc

    def users(self) -> list[UserInfo]:
        """Every user with their store and number of devices, by name."""
        device_count = (
            select(func.count(devices.c.id))
            .where(devices.c.user_id == users.c.id, devices.c.revoked.is_(False))
            .scalar_subquery()
        )
        query = (
            select(users.c.name, stores.c.id.label("store"), device_count.label("devices"), users.c.created_ns)
            .join(stores, _own_store)
            .order_by(users.c.name)
        )
        with self._db.read() as conn:
            return [UserInfo(r.name, r.store, r.devices, r.created_ns) for r in conn.execute(query)]

    def login(self, user: object, password: object, device: object, replaces: object = None) -> Login:
        """Check a user's password and register a new device; `Unauthorized` if wrong.

        The device gets *device* as its name if no other live device of the
        user has it (but the one whose token *replaces* is), else the first free
        ``device-N``.
        """
        if not isinstance(user, str) or not isinstance(password, str):
            raise InvalidRequest("user and password must be strings")
        if replaces is not None and not isinstance(replaces, str):
            raise InvalidRequest("replaces must be a device token")
        device_name = _check_device_name(device)
        row = None
        if _USER_NAME_RE.match(user):
            with self._db.read() as conn:
                row = conn.execute(
                    select(users.c.id, users.c.password_hash, stores.c.id.label("store"))
                    .join(stores, _own_store)
                    .where(users.c.name == user)
                ).first()
        if not self._verify(row.password_hash if row else None, password):
            raise Unauthorized("wrong user name or password")
        assert row is not None
        token = secrets.token_urlsafe(32)
        with self._db.write() as conn:
            # FOR UPDATE: two logins of one user on PostgreSQL pick names one after the other.
            conn.execute(select(users.c.id).where(users.c.id == row.id).with_for_update())
            device_name = _free_device_name(conn, row.id, device_name, replaces)
            device_id = conn.execute(
                insert(devices)
                .values(
                    user_id=row.id, name=device_name, token_sha256=_token_digest(token),
                    created_ns=time.time_ns(), revoked=False,
                )
                .returning(devices.c.id)
            ).scalar_one()  # fmt: skip
            audit.info("device %r (%d) of user %s added", device_name, device_id, user)
            if self._hasher.check_needs_rehash(row.password_hash):
                # Hash parameters were raised since this password was set.
                conn.execute(
                    update(users).where(users.c.id == row.id).values(password_hash=self._hasher.hash(password))
                )
        return Login(token, Identity(row.id, user, device_id, device_name, row.store))

    def authenticate(self, token: str) -> Identity:
        """The identity a bearer token belongs to; `Unauthorized` for an unknown or revoked one."""
        digest = _token_digest(token)
        query = (
            select(
                users.c.id.label("user_id"), users.c.name.label("user"), devices.c.id.label("device_id"),
                devices.c.name.label("device"), stores.c.id.label("store"), devices.c.created_ns,
                devices.c.last_seen_ns,
            )
            .join(users, users.c.id == devices.c.user_id)
            .join(stores, _own_store)
            .where(devices.c.token_sha256 == digest, devices.c.revoked.is_(False))
        )  # fmt: skip
        with self._db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise Unauthorized("the token is unknown or was revoked; log in again")
        identity = Identity(row.user_id, row.user, row.device_id, row.device, row.store)
        self._seen(identity, row.last_seen_ns or row.created_ns)
        if len(self._trusted) >= _TRUSTED_MAX:
            self._trusted.clear()
        self._trusted[digest] = (identity, time.monotonic() + TOKEN_TRUST_S)
        return identity

    def trusted(self, token: str) -> Identity | None:
        """The identity of a token that authenticated within `TOKEN_TRUST_S`; None: ask `authenticate`."""
        found = self._trusted.get(_token_digest(token))
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def recheck_due(self, token: str) -> Identity | None:
        """The identity of a token whose trust ran out less than `TOKEN_RECHECK_S` ago; None otherwise.

        The caller answers with it and calls `recheck` beside the request; until
        that ends (at most `_RECHECK_GRACE_S`) the token counts as trusted, so the
        requests arriving meanwhile start no second check.
        """
        digest = _token_digest(token)
        found = self._trusted.get(digest)
        now = time.monotonic()
        if found is None or found[1] + TOKEN_RECHECK_S < now:
            return None
        self._trusted[digest] = (found[0], now + _RECHECK_GRACE_S)
        return found[0]

    def recheck(self, token: str) -> None:
        """Ask the database about a token again: trusted anew, or forgotten if it fails (revoked, or no answer)."""
        try:
            self.authenticate(token)
        except BaseException:
            self._trusted.pop(_token_digest(token), None)
            raise

    def _seen(self, identity: Identity, last_ns: int) -> None:
        """Refuse a device idle for longer than allowed (revoking it); renew its last-seen time."""
        now = time.time_ns()
        if self.device_idle_s and now - last_ns > self.device_idle_s * 1e9:
            self.revoke_device(identity, identity.device_id, why="unseen for too long")
            days = self.device_idle_s / 86400
            raise Unauthorized(f"this device was not seen for over {days:g} days and was logged out; log in again")
        # Finer than the idle limit, so a device in use is never taken for an idle one.
        if now - last_ns > min(LAST_SEEN_STEP_S, self.device_idle_s / 10 or LAST_SEEN_STEP_S) * 1e9:
            with self._db.write() as conn:
                conn.execute(update(devices).where(devices.c.id == identity.device_id).values(last_seen_ns=now))

    def devices(self, user_id: int) -> list[DeviceInfo]:
        """The logged-in devices of a user, oldest login first."""
        query = (
            select(devices.c.id, devices.c.name, devices.c.created_ns, devices.c.last_seen_ns)
            .where(devices.c.user_id == user_id, devices.c.revoked.is_(False))
            .order_by(devices.c.id)
        )
        with self._db.read() as conn:
            return [DeviceInfo(r.id, r.name, r.created_ns, r.last_seen_ns or r.created_ns) for r in conn.execute(query)]

    def revoke_device(self, owner: Identity, device_id: int, *, why: str) -> str:
        """Log out one device of *owner*'s user; return its name.  `NotFound` if the user has no such live device."""
        with self._db.write() as conn:
            name = conn.execute(
                update(devices)
                .where(devices.c.id == device_id, devices.c.user_id == owner.user_id, devices.c.revoked.is_(False))
                .values(revoked=True)
                .returning(devices.c.name)
            ).scalar()
        if name is None:
            raise NotFound(f"no logged-in device has the id {device_id}")
        self._trusted.clear()  # revoked here: at once, not after TOKEN_TRUST_S
        audit.info("device %r (%d) of user %s removed: %s", name, device_id, owner.user, why)
        return str(name)

    def change_password(self, user: str, old: str, new: str, device: object = None) -> None:
        """Replace *user*'s password *old* (checked as a login would be) with *new*; `Unauthorized` if wrong."""
        check_password_strength(user, new)
        if len(old.encode("utf-8", "replace")) > PASSWORD_MAX:
            raise Unauthorized("the current password is wrong")  # no password this long was ever set: not hashed
        with self._db.read() as conn:
            stored = conn.execute(select(users.c.password_hash).where(users.c.name == user)).scalar()
        if not self._verify(stored, old):
            raise Unauthorized("the current password is wrong")
        self.set_password(user, new)
        audit.info("password of user %s changed from device %r", user, device)

    def set_password(self, name: str, password: str) -> None:
        """Give user *name* a new password; the devices logged in stay logged in."""
        password_hash = self._hasher.hash(password)
        with self._db.write() as conn:
            result = conn.execute(update(users).where(users.c.name == name).values(password_hash=password_hash))
        if result.rowcount == 0:
            raise InvalidRequest(f"there is no user named {name!r}")

    def revoke_devices(self, name: str) -> int:
        """Revoke every token of user *name*; return how many were live."""
        with self._db.write() as conn:
            user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
            if user_id is None:
                raise InvalidRequest(f"there is no user named {name!r}")
            result = conn.execute(
                update(devices).where(devices.c.user_id == user_id, devices.c.revoked.is_(False)).values(revoked=True)
            )
        self._trusted.clear()  # revoked here: at once, not after TOKEN_TRUST_S
        audit.info("all %d device(s) of user %s removed", result.rowcount, name)
        return result.rowcount

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def _free_device_name(conn: Connection, user_id: int, wanted: str, replaces: str | None) -> str:
    """*wanted*, or the first ``wanted-N`` that no live device of the user has (but *replaces*)."""
    query = select(devices.c.name).where(
        devices.c.user_id == user_id, devices.c.revoked.is_(False),
        (devices.c.name == wanted) | devices.c.name.startswith(f"{wanted}-", autoescape=True),
    )  # fmt: skip
    if replaces is not None:
        query = query.where(devices.c.token_sha256 != _token_digest(replaces))
    taken = set(conn.execute(query).scalars())
    name, n = wanted, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        # Cut the wanted name (by characters, so the UTF-8 stays whole) until the suffix fits.
        base = wanted
        while len((base + suffix).encode("utf-8")) > DEVICE_NAME_MAX:
            base = base[:-1]
        name = base + suffix
    return name


def _check_device_name(device: object) -> str:
    if not isinstance(device, str) or not device or not device.isprintable():
        raise InvalidRequest("device must be a non-empty printable name")
    if len(device.encode("utf-8")) > DEVICE_NAME_MAX:
        raise InvalidRequest(f"device name is longer than {DEVICE_NAME_MAX} bytes")
    return device
