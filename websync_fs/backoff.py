"""How long to wait before asking an unreachable server again: one back-off per machine.

Bounded, so a machine notices within a few seconds that the server answers
again (at most `CAP`); jittered, so machines that lost the server together do
not come back in lock-step; and shared, so an answer to *any* request (a
program's block read, an upload, the follower's poll) ends every wait at once
instead of each component finding out on its own schedule.  A server down for
hours sees one connection attempt every 2-4 s from each machine's follower,
which costs it nothing.

The delays for 1, 2, 3, ... failures in a row: 0.25 s, 0.5 s, 1 s, 2 s, 4 s,
4 s, ..., each drawn from its upper half (between half the value and the value).
"""

from __future__ import annotations

import math
import random

import trio

__all__ = ["BASE", "CAP", "Backoff"]

BASE = 0.25
CAP = 4.0


class Backoff:
    """Failures in a row towards one server, and the waits they call for."""

    def __init__(self, base: float = BASE, cap: float = CAP, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()
        self._answered = trio.Event()
        self._sleepers = 0

    def delay(self, failures: int) -> float:
        """The wait after *failures* failures in a row: exponential, at most `cap`, jittered."""
        full = min(self.cap, self.base * math.pow(2, min(max(0, failures - 1), 64)))
        return full / 2 + self._rng.random() * full / 2

    def failed(self) -> float:
        """Count one more failure; return how long to wait before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def answered(self) -> None:
        """The server answered a request: no more backing off, and every wait ends now."""
        self.failures = 0
        if self._sleepers:  # every answer calls this: cheap when nobody waits
            self._answered.set()
            self._answered = trio.Event()

    async def wait(self, delay: float) -> None:
        """Sleep *delay* seconds, or until the server answers some request."""
        self._sleepers += 1
        try:
            with trio.move_on_after(delay):
                await self._answered.wait()
        finally:
            self._sleepers -= 1
