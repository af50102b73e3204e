"""fsync() of a file still open: recorded, not sealed; sealed once left alone, at close, or at the next start."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.client.engine import EngineMachine, Server
from websync_fs.replica import ROOT_INO
from websync_fs.vfs import SEAL_AFTER_FSYNC, OpenMode
from websync_fs.writeback import Item

pytestmark = pytest.mark.timeout(60)
WRITE = OpenMode(read=True, write=True)


def _blocks(data: bytes) -> list[str]:
    return [hashlib.sha256(data).hexdigest()] if data else []


def _content(items: list[Item]) -> list[list[str]]:
    """The block lists the queued items of one file would send, in order."""
    return [item.blocks for item in items if "blocks" in item.op]


async def _fsynced(machine: EngineMachine, nursery: trio.Nursery, data: bytes) -> tuple[int, int, str]:
    """Start *machine*'s core, create a file holding *data* and fsync it; (handle, inode, node id)."""
    machine.vfs.start(nursery)
    fh, attr = machine.vfs.create(ROOT_INO, "file", 0o644, WRITE)
    await machine.vfs.write(fh, 0, data)
    await machine.vfs.fsync(fh)
    return fh, attr.ino, machine.vfs.node_id(attr.ino)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[EngineMachine]:
    server = Server(tmp_path / "server")
    a = EngineMachine("A", tmp_path / "A", server)
    yield a
    a.close()
    server.close()


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_an_fsynced_file_left_alone_is_sealed_once_while_still_open(
    machine: EngineMachine, autojump_clock: trio.testing.MockClock
) -> None:
    vfs = machine.vfs
    async with trio.open_nursery() as nursery:
        fh, ino, node = await _fsynced(machine, nursery, b"line 1\n")
        assert vfs.fsynced.has(ino)
        assert _content(machine.queue.items(node)) == [[]]  # recorded, not sealed
        await trio.sleep(SEAL_AFTER_FSYNC * 2)
        assert _content(machine.queue.items(node)) == [_blocks(b"line 1\n")]
        assert not vfs.fsynced.has(ino)
        await vfs.release(fh)
        assert _content(machine.queue.items(node)) == [_blocks(b"line 1\n")]  # the close adds nothing
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_file_written_after_its_fsync_waits_for_the_next_fsync_or_close(
    machine: EngineMachine, autojump_clock: trio.testing.MockClock
) -> None:
    vfs = machine.vfs
    async with trio.open_nursery() as nursery:
        fh, ino, node = await _fsynced(machine, nursery, b"committed")
        await vfs.write(fh, 9, b", half a transaction")
        await trio.sleep(SEAL_AFTER_FSYNC * 2)
        assert _content(machine.queue.items(node)) == [[]]  # never a state nobody fsync'd
        await vfs.release(fh)
        assert _content(machine.queue.items(node)) == [_blocks(b"committed, half a transaction")]
        assert not vfs.fsynced.has(ino)
        nursery.cancel_scope.cancel()


async def test_a_start_seals_what_the_fsync_recorded_cut_at_its_length(tmp_path: Path) -> None:
    server = Server(tmp_path / "server")
    first = EngineMachine("A", tmp_path / "A", server)
    big = bytes(range(256)) * 400  # 100 KiB: a working copy on disk
    fh, attr = first.vfs.create(ROOT_INO, "big.bin", 0o644, WRITE)
    await first.vfs.write(fh, 0, big)
    await first.vfs.fsync(fh)
    await first.vfs.write(fh, len(big), b"appended, never fsync'd")
    node = first.vfs.node_id(attr.ino)
    first.close()  # the process dies here: no close, no seal

    again = EngineMachine("A", tmp_path / "A", server)
    async with trio.open_nursery() as nursery:
        again.vfs.start(nursery)
        assert _content(again.queue.items(node)) == [_blocks(big)]
        assert again.vfs.getattr(attr.ino).size == len(big)
        assert not again.vfs.fsynced.has(attr.ino)
        assert list((tmp_path / "A" / "work").iterdir()) == []
        nursery.cancel_scope.cancel()
    again.close()
    server.close()
