"""How long the server keeps the past: the retention settings, server-wide and per user.

Four settings, kept in the database's ``meta`` table so every process (the
server, ``websync-server gc`` beside it) reads the same ones:

================  =======  ============================================================
setting           default  what it bounds
================  =======  ============================================================
``trash_days``    30       how long a deleted file or folder can be restored
``version_days``  30       how long a replaced version of a file is kept
``journal_days``  30       how long removals stay in the change journal; a machine
                           whose cursor is older gets a ``reset`` and lists again
``grace_hours``   24       how long a block uploaded but named by no commit is kept
                           (a program may hold a big file open that long)
================  =======  ============================================================

The defaults are what Dropbox Basic and Seafile's libraries keep (30 days of
versions and of deleted files).  ``trash_days`` and ``version_days`` may be
set per user (key ``u<ID>.<setting>``); the others are the server's alone.
A collection may override the trash and version settings for one run
(``websync-server gc --trash-days 0``) without changing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import Connection, delete, insert, select

from ._exceptions import InvalidRequest
from .database import Database
from .schema import meta, users

__all__ = ["DAY_NS", "SETTINGS", "USER_SETTINGS", "Retention", "read_retention", "user_names", "write_setting"]

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9

#: Every setting and its default.
SETTINGS: dict[str, float] = {"trash_days": 30, "version_days": 30, "journal_days": 30, "grace_hours": 24}
#: The settings a user may have a value of their own for.
USER_SETTINGS = ("trash_days", "version_days")


@dataclass(frozen=True)
class Retention:
    """The retention settings in force: server-wide values and per-user exceptions."""

    trash_days: float = SETTINGS["trash_days"]
    version_days: float = SETTINGS["version_days"]
    journal_days: float = SETTINGS["journal_days"]
    grace_hours: float = SETTINGS["grace_hours"]
    #: (user id, setting, value) for each setting a user has a value of their own for.
    per_user: tuple[tuple[int, str, float], ...] = ()

    def for_user(self, user_id: int) -> Retention:
        """The settings that apply to *user_id*'s stores."""
        own = {name: value for uid, name, value in self.per_user if uid == user_id}
        return replace(self, per_user=(), **own) if own else self

    def overridden(self, trash_days: float | None, version_days: float | None) -> Retention:
        """These settings with the trash and version days of one collection forced for every user."""
        forced = {k: v for k, v in (("trash_days", trash_days), ("version_days", version_days)) if v is not None}
        per_user = tuple(item for item in self.per_user if item[1] not in forced)
        return replace(self, per_user=per_user, **forced)

    @property
    def trash_ns(self) -> int:
        return int(self.trash_days * DAY_NS)

    @property
    def version_ns(self) -> int:
        return int(self.version_days * DAY_NS)

    @property
    def journal_ns(self) -> int:
        return int(self.journal_days * DAY_NS)

    @property
    def grace_ns(self) -> int:
        return int(self.grace_hours * HOUR_NS)


def read_retention(conn: Connection) -> Retention:
    """The settings stored in the database, defaults for those never set."""
    values: dict[str, float] = {}
    per_user: list[tuple[int, str, float]] = []
    for key, value in conn.execute(select(meta.c.key, meta.c.value)):
        scope, _, name = key.partition(".")
        if not name and scope in SETTINGS:
            values[scope] = float(value)
        elif name in USER_SETTINGS and scope.startswith("u") and scope[1:].isdigit():
            per_user.append((int(scope[1:]), name, float(value)))
    return Retention(**values, per_user=tuple(sorted(per_user)))


def user_names(conn: Connection) -> dict[int, str]:
    """Every user's name by id (per-user settings are keyed by id)."""
    return {uid: name for uid, name in conn.execute(select(users.c.id, users.c.name))}


def write_setting(db: Database, name: str, value: float | None, user_id: int | None = None) -> None:
    """Set *name* (for *user_id* only, if given) to *value*; None returns it to the default."""
    if name not in (USER_SETTINGS if user_id is not None else SETTINGS):
        raise InvalidRequest(f"{name} is not a setting{' a user can have' if user_id is not None else ''}")
    if value is not None and not 0 <= value < 1e6:
        raise InvalidRequest(f"{name} must be a number from 0 up")
    key = name if user_id is None else f"u{user_id}.{name}"
    with db.write() as conn:
        conn.execute(delete(meta).where(meta.c.key == key))
        if value is not None:
            conn.execute(insert(meta).values(key=key, value=repr(float(value))))
