"""The notifier: long polls wake on a commit from any thread, and never miss one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from tests.server.conftest import Components
from tests.server.ops import mkdir
from websync_server._exceptions import CommitConflict
from websync_server.notifier import Notifier

T = TypeVar("T")


def run(scenario: Callable[[Notifier], Awaitable[T]]) -> T:
    """Run *scenario* on a fresh asyncio loop with a notifier bound to it."""

    async def main() -> T:
        notifier = Notifier()
        notifier.bind(asyncio.get_running_loop())
        return await scenario(notifier)

    return asyncio.run(main())


def test_a_notify_from_another_thread_wakes_the_waiter_promptly() -> None:
    async def scenario(notifier: Notifier) -> tuple[bool, float, int]:
        started = time.monotonic()
        threading.Timer(0.1, notifier.notify, args=("s", 5)).start()
        woke = await notifier.wait("s", after=4, timeout=10)
        return woke, time.monotonic() - started, notifier.waiting("s")

    woke, elapsed, left = run(scenario)
    assert woke and elapsed < 2 and left == 0


def test_wait_times_out_without_a_commit() -> None:
    async def scenario(notifier: Notifier) -> tuple[bool, float]:
        started = time.monotonic()
        notifier.notify("other-store", 9)
        woke = await notifier.wait("s", after=1, timeout=0.2)
        return woke, time.monotonic() - started

    woke, elapsed = run(scenario)
    assert not woke and 0.15 < elapsed < 2


def test_a_commit_notified_before_the_wait_is_not_missed() -> None:
    async def scenario(notifier: Notifier) -> tuple[bool, bool]:
        notifier.notify("s", 7)
        return await notifier.wait("s", after=6, timeout=0), await notifier.wait("s", after=7, timeout=0)

    assert run(scenario) == (True, False)


def test_the_late_announcement_of_a_commit_already_read_does_not_end_the_wait() -> None:
    async def scenario(notifier: Notifier) -> tuple[bool, bool, bool]:
        notifier.notify("s", 6)
        # This poll read commit 7 from the journal before 7's announcement arrived.
        early = asyncio.create_task(notifier.wait("s", after=7, timeout=30))
        await asyncio.sleep(0.01)
        notifier.notify("s", 7)  # late, and not news to this poll
        await asyncio.sleep(0.05)
        woke_for_nothing = early.done()
        notifier.notify("s", 8)
        return woke_for_nothing, await asyncio.wait_for(early, 5), notifier.waiting("s") == 0

    assert run(scenario) == (False, True, True)


def test_close_releases_every_waiter() -> None:
    async def scenario(notifier: Notifier) -> list[bool]:
        waits = [asyncio.create_task(notifier.wait(f"s{i}", after=0, timeout=30)) for i in range(3)]
        await asyncio.sleep(0.05)
        threading.Thread(target=notifier.close).start()
        return list(await asyncio.wait_for(asyncio.gather(*waits), 5))

    assert run(scenario) == [False, False, False]


def test_the_store_announces_every_commit_itself_once_it_is_visible(components: Components) -> None:
    announced: list[tuple[str, int, int]] = []

    def on_commit(store: str, seq: int) -> None:
        # Visible already: a long poll woken by this finds the commit.
        page = components.store.changes(store, seq - 1)
        announced.append((store, seq, len(page.entries)))

    components.store.on_commit = on_commit
    first = components.commit(mkdir("a"), batch="b1")
    again = components.commit(mkdir("a"), batch="b1")  # the same batch sent again: announced again, harmlessly
    with pytest.raises(CommitConflict):
        components.commit(mkdir("a"))  # refused: nothing to announce
    assert first == again
    assert announced == [(components.store_id, first, 1), (components.store_id, first, 1)]


def test_wake_all_sends_every_waiter_back_to_the_journal_and_later_waits_still_wait() -> None:
    async def scenario(notifier: Notifier) -> tuple[list[bool], int, bool]:
        waits = [asyncio.create_task(notifier.wait(f"s{i}", after=0, timeout=30)) for i in range(3)]
        await asyncio.sleep(0.05)
        threading.Thread(target=notifier.wake_all).start()
        woken = list(await asyncio.wait_for(asyncio.gather(*waits), 5))
        # Unlike close, a wake-up is not a shutdown: the next wait waits (and times out).
        return woken, sum(notifier.waiting(f"s{i}") for i in range(3)), await notifier.wait("s0", after=0, timeout=0.1)

    assert run(scenario) == ([False, False, False], 0, False)


def test_a_wake_releases_its_stores_waiters_only_and_is_not_lost_between_read_and_wait() -> None:
    async def scenario(notifier: Notifier) -> tuple[list[bool], bool, bool, int]:
        waits = [asyncio.create_task(notifier.wait(s, after=0, timeout=30, woken=notifier.wakes(s))) for s in "ab"]
        await asyncio.sleep(0.05)
        threading.Thread(target=notifier.wake, args=(["a"],)).start()
        done, _ = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        released = [w in done and not w.result() for w in waits]
        waits[1].cancel()
        # A poll that counted the wakes before reading, and waits after a wake landed in between: at once.
        before = notifier.wakes("a")
        notifier.wake(["a"])
        late = await asyncio.wait_for(notifier.wait("a", after=0, timeout=30, woken=before), 5)
        # Counted after the wake: it waits (and times out).
        later = await notifier.wait("a", after=0, timeout=0.1, woken=notifier.wakes("a"))
        return released, late, later, notifier.waiting("a")

    assert run(scenario) == ([True, False], False, False, 0)
