"""Interleavings of two engines that once lost a change, replayed step by step (see engine.py)."""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.client.engine import EngineMachine, Server, two_machines
from websync_fs import conflicts
from websync_fs.invalidation import Invalidation
from websync_fs import replica as replica_module
from websync_fs.replica import ROOT_ID, ROOT_INO
from websync_fs.vfs import OpenMode
from websync_server.protocol import BLOCK_SIZE, new_node_id


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

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_touch_on_b_does_not_make_a_s_edit_a_conflict_copy(tmp_path: Path) -> None:
    """B only sets the time (``touch``) while A edits: A's edit is the file, and no copy is made.

    The touch moved the node's seq first, so A's update (based on the seq before)
    was refused as ``changed`` and A's real edit went to a conflict copy.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"first")
        await a.settle()
        await b.settle()
        await b.vfs.setattr(b.vfs.lookup(ROOT_INO, "doc.txt").ino, mtime_ns=1_600_000_000_000_000_000)
        while await b.send_one():
            pass  # the touch is on the server first
        await a.files.write("doc.txt", b"edited on A")
        for m in (a, b, a, b):
            await m.settle()
        assert sorted(server.tree()) == ["doc.txt"]
        assert await a.files.read("doc.txt") == await b.files.read("doc.txt") == b"edited on A"

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_the_same_file_made_on_both_machines_is_one_file_and_a_different_one_a_copy(tmp_path: Path) -> None:
    """One archive unpacked on two machines at once: no conflict copy of the very same bytes."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("same.txt", b"alike")
        await a.files.write("other.txt", b"from A")
        await b.files.write("same.txt", b"alike")
        await b.files.write("other.txt", b"from B")
        await a.settle()
        await b.settle()
        await b.files.write("same.txt", b"edited on B after")  # goes to the one node now
        for m in (b, a, b, a):
            await m.settle()
        names = sorted(server.tree())
        assert len(names) == 3 and names[0].startswith("other (conflict from B ") and names[1:] == [
            "other.txt", "same.txt"], names
        assert await a.files.read("same.txt") == await b.files.read("same.txt") == b"edited on B after"
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_the_same_file_is_one_file_also_when_the_journal_brought_the_other_first(tmp_path: Path) -> None:
    """B hears of A's file before its own create goes: the node is in B's replica with no name yet."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("same.txt", b"alike")
        await b.files.write("same.txt", b"alike")
        while await a.send_one():
            pass
        while await b.apply_one():
            pass  # A's node is in B's replica now; its entry waits, B's own holds the name
        for m in (b, a, b, a):
            await m.settle()
        assert sorted(server.tree()) == ["same.txt"]
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


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

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_folder_made_on_both_machines_tells_the_kernel_of_every_name_it_gains(tmp_path: Path) -> None:
    """The merge brings the other machine's files into this folder: the kernel may hold them as missing."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.files.write("d/from-a.txt", b"A")
        await b.files.mkdir("d")
        await b.files.write("d/from-b.txt", b"B")
        await a.settle()
        while await b.apply_one():
            pass  # B learns of A's folder and file first, then sends its own folder
        told: list[Invalidation] = []
        b.uploader.notify = told.append
        await b.settle()
        folder = b.vfs.lookup(ROOT_INO, "d").ino
        assert {name for name, _ in b.vfs.listdir(folder)} == {"from-a.txt", "from-b.txt"}
        entries = {entry for inv in told for entry in inv.entries}
        assert {(folder, "from-a.txt"), (folder, "from-b.txt")} <= entries

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_chown_to_the_owner_a_file_has_moves_its_change_time_and_sends_nothing(tmp_path: Path) -> None:
    """tar and cp -a as root chown every file to the owner it has, rsync chmods to the mode it has:
    nothing to send, ctime moves."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("doc.txt", b"first")
        ino = a.vfs.lookup(ROOT_INO, "doc.txt").ino
        await a.vfs.setattr(ino, uid=1234, gid=5678)
        await a.settle()
        before = a.vfs.getattr(ino)
        await a.vfs.setattr(ino, uid=1234, gid=5678)
        assert len(a.queue) == 0
        after = a.vfs.getattr(ino)
        assert after.ctime_ns > before.ctime_ns and (after.uid, after.gid) == (before.uid, before.gid)
        # chmod to the mode it has (rsync's on its temporary file): the same.
        await a.vfs.setattr(ino, mode=after.mode & 0o7777)
        assert len(a.queue) == 0
        again = a.vfs.getattr(ino)
        assert again.ctime_ns > after.ctime_ns and again.mode == after.mode
        await a.vfs.setattr(ino, mode=0o600, mtime_ns=1_700_000_000_000_000_000)  # a real change still goes
        await a.settle()
        await b.settle()
        on_b = b.vfs.getattr(b.vfs.lookup(ROOT_INO, "doc.txt").ino)
        assert on_b.mode & 0o7777 == 0o600 and on_b.mtime_ns == 1_700_000_000_000_000_000

    two_machines(tmp_path, body)


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

    two_machines(tmp_path, body)


def _exchange(m: EngineMachine, one: str, two: str) -> None:
    m.vfs.exchange(ROOT_INO, one, ROOT_INO, two)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("then", ["unlink", "rename"])
def test_a_file_never_sent_that_was_exchanged_still_reaches_the_server_before_the_exchange(
    tmp_path: Path, then: str
) -> None:
    """A new file swaps names with a synced folder, then goes away or moves, before any of it was sent.

    Dropping (or moving to the end) the file's unsent create would have sent an
    exchange naming a file the server never had: refused, the server's placement
    taken, and the folder's delete after it settled as "already gone" -- the
    folder stayed on the server, and came back.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.settle()
        await a.files.write("b", b"new file")
        _exchange(a, "d", "b")  # d is the file now, b the folder
        await a.files.rmdir("b")
        if then == "unlink":
            await a.files.unlink("d")
        else:
            await a.files.rename("d", "c")
        await a.settle()
        await b.settle()
        expected = {} if then == "unlink" else {"c": ("file", a.tree()["c"][1])}
        assert a.tree() == server.tree() == b.tree() == expected

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_an_exchange_by_a_file_never_sent_goes_even_when_that_file_is_deleted(tmp_path: Path) -> None:
    """A new file swaps names with a synced one, then is deleted: the synced file keeps its new name everywhere."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("b", b"synced")
        await a.settle()
        await a.files.write("x", b"new")
        _exchange(a, "x", "b")  # x is the synced file now
        await a.files.unlink("b")
        await a.settle()
        await b.settle()
        assert a.tree() == server.tree() == b.tree()
        assert list(server.tree()) == ["x"]
        assert await b.files.read("x") == b"synced"

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_file_exchanged_then_moved_over_a_deleted_one_is_no_save(tmp_path: Path) -> None:
    """x and a new y swap names, the old x (now y) is deleted, the new file moves to y.

    Seen as a save (a new file at the name a synced file just left), it undid
    the move and the delete but not the exchange that put them there: the
    server kept the synced file at its old name with the new bytes.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("x", b"synced")
        await a.settle()
        await a.files.write("y", b"new")
        _exchange(a, "x", "y")
        await a.files.unlink("y")
        await a.files.rename("x", "y")
        await a.settle()
        await b.settle()
        assert a.tree() == server.tree() == b.tree()
        assert list(server.tree()) == ["y"]
        assert await b.files.read("y") == b"new"

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_listing_a_look_up_and_a_stat_show_each_node_without_reading_its_whole_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """readdir, lookup and getattr read a node's attributes alone: a full row (block list,
    extended attributes) for each entry was half of what a listing of ten files cost."""
    full_rows: list[object] = []

    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.files.mkdir("d/sub")
        for i in range(10):
            await a.files.write(f"d/f{i}.txt", b"x" * i)
        await a.files.symlink("f1.txt", "d/link")
        os_view = {name: attr for name, attr in a.vfs.listdir(a.vfs.lookup(ROOT_INO, "d").ino)}
        folder = a.vfs.lookup(ROOT_INO, "d").ino
        counted = replica_module._row
        monkeypatch.setattr(replica_module, "_row", lambda r: full_rows.append(r) or counted(r))
        listed = dict(a.vfs.listdir(folder))
        assert not full_rows  # neither the folder's nor one for each name
        assert listed == os_view
        assert listed["f3.txt"].size == 3 and listed["link"].size == len("f1.txt")
        assert listed["sub"].nlink == 2 and listed["f3.txt"].nlink == 1
        full_rows.clear()
        assert a.vfs.getattr(listed["f3.txt"].ino) == listed["f3.txt"]
        assert a.vfs.lookup(folder, "sub") == listed["sub"]
        assert not full_rows

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_folders_link_count_follows_every_change_and_is_counted_once_between_changes(tmp_path: Path) -> None:
    """A folder's link count is 2 + its subfolders, however they come and go, here or from B.

    Counting reads every entry of the folder, and the kernel asks for a
    folder's attributes after each change in it: made file by file, a folder
    of 10,000 files cost 10,000 rows a file (create fell from 820 to 182
    files/s over the first 10,000).  The count is now remembered until a
    subfolder's entry in that folder changes.
    """
    counts: list[str] = []

    def nlink(m: EngineMachine, *path: str) -> int:
        ino = ROOT_INO
        for name in path:
            ino = m.vfs.lookup(ino, name).ino
        return m.vfs.getattr(ino).nlink

    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("big")
        for i in range(3):
            await a.files.mkdir(f"big/s{i}")
        for i in range(50):
            await a.files.write(f"big/f{i:02}.txt", b"x")
        subfolders = re.compile(r"AND \w+\.kind\s*=\s*'dir'")  # the count, alone or inside a look-up
        a.db.conn.set_trace_callback(lambda sql: counts.append(sql) if subfolders.search(sql) else None)
        assert [nlink(a, "big") for _ in range(100)] == [5] * 100
        assert len(counts) <= 1, counts
        await a.files.write("big/one more.txt", b"x")
        await a.files.unlink("big/f00.txt")
        assert nlink(a, "big") == 5
        assert len(counts) <= 1, counts  # a file's entry leaves the count as it was
        await a.files.mkdir("big/s3")
        assert nlink(a, "big") == 6
        await a.files.rmdir("big/s0")
        assert nlink(a, "big") == 5
        root = nlink(a)
        await a.files.rename("big/s1", "moved")
        assert (nlink(a, "big"), nlink(a)) == (4, root + 1)
        await a.settle()
        await b.settle()
        await b.files.mkdir("big/from B")
        await b.files.rename("moved", "big/moved back")
        await b.settle()
        await a.settle()
        assert (nlink(a, "big"), nlink(a)) == (6, root) == (nlink(b, "big"), nlink(b))
        assert len(counts) <= 12, counts  # once after each change, not once a look
        assert sorted(name for name, _attr in a.vfs.listdir(a.vfs.lookup(ROOT_INO, "big").ino)
                      if _attr.nlink > 1) == ["from B", "moved back", "s2", "s3"]
        # A file's node dropped (as at every forget after a mass delete) leaves the count as it was.
        big = a.replica.lookup(ROOT_ID, "big")
        assert big is not None
        gone = a.replica.lookup(big.id, "f01.txt")
        assert gone is not None and nlink(a, "big") == 6
        looked = len(counts)
        a.replica.remove_entry(big.id, "f01.txt")
        a.replica.drop_node(gone.id)
        assert nlink(a, "big") == 6 and len(counts) == looked

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_reader_open_on_b_goes_on_into_an_append_made_on_a_and_keeps_its_version_of_a_rewrite(
    tmp_path: Path,
) -> None:
    """``tail -f`` on B of a log A appends to: the appended bytes can be read through the open file.

    The kernel had taken the new size, and reads past the old end found
    nothing.  A version that does not begin with all of the opened one (a
    rewrite) is not followed: the reader keeps its whole version.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        first = b"a" * BLOCK_SIZE + b"L0\n"  # a full block, and a tail the append grows
        await a.files.write("log.txt", first)
        await a.settle()
        await b.settle()
        fh, _ = await b.vfs.open(b.vfs.lookup(ROOT_INO, "log.txt").ino, OpenMode(read=True))
        assert await b.vfs.read(fh, BLOCK_SIZE, 100) == b"L0\n"
        await a.files.append("log.txt", b"L1\n")
        await a.settle()
        await b.settle()
        assert await b.vfs.read(fh, BLOCK_SIZE + 3, 100) == b"L1\n"
        assert await b.vfs.read(fh, BLOCK_SIZE - 2, 100) == b"aaL0\nL1\n"
        await a.files.write("log.txt", b"rotated")  # rewritten: not an append of what B reads
        await a.settle()
        await b.settle()
        assert await b.vfs.read(fh, BLOCK_SIZE, 100) == b"L0\nL1\n"  # its own version, whole
        await b.vfs.release(fh)
        assert await b.files.read("log.txt") == b"rotated"  # a new open sees the new version

    two_machines(tmp_path, body)


async def _sent(machine: EngineMachine) -> None:
    while await machine.send_one():
        pass


async def _heard(machine: EngineMachine) -> None:
    while await machine.apply_one():
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["", "A sends", "B hears", "A sends, B hears", "B sends"])
def test_a_folder_removed_and_made_again_while_the_other_machine_adds_to_it_is_one_folder(
        tmp_path: Path, first: str) -> None:
    """``rm -rf a; mkdir a`` on B while A adds a file to ``a``: one ``a`` with both files.

    Where A's file reached the server first, the server refuses B's delete and
    brings the old folder back; B's new ``a`` never reached it.  The restored
    folder was renamed to a conflict name to make room, and B's ``mkdir a`` then
    merged into it there: the folder ``a`` was gone from every machine.  Where
    B's changes went first ("B sends"), the old folder cannot come back at its
    name: A's file went to the top folder under a conflict name, where nobody looks.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("a")
        await a.files.write("a/x.txt", b"x")
        await a.settle()
        await b.settle()
        await a.files.write("a/new.txt", b"new on A")
        if "A sends" in first:
            await _sent(a)
        await b.files.unlink("a/x.txt")
        await b.files.rmdir("a")
        await b.files.mkdir("a")
        await b.files.write("a/y.txt", b"y on B")
        if "B hears" in first:
            await _heard(b)
        if "B sends" in first:
            await _sent(b)
        for m in (a, b, a, b, a, b):
            await m.settle()
        assert sorted(server.tree()) == ["a", "a/new.txt", "a/y.txt"]
        assert await a.files.read("a/y.txt") == b"y on B" and await b.files.read("a/new.txt") == b"new on A"
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_an_edit_of_a_file_replaced_elsewhere_while_a_move_here_holds_the_news_back_is_kept(tmp_path: Path) -> None:
    """B moves ``b/doc.txt`` over ``f.txt``; A has moved ``b/doc.txt`` to ``a/`` (queued) and then edits ``f.txt``.

    A's move holds B's new ``f.txt`` back, so A still shows its old ``f.txt``,
    whose node the journal already said was deleted.  That orphaned it while
    named: A's edit of it was never queued.  And once A took the server's
    placement of the moved file, it took ``f.txt`` from under the edit, which
    was then dropped as "deleted here too".  The edit is a conflict copy now.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        for folder in ("a", "b"):
            await a.files.mkdir(folder)
        await a.files.write("b/doc.txt", b"doc")
        await a.files.write("f.txt", b"f")
        await a.settle()
        await b.settle()
        await a.files.rename("b/doc.txt", "a/doc.txt")  # queued on A
        await b.files.rename("b/doc.txt", "f.txt")
        await _sent(b)
        await _heard(a)
        await a.files.write("f.txt", b"edited on A")
        for m in (a, b, a, b):
            await m.settle()
        contents = {path: await a.files.read(path) for path, (kind, _) in server.tree().items() if kind == "file"}
        assert contents.pop("f.txt") == b"doc"
        assert list(contents.values()) == [b"edited on A"], contents
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_two_folders_merged_keep_a_conflict_copy_that_was_already_in_one_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's unsent folder holds ``x.txt`` and a conflict copy of it made in the same second.

    Merged with B's folder, A's ``x.txt`` needs a conflict name.  The name was
    chosen free in B's folder only, and A's own copy of that name was replaced.
    """
    monkeypatch.setattr(conflicts, "time", SimpleNamespace(
        time=lambda: 1_800_000_000.0, localtime=time.localtime, strftime=time.strftime))
    copy = conflicts.conflict_name("x.txt", "A")

    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.files.write("d/x.txt", b"x on A")
        await a.files.write(f"d/{copy}", b"an older copy on A")
        await b.files.mkdir("d")
        await b.files.write("d/x.txt", b"x on B")
        await b.settle()
        while await a.apply_one():
            pass  # A knows B's folder and its file before its own folder goes
        for m in (a, b, a, b):
            await m.settle()
        texts = {path: await a.files.read(path) for path, (kind, _) in server.tree().items() if kind == "file"}
        assert sorted(texts.values()) == [b"an older copy on A", b"x on A", b"x on B"], texts
        assert texts["d/x.txt"] == b"x on B" and texts[f"d/{copy}"] == b"an older copy on A"
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_two_folders_merged_where_ours_holds_a_hard_link_keep_both_names(tmp_path: Path) -> None:
    """A's unsent folder holds one file at two names; B's folder of that name has both names.

    The first name was taken as B's file (the same bytes), which gave the
    node B's id; the second then no longer named the node looked at, was not
    moved out of the way, and the merge failed on the name both folders held
    (an error in the uploader, the batch tried again later).
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.files.write("d/x.txt", b"same")
        await a.files.link("d/x.txt", "d/y.txt")
        await b.files.mkdir("d")
        await b.files.write("d/x.txt", b"same")
        await b.files.write("d/y.txt", b"other")
        await b.settle()
        while await a.apply_one():
            pass  # A knows B's folder and its files before its own folder goes
        while await a.send_one():
            pass
        for m in (b, a, b):
            await m.settle()
        tree = server.tree()
        copies = sorted(path for path in tree if " (conflict from A " in path)
        assert [c.split(" (")[0] for c in copies] == ["d/x", "d/y"], sorted(tree)
        assert tree[copies[0]] == tree[copies[1]] and await a.files.read(copies[1]) == b"same"
        assert await b.files.read("d/x.txt") == b"same" and await b.files.read("d/y.txt") == b"other"
        assert a.tree() == b.tree() == tree

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_the_self_check_sends_a_file_only_here_with_both_its_names(tmp_path: Path) -> None:
    """A file at two names (a hard link) that only this machine has goes up as one file with two names.

    The self-check sent the first name only; the second stayed here alone,
    and the next check took it away.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("d")
        await a.settle()
        folder = a.replica.lookup(ROOT_ID, "d")
        assert folder is not None
        # What a lost queue item leaves: a file here that nothing will send.
        blocks = (a.cache.add(b"only here", protect=False),)
        lonely = new_node_id()
        a.replica.add_node(lonely, "file", 0o644, size=9, blocks=blocks)
        a.replica.set_entry(ROOT_ID, "x.txt", lonely)
        a.replica.set_entry(folder.id, "y.txt", lonely)
        for m in (a, b, a, b):
            await m.settle()
        tree = server.tree()
        assert sorted(tree) == ["d", "d/y.txt", "x.txt"] and tree["x.txt"] == tree["d/y.txt"]
        assert await b.files.read("d/y.txt") == b"only here"
        node = server.store.changes(server.store_id, 0, 10**9).entries
        assert len({e.node for e in node if e.name in ("x.txt", "y.txt")}) == 1, "one file with two names"
        assert a.tree() == b.tree() == tree

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_the_self_check_sends_a_file_only_here_whose_content_only_the_server_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A name here for a node never sent, with bytes this machine never read, that the server holds elsewhere.

    A file moved here over an edited one (a save) whose node is then kept as
    new: the content is another machine's, on the server, never in this
    cache.  The self-check called it unsendable and took the name away,
    with an error.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await b.files.write("b.txt", b"written on B")
        await b.settle()
        await a.settle()
        h = hashlib.sha256(b"written on B").hexdigest()
        assert not a.cache.present([h])
        lonely = new_node_id()
        a.replica.add_node(lonely, "file", 0o644, size=12, blocks=(h,))
        a.replica.set_entry(ROOT_ID, "kept.txt", lonely)
        for m in (a, b, a, b):
            await m.settle()
        tree = server.tree()
        assert sorted(tree) == ["b.txt", "kept.txt"], sorted(tree)
        assert await b.files.read("kept.txt") == b"written on B"
        assert await a.files.read("kept.txt") == b"written on B"
        assert a.tree() == b.tree() == tree

    with caplog.at_level(logging.WARNING):
        two_machines(tmp_path, body)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.timeout(60)
