"""Attributes set on a file open for writing go into its row and the queue with its close.

tar, cp -a and unzip set a file's times, owner and mode before they close it:
each used to be a transaction of the state database and a rewrite of the
queued create.  Now the core holds them in memory (`Vfs._hold_attrs`) and the
close writes them with the content, in one transaction and one queued item.
What is held shows at once, is written by an fsync and before the file's
names change, and reaches the server at most `ATTRS_DUE` after it was set
while the file stays open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from websync_fs import vfs as vfs_module
from websync_fs.errors import FsError
from websync_fs.replica import ROOT_INO, Replica
from websync_fs.statedb import StateDb
from websync_fs.vfs import OpenMode, Vfs

WRITE = OpenMode(read=True, write=True)
MTIME = 1_700_000_000_123_456_789


def _one_machine(tmp_path: Path, body: Callable[[Server, EngineMachine], Awaitable[None]]) -> None:
    """Run *body* with a server and one engine whose core runs its own tasks (the held attributes' timer)."""
    async def run() -> None:
        server = Server(tmp_path / "server")
        machine = EngineMachine("A", tmp_path / "A", server)
        try:
            async with trio.open_nursery() as nursery:
                machine.vfs.start(nursery)
                await body(server, machine)
                nursery.cancel_scope.cancel()
        finally:
            machine.close()
            server.close()

    trio.run(run)


async def _chmodded(vfs: Vfs, name: str, data: bytes, mode: int, new_mode: int) -> tuple[int, int]:
    """A file made with *mode*, written, and chmodded to *new_mode* while open: its handle and inode."""
    fh, attr = vfs.create(ROOT_INO, name, mode, WRITE)
    await vfs.write(fh, 0, data)
    await vfs.setattr(attr.ino, mode=new_mode)
    return fh, attr.ino


def _server_node(server: Server, node: str) -> Any:
    listing = server.store.changes(server.store_id, 0, 10**9)
    return next(n for n in listing.nodes if n.id == node)


@pytest.mark.timeout(60)
def test_attributes_set_before_the_close_go_up_with_it_as_one_queued_item(tmp_path: Path) -> None:
    async def body(server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        fh, attr = vfs.create(ROOT_INO, "song.flac", 0o600, WRITE)
        await vfs.write(fh, 0, b"x" * 5000)
        await vfs.setattr(attr.ino, mtime_ns=MTIME)
        await vfs.setattr(attr.ino, uid=0, gid=0)  # tar as root: the owner it has
        await vfs.setattr(attr.ino, mode=0o640)
        # Shown at once, by every way of asking ...
        shown = vfs.getattr(attr.ino)
        assert (shown.mode & 0o7777, shown.mtime_ns) == (0o640, MTIME)
        listed = dict(vfs.listdir(ROOT_INO))["song.flac"]
        assert (listed.mode & 0o7777, listed.mtime_ns) == (0o640, MTIME)
        assert vfs.lookup(ROOT_INO, "song.flac").mode & 0o7777 == 0o640
        # ... held in memory, not yet in the row or the queued create.
        row = m.replica.get(attr.ino)
        assert row is not None and row.mode == 0o600
        (item,) = m.queue.items(row.id)
        assert item.op["mode"] == 0o600
        await vfs.flush(fh)
        await vfs.release(fh)
        row = m.replica.get(attr.ino)
        assert row is not None and (row.mode, row.mtime_ns, row.size) == (0o640, MTIME, 5000)
        (item,) = m.queue.items(row.id)
        assert (item.op["op"], item.op["mode"], item.op["mtime_ns"]) == ("create", 0o640, MTIME)
        await m.settle()
        node = _server_node(server, row.id)
        assert (node.mode, node.mtime_ns, node.size) == (0o640, MTIME, 5000)

    _one_machine(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_chmod_of_a_file_that_stays_open_reaches_the_server_without_its_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log another program holds open for writing: its new mode goes up after `ATTRS_DUE`."""
    monkeypatch.setattr(vfs_module, "ATTRS_DUE", 0.05)

    async def body(server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        fh, attr = vfs.create(ROOT_INO, "app.log", 0o644, WRITE)
        await vfs.write(fh, 0, b"started\n")
        await vfs.flush(fh)  # sealed; the writer keeps the file open
        await m.settle()
        await vfs.setattr(attr.ino, mode=0o600)
        row = m.replica.get(attr.ino)
        assert row is not None and row.mode == 0o644
        with trio.fail_after(10):
            while (row := m.replica.get(attr.ino)) is None or row.mode != 0o600:
                await trio.sleep(0.01)
        await m.settle()
        assert _server_node(server, row.id).mode == 0o600
        await vfs.release(fh)
        assert len(m.queue) == 0

    _one_machine(tmp_path, body)


@pytest.mark.timeout(60)
def test_an_fsync_writes_the_held_attributes_into_the_state_database(tmp_path: Path) -> None:
    """What an fsync returned for survives a crash, the file's mode with its bytes."""
    async def body(_server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        fh, ino = await _chmodded(vfs, "notes.db", b"page", 0o644, 0o600)
        await vfs.fsync(fh)
        # Another connection reads what a restart after a crash would.
        db = StateDb(tmp_path / "A" / "state.db")
        try:
            row = Replica(db).get(ino)
            assert row is not None and row.mode == 0o600
        finally:
            db.close()
        await vfs.release(fh)

    _one_machine(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_file_renamed_while_open_keeps_the_attributes_held_for_it(tmp_path: Path) -> None:
    """A local-only name renamed to one that syncs: the file is born on the server with its mode."""
    async def body(server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        fh, ino = await _chmodded(vfs, "report.txt.swp", b"draft", 0o600, 0o644)
        vfs.rename(ROOT_INO, "report.txt.swp", ROOT_INO, "report.txt")
        await vfs.flush(fh)
        await vfs.release(fh)
        await m.settle()
        row = m.replica.get(ino)
        assert row is not None and row.mode == 0o644
        node = _server_node(server, row.id)
        assert (node.mode, node.size) == (0o644, 5)

    _one_machine(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_file_deleted_while_open_drops_what_was_held_for_it(tmp_path: Path) -> None:
    async def body(server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        fh, _ino = await _chmodded(vfs, "scratch", b"tmp", 0o600, 0o644)
        vfs.unlink(ROOT_INO, "scratch")
        await vfs.flush(fh)
        await vfs.release(fh)
        await m.settle()
        assert len(m.queue) == 0 and server.tree() == {}
        assert not vfs._attrs and not vfs._attrs_due

    _one_machine(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_file_as_rsync_makes_it_commits_once_per_change_a_kill_must_not_lose(tmp_path: Path) -> None:
    """`rsync -a`'s calls for one file, and the commits of the state database each one makes.

    Each commit is one that the promise needs (docs/durability.md): the new
    name, the closed content, and a time, a mode and a rename, each set after
    the close.  A chmod while the file is open for writing is held until the
    close (`Vfs._hold_attrs`).  Reads, look-ups and writes commit nothing.
    Commits were a third of the core's work for such a file
    (docs/benchmarks.md), so one more is a regression to explain.
    """
    async def body(server: Server, m: EngineMachine) -> None:
        vfs = m.vfs
        commits: list[str] = []
        m.db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        counted: dict[str, int] = {}

        def step(name: str) -> None:
            counted[name] = len(commits)
            commits.clear()

        for name in ("f.txt", ".f.txt.AbCdEf"):
            with pytest.raises(FsError):
                vfs.lookup(ROOT_INO, name)
        step("look-ups that miss")
        fh, attr = vfs.create(ROOT_INO, ".f.txt.AbCdEf", 0o600, WRITE)
        step("create")
        await vfs.setattr(attr.ino, mode=0o600, fh=fh)
        step("chmod while open")
        await vfs.write(fh, 0, b"x" * 5000)
        step("write")
        await vfs.flush(fh)
        await vfs.release(fh)
        step("close")
        await vfs.setattr(attr.ino, mtime_ns=MTIME)
        step("utimens")
        reading, _ = await vfs.open(attr.ino, OpenMode(read=True))
        await vfs.setattr(attr.ino, mode=0o644, fh=reading)
        step("chmod")
        await vfs.flush(reading)
        await vfs.release(reading)
        step("close after reading")
        vfs.rename(ROOT_INO, ".f.txt.AbCdEf", ROOT_INO, "f.txt")
        step("rename")
        m.db.conn.set_trace_callback(None)
        assert counted == {
            "look-ups that miss": 0, "create": 1, "chmod while open": 0, "write": 0, "close": 1,
            "utimens": 1, "chmod": 1, "close after reading": 0, "rename": 1,
        }
        await m.settle()
        row = m.replica.get(attr.ino)
        assert row is not None
        node = _server_node(server, row.id)
        assert (node.mode, node.size, node.mtime_ns) == (0o644, 5000, MTIME)

    _one_machine(tmp_path, body)
