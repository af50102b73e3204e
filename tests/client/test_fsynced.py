"""fsync() of a file still open: recorded, not sealed; sealed once left alone, at close, or at the next start."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.client.engine import EngineMachine, Server
from websync_fs.replica import ROOT_INO
from websync_server.protocol import BLOCK_SIZE
from websync_fs.vfs import SEAL_AFTER_FSYNC, OpenMode, Vfs
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


async def _killed_after(tmp_path: Path, steps: Callable[[Vfs, int], Awaitable[None]]) -> tuple[int, str, int]:
    """Create a 100 KiB file (a copy on disk), run *steps*, end without close: (inode, node, rows written)."""
    server = Server(tmp_path / "server")
    first = EngineMachine("A", tmp_path / "A", server)
    async with trio.open_nursery() as nursery:
        first.vfs.start(nursery)  # as in a mount: appended blocks may be gathered in memory
        fh, attr = first.vfs.create(ROOT_INO, "big.bin", 0o644, WRITE)
        await first.vfs.write(fh, 0, BIG)
        await steps(first.vfs, fh)
        writes = first.db.conn.total_changes
        nursery.cancel_scope.cancel()
    node = first.vfs.node_id(attr.ino)
    first.close()  # the process dies here: no close, no seal
    server.close()
    return attr.ino, node, writes


async def _restarted(tmp_path: Path, ino: int, node: str) -> tuple[list[list[str]], int]:
    """Start machine A again: the content queued for *node* and its size."""
    server = Server(tmp_path / "server-again")
    again = EngineMachine("A", tmp_path / "A", server)
    try:
        async with trio.open_nursery() as nursery:
            again.vfs.start(nursery)
            content, size = _content(again.queue.items(node)), again.vfs.getattr(ino).size
            assert not again.vfs.fsynced.has(ino)
            assert list((tmp_path / "A" / "work").iterdir()) == []
            nursery.cancel_scope.cancel()
    finally:
        again.close()
        server.close()
    return content, size


BIG = bytes(range(256)) * 400  # 100 KiB: a working copy on disk
MORE = b"appended, never fsync'd"


async def test_a_start_seals_an_fsynced_file_with_what_its_file_gained_since(tmp_path: Path) -> None:
    # As a local disk after its writer was killed: the bytes written after the fsync are there too.
    async def steps(vfs: Vfs, fh: int) -> None:
        await vfs.fsync(fh)
        await vfs.write(fh, len(BIG), MORE)

    ino, node, _ = await _killed_after(tmp_path, steps)
    assert await _restarted(tmp_path, ino, node) == ([_blocks(BIG + MORE)], len(BIG + MORE))


async def test_a_start_seals_a_copy_whose_mtime_was_set_cut_at_its_fsynced_length(tmp_path: Path) -> None:
    # The file's own mtime is not the copy's (utimens set it): the record alone counts.
    async def steps(vfs: Vfs, fh: int) -> None:
        ino = vfs.handles.get(fh).ino
        await vfs.setattr(ino, mtime_ns=1_000_000_000)
        await vfs.fsync(fh)
        await vfs.write(fh, len(BIG), MORE)

    ino, node, _ = await _killed_after(tmp_path, steps)
    assert await _restarted(tmp_path, ino, node) == ([_blocks(BIG)], len(BIG))


async def test_an_fsync_that_only_appended_writes_no_record_and_still_keeps_every_byte(tmp_path: Path) -> None:
    async def once(vfs: Vfs, fh: int) -> None:
        await vfs.fsync(fh)

    async def appending(vfs: Vfs, fh: int) -> None:
        await vfs.fsync(fh)
        for offset in range(len(BIG), len(BIG) + 10 * len(MORE), len(MORE)):
            await vfs.write(fh, offset, MORE)
            await vfs.fsync(fh)

    _, _, writes_once = await _killed_after(tmp_path / "once", once)
    ino, node, writes = await _killed_after(tmp_path / "appending", appending)
    assert writes - writes_once == 0  # ten more fsyncs, no row written
    assert await _restarted(tmp_path / "appending", ino, node) == (
        [_blocks(BIG + 10 * MORE)], len(BIG + 10 * MORE))


async def test_what_a_growing_record_gains_is_all_in_its_file(tmp_path: Path) -> None:
    # Past a block's end an appending writer's blocks would be gathered in memory and kept in
    # the cache, never in the file: after a growing record they go into the file, which stays
    # all of the copy (a read of the last block puts the rest of it there too).
    head = BIG + bytes(BLOCK_SIZE - len(BIG))
    more = bytes(range(256)) * (BLOCK_SIZE // 256 + 4096)  # one block and a bit: 5 MiB in all

    async def steps(vfs: Vfs, fh: int) -> None:
        await vfs.write(fh, len(BIG), head[len(BIG):])
        await vfs.fsync(fh)
        for offset in range(0, len(more), 1 << 20):
            await vfs.write(fh, len(head) + offset, more[offset : offset + (1 << 20)])
        await vfs.read(fh, len(head) + len(more) - 1, 1)

    ino, node, _ = await _killed_after(tmp_path, steps)
    whole = head + more
    blocks = [hashlib.sha256(whole[i : i + BLOCK_SIZE]).hexdigest() for i in range(0, len(whole), BLOCK_SIZE)]
    assert await _restarted(tmp_path, ino, node) == ([blocks], len(whole))


async def test_a_small_file_fsynced_again_and_again_moves_into_its_file_and_then_writes_no_record(
    machine: EngineMachine,
) -> None:
    # A small database or log fsync'd after every write: in memory, each fsync wrote the
    # whole copy into its record; in its file, the growing record stays and the file is synced.
    vfs = machine.vfs
    async with trio.open_nursery() as nursery:
        fh, ino, node = await _fsynced(machine, nursery, b"page 1\n")
        rows = []
        for page in range(2, 7):
            await vfs.write(fh, 0, f"page {page}\n".encode())
            before = machine.db.conn.total_changes
            await vfs.fsync(fh)
            rows.append(machine.db.conn.total_changes - before)
        assert rows == [1, 1, 0, 0, 0]  # the third fsync moved it, and wrote the file's record
        assert vfs.fsynced.has(ino)
        nursery.cancel_scope.cancel()


async def test_a_file_cut_short_after_its_fsync_starts_again_cut_short(tmp_path: Path) -> None:
    # As a local disk after its writer was killed: the truncate is there, not zeros in its place.
    async def steps(vfs: Vfs, fh: int) -> None:
        await vfs.fsync(fh)
        await vfs.setattr(vfs.handles.get(fh).ino, size=50_000)

    ino, node, _ = await _killed_after(tmp_path, steps)
    assert await _restarted(tmp_path, ino, node) == ([_blocks(BIG[:50_000])], 50_000)


async def test_a_record_whose_sync_failed_stands_for_no_later_fsync(tmp_path: Path) -> None:
    # The fsync that wrote it failed: the next one writes (and syncs) its own record.
    async def steps(vfs: Vfs, fh: int) -> None:
        db = vfs._db
        real = db.sync

        def failing() -> None:
            db.sync = real  # type: ignore[method-assign]
            raise OSError(5, "Input/output error")

        db.sync = failing  # type: ignore[method-assign]
        with pytest.raises((OSError, BaseExceptionGroup)):
            await vfs.fsync(fh)
        await vfs.write(fh, len(BIG), MORE)
        before = db.conn.total_changes
        await vfs.fsync(fh)
        assert db.conn.total_changes - before == 1

    await _killed_after(tmp_path, steps)
