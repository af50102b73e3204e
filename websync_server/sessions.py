"""Browser sessions: a device token held in a cookie, with an expiry and a logout.

A browser logs in like any machine (`Accounts.login`): the login makes a
device named ``browser (...)`` whose bearer token goes into an HttpOnly
cookie that page scripts can't read.  Two things set a session apart from a
machine's token, and this module keeps both:

- **Expiry.** A session lasts `SESSION_MAX_AGE_S` from its login (the cookie
  says the same to the browser).  The server checks the age itself, from the
  device's ``created_ns``, so a cookie kept past its ``Max-Age`` is refused;
  an expired session's device is revoked the first time it is seen.
- **Logout.** `end` revokes that one device, and has the accounts check the
  token again so their trust of it (`accounts.TOKEN_TRUST_S`) ends at once;
  an ended session is also remembered here and refused by the page's calls.

A request that changes anything must also carry the session's CSRF value
(`csrf_value`): an HMAC of the token, which the page gets in the answer to
its login or session call and a cross-site page can neither read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from sqlalchemy import select, update

from ._exceptions import Unauthorized
from .accounts import Accounts, Login, audit
from .database import Database
from .schema import devices

__all__ = ["SESSION_MAX_AGE_S", "BrowserSessions", "csrf_value"]

#: Seconds a browser session lasts from its login: a working day on a borrowed computer.
SESSION_MAX_AGE_S = 12 * 3600
_KNOWN_MAX = 10_000


def csrf_value(token: str) -> str:
    """The CSRF value that goes with a session token (HMAC-SHA256 keyed by the token)."""
    return hmac.new(token.encode("utf-8"), b"websync csrf", hashlib.sha256).hexdigest()


def _digest(token: str) -> str:
    # As accounts.py keeps it: the database holds only the SHA-256 of a token.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class BrowserSessions:
    """Logins, expiry and logout of browser sessions; blocking calls, for a worker thread."""

    def __init__(self, db: Database, accounts: Accounts, max_age_s: float = SESSION_MAX_AGE_S) -> None:
        self._db = db
        self._accounts = accounts
        self.max_age_s = max_age_s
        # digest -> when the session ends (wall clock); 0 for one that ended.
        # A login time never changes, so an entry never goes stale.
        self._ends: dict[str, float] = {}

    def login(self, user: object, password: object, device: str) -> Login:
        """Check the password and make the session's device; `Unauthorized` if wrong."""
        login = self._accounts.login(user, password, device)
        self._remember(_digest(login.token), time.time() + self.max_age_s)
        return login

    def ends_at(self, token: str) -> float:
        """When the session of *token* ends (seconds since the epoch); 0 if unknown, revoked or ended."""
        digest = _digest(token)
        known = self._ends.get(digest)
        if known is not None:
            return known
        with self._db.read() as conn:
            row = conn.execute(
                select(devices.c.created_ns, devices.c.revoked).where(devices.c.token_sha256 == digest)
            ).first()
        ends = 0.0 if row is None or row.revoked else row.created_ns / 1e9 + self.max_age_s
        self._remember(digest, ends)
        return ends

    def end(self, token: str) -> None:
        """Log the session of *token* out: its device is revoked and refused from now on."""
        digest = _digest(token)
        self._remember(digest, 0.0)
        with self._db.write() as conn:
            name = conn.execute(
                update(devices).where(devices.c.token_sha256 == digest).values(revoked=True).returning(devices.c.name)
            ).scalar()
        audit.info("device %r removed: the browser session logged out", name)
        try:
            self._accounts.recheck(token)  # so the accounts stop trusting the token now, not in a while
        except Unauthorized:
            pass

    def _remember(self, digest: str, ends: float) -> None:
        if len(self._ends) >= _KNOWN_MAX:
            self._ends.clear()  # refilled from the database on demand
        self._ends[digest] = ends
