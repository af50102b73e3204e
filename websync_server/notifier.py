"""Wakes long-polling ``changes`` requests when a store's seq moves.

The notifier lives on the server's asyncio loop.  `Notifier.notify` may be
called from any thread (commits run in worker threads) and hands the news to the
loop with ``call_soon_threadsafe``; everything else runs on the loop, so the
waiter table needs no lock: each method is one run of statements without an
``await``.

No lost wake-ups.  The notifier remembers the highest seq it was told of per
store, and `Notifier.wait` returns at once when that is already past the
caller's cursor.  A long-poll reads the journal first and waits second; a commit
that lands between the two has either been delivered already (the seq check
catches it) or is still queued on the loop (and wakes the waiter when it runs),
because a commit is notified only after its transaction committed.

Nor may an announcement wake the wrong poll.  A poll that read commit N from
the journal before N's announcement reached the loop waits with ``after=N``;
the announcement of N then wakes every waiter of the store, this one too, and
used to make it answer "nothing new" at once -- a long poll answered for no
commit, which the stress test below caught.  `wait` now goes back to sleep
unless the seq really passed its cursor.

Nor may a commit go unannounced.  The metadata store calls `notify` itself,
in the committing thread, right after the transaction (``MetadataStore.on_commit``):
announced by the request handler after awaiting that thread, a commit was
visible but unannounced across an ``await``, and a handler ended there (its
task cancelled at shutdown, an error after the write) left every long poll of
the store waiting for the next commit.  A batch sent again is announced again,
which wakes nobody twice (seqs only move forward here).
`tests/server/test_long_poll_stress.py` holds many long polls open while
thousands of commits land and requires every poll to be answered for each.

Nor may a change of shared folders go unheard.  It is news for a store that
is not in its journal: the ``shares`` stamp a user's own ``changes`` answer
carries (shares.py).  `Notifier.wake` releases the store's waiters and counts
the wake-ups per store; a long poll reads that count (`wakes`) *before* it
reads the stamp, and `wait` returns at once when the count has moved since.
The wake is sent only after the change committed, so a change that lands
between the poll's read and its wait is either seen by the read (the stamp
differs from the client's: the poll answers at once) or counted after the
poll's `wakes` (the wait returns at once or is woken).

Every process feeds `notify` from its own commits; several processes on one
PostgreSQL database also feed it, and `wake`, from each other's, through
LISTEN/NOTIFY (listener.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection

__all__ = ["Notifier"]


class Notifier:
    """Per-store wake-ups for long polls, bound to one running event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._seqs: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False
        #: Raised by `wake_all`: a waiter that saw it change goes back to the journal.
        self._rounds = 0
        #: Per store, raised by `wake`: one entry per user whose shared folders ever changed.
        self._wakes: dict[str, int] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the server runs on; call from that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._closed = False

    def notify(self, store: str, seq: int) -> None:
        """Tell every waiter on *store* that its seq is now *seq*; safe from any thread."""
        self._call_on_loop(self._deliver, store, seq)

    def close(self) -> None:
        """Release every waiter now and from now on (server shutdown).

        Safe from any thread and from a signal handler: it only schedules the
        work on the loop, since a signal handler runs between two statements of
        whatever the loop thread was doing.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._release_all)

    async def wait(self, store: str, after: int, timeout: float, woken: int | None = None) -> bool:
        """Wait until *store*'s seq passes *after*; False when *timeout* ran out or on shutdown.

        A wake-up for a seq the caller has already read (it read the journal
        after that commit but before its announcement got here) is not the
        caller's: it waits on, instead of answering "nothing new" at once.
        With *woken* (what `wakes` said before the caller read), False as soon
        as `wake` has released *store* since.
        """
        return await self.wait_any({store: after}, timeout, {} if woken is None else {store: woken})

    async def wait_any(self, afters: dict[str, int], timeout: float, woken: dict[str, int] | None = None) -> bool:
        """`wait` on several stores at once: until one's seq passes its value in *afters*."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        rounds = self._rounds
        woken = woken or {}
        while all(self._seqs.get(store, 0) <= after for store, after in afters.items()):
            remaining = deadline - loop.time()
            if self._closed or remaining <= 0 or self._rounds != rounds:
                return False  # a wake_all: news may have been missed, the caller rereads the journal
            if any(self._wakes.get(store, 0) != count for store, count in woken.items()):
                return False  # news besides the journal: the caller rereads it
            await self._sleep(afters, remaining)
        return True

    def wakes(self, store: str) -> int:
        """How often `wake` has released *store* so far; read on the loop, before reading what a wake announces."""
        return self._wakes.get(store, 0)

    def wake(self, stores: Collection[str]) -> None:
        """Release the waiters of *stores* for news besides their journals; safe from any thread.

        Call after the news committed (see the module docstring).
        """
        self._call_on_loop(self._wake, tuple(stores))

    async def _sleep(self, stores: Collection[str], timeout: float) -> None:
        """Until the next announcement for one of *stores* (or shutdown), at most *timeout* seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sets = [self._waiters.setdefault(store, set()) for store in stores]
        for waiters in sets:
            waiters.add(future)
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            for store, waiters in zip(stores, sets):
                waiters.discard(future)
                if not waiters and self._waiters.get(store) is waiters:
                    del self._waiters[store]

    def wake_all(self) -> None:
        """Wake every waiter to reread the journal (news may have been missed); safe from any thread."""
        self._call_on_loop(self._wake_all)

    def waiting(self, store: str) -> int:
        """How many requests wait on *store* (for tests and diagnostics)."""
        return len(self._waiters.get(store, ()))

    def _call_on_loop(self, func: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return  # not serving: nobody can be waiting
        if threading.get_ident() == self._loop_thread:
            func(*args)
            return
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError:
            pass  # the loop closed (server shutdown): nobody is waiting any more

    def _deliver(self, store: str, seq: int) -> None:
        if seq <= self._seqs.get(store, 0):
            return
        self._seqs[store] = seq
        for future in self._waiters.pop(store, ()):
            if not future.done():
                future.set_result(None)

    def _wake(self, stores: tuple[str, ...]) -> None:
        for store in stores:
            self._wakes[store] = self._wakes.get(store, 0) + 1
            for future in self._waiters.pop(store, ()):
                if not future.done():
                    future.set_result(None)

    def _release_all(self) -> None:
        self._closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        self._rounds += 1
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for future in group:
                if not future.done():
                    future.set_result(None)
