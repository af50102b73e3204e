"""Who may use the server's worker threads and its one writer, and when.

Blocking work (SQL, hashing, disk) runs in worker threads, and SQLite takes one
writer at a time.  Left to first come, first served, one user could hold them
all: 45 queued commits of one user once took every worker thread, so even
other users' reads waited 10 s.  `Admission` keeps users apart:

- **Threads.** A user has at most `USER_WORKERS` calls in worker threads at
  once; the rest wait on the event loop, where waiting costs no thread.
- **The writer.** Commits run on threads of their own (`WRITERS`), so reads
  never queue behind commits for a thread, and each user has one commit at a
  time in the writer's queue: a user's commits wait behind at most one of each
  other user's.
- **Strangers.** Calls made before the caller is known (a token lookup) share
  `ANONYMOUS_WORKERS` threads, so a flood of made-up tokens leaves the rest.
- **Passwords.** An argon2 check takes 64 MiB and tens of milliseconds: at most
  `HASHERS` run at once and at most `HASHES_WAITING` wait; a login beyond that
  is refused at once (429), so a flood of logins costs bounded memory and CPU.
- **Write time.** Each user earns `WRITE_SHARE` seconds of writer CPU time per
  second, banked up to `WRITE_BURST` (and owing at most as much).  While other
  users commit too (within `OTHERS_ACTIVE_S`), a user who spent more waits, on
  the event loop, before the next commit: the costliest batches the limits
  allow take at most that share of the writer from everyone else, and a user
  alone on the server is never slowed.  CPU time of the worker thread is the
  measure: waiting for the lock or an fsync is not the user's doing.

The thread-count limits hold per process; every server process has its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from ._exceptions import TooManyRequests

__all__ = ["ANONYMOUS_WORKERS", "HASHERS", "HASHES_WAITING", "OTHERS_ACTIVE_S", "USER_WORKERS", "WRITERS", "WRITE_BURST", "WRITE_SHARE", "Admission"]

T = TypeVar("T")

#: Worker-thread calls one user may have running at once (the pool has 40).
USER_WORKERS = 8
#: Threads that run commits; SQLite writes one at a time, the rest wait on its lock.
WRITERS = 8
#: Threads for calls before anyone is known (token lookups): strangers share these.
ANONYMOUS_WORKERS = 8
#: Password checks (argon2, 64 MiB each) that run at once, and that may wait for them.
HASHERS = 2
HASHES_WAITING = 16
#: Seconds of writer CPU time a user earns per second.
WRITE_SHARE = 0.25
#: Most writer seconds a user can bank (a burst of big commits after a quiet spell), or owe.
WRITE_BURST = 0.25
#: Seconds since another user's last commit during which the write share is enforced.
OTHERS_ACTIVE_S = 5.0


@dataclass
class _User:
    """One user's share: calls in threads, the commit in the writer's queue, write time banked."""

    workers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(USER_WORKERS))
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    balance: float = WRITE_BURST
    stamp: float = field(default_factory=time.monotonic)
    last_write: float = float("-inf")

    def earn(self, now: float) -> float:
        """Bring the balance up to *now*; return it."""
        self.balance = min(WRITE_BURST, self.balance + (now - self.stamp) * WRITE_SHARE)
        self.stamp = now
        return self.balance

    def spend(self, seconds: float) -> None:
        self.balance = max(-WRITE_BURST, self.balance - seconds)


class Admission:
    """Runs blocking work for users in worker threads, each user within their share."""

    def __init__(self) -> None:
        self._users: dict[str, _User] = {}
        self._writers = CapacityLimiter(WRITERS)
        self._anonymous = CapacityLimiter(ANONYMOUS_WORKERS)
        self._hashers = CapacityLimiter(HASHERS)
        self._hashes_waiting = 0

    async def password(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)``, which checks a password, on one of `HASHERS` threads; `TooManyRequests` if too many wait."""
        if self._hashes_waiting >= HASHES_WAITING:
            raise TooManyRequests("the server is busy checking passwords; try again in a few seconds", retry_after=2)
        # Counted on the event loop only (no await between test and increment).
        self._hashes_waiting += 1
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._hashers)
        finally:
            self._hashes_waiting -= 1

    async def anonymous(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` for a caller not known yet, on the few threads all strangers share."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._anonymous)

    async def run(self, user: str, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a worker thread, within *user*'s number of threads."""
        async with self._user(user).workers:
            return await anyio.to_thread.run_sync(func, *args)

    async def write(self, user: str, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` on a writer thread: one at a time per user, within the user's write time."""
        share = self._user(user)
        async with share.writing:
            # Alone in this user's writer queue from here on (the lock above).
            now = time.monotonic()
            balance = share.earn(now)
            if balance < 0 and self._others_active(user, now):
                await asyncio.sleep(-balance / WRITE_SHARE)
            cost, result = await anyio.to_thread.run_sync(_timed, func, args, limiter=self._writers)
            now = share.last_write = time.monotonic()
            share.earn(now)
            share.spend(cost)
            return result

    def _others_active(self, user: str, now: float) -> bool:
        return any(now - other.last_write < OTHERS_ACTIVE_S for name, other in self._users.items() if name != user)

    def _user(self, user: str) -> _User:
        found = self._users.get(user)
        if found is None:
            found = self._users[user] = _User()
        return found


def _timed(func: Callable[..., T], args: tuple[object, ...]) -> tuple[float, T]:
    """``func(*args)`` and the CPU time this thread spent on it."""
    started = time.thread_time()
    result = func(*args)
    return time.thread_time() - started, result
