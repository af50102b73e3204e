"""The notifier: long polls wake on a commit from any thread, and never miss one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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


def test_close_releases_every_waiter() -> None:
    async def scenario(notifier: Notifier) -> list[bool]:
        waits = [asyncio.create_task(notifier.wait(f"s{i}", after=0, timeout=30)) for i in range(3)]
        await asyncio.sleep(0.05)
        threading.Thread(target=notifier.close).start()
        return list(await asyncio.wait_for(asyncio.gather(*waits), 5))

    assert run(scenario) == [False, False, False]


def test_wake_all_sends_every_waiter_back_to_the_journal_and_later_waits_still_wait() -> None:
    async def scenario(notifier: Notifier) -> tuple[list[bool], int, bool]:
        waits = [asyncio.create_task(notifier.wait(f"s{i}", after=0, timeout=30)) for i in range(3)]
        await asyncio.sleep(0.05)
        threading.Thread(target=notifier.wake_all).start()
        woken = list(await asyncio.wait_for(asyncio.gather(*waits), 5))
        # Unlike close, a wake-up is not a shutdown: the next wait waits (and times out).
        return woken, sum(notifier.waiting(f"s{i}") for i in range(3)), await notifier.wait("s0", after=0, timeout=0.1)

    assert run(scenario) == ([False, False, False], 0, False)
