"""The uploader's own loop: when it wakes, and how many changes a batch carries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.client.engine import EngineMachine, Server
from websync_fs import uploader


def _running_uploader(tmp_path: Path, body: Callable[[EngineMachine], Awaitable[None]]) -> Server:
    """Run *body* on machine A with its uploader running its own loop (quiet period 50 ms).

    Returns once the queue is empty; the machine is closed whatever happens,
    the server is returned open for the test to look at.
    """
    server = Server(tmp_path / "server")

    async def run() -> None:
        machine = EngineMachine("A", tmp_path / "A", server)
        try:
            machine.queue.quiet = machine.queue.first_quiet = 0.05
            machine.queue.on_enqueue(machine.uploader.wake)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(machine.uploader.run)
                await body(machine)
                with trio.fail_after(30):
                    while len(machine.queue):
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            machine.close()

    try:
        trio.run(run)
    except BaseException:
        server.close()
        raise
    return server


@pytest.mark.timeout(60)
def test_files_arriving_one_after_another_go_up_in_a_few_batches_and_all_arrive(tmp_path: Path) -> None:
    """200 files written a few milliseconds apart, each ready after its quiet period.

    Taken as each became ready, they went up a few at a time: a commit, a
    blocks request and a changes page for every few files.  While more keep
    coming, a batch waits for the ones on their way (`uploader.GATHER`).
    Every file still arrives: the uploader, asleep with nothing ready, is
    never woken by an enqueue, only has its sleep shortened to the first
    change's ready time.
    """
    sizes: list[int] = []
    nodes: set[str] = set()

    async def body(machine: EngineMachine) -> None:
        commit = machine.remote.commit

        async def counted(batch: str, ops: list[dict[str, Any]]) -> int:
            sizes.append(len(ops))
            nodes.update(op["id"] for op in ops)
            return await commit(batch, ops)

        machine.remote.commit = counted  # type: ignore[method-assign]
        for i in range(200):
            await machine.files.write(f"f{i:03}.txt", b"x" * (i + 1))
            await trio.sleep(0.002)

    server = _running_uploader(tmp_path, body)
    try:
        # Each file once: a file's create may still go up before its content, as a change of
        # its own, when the machine stalls for longer than the quiet period in the middle of
        # the write (a full test run on two cores did: 202 ops for 200 files).
        assert len(nodes) == 200 and sum(sizes) >= 200
        assert len(sizes) <= 40, sizes  # 5 files a batch or more; taken as they became ready, ~1
        assert sorted(server.tree()) == [f"f{i:03}.txt" for i in range(200)]
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_a_change_queued_while_the_uploader_sleeps_with_nothing_queued_goes_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing queued: the uploader sleeps without a deadline.  A change waiting its quiet period gives it one."""
    monkeypatch.setattr(uploader, "LOOK_EVERY", float("inf"))  # only the change's own wake can end the sleep

    async def body(machine: EngineMachine) -> None:
        await trio.sleep(0.05)  # asleep, nothing queued
        await machine.files.write("one.txt", b"one")
        assert len(machine.queue) == 1

    server = _running_uploader(tmp_path, body)
    try:
        assert list(server.tree()) == ["one.txt"]
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_an_item_ready_as_the_uploader_goes_to_sleep_never_leaves_it_asleep_without_a_deadline(
    tmp_path: Path,
) -> None:
    """The loop saw nothing ready; by the time it chose how long to sleep, the item was due.

    Its sleep had ended at the very time the item was due (an enqueue shortens
    the sleep to exactly that), so one look said "not ready yet" and the next
    "not in the future either": the uploader slept with no deadline, and the
    change waited for the next one to come along.  Now such a sleep is short.
    """
    server = Server(tmp_path / "server")

    async def run() -> None:
        machine = EngineMachine("A", tmp_path / "A", server)
        try:
            machine.queue.quiet = 0.0
            await machine.files.write("due.txt", b"due")
            assert machine.queue.has_ready() and machine.queue.next_ready_at() is None
            with trio.fail_after(5):
                await machine.uploader._sleep()
        finally:
            machine.close()

    try:
        trio.run(run)
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_a_change_whose_wake_never_came_still_goes_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However it came to pass, a queued change is found by the uploader's periodic look (`LOOK_EVERY`)."""
    monkeypatch.setattr(uploader, "LOOK_EVERY", 0.2)

    async def body(machine: EngineMachine) -> None:
        await trio.sleep(0.05)  # asleep, nothing queued
        machine.queue._listeners.clear()  # no wake comes
        await machine.files.write("one.txt", b"one")

    server = _running_uploader(tmp_path, body)
    try:
        assert list(server.tree()) == ["one.txt"]
    finally:
        server.close()


