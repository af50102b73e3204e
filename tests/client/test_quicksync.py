"""fsyncs on the event loop while they are quick, in worker threads after a slow one (quicksync.py)."""

from __future__ import annotations

import threading

import pytest
import trio

from websync_fs.quicksync import SLOW, THREADED, QuickSync

pytestmark = pytest.mark.timeout(60)


def _syncs(count: int, took: float, now: list[float], where: list[bool]) -> list:
    """*count* fsyncs, each taking *took* seconds of the fake clock *now*; each notes whether it ran on the loop."""
    loop = threading.get_ident()

    def sync() -> None:
        where.append(threading.get_ident() == loop)
        now[0] += took

    return [sync] * count


async def test_quick_fsyncs_run_on_the_loop_and_a_slow_one_sends_the_next_ones_to_threads() -> None:
    now = [0.0]
    syncs = QuickSync(clock=lambda: now[0])
    where: list[bool] = []
    for sync in _syncs(5, SLOW / 10, now, where):
        await syncs.run(sync)
    assert where == [True] * 5  # no thread trip: it cost as much as the fsync itself

    where.clear()
    for sync in _syncs(1, SLOW * 10, now, where) + _syncs(THREADED + 2, SLOW / 10, now, where):
        await syncs.run(sync)
    # The slow one held the loop; the next THREADED did not; then the loop tries again.
    assert where == [True] + [False] * THREADED + [True, True]


async def test_an_fsync_that_fails_slowly_still_sends_the_next_ones_to_threads() -> None:
    now = [0.0]
    syncs = QuickSync(clock=lambda: now[0])

    def failing() -> None:
        now[0] += SLOW * 10
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        await syncs.run(failing)
    where: list[bool] = []
    for sync in _syncs(1, 0.0, now, where):
        await syncs.run(sync)
    assert where == [False]


async def test_a_cancelled_caller_does_not_fsync() -> None:
    called: list[bool] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await QuickSync().run(lambda: called.append(True))
    assert not called