def test_an_edit_of_a_file_moved_elsewhere_over_a_file_changed_here_is_kept(tmp_path: Path) -> None:
    """A moves ``f.txt`` over ``b/f.txt`` and edits it, while B edits ``f.txt`` and sets the mode of ``b/f.txt``.

    B's change of ``b/f.txt`` holds the file's new place back; its old name
    was removed all the same.  With no name here, B's edit was dropped as
    "deleted here too" when the server refused it.
    """
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.write("f.txt", b"one")
        await a.files.mkdir("b")
        await a.files.write("b/f.txt", b"other")
        await a.settle()
        await b.settle()
        await a.files.rename("f.txt", "b/f.txt")
        await a.files.write("b/f.txt", b"edited on A")
        while await a.send_one():
            pass
        await b.files.write("f.txt", b"edited on B")
        await b.files.chmod("b/f.txt", 0o600)
        while await b.apply_one():
            pass
        for m in (b, a, b, a):
            await m.settle()
        texts = {await a.files.read(path) for path, (kind, _) in server.tree().items() if kind == "file"}
        assert {b"edited on A", b"edited on B"} <= texts, texts
        assert a.tree() == b.tree() == server.tree()

    two_machines(tmp_path, body)


@pytest.mark.timeout(60)
def test_a_synced_folder_s_upload_settled_as_a_conflict_meanwhile_is_not_recorded_as_synced(tmp_path: Path) -> None:
    """B's synced folder sends its edit of doc.txt; before the folder looks at the path again, B's
    uploader meets A's edit on the server and settles: A's version at doc.txt, B's beside it.

    Recorded as synced with what doc.txt now holds, the folder would keep B's bytes there and the
    server A's, for good (seen once in a chaos run, seed 301). The path takes A's version instead;
    B's is the conflict copy, in the folder too.
    """
    from websync_fs.folder.corepaths import CorePaths
    from websync_fs.folder.ignore import IgnoreRules
    from websync_fs.folder.known import KnownTree
    from websync_fs.folder.merger import Merger
    from websync_fs.folder.tree import local_sig
    from websync_fs.names import NamePolicy

    folder = tmp_path / "folder"
    folder.mkdir()

    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        known = KnownTree(tmp_path / "folder.db")
        merger = Merger(folder, CorePaths(b.vfs), b.replica, known, IgnoreRules(folder, NamePolicy()), "B")
        try:
            await a.files.write("doc.txt", b"first")
            await a.settle()
            await b.settle()
            await merger._settle_one("doc.txt", [])
            assert (folder / "doc.txt").read_bytes() == b"first"
            await a.files.write("doc.txt", b"edited on A")
            await a.send_one()
            (folder / "doc.txt").write_bytes(b"edited on B")
            write_file = merger.core.write_file

            async def then_the_uploader(*args: object) -> object:
                written = await write_file(*args)  # type: ignore[arg-type]
                while await b.send_one():
                    pass  # refused: A's edit came first; B's goes beside it
                return written

            merger.core.write_file = then_the_uploader  # type: ignore[method-assign]
            await merger._settle_one("doc.txt", [])
            merger.core.write_file = write_file  # type: ignore[method-assign]
            await b.settle()
            for path in ["doc.txt", *(p for p in b.tree() if "conflict" in p)]:
                await merger._settle_one(path, [])
            names = sorted(p.name for p in folder.iterdir())
            assert (folder / "doc.txt").read_bytes() == b"edited on A", names
            (copy,) = [n for n in names if "conflict" in n]
            assert (folder / copy).read_bytes() == b"edited on B"
            k = known.get("doc.txt")
            assert k is not None and k.sig == local_sig(folder, "doc.txt")
            await b.settle()
            await a.settle()
            assert a.tree() == b.tree() and sorted(a.tree()) == sorted(["doc.txt", copy])
        finally:
            known.close()

    two_machines(tmp_path, body)
