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
- **Passwords.** An argon2 check takes 64 MiB and ~0.15 s of CPU over four
  lanes (threads).  Checks run one at a time on a thread of their own at a
  lower CPU priority (`HASH_NICE`), so they take what CPU the rest leaves; at
  most `HASHES_WAITING` wait, at most `ADDRESS_HASHES` of them from one
  address, and those of one address start at most `ADDRESS_HASHES_PER_S` a
  second (the rest wait their turn): a flood from one address was checked as
  fast as the thread went, 23 checks in 8 s that doubled other users' listing
  p50 and took their pooled p99 to 4.6x, while its refusals after them cost
  0.02 of a core (docs/benchmarks.md).  Strangers' wrong passwords also
  share a budget of `HASHES_PER_S` per second, banked up to `HASH_BURST` (a
  check takes one and a right password gives it back); a check beyond it is
  refused at once (429 with the wait), so a burst of good logins is never
  refused for it.  A flood of wrong logins from any number of addresses so costs
  bounded memory and a bounded share of the CPU (40 at once on the shared
  pool had taken listings' p99 from 0.1 to 0.9 s).  A login that carries a
  live token of its account, the owner on a known device, has a thread of its
  own outside the budget: no flood locks the owner out.
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
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from ._exceptions import TooManyRequests

__all__ = ["ADDRESS_HASHES", "ADDRESS_HASHES_PER_S", "ANONYMOUS_WORKERS", "HASHES_PER_S", "HASHES_WAITING", "HASH_BURST", "HASH_NICE", "OTHERS_ACTIVE_S", "USER_WORKERS", "WRITERS", "WRITE_BURST", "WRITE_SHARE", "Admission"]

T = TypeVar("T")

#: Worker-thread calls one user may have running at once (the pool has 40).
USER_WORKERS = 8
#: Threads that run commits; SQLite writes one at a time, the rest wait on its lock.
WRITERS = 8
#: Threads for calls before anyone is known (token lookups): strangers share these.
ANONYMOUS_WORKERS = 8
#: Password checks (argon2, 64 MiB each) that may wait or run, in all and from one address.
HASHES_WAITING = 16
ADDRESS_HASHES = 4
#: Password checks one address may start a second; an address's free tries (guesses.py) so take 20 s, not 8.
ADDRESS_HASHES_PER_S = 1.0
#: Strangers' wrong passwords per second, and the most banked: one address's free tries (guesses.py) fit.
HASHES_PER_S = 2.0
HASH_BURST = 20.0
#: How much nicer than the server the threads that check passwords run (Linux, macOS).
HASH_NICE = 10
#: Seconds of writer CPU time a user earns per second.
WRITE_SHARE = 0.25
#: Most writer seconds a user can bank (a burst of big commits after a quiet spell), or owe.
WRITE_BURST = 0.25
#: Seconds since another user's last commit during which the write share is enforced.
OTHERS_ACTIVE_S = 5.0


@dataclass
class _Budget:
    """Credit earned at *share* per second, banked up to *burst* and owed at most as much."""

    share: float
    burst: float
    balance: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.balance = self.burst

    def earn(self, now: float) -> float:
        """Bring the balance up to *now*; return it."""
        self.balance = min(self.burst, self.balance + (now - self.stamp) * self.share)
        self.stamp = now
        return self.balance

    def spend(self, amount: float) -> None:
        self.balance = max(-self.burst, self.balance - amount)

    def refund(self, amount: float) -> None:
        self.balance = min(self.burst, self.balance + amount)


@dataclass
class _User:
    """One user's share: calls in threads, the commit in the writer's queue, write time banked."""

    workers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(USER_WORKERS))
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    writes: _Budget = field(default_factory=lambda: _Budget(WRITE_SHARE, WRITE_BURST))
    last_write: float = float("-inf")


class Admission:
    """Runs blocking work for users in worker threads, each user within their share."""

    def __init__(self) -> None:
        self._users: dict[str, _User] = {}
        self._writers = CapacityLimiter(WRITERS)
        self._anonymous = CapacityLimiter(ANONYMOUS_WORKERS)
        # Threads of their own: a thread's priority can be lowered but not raised again.
        self._hasher = _hasher_thread("websync-hasher")
        self._owners_hasher = _hasher_thread("websync-owners-hasher")
        self._hashing = _Budget(HASHES_PER_S, HASH_BURST)
        self._hashes_waiting = 0
        self._address_hashes: dict[str, int] = {}
        self._address_turns: dict[str, float] = {}  # when each address's next check may start

    def close(self) -> None:
        """Let the password threads end once their checks are done."""
        self._hasher.shutdown(wait=False)
        self._owners_hasher.shutdown(wait=False)

    async def password(self, func: Callable[..., T], *args: object, address: str, owner: bool) -> T:
        """``func(*args)``, which checks a password, within the limits above; `TooManyRequests` if over them.

        *owner*: the login carries a live token of its account (its own thread, no budget).
        """
        # From the tests to the increments, no await: they are one step on the event loop.
        busy = self._hashes_waiting >= HASHES_WAITING
        if busy or (not owner and self._address_hashes.get(address, 0) >= ADDRESS_HASHES):
            raise TooManyRequests("the server is busy checking passwords; try again in a few seconds", retry_after=4)
        if not owner:
            balance = self._hashing.earn(time.monotonic())
            if balance < 1:
                raise TooManyRequests("the server is busy checking passwords; try again in a few seconds",
                                      retry_after=(1 - balance) / HASHES_PER_S)  # fmt: skip
            self._hashing.spend(1)
        self._hashes_waiting += 1
        self._address_hashes[address] = self._address_hashes.get(address, 0) + 1
        try:
            if not owner:
                await asyncio.sleep(self._address_turn(address, time.monotonic()))
            thread = self._owners_hasher if owner else self._hasher
            result = await asyncio.wrap_future(thread.submit(func, *args))
            if not owner:
                self._hashing.refund(1)  # the budget is for wrong passwords: a login burst stays free
            return result
        finally:
            self._hashes_waiting -= 1
            left = self._address_hashes.pop(address) - 1
            if left:
                self._address_hashes[address] = left

    def _address_turn(self, address: str, now: float) -> float:
        """Seconds until *address*'s next check may start, that start taken (`ADDRESS_HASHES_PER_S`)."""
        if len(self._address_turns) > 4 * HASHES_WAITING:  # bounded: only turns still ahead are kept
            self._address_turns = {a: t for a, t in self._address_turns.items() if t > now}
        start = max(now, self._address_turns.get(address, now))
        self._address_turns[address] = start + 1 / ADDRESS_HASHES_PER_S
        return start - now

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
            balance = share.writes.earn(now)
            if balance < 0 and self._others_active(user, now):
                await asyncio.sleep(-balance / WRITE_SHARE)
            cost, result = await anyio.to_thread.run_sync(_timed, func, args, limiter=self._writers)
            now = share.last_write = time.monotonic()
            share.writes.earn(now)
            share.writes.spend(cost)
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


def _hasher_thread(name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority)


def _lower_priority() -> None:
    """Lower this thread's CPU priority by `HASH_NICE` (argon2's own threads inherit it)."""
    if hasattr(os, "setpriority"):  # not on Windows
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + HASH_NICE)
        except OSError:
            pass  # a priority the system refuses: checks still run, one at a time
