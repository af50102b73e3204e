"""The save detector's memory of names that files left."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.client.engine import EngineMachine, Server, two_machines
from websync_fs import saves, writeback
from websync_fs.owners import Caller
from websync_fs.replica import ROOT_ID, ROOT_INO, NodeRow
from websync_fs.saves import REMEMBERED, WINDOW, SaveDetector
from websync_fs.vfs import OpenMode
from websync_fs.writeback import clock
from websync_server.protocol import KIND_FILE, NodeId


def row(i: int) -> NodeRow:
    return NodeRow(ino=i + 2, id=NodeId(f"n{i}"), kind=KIND_FILE, mode=0o644, size=0, mtime_ns=0, ctime_ns=0,
                   blocks=(), target="", seq=1, orphan=False, local=False)


def detector() -> SaveDetector:
    # left() reads neither the replica nor the queue.
    return SaveDetector(replica=None, queue=None, send=lambda *a, **k: None)  # type: ignore[arg-type]


def test_a_mass_delete_remembers_the_latest_names_only() -> None:
    d = detector()
    for i in range(REMEMBERED + 500):
        d.left("p", f"f{i}", row(i))
    assert len(d._left) == REMEMBERED
    assert ("p", "f499") not in d._left and ("p", "f500") in d._left
    assert ("p", f"f{REMEMBERED + 499}") in d._left


def test_names_older_than_the_window_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(saves.time, "monotonic", lambda: now[0])
    d = detector()
    d.left("p", "old", row(1))
    d.left("p", "again", row(2))
    now[0] += WINDOW / 2
    d.left("p", "again", row(2))  # left again: remembered from now
    now[0] += WINDOW / 2 + 1
    d.left("p", "new", row(3))
    assert list(d._left) == [("p", "again"), ("p", "new")]
    assert time.monotonic() == now[0]


@pytest.mark.timeout(60)
def test_a_save_by_another_user_gives_the_document_the_new_files_owner_on_every_machine(tmp_path: Path) -> None:
    """Root's document, deleted, and a new one made at its name by user 1001 of group 3000: one save.

    The save becomes an update of the document, and an update carries no owner:
    the server kept root's while this machine showed 1001's, until something
    brought the server's back (a single machine then disagreed with itself).
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"root's")
        while await a.send_one():
            pass
        await a.files.unlink("doc.txt")
        fh, _ = a.vfs.create(ROOT_INO, "doc.txt", 0o644, OpenMode(read=False, write=True),
                             caller=Caller(1001, 3000))
        await a.vfs.write(fh, 0, b"user 1001's")
        await a.vfs.release(fh)
        saved = a.replica.lookup(ROOT_ID, "doc.txt")
        assert saved is not None and (saved.uid, saved.gid) == (1001, 3000)
        ops = [i.op["op"] for i in a.queue.items()]
        assert ops[0] == "update" and "setattr" in ops and "delete" not in ops and "create" not in ops, ops
        while await a.send_one():
            pass
        while await b.apply_one():
            pass
        there = b.replica.lookup(ROOT_ID, "doc.txt")
        assert there is not None and there.id == saved.id and (there.uid, there.gid) == (1001, 3000)

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_only_a_deleted_document_or_a_move_to_a_temporary_name_waits_for_a_save(tmp_path: Path) -> None:
    """A document deleted, or moved to a temporary name, may be saved over (saves.py): that waits.

    Nothing else does: git's ``config.lock`` renamed over a ``config`` never
    sent, its ``index.lock`` (sent) renamed to ``index``, rsync's temporary name
    renamed to the file's, go after the queue's own quiet period; nor does the
    delete of a name of a file that keeps another (git links a pack into place
    and unlinks its temporary name).
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        a.vfs.replace_quiet = 3600.0
        for name in ("doc.txt", "notes.txt", "index.lock", "tmp_pack_1"):
            await a.files.write(name, b"on the server")
        while await a.send_one():
            pass
        await a.files.write("config", b"[core]")
        await a.files.write("config.lock", b"[core]\nbare = false")
        await a.files.rename("config.lock", "config")
        await a.files.write(".f.XyZ12", b"rsync's")
        await a.files.rename(".f.XyZ12", "f")
        await a.files.rename("index.lock", "index")
        pack = a.replica.lookup(ROOT_ID, "tmp_pack_1")
        assert pack is not None
        a.vfs.link(pack.ino, 1, "pack-1.pack")
        await a.files.unlink("tmp_pack_1")
        taken = a.queue.take()
        assert sorted(i.op.get("new_name", i.op.get("name")) for i in taken) == [
            "config", "f", "index", "pack-1.pack", "tmp_pack_1"]
        a.vfs.temporary_quiet = 3600.0
        await a.files.unlink("doc.txt")
        await a.files.rename("notes.txt", "notes.txt~")
        waiting = [i for i in a.queue.items() if i.ready_at > clock() + 3000]
        assert [i.op["op"] for i in waiting] == ["delete", "rename"], "a save may come"

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_save_written_at_the_documents_name_waits_the_longer_quiet_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vim moves the document to a backup name and writes the new one at its name.

    The new version waits the queue's longer quiet period, not the first
    change's short one: the new file may still be being written, and its empty
    start must not become a version of the document.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"version one")
        while await a.send_one():
            pass
        a.queue.quiet, a.queue.first_quiet = 3600.0, 0.0
        monkeypatch.setattr(writeback, "RECENT", 0.0)  # saved long after version one went up
        await a.files.rename("doc.txt", "doc.txt~")
        await a.files.write("doc.txt", b"version two")
        doc = a.replica.lookup(ROOT_ID, "doc.txt")
        assert doc is not None
        (item,) = a.queue.items(doc.id)
        assert item.op["op"] == "update" and item.ready_at > clock() + 3000

    two_machines(tmp_path, body)
