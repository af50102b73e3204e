"""The change follower and the queue it waits for: the client core with an in-process server.

A real metadata store stands in for the server (its commits and journal, no
HTTP); the replica, queue, uploader and applier are the client's own.  The
tests decide when a journal answer arrives, so a race that needs a loaded
machine to happen through the kernel happens here every time.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from argon2 import PasswordHasher

from tests.server.ops import create, mkdir
from websync_fs import follower
from websync_fs.errors import CommitConflict, FsError
from websync_fs.follower import Applier
from websync_fs.replica import ROOT_INO, Replica
from websync_fs.statedb import StateDb
from websync_fs.uploader import Uploader
from websync_fs.vfs import OpenMode, Vfs
from websync_fs.writeback import WriteBackQueue
from websync_server import _exceptions as server_errors
from websync_server.accounts import Accounts
from websync_server.blocks import BlockStore
from websync_server.database import Database
from websync_server.protocol import (
    ROOT_ID,
    BlockHash,
    ChangeRows,
    Changes,
    NodeId,
    NodeState,
    new_node_id,
)
from websync_server.store import MetadataStore


class InProcessRemote:
    """The part of `Remote` the uploader uses, answered by a `MetadataStore` in this process."""

    def __init__(self, store: MetadataStore, store_id: str) -> None:
        self.store = store
        self.store_id = store_id

    async def missing(self, hashes: list[BlockHash]) -> list[BlockHash]:
        return []

    async def commit(self, batch: str, ops: list[dict[str, Any]]) -> int:
        try:
            return self.store.commit(self.store_id, "A", batch, ops)
        except server_errors.CommitConflict as exc:
            raise CommitConflict(exc.conflict) from exc

    def changes(self, cursor: int) -> Changes:
        return self.store.changes(self.store_id, cursor)

    async def node_state(self, node: NodeId) -> NodeState:
        return self.store.node_state(self.store_id, node)


@dataclass
class OneMachine:
    vfs: Vfs
    replica: Replica
    queue: WriteBackQueue
    applier: Applier
    uploader: Uploader
    remote: InProcessRemote

    def upload(self) -> None:
        """Send every queued change, as the uploader's loop would."""
        while batch := self.queue.take():
            assert trio.run(self.uploader.send, batch), "a commit was refused"

    def answer(self) -> Changes:
        """What the journal answers now, to be applied later (an answer on its way)."""
        return self.remote.changes(self.replica.cursor)

    def apply(self, changes: Changes) -> None:
        self.applier.apply(changes.nodes, changes.entries, changes.cursor)

    def catch_up(self) -> None:
        self.apply(self.answer())

    def local_tree(self, parent: str = ROOT_ID, prefix: str = "") -> dict[str, str]:
        tree = {}
        for name, row in self.replica.children(parent):
            tree[prefix + name] = row.kind
            if row.kind == "dir":
                tree.update(self.local_tree(row.id, f"{prefix}{name}/"))
        return tree

    def server_tree(self) -> dict[str, str]:
        everything = self.remote.changes(0)
        kinds: dict[str, str] = {node.id: node.kind for node in everything.nodes if not node.deleted}
        children: dict[str, list[tuple[str, str]]] = {}
        for entry in everything.entries:
            if entry.node is not None:
                children.setdefault(entry.parent, []).append((entry.name, entry.node))
        tree = {}

        def walk(parent: str, prefix: str) -> None:
            for name, node in children.get(parent, []):
                tree[prefix + name] = kinds[node]
                walk(node, f"{prefix}{name}/")

        walk(ROOT_ID, "")
        return tree


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[OneMachine]:
    (tmp_path / "server").mkdir()
    server_db = Database.open_in(tmp_path / "server")
    blocks = BlockStore(tmp_path / "server" / "blocks")
    blocks.open()
    store_id = Accounts(server_db, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)).add_user("u", "pw")
    remote = InProcessRemote(MetadataStore(server_db, blocks), store_id)
    db = StateDb(tmp_path / "state.db")
    replica = Replica(db)
    queue = WriteBackQueue(db, quiet=0)
    (tmp_path / "work").mkdir()
    vfs = Vfs(
        db, replica, queue, None, lambda d: "", lambda hs: None, tmp_path / "work",  # type: ignore[arg-type]
        temporary_quiet=0, replace_quiet=0,
    )
    applier = Applier(replica, queue, vfs.busy, lambda inv: None)
    vfs.on_settled = applier.settle
    queue.on_drop(applier.settle)
    uploader = Uploader(queue, replica, remote, lambda h: None, applier, lambda inv: None, "A",  # type: ignore[arg-type]
                        lambda online, error: None)
    yield OneMachine(vfs, replica, queue, applier, uploader, remote)
    db.close()
    server_db.close()