def _on_mock_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  body: Callable[[EngineMachine], Awaitable[None]]) -> None:
    """Run *body* on machine A with the queue's due times and the uploader's waits on trio's MockClock."""
    from websync_fs import writeback

    monkeypatch.setattr(writeback, "clock", trio.current_time)
    monkeypatch.setattr(uploader, "clock", trio.current_time)
    server = Server(tmp_path / "server")

    async def run() -> None:
        machine = EngineMachine("A", tmp_path / "A", server)
        try:
            await body(machine)
        finally:
            machine.close()

    try:
        trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        server.close()


def _batch_leaves_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     queued: Callable[[EngineMachine], Awaitable[None]]) -> float:
    """When the next batch leaves, the window at its widest, after *queued* queued the writer's last changes."""
    left: list[float] = []

    async def body(machine: EngineMachine) -> None:
        await queued(machine)
        machine.uploader._last_start = trio.current_time()
        machine.uploader._window = uploader.GATHER_MAX
        await machine.uploader._gather()
        left.append(trio.current_time())

    _on_mock_time(tmp_path, monkeypatch, body)
    (at,) = left
    return at


@pytest.mark.timeout(60)
def test_a_batch_after_a_writer_stopped_leaves_when_its_last_change_is_due_not_at_the_window_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window has grown to its widest; the writer's last change is due 0.2 s later: the batch goes then."""
    async def body(machine: EngineMachine) -> None:
        machine.queue.quiet = machine.queue.first_quiet = 0.2
        await machine.files.write("last.txt", b"the writer's last file")

    assert _batch_leaves_at(tmp_path, monkeypatch, body) == pytest.approx(0.2)


@pytest.mark.timeout(60)
def test_while_a_writer_keeps_on_each_batch_waits_longer_up_to_the_widest_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change every 50 ms for 3 s: batches leave 0.1, 0.2, 0.4, 0.4 ... s apart; once it stops, at 0.1 again.

    The first figure was one batch each 0.1 s, whatever the writer: a writer of
    small files then paid for ten batches a second (create 605 -> 746 files/s
    in one of the bench's mounts with the window widening).
    """
    waits: list[float] = []

    async def body(machine: EngineMachine) -> None:
        up = machine.uploader

        async def writer() -> None:
            for i in range(60):
                machine.vfs.mkdir(1, f"d{i:02}", 0o755)  # on the loop: no thread for the clock to jump over
                await trio.sleep(0.05)

        machine.queue.quiet = machine.queue.first_quiet = 0.2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(0.21)  # as the uploader's loop: its first gather comes once a change is ready
            while trio.current_time() < 2.5:
                up._last_start = begun = trio.current_time()
                await up._gather()
                waits.append(round(trio.current_time() - begun, 3))
        await trio.sleep(1)
        assert machine.queue.next_ready_at() is None  # nothing on its way
        await up._gather()
        assert up._window == uploader.GATHER

    _on_mock_time(tmp_path, monkeypatch, body)
    assert waits[:4] == [0.1, 0.2, 0.4, 0.4], waits
    assert set(waits[2:]) == {uploader.GATHER_MAX}, waits


@pytest.mark.timeout(60)
def test_a_change_waiting_longer_than_the_window_does_not_hold_the_batch_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary name's 3 s wait cannot join this batch: the batch leaves when the writer's last file is due.

    It used to count as a change on its way, and the batch waited for the
    window's end: git's last renames went up 0.2 s after the program ended,
    behind a temporary pack name's delete.
    """
    async def body(machine: EngineMachine) -> None:
        machine.queue.quiet = machine.queue.first_quiet = 0.2
        await machine.files.write("last.txt", b"the writer's last file")
        machine.vfs.temporary_quiet = 3.0
        await machine.files.write("draft.tmp", b"a temporary file")

    assert _batch_leaves_at(tmp_path, monkeypatch, body) == pytest.approx(0.2)
