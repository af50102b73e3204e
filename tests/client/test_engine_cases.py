"""Interleavings of two engines that once lost a change, replayed step by step (see engine.py)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from websync_fs.replica import ROOT_INO


def _two_machines(tmp_path: Path, body: Callable[[Server, EngineMachine, EngineMachine], Awaitable[None]]) -> None:
    """Run *body* with a server and engines A and B on it; all three are closed whatever happens."""
    async def run() -> None:
        server = Server(tmp_path / "server")
        a, b = EngineMachine("A", tmp_path / "A", server), EngineMachine("B", tmp_path / "B", server)
        try:
            await body(server, a, b)
        finally:
            a.close()
            b.close()
            server.close()

    trio.run(run)


@pytest.mark.timeout(60)
def test_a_mode_set_over_an_unseen_edit_does_not_let_the_next_edit_replace_it(tmp_path: Path) -> None:
    """B sets a mode, then writes, while A's edit of the same file is on the server and not yet on B.

    The mode went up on its own first; had it made A's version B's base, B's
    write would have replaced A's edit with no conflict.  Both versions stay.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"first")
        await a.settle()
        await b.settle()
        await a.files.write("doc.txt", b"edited on A")
        await a.send_one()
        await b.files.chmod("doc.txt", 0o600)
        while await b.send_one():
            pass  # the mode alone, before B hears of A's edit
        await b.files.write("doc.txt", b"edited on B")
        for m in (b, a, b, a):
            await m.settle()
        texts = set()
        for path, (kind, _blocks) in server.tree().items():
            if kind == "file" and path.startswith("doc"):
                texts.add(await a.files.read(path))
        assert texts == {b"edited on A", b"edited on B"}
        assert a.tree() == b.tree() == server.tree()

    _two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_read_only_core_refuses_every_change_with_erofs_and_queues_nothing(tmp_path: Path) -> None:
    """A shared folder this user may only read: the core itself refuses, whatever front end is in front of it.

    (The FUSE mount adds the kernel's ``ro`` option, so through the kernel the
    kernel answers first; here nothing stands before the core.)
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("Docs")
        await a.files.write("Docs/rules.txt", b"house rules")
        await a.settle()
        await b.settle()
        b.vfs.read_only = True
        changes = [
            b.files.write("new.txt", b"x"), b.files.write("Docs/rules.txt", b"changed"),
            b.files.append("Docs/rules.txt", b"more"), b.files.mkdir("New"), b.files.rmdir("Docs"),
            b.files.unlink("Docs/rules.txt"), b.files.rename("Docs/rules.txt", "moved.txt"),
            b.files.symlink("rules.txt", "Docs/link"), b.files.chmod("Docs/rules.txt", 0o600),
            b.files.truncate("Docs/rules.txt", 1),
        ]
        for change in changes:
            with pytest.raises(OSError) as refused:
                await change
            assert refused.value.errno == errno.EROFS
        assert await b.files.read("Docs/rules.txt") == b"house rules"
        assert len(b.queue) == 0 and b.tree() == server.tree()

    _two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_conflict_copy_keeps_the_owner_chown_gave_the_file(tmp_path: Path) -> None:
    """A file given to uid 1234 is edited on two machines at once: both versions stay 1234's, everywhere."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"first")
        await a.vfs.setattr(a.vfs.lookup(ROOT_INO, "doc.txt").ino, uid=1234, gid=5678)
        await a.settle()
        await b.settle()
        await a.files.write("doc.txt", b"edited on A")
        await b.files.write("doc.txt", b"edited on B")
        for m in (a, b, a, b):
            await m.settle()
        for m in (a, b):
            files = [row for row in m.replica.all_nodes().values() if row.kind == "file" and not row.orphan]
            assert len(files) == 2
            assert {(row.uid, row.gid) for row in files} == {(1234, 5678)}
            names = [name for (_, name) in m.replica.all_entries()]
            assert all(m.vfs.lookup(ROOT_INO, name).uid == 1234 for name in names)

    _two_machines(tmp_path, body)