def test_a_folder_made_and_moved_onto_a_deleted_name_stays_while_its_move_waits(machine: OneMachine) -> None:
    """rm -r d; mkdir a; mv a d -- sent as three commits, the journal answering after the second.

    The name-reuse workload did this (seed 3, round 29) on a loaded machine.
    The answer says "d is gone, the new folder is at a"; here the new folder
    is at d already, and the move that puts it there on the server is queued.
    Taking d away left this machine without the folder the server was about
    to hold at d (``A: {} B: {'d': DIR}``, with A's queue empty).
    """
    vfs = machine.vfs
    vfs.mkdir(ROOT_INO, "d", 0o755)
    machine.upload()
    machine.catch_up()
    vfs.rmdir(ROOT_INO, "d")
    vfs.mkdir(ROOT_INO, "a", 0o755)
    vfs.rename(ROOT_INO, "a", ROOT_INO, "d")
    for _ in range(2):  # the delete, then the mkdir: each ready before the next op was queued
        assert trio.run(machine.uploader.send, machine.queue.take(max_ops=1))
    late = machine.answer()
    machine.apply(late)
    assert machine.local_tree() == {"d": "dir"}
    machine.upload()
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"d": "dir"}


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_node_moved_back_stays_when_the_answer_to_its_first_move_comes_late(machine: OneMachine, kind: str) -> None:
    """mv d b goes up; mv b d waits in the queue; then the journal's answer to the first move arrives.

    That answer says "d is gone, it is at b".  It is back at d here, and the
    queued move puts it there on the server too: the answer must not take it
    from d (nor leave it nowhere, to come back only when the journal reports
    the second move -- by then this machine may have put something else at a
    name it believed free, and the server keeps what this machine lost sight of).
    """
    vfs = machine.vfs
    if kind == "dir":
        vfs.mkdir(ROOT_INO, "d", 0o755)
    else:
        fh, _ = vfs.create(ROOT_INO, "d", 0o644, OpenMode(read=False, write=True))
        trio.run(vfs.release, fh)
    machine.upload()
    machine.catch_up()
    vfs.rename(ROOT_INO, "d", ROOT_INO, "b")
    machine.upload()
    late = machine.answer()  # computed now, on its way while the program goes on
    vfs.rename(ROOT_INO, "b", ROOT_INO, "d")
    machine.apply(late)
    assert machine.local_tree() == {"d": kind}
    # The program sees d, so it cannot make a new d meanwhile.
    with pytest.raises(FsError) as refused:
        vfs.mkdir(ROOT_INO, "d", 0o755)
    assert refused.value.errno == errno.EEXIST
    machine.upload()
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"d": kind}


def test_a_record_waiting_for_a_change_that_is_never_sent_applies_when_that_change_is_dropped(
    machine: OneMachine,
) -> None:
    """Another machine makes x; this one makes and deletes its own x before sending it.

    The journal's x waits while this machine's x is queued.  Its create is then
    coalesced away: nothing is committed, so no commit settles the waiting
    record, and the queue's drop must.
    """
    vfs = machine.vfs
    theirs = new_node_id()
    machine.remote.store.commit(machine.remote.store_id, "B", new_node_id(), [
        {"op": "create", "id": theirs, "parent": ROOT_ID, "name": "x", "mode": 0o644, "mtime_ns": 1,
         "size": 0, "blocks": []},
    ])
    fh, _ = vfs.create(ROOT_INO, "x", 0o644, OpenMode(read=False, write=True))
    trio.run(vfs.release, fh)
    machine.catch_up()
    assert machine.replica.lookup(ROOT_ID, "x").id != theirs  # type: ignore[union-attr]
    vfs.unlink(ROOT_INO, "x")
    assert len(machine.queue) == 0
    here = machine.replica.lookup(ROOT_ID, "x")
    assert here is not None and here.id == theirs
    assert machine.local_tree() == machine.server_tree() == {"x": "file"}


