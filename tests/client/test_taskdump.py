"""SIGUSR2 writes every task of a running client and what it awaits to the log."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from websync_fs import taskdump


async def _parked_in_here(event: trio.Event) -> None:
    await event.wait()


async def test_each_task_is_a_line_with_its_awaits_innermost_last() -> None:
    event = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_parked_in_here, event, name="the-parked-one")
        await trio.sleep(0.01)
        root = trio.lowlevel.current_root_task()
        assert root is not None
        lines = taskdump.lines(root)
        event.set()
    parked = [line for line in lines if "the-parked-one" in line]
    assert len(parked) == 1
    mine = [line for line in lines if "test_each_task_is_a_line" in line]
    assert len(mine) == 1

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    # Indented below the task whose nursery holds it; its own coroutine is the last frame (trio's are left out).
    assert indent(parked[0]) == indent(mine[0]) + 2
    assert parked[0].lstrip().startswith("the-parked-one: ") and parked[0].endswith(" _parked_in_here")


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on Windows: the dump is POSIX only")
async def test_sigusr2_logs_the_dump(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="websync_fs.taskdump")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(taskdump.serve)
        await trio.sleep(0.05)  # the receiver is open
        os.kill(os.getpid(), signal.SIGUSR2)
        with trio.fail_after(5):
            while not any("taskdump.serve" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert caplog.records[0].getMessage().startswith("tasks and what they wait for")


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on Windows: the dump is POSIX only")
def test_sigusr1_writes_every_threads_stack_even_while_the_loop_is_held(tmp_path: Path) -> None:
    out = tmp_path / "stacks.txt"
    assert taskdump.threads_on_signal(str(out))
    try:
        # Sent from here, on the thread a blocked event loop would be on: the handler
        # writes from the signal itself, with no loop or task to run it.
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        faulthandler.unregister(signal.SIGUSR1)
    text = out.read_text()
    assert "most recent call first" in text and "test_sigusr1_writes_every_threads_stack" in text


def test_no_log_file_arms_nothing() -> None:
    assert not taskdump.threads_on_signal(None)
