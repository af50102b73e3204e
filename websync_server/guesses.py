"""Failed logins counted per account and per address, and how long the next try must wait.

Passwords are guessed, so guesses are slowed before any password is checked
(a refused try costs no argon2 hash).  The first `ACCOUNT_FREE` failures of an
account and the first `ADDRESS_FREE` failures from an address cost nothing;
each further one doubles the wait before the next try from `FIRST_WAIT_S` up to
`LONGEST_WAIT_S`.  A success from an unknown place clears its account's count (never an address's).
Counts are forgotten `FORGET_S` after their last failure.

An account under attack must not lock its owner out: a try from an address
that logged in to that account before, or one that carries a live token of
that account (a known device), skips the account's count; the address's count
still holds.  Behind a reverse proxy the address is the one the proxy reports
(uvicorn trusts ``X-Forwarded-For`` from the proxy's address).

An address also has at most `ADDRESS_LOGINS` logins being answered at once
(refusals held back included, logins.py): one address cannot take the
server's connections (runner.py's bound) from everyone else.

Everything is in memory and per process: a restart forgets it, and the tables
are bounded (`TRACKED_MAX`, oldest forgotten first) so a flood of names or
addresses cannot grow them without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import TooManyRequests

__all__ = ["ACCOUNT_FREE", "ADDRESS_FREE", "ADDRESS_LOGINS", "FIRST_WAIT_S", "LONGEST_WAIT_S", "Guesses"]

ACCOUNT_FREE = 5
ADDRESS_FREE = 20
FIRST_WAIT_S = 2.0
LONGEST_WAIT_S = 15 * 60.0
FORGET_S = 24 * 3600.0
TRACKED_MAX = 100_000
ADDRESS_LOGINS = 64


@dataclass
class _Count:
    failures: int
    last: float


class _Table:
    """Failure counts by key, oldest forgotten first past `TRACKED_MAX`."""

    def __init__(self, free: int) -> None:
        self._free = free
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds before *key* may try again (0: now)."""
        count = self._counts.get(key)
        if count is None or now - count.last > FORGET_S or count.failures < self._free:
            return 0.0
        delay = min(LONGEST_WAIT_S, FIRST_WAIT_S * 2 ** (count.failures - self._free))
        return max(0.0, count.last + delay - now)

    def fail(self, key: str, now: float) -> None:
        count = self._counts.pop(key, None)
        if count is None or now - count.last > FORGET_S:
            count = _Count(0, now)
        count.failures += 1
        count.last = now
        self._counts[key] = count
        while len(self._counts) > TRACKED_MAX:
            self._counts.popitem(last=False)

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)


class Guesses:
    """Slows password guessing per account and per address; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._accounts = _Table(ACCOUNT_FREE)
        self._addresses = _Table(ADDRESS_FREE)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._answering: dict[str, int] = {}

    def arrive(self, address: str) -> bool:
        """Count a login from *address* as being answered; False (and not counted) at `ADDRESS_LOGINS`."""
        answering = self._answering.get(address, 0)
        if answering >= ADDRESS_LOGINS:
            return False
        self._answering[address] = answering + 1
        return True

    def leave(self, address: str) -> None:
        """A login from *address* that `arrive` counted is answered."""
        left = self._answering.pop(address) - 1
        if left:
            self._answering[address] = left

    def check_address(self, address: str) -> None:
        """Raise `TooManyRequests` if any login from *address* must wait (known before its body is read)."""
        wait = self._addresses.wait(address, self._clock())
        if wait > 0:
            raise TooManyRequests(f"too many failed logins; try again in {wait:.0f} s", retry_after=wait)

    def check(self, user: str, address: str, *, known_device: bool = False) -> None:
        """Raise `TooManyRequests` if a login as *user* from *address* must wait."""
        now = self._clock()
        wait = self._addresses.wait(address, now)
        if not self.known(user, address, known_device=known_device):
            wait = max(wait, self._accounts.wait(user, now))
        if wait > 0:
            raise TooManyRequests(f"too many failed logins; try again in {wait:.0f} s", retry_after=wait)

    def known(self, user: str, address: str, *, known_device: bool = False) -> bool:
        """Whether a login as *user* from *address* comes from its owner's known device or place."""
        return known_device or (user, address) in self._known

    def failed(self, user: str, address: str) -> None:
        """Count a wrong password for *user* from *address*."""
        now = self._clock()
        self._accounts.fail(user, now)
        self._addresses.fail(address, now)

    def succeeded(self, user: str, address: str, *, known: bool) -> None:
        """Remember *address* as one *user*'s owner logs in from; a login that was counted clears the count.

        A *known* login skipped the account's count, so it clears nothing: the
        owner logging in must not hand a guesser elsewhere fresh free tries.
        """
        if not known:
            self._accounts.clear(user)
        self._known[(user, address)] = None
        self._known.move_to_end((user, address))
        while len(self._known) > TRACKED_MAX:
            self._known.popitem(last=False)