def test_a_folder_moved_on_another_machine_while_moved_back_here_has_one_name(machine: OneMachine) -> None:
    """Another machine moves d to y while this one moves d to z and back: d never has two names here.

    The answer says "d is gone, the folder is at y".  This machine's queued
    moves name d, so d stays; the folder's new name waits with it.  The moves
    are then refused (the folder is not where they say) and the server's
    placement is taken.
    """
    vfs = machine.vfs
    vfs.mkdir(ROOT_INO, "d", 0o755)
    machine.upload()
    machine.catch_up()
    folder = machine.replica.lookup(ROOT_ID, "d")
    assert folder is not None
    machine.remote.store.commit(machine.remote.store_id, "B", new_node_id(), [
        {"op": "rename", "id": folder.id, "parent": ROOT_ID, "name": "d", "new_parent": ROOT_ID, "new_name": "y"},
    ])
    vfs.rename(ROOT_INO, "d", ROOT_INO, "z")
    vfs.rename(ROOT_INO, "z", ROOT_INO, "d")
    machine.catch_up()
    assert machine.local_tree() == {"d": "dir"}
    while batch := machine.queue.take():
        trio.run(machine.uploader.send, batch)
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"y": "dir"}


def _synced(machine: OneMachine, name: str, kind: str = "dir", parent_ino: int = ROOT_INO) -> Any:
    """A folder or an empty file *name* made here, sent and heard back: its replica row."""
    if kind == "dir":
        machine.vfs.mkdir(parent_ino, name, 0o755)
    else:
        fh, _ = machine.vfs.create(parent_ino, name, 0o644, OpenMode(read=False, write=True))
        trio.run(machine.vfs.release, fh)
    machine.upload()
    machine.catch_up()
    parent = machine.replica.get(parent_ino)
    assert parent is not None
    row = machine.replica.lookup(parent.id, name)
    assert row is not None
    return row


def _their_file(parent: str, name: str) -> dict[str, Any]:
    return {"op": "create", "id": new_node_id(), "parent": parent, "name": name, "mode": 0o644,
            "mtime_ns": 1, "size": 0, "blocks": []}


@contextlib.contextmanager
def _refusals_meet(machine: OneMachine, meanwhile: Callable[[list[dict[str, Any]]], None],
                   check: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """While inside, a refused commit's ops meet *meanwhile* (another machine's work) and the journal's answer.

    *check* must hold after every commit, refused or not.
    """
    commit = machine.remote.commit

    async def answered(batch: str, ops: list[dict[str, Any]]) -> int:
        try:
            return await commit(batch, ops)
        except CommitConflict:
            meanwhile(ops)
            raise
        finally:
            machine.catch_up()
            assert check()

    machine.remote.commit = answered  # type: ignore[method-assign]
    try:
        yield
    finally:
        machine.remote.commit = commit  # type: ignore[method-assign]


def _send_all(machine: OneMachine) -> None:
    """Send the queue as the uploader's loop would, refusals settled; a settlement that never ends fails."""
    for _ in range(50):
        batch = machine.queue.take()
        if not batch:
            return
        trio.run(machine.uploader.send, batch)
    raise AssertionError(f"the queue never empties: {machine.uploader.held}")


def _theirs(machine: OneMachine, *ops: dict[str, Any]) -> None:
    """Another machine's commit."""
    machine.remote.store.commit(machine.remote.store_id, "B", new_node_id(), list(ops))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_node_moved_on_another_machine_while_moved_here_has_one_name(machine: OneMachine, kind: str) -> None:
    """Another machine moves d to y while this one moves d to z: d never has two names here.

    The answer says "d is gone, it is at y".  Here d is gone already, at z,
    and the queued move names it: the new name waits with that move.  Applied,
    it gave the node a second name until the move was refused; a folder at two
    places is a folder inside itself when one place is under the other, and a
    synced folder listing that tree never came back from it.
    """
    node = _synced(machine, "d", kind)
    _theirs(machine, {"op": "rename", "id": node.id, "parent": ROOT_ID, "name": "d", "new_parent": ROOT_ID,
                      "new_name": "y"})
    machine.vfs.rename(ROOT_INO, "d", ROOT_INO, "z")
    machine.catch_up()
    assert machine.local_tree() == {"z": kind}
    _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"y": kind}


def test_folders_moved_into_each_other_on_two_machines_end_as_the_server_has_them(machine: OneMachine) -> None:
    """Another machine moves a into b while this one moves b into a: never a folder inside itself here."""
    a, b = _synced(machine, "a"), _synced(machine, "b")
    _theirs(machine, {"op": "rename", "id": a.id, "parent": ROOT_ID, "name": "a", "new_parent": b.id,
                      "new_name": "a"})
    machine.vfs.rename(ROOT_INO, "b", a.ino, "b")
    machine.catch_up()
    assert machine.local_tree() == {"a": "dir", "a/b": "dir"}
    _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"b": "dir", "b/a": "dir"}


