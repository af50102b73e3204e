"""The machine's back-off: bounded, jittered, and ended at once by any answer (trio's MockClock)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from websync_fs.backoff import CAP, Backoff


def test_delays_grow_to_the_cap_and_are_drawn_from_its_upper_half() -> None:
    retry = Backoff(rng=random.Random(7))
    delays = [retry.failed() for _ in range(40)]
    for n, delay in enumerate(delays, start=1):
        full = min(CAP, 0.25 * 2 ** (n - 1))
        assert full / 2 <= delay <= full
    assert max(delays) <= CAP
    assert len({round(d, 6) for d in delays[10:]}) > 20  # jittered: machines do not retry in step
    retry.answered()
    assert retry.failures == 0 and retry.failed() <= 0.25


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_any_answer_ends_every_wait_at_once(autojump_clock: trio.testing.MockClock) -> None:
    retry = Backoff()
    ended: list[float] = []

    async def waiter(delay: float) -> None:
        await retry.wait(delay)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(waiter, 60.0)  # the follower after a refused token
        nursery.start_soon(waiter, CAP)
        await trio.sleep(1.0)
        retry.answered()  # e.g. a program's block read got through
    assert [round(t - start, 6) for t in ended] == [1.0, 1.0]


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_server_down_for_hours_is_asked_every_few_seconds(autojump_clock: trio.testing.MockClock) -> None:
    retry = Backoff(rng=random.Random(3))
    tries = 0
    start = trio.current_time()
    while trio.current_time() - start < 3 * 3600:
        tries += 1
        await retry.wait(retry.failed())
    # At most one try every CAP/2 s (not hammering), at least one every CAP s (noticed soon).
    assert 3 * 3600 / CAP <= tries <= 3 * 3600 / (CAP / 2) + 10
