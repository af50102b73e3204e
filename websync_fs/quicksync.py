"""fsync on the event loop while fsyncs here are quick; in a worker thread once one was not.

A trip to a worker thread and back cost 150 µs here (two wakeups across the
cores of a virtual machine), about as much as the fsync of a 4 KiB append
itself (about 200 µs), and a program that fsyncs at every commit paid both
each time.  On the event loop an fsync costs just itself, but every other
request of the mount waits meanwhile, and a busy disk can take tens of
milliseconds.  So fsyncs run on the loop while they are quick: one that took
longer than `SLOW` sends the next `THREADED` fsyncs to worker threads, and then
the loop tries again.  While the disk stays slow, the loop is held up by one
fsync in every `THREADED + 1`.

One `QuickSync` per process (`FSYNCS`): the state database's log and the
working copies are on one disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

#: An fsync on the loop that took longer than this (seconds) sends the next ones to threads.
#: Here they took 0.3 ms (p50) and 0.4 ms (p90) while the mount synced beside them, and
#: more than 2 ms once in about 500: at 2 ms, a database's fsyncs went to threads again
#: and again for nothing.  A busy disk takes tens of milliseconds.
SLOW = 0.010
#: How many fsyncs go to threads after a slow one, before the loop tries again.
THREADED = 100


class QuickSync:
    """Runs blocking fsyncs on the event loop or in a worker thread, as the last ones went."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._threaded = 0

    async def run(self, sync: Callable[[], None]) -> None:
        """Call *sync* (blocking: one or two fsyncs) and return when it did."""
        if self._threaded:
            self._threaded -= 1
            await trio.to_thread.run_sync(sync)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        start = self._clock()
        try:
            sync()
        finally:
            if self._clock() - start > SLOW:
                self._threaded = THREADED
        # No schedule point after it: the request's answer goes out first, and the other
        # tasks run when its handler next waits (pyfuse3 waits for the next request).


#: The process's fsyncs: the state database's and the working copies'.
FSYNCS = QuickSync()