def test_a_hard_link_to_a_name_taken_elsewhere_keeps_the_file_under_a_conflict_name(machine: OneMachine) -> None:
    """ln b/f0.txt f0.txt; rm b/f0.txt -- while another machine made its own f0.txt at the top.

    The link was refused (the name is taken) and dropped: this machine kept
    the file at f0.txt, the server deleted it with its only other name, and
    every later change of it was refused and settled again, without end.
    """
    vfs = machine.vfs
    b = _synced(machine, "b")
    _theirs(machine, _their_file(ROOT_ID, "f0.txt"))
    fh, attr = vfs.create(b.ino, "f0.txt", 0o600, OpenMode(read=False, write=True))
    trio.run(vfs.release, fh)
    vfs.link(attr.ino, ROOT_INO, "f0.txt")
    vfs.unlink(b.ino, "f0.txt")
    _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    tree = machine.local_tree()
    assert tree == machine.server_tree()
    copies = [name for name in tree if name.startswith("f0 (conflict from A")]
    assert sorted(tree) == ["b", *copies, "f0.txt"] and len(copies) == 1
    mine = machine.replica.lookup(ROOT_ID, copies[0])
    assert mine is not None and mine.id == machine.replica.by_id(mine.id).id and mine.mode & 0o777 == 0o600


def test_a_hard_link_to_a_file_deleted_elsewhere_brings_the_file_back_at_the_new_name(machine: OneMachine) -> None:
    """Another machine deletes f while this one links it as g: g says the file is wanted."""
    node = _synced(machine, "f", "file")
    _theirs(machine, {"op": "delete", "id": node.id, "parent": ROOT_ID, "name": "f"})
    machine.vfs.link(node.ino, ROOT_INO, "g")
    _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"g": "file"}


def test_a_folder_restored_after_a_refused_delete_keeps_the_one_place_it_has_here(machine: OneMachine) -> None:
    """rmdir d here while another machine puts a file in d; d is back at d here before the refusal is settled.

    The refused delete restores d (a file is in it now).  It took a conflict
    name when d's own name was taken, also when d itself held it: the folder
    then had two names here and was listed twice by a synced folder.  How d
    came back does not matter to the rule (the journal, a move of this
    machine's); here its entry is put back directly.
    """
    d = _synced(machine, "d")
    _theirs(machine, _their_file(d.id, "x"))
    machine.vfs.rmdir(ROOT_INO, "d")
    with machine.replica.tx():
        machine.replica.set_entry(ROOT_ID, "d", d.id)
    _send_all(machine)
    assert machine.replica.entries_of(d.id) == [(ROOT_ID, "d")]
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"d": "dir", "d/x": "file"}


def test_a_folder_made_on_both_machines_and_then_moved_there_is_one_folder_at_its_new_place(
    machine: OneMachine,
) -> None:
    """mkdir a on both machines; the other then moves its a into b while this one's mkdir is being refused.

    The journal's move arrives before the refusal is settled.  The merge gave
    the one folder both places here: a at the top (this machine's) and b/a
    (the journal's).
    """
    b = _synced(machine, "b")
    theirs = new_node_id()
    _theirs(machine, {"op": "mkdir", "id": theirs, "parent": ROOT_ID, "name": "a", "mode": 0o755, "mtime_ns": 1})
    machine.vfs.mkdir(ROOT_INO, "a", 0o755)

    def moved(ops: list[dict[str, Any]]) -> None:
        # While the refusal comes back, the other machine moves its folder and the journal says so.
        _theirs(machine, {"op": "rename", "id": theirs, "parent": ROOT_ID, "name": "a",
                          "new_parent": b.id, "new_name": "a"})

    with _refusals_meet(machine, moved):
        _send_all(machine)
    assert machine.replica.entries_of(theirs) == [(b.id, "a")]
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"b": "dir", "b/a": "dir"}


@pytest.mark.parametrize("moved", [False, True])
def test_a_folder_restored_beside_a_new_one_of_its_name_is_there_on_the_server_too(
    machine: OneMachine, moved: bool,
) -> None:
    """rmdir d; mkdir d here while another machine puts a file in d (and, *moved*, then moves d to dm).

    The refused delete restores d, whose name the new d holds here.  The old
    one once took a conflict name this machine alone knew, and the journal's
    later move of it gave it a second name here.  Now the new d, never sent,
    is merged into the old one at its name (or, moved meanwhile, the old one
    takes the server's placement and the new d goes up on its own).
    """
    old = _synced(machine, "d")
    _theirs(machine, _their_file(old.id, "x"))
    machine.vfs.rmdir(ROOT_INO, "d")
    machine.vfs.mkdir(ROOT_INO, "d", 0o755)

    def meanwhile(ops: list[dict[str, Any]]) -> None:
        if moved and ops[0]["op"] == "delete":
            _theirs(machine, {"op": "rename", "id": old.id, "parent": ROOT_ID, "name": "d",
                              "new_parent": ROOT_ID, "new_name": "dm"})

    with _refusals_meet(machine, meanwhile, check=lambda: len(machine.replica.entries_of(old.id)) <= 1):
        _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    tree = machine.local_tree()
    assert tree == machine.server_tree()
    if moved:
        assert tree == {"dm": "dir", "dm/x": "file", "d": "dir"}
    else:
        # The new d, never sent, was merged into the old one, which keeps its name on both sides.
        assert tree == {"d": "dir", "d/x": "file"}


def test_a_folder_renamed_elsewhere_whose_old_name_waits_here_has_one_name(machine: OneMachine) -> None:
    """Another machine: mv a a2; mkdir a.  This one: a new file in a, not yet sent.

    The answer says "a is the new folder, the old one is at a2".  The new a
    waits (the old folder holds a file not yet sent); the old folder's new
    name a2 applied at once gave it two names here, a and a2.
    """
    vfs = machine.vfs
    a = _synced(machine, "a")
    _theirs(machine,
            {"op": "rename", "id": a.id, "parent": ROOT_ID, "name": "a", "new_parent": ROOT_ID, "new_name": "a2"},
            {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": "a", "mode": 0o755, "mtime_ns": 1})
    fh, _ = vfs.create(a.ino, "f", 0o644, OpenMode(read=False, write=True))
    trio.run(vfs.release, fh)
    machine.catch_up()
    assert machine.replica.entries_of(a.id) == [(ROOT_ID, "a")]
    _send_all(machine)
    machine.catch_up()
    assert len(machine.queue) == 0
    assert machine.local_tree() == machine.server_tree() == {"a": "dir", "a2": "dir", "a2/f": "file"}


class ListingRemote:
    """The journal calls of `Remote`, answered by the machine's in-process store in pages of *limit*."""

    def __init__(self, remote: InProcessRemote, limit: int) -> None:
        self.remote, self.limit = remote, limit

    async def change_rows(self, cursor: int, wait: float = 0) -> ChangeRows:
        return self.remote.store.change_rows(self.remote.store_id, cursor, self.limit)

    async def changes(self, cursor: int, wait: float = 0) -> Changes:
        return self.remote.store.changes(self.remote.store_id, cursor, self.limit)


def test_a_first_listing_in_many_pages_arrives_whole_a_batch_of_pages_at_a_time(
    machine: OneMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, store_id = machine.remote.store, machine.remote.store_id
    for folder in range(4):
        d = mkdir(f"d{folder}")
        store.commit(store_id, "B", new_node_id(), [d, *(create(f"f{i}", parent=d["id"]) for i in range(9))])
    monkeypatch.setattr(follower, "LOAD_BATCH", 25)
    loads: list[int] = []
    load = machine.applier.load

    def counted(pages: list[ChangeRows]) -> None:
        loads.append(sum(len(p.nodes) + len(p.entries) for p in pages))
        load(pages)

    machine.applier.load = counted  # type: ignore[method-assign]
    seen: list[int] = []
    follow = follower.Follower(ListingRemote(machine.remote, limit=20), machine.applier,  # type: ignore[arg-type]
                               lambda online, error: None)
    assert trio.run(lambda: follow.catch_up(progress=seen.append))
    # 81 records (the root, 4 folders of 9 files, their entries) in pages of at most 20:
    # the root alone, then a commit a page; held until 25 records or the last page.
    assert loads == [41, 40] and seen == [1, 21, 41, 61, 81]
    assert machine.local_tree() == machine.server_tree() and len(machine.local_tree()) == 40
    assert machine.replica.cursor == store.changes(store_id, 0).cursor
    # Later changes go through the checks of `Applier.apply`, one page a transaction.
    store.commit(store_id, "B", new_node_id(), [mkdir("late")])
    assert trio.run(follow.catch_up) and "late" in machine.local_tree() and loads == [41, 40]
