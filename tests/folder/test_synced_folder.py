"""A synced folder (`websync sync DIR`) against a mounted machine, on real folders and a real server.

Machine A mounts the store through FUSE; machine B keeps a folder of real
files in sync with watchdog.  Each test changes one side and waits for the
other to show it through the change notification.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.proxy import Proxy
from websync_fs.folder.known import KnownTree, content_of

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]


def _holds(path: Path, data: bytes) -> Callable[[], bool]:
    return lambda: path.exists() and read_bytes(path) == data


def _gone(path: Path) -> Callable[[], bool]:
    return lambda: not os.path.lexists(path)


def _versions(machine: Machine, path: Path) -> int:
    answer = json.loads(machine.cli("history", str(path), "--json").stdout)
    return len(answer["versions"])


def _settled(machine: Machine) -> bool:
    status = json.loads(machine.cli("status", "--json").stdout)
    return status["pending"] == 0


def _ended(pid: int) -> bool:
    """The process is gone (or a zombie nobody reaped: it runs no more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def _mount_and_folder(new_machine: Callable[..., Machine], folder: Path) -> tuple[Machine, Machine]:
    """Machine A with the store mounted, machine B syncing *folder*."""
    a = new_machine("A")
    b = new_machine("B", mount=False)
    b.sync(folder)
    return a, b


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "B" / "Sync"


def test_changes_in_a_synced_folder_reach_a_mount_and_come_back(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    # Local changes go up.
    (folder / "notes.txt").write_bytes(b"one")
    eventually(_holds(a.path("notes.txt"), b"one"), what="a new file to reach the mount")
    (folder / "notes.txt").write_bytes(b"two, longer")
    eventually(_holds(a.path("notes.txt"), b"two, longer"), what="an edit to reach the mount")
    (folder / "docs" / "empty").mkdir(parents=True)
    (folder / "docs" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(folder / "docs" / "run.sh", 0o755)
    os.symlink("run.sh", folder / "docs" / "link")
    eventually(lambda: a.path("docs", "empty").is_dir(), what="an empty folder to reach the mount")
    eventually(lambda: os.path.islink(a.path("docs", "link")) and os.readlink(a.path("docs", "link")) == "run.sh",
               what="a symlink")
    eventually(lambda: os.stat(a.path("docs", "run.sh")).st_mode & 0o111 == 0o111, what="the executable bit")
    # A symlink's own modification time goes both ways (tar, rsync -a, touch -h set it).
    made = folder.parent / "made-aside"
    os.symlink("run.sh", made)
    os.utime(made, ns=(1_500_000_000_000_000_000,) * 2, follow_symlinks=False)
    os.rename(made, folder / "docs" / "old-link")
    eventually(lambda: os.path.islink(a.path("docs", "old-link"))
               and os.lstat(a.path("docs", "old-link")).st_mtime_ns == 1_500_000_000_000_000_000,
               what="a symlink's mtime to reach the mount")
    os.utime(a.path("docs", "old-link"), ns=(1_400_000_000_000_000_000,) * 2, follow_symlinks=False)
    eventually(lambda: os.lstat(folder / "docs" / "old-link").st_mtime_ns == 1_400_000_000_000_000_000,
               what="a symlink's mtime set on the mount to reach the folder")
    assert os.readlink(folder / "docs" / "old-link") == "run.sh"
    os.rename(folder / "notes.txt", folder / "docs" / "moved.txt")
    eventually(_holds(a.path("docs", "moved.txt"), b"two, longer"), what="a rename")
    assert not a.path("notes.txt").exists()
    os.unlink(folder / "docs" / "moved.txt")
    eventually(_gone(a.path("docs", "moved.txt")), what="a delete to reach the mount")
    # Remote changes come down, with their mtime.
    a.path("from-a.txt").write_bytes(b"written on A")
    os.utime(a.path("from-a.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    eventually(lambda: os.path.exists(folder / "from-a.txt")
               and os.stat(folder / "from-a.txt").st_mtime_ns == 1_600_000_000_000_000_000,
               what="a file written on the mount and its mtime")
    assert read_bytes(folder / "from-a.txt") == b"written on A"
    os.rename(a.path("from-a.txt"), a.path("docs", "renamed-on-a.txt"))
    eventually(_holds(folder / "docs" / "renamed-on-a.txt", b"written on A"), what="a rename from the mount")
    assert not (folder / "from-a.txt").exists()
    os.unlink(a.path("docs", "renamed-on-a.txt"))
    eventually(_gone(folder / "docs" / "renamed-on-a.txt"), what="a delete from the mount")
    # Nothing of the folder's own (marker, downloads in flight) ever reached the store.
    assert not [n for n in os.listdir(a.mnt) if n.startswith(".websync")]


def test_a_folder_moved_with_its_files_is_one_move(new_machine: Callable[..., Machine], folder: Path) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    (folder / "album").mkdir()
    for i in range(40):
        (folder / "album" / f"p{i:02}.jpg").write_bytes(b"photo %d" % i)
    eventually(lambda: a.path("album", "p39.jpg").exists(), what="the album to arrive")
    eventually(lambda: _settled(b), what="B's uploads")
    before = _versions(a, a.path("album", "p00.jpg"))
    os.rename(folder / "album", folder / "Album 2024")
    eventually(lambda: a.path("Album 2024", "p39.jpg").exists() and not a.path("album").exists(),
               what="the moved folder")
    # The same node moved: its history came along, no new version was made.
    assert _versions(a, a.path("Album 2024", "p00.jpg")) == before


def test_a_first_sync_matches_identical_files_and_keeps_different_ones_as_conflict_copies(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a = new_machine("A")
    a.path("same.txt").write_bytes(b"identical")
    a.path("differs.txt").write_bytes(b"the store's version")
    b = new_machine("B", mount=False)
    eventually(lambda: _settled(a), what="A's uploads")
    folder.mkdir(parents=True)
    (folder / "same.txt").write_bytes(b"identical")
    (folder / "differs.txt").write_bytes(b"this folder's version")
    (folder / "only-here.txt").write_bytes(b"mine")
    b.sync(folder)
    # The folder now holds the store's files, and nothing of its own was overwritten.
    assert read_bytes(folder / "differs.txt") == b"the store's version"
    copies = [n for n in os.listdir(folder) if n.startswith("differs (conflict from B")]
    assert len(copies) == 1 and read_bytes(folder / copies[0]) == b"this folder's version"
    eventually(_holds(a.path(copies[0]), b"this folder's version"), what="the conflict copy on the mount")
    eventually(_holds(a.path("only-here.txt"), b"mine"), what="the folder's own file on the mount")
    assert _versions(a, a.path("same.txt")) == 1, "an identical file is matched, not uploaded again"
    assert not [n for n in os.listdir(a.mnt) if n.startswith("same (conflict")]


def test_an_editor_save_through_a_temporary_file_is_one_version_and_locks_stay_here(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    doc = folder / "report.odt"
    doc.write_bytes(b"draft 1")
    eventually(_holds(a.path("report.odt"), b"draft 1"), what="the first version")
    eventually(lambda: _settled(b), what="B's uploads")
    # LibreOffice: a lock file beside the document, a temporary written and renamed over it.
    (folder / ".~lock.report.odt#").write_bytes(b"B,user,host")
    (folder / "lu1234.tmp").write_bytes(b"draft 2")
    os.rename(folder / "lu1234.tmp", doc)
    # vim: a swap file.
    (folder / ".report.odt.swp").write_bytes(b"swap")
    eventually(_holds(a.path("report.odt"), b"draft 2"), what="the saved version")
    eventually(lambda: _settled(b), what="B's uploads")
    assert _versions(a, a.path("report.odt")) == 2
    assert sorted(os.listdir(a.mnt)) == ["report.odt"]


def test_a_websyncignore_keeps_matching_files_here(new_machine: Callable[..., Machine], folder: Path) -> None:
    a = new_machine("A")
    b = new_machine("B", mount=False)
    folder.mkdir(parents=True)
    (folder / ".websyncignore").write_text("*.log\nbuild/\n")
    (folder / "build").mkdir()
    (folder / "build" / "out.o").write_bytes(b"object")
    b.sync(folder)
    (folder / "app.log").write_bytes(b"log")
    (folder / "kept.txt").write_bytes(b"kept")
    eventually(_holds(a.path("kept.txt"), b"kept"), what="a file that is not ignored")
    eventually(lambda: a.path(".websyncignore").exists(), what="the ignore file itself")
    assert sorted(os.listdir(a.mnt)) == [".websyncignore", "kept.txt"]


def test_a_name_that_is_not_utf8_stays_here_and_the_sync_goes_on(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    """Linux takes any bytes as a name; the server's names are text.  Such a file had ended the sync,
    which then failed at every start until the file was renamed by hand."""
    a, b = _mount_and_folder(new_machine, folder)
    bad = os.fsdecode(b"bad\xff\xfename.txt")
    (folder / bad).write_bytes(b"kept here")
    (folder / "after.txt").write_bytes(b"after")
    eventually(_holds(a.path("after.txt"), b"after"), what="a file made after it")
    b.cli("sync", "--stop", str(folder))
    b.sync(folder)  # starts again
    (folder / "later.txt").write_bytes(b"later")
    eventually(_holds(a.path("later.txt"), b"later"), what="a file made after a restart")
    assert sorted(os.listdir(a.mnt)) == ["after.txt", "later.txt"]
    assert read_bytes(folder / bad) == b"kept here"
    assert "is not valid UTF-8" in b.log()
    os.rename(folder / bad, folder / "renamed.txt")
    eventually(_holds(a.path("renamed.txt"), b"kept here"), what="the file, renamed")


def test_a_time_set_elsewhere_reaches_the_folder_and_one_set_here_goes_up(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    """``touch -d`` on one side changes no content: the time alone must reach the other (it never did)."""
    a, b = _mount_and_folder(new_machine, folder)
    a.path("old.txt").write_bytes(b"from the mount")
    (folder / "mine.txt").write_bytes(b"from the folder")
    eventually(_holds(folder / "old.txt", b"from the mount"), what="old.txt in the folder")
    eventually(_holds(a.path("mine.txt"), b"from the folder"), what="mine.txt in the mount")
    then = 1_620_191_105_000_000_000  # 2021-05-05
    os.utime(a.path("old.txt"), ns=(then, then))
    eventually(lambda: (folder / "old.txt").stat().st_mtime_ns == then, what="the mount's touch in the folder")
    os.utime(folder / "mine.txt", ns=(then + 10**9, then + 10**9))
    eventually(lambda: a.path("mine.txt").stat().st_mtime_ns == then + 10**9, what="the folder's touch in the mount")
    assert read_bytes(folder / "old.txt") == b"from the mount" and _settled(b)


def test_new_files_and_folders_on_deleted_ones_inodes_are_not_moves(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    """ext4 gives a new file the inode of one just deleted: taken for a move, the deleted files never
    reached the trash, and a folder made after an ``rm -rf`` took over the removed tree's place."""
    a, b = _mount_and_folder(new_machine, folder)
    (folder / "d").mkdir()
    for i in range(20):
        (folder / "d" / f"old{i}.txt").write_bytes(b"old %d" % i)
    (folder / "big" / "sub").mkdir(parents=True)
    (folder / "big" / "sub" / "f.txt").write_bytes(b"in big")
    eventually(_holds(a.path("big", "sub", "f.txt"), b"in big"), what="the tree in the mount")
    eventually(lambda: len(os.listdir(a.path("d"))) == 20 and _settled(b), what="the old files in the mount")
    before = {(folder / "d" / f"old{i}.txt").stat().st_ino for i in range(20)} | {(folder / "big").stat().st_ino}
    for i in range(20):
        (folder / "d" / f"old{i}.txt").unlink()
    os.sync()  # the frees committed: ext4 then hands their inodes out again, the lowest free first
    for i in range(60):
        (folder / "d" / f"new{i}.txt").write_bytes(b"new %d" % i)
    shutil.rmtree(folder / "big")
    (folder / "other").mkdir()
    after = {(folder / "d" / f"new{i}.txt").stat().st_ino for i in range(60)} | {(folder / "other").stat().st_ino}
    print(f"{len(before & after)} of 21 inodes taken again")
    eventually(lambda: sorted(os.listdir(a.path("d"))) == sorted(f"new{i}.txt" for i in range(60)),
               what="the new files in the mount")
    eventually(lambda: sorted(os.listdir(a.mnt)) == ["d", "other"] and _settled(b), what="big gone, other made")
    trash = b.cli("trash", "--all").stdout
    assert all(f"old{i}.txt" in trash for i in range(20)), trash
    assert _versions(b, folder / "d" / "new3.txt") == 1  # a path in the synced folder names its file


def test_kill_9_of_the_sync_and_a_restart_lose_nothing(new_machine: Callable[..., Machine], folder: Path) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    (folder / "kept.txt").write_bytes(b"before")
    (folder / "doomed.txt").write_bytes(b"to delete")
    eventually(lambda: a.path("doomed.txt").exists() and a.path("kept.txt").exists(), what="the first files")
    eventually(lambda: _settled(b), what="B's uploads")
    big = os.urandom(9 * 1024 * 1024)
    (folder / "big.bin").write_bytes(big)
    b.kill()  # mid-upload, most likely: nothing may be lost either way
    # While nothing watches: changes here and there.
    (folder / "kept.txt").write_bytes(b"edited while stopped")
    os.unlink(folder / "doomed.txt")
    (folder / "new").mkdir()
    (folder / "new" / "file.txt").write_bytes(b"new while stopped")
    a.path("from-a.txt").write_bytes(b"from A meanwhile")
    b.sync(folder)
    assert read_bytes(folder / "from-a.txt") == b"from A meanwhile"  # the start-up scan ran before ready
    eventually(_holds(a.path("kept.txt"), b"edited while stopped"), what="an offline edit")
    eventually(_holds(a.path("new", "file.txt"), b"new while stopped"), what="an offline new file")
    eventually(_gone(a.path("doomed.txt")), what="an offline delete")
    eventually(lambda: a.path("big.bin").exists() and a.path("big.bin").stat().st_size == len(big),
               what="the file that was being uploaded", timeout=60)
    assert read_bytes(a.path("big.bin")) == big
    assert not [n for n in os.listdir(folder) if "conflict" in n or n.startswith(".websync-tmp")]


def test_a_file_written_on_after_a_kill_9_mid_upload_goes_up_as_its_next_version(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    """The sync was killed after the core took a file's upload and before the folder's own row said so
    (known.py, "Crash safety"); the program went on writing the file (the rest of a `tar xf`). Made here
    as that moment leaves the folder's state, the rest goes up as the file's next version: no conflict
    copy, and the name does not go back to the part that was sent."""
    a, b = _mount_and_folder(new_machine, folder)
    first = b"the first part"
    (folder / "part.bin").write_bytes(first)
    eventually(_holds(a.path("part.bin"), first), what="the first part on A")
    eventually(lambda: _settled(b), what="B's uploads")
    b.kill()
    known = KnownTree(b.home / "state" / "folder.db")
    try:
        row = known.get("part.bin")
        assert row is not None
        known.drop("part.bin")
        known.sending("part.bin", content_of(len(first), [hashlib.sha256(first).hexdigest()]), row.sig)
    finally:
        known.close()
    with open(folder / "part.bin", "ab") as f:
        f.write(b" and the rest")
    b.sync(folder)
    eventually(_holds(a.path("part.bin"), first + b" and the rest"), what="the rest on A")
    eventually(lambda: _settled(b), what="B's uploads")
    assert read_bytes(folder / "part.bin") == first + b" and the rest"
    assert not [n for n in os.listdir(folder) + os.listdir(a.mnt) if "conflict" in n]


def test_the_folder_keeps_no_second_copy_in_the_cache(new_machine: Callable[..., Machine], folder: Path) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    a.path("down.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    (folder / "up.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    eventually(lambda: (folder / "down.bin").exists() and (folder / "down.bin").stat().st_size == 8 << 20,
               what="the download")
    eventually(lambda: a.path("up.bin").exists() and _settled(b), what="the upload")
    b.cli("sync", "--stop", str(folder))
    content = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    cache = sum(p.stat().st_blocks * 512 for p in (b.home / "cache").rglob("*") if p.is_file())
    assert cache < 0.1 * content, f"the cache holds {cache} bytes beside {content} bytes of content"


def test_a_second_sync_of_the_same_folder_is_refused(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    b = new_machine("B", mount=False)
    c = new_machine("C", mount=False)
    b.sync(folder)
    refused = c.cli("sync", str(folder), check=False)
    assert refused.returncode != 0 and "already being synced" in refused.stderr


def test_a_folder_inside_a_mount_is_refused(new_machine: Callable[..., Machine]) -> None:
    a = new_machine("A")
    b = new_machine("B", mount=False)
    refused = b.cli("sync", str(a.path("inside")), check=False)
    assert refused.returncode != 0 and "inside the WebSync mount" in refused.stderr
    assert not a.path("inside").exists()


def test_a_folder_that_disappears_stops_the_sync_and_deletes_nothing(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    for i in range(20):
        (folder / f"f{i}.txt").write_bytes(b"keep me")
    eventually(lambda: a.path("f19.txt").exists(), what="the files to arrive")
    eventually(lambda: _settled(b), what="B's uploads")
    pid = b.pid()
    shutil.rmtree(folder)
    eventually(lambda: b.pid() is None, what="the sync to stop")
    assert pid is not None
    eventually(lambda: _ended(pid), what="the sync process to end")
    assert len([n for n in os.listdir(a.mnt) if n.endswith(".txt")]) == 20
    # A new start does not take the empty folder for "the user deleted everything".
    folder.mkdir()
    refused = b.cli("sync", str(folder), check=False)
    assert refused.returncode != 0 and "marker" in refused.stderr
    assert len(os.listdir(a.mnt)) == 20
    status = json.loads(b.cli("status", "--json").stdout)
    assert status["mounted"] is False


def test_kill_9_mid_download_shows_no_half_file_and_a_restart_finishes_it(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    big = os.urandom(24 * 1024 * 1024)
    # Written beside under a temporary name and renamed: the store only ever holds the whole
    # file, under this name (a file under a name of its own goes up empty when its writing
    # takes longer than the quiet period, and B would show that empty version first).
    a.path("staging.tmp").write_bytes(big)
    os.rename(a.path("staging.tmp"), a.path("video.bin"))
    eventually(lambda: any(n.startswith(".websync-tmp-") for n in os.listdir(folder))
               or (folder / "video.bin").exists(), what="the download to start")
    b.kill()
    # Whatever the moment: the file is whole or absent, never half.
    if (folder / "video.bin").exists():
        assert read_bytes(folder / "video.bin") == big
    b.sync(folder)
    assert read_bytes(folder / "video.bin") == big
    assert not [n for n in os.listdir(folder) if n.startswith(".websync-tmp-")]


def test_two_synced_folders_and_a_mount_converge_after_changes_on_all_three(
    new_machine: Callable[..., Machine], tmp_path: Path
) -> None:
    a = new_machine("A")
    b = new_machine("B", mount=False)
    c = new_machine("C", mount=False)
    fb, fc = tmp_path / "B" / "Sync", tmp_path / "C" / "Sync"
    b.sync(fb)
    c.sync(fc)
    rng = random.Random(16)
    roots = [a.mnt, fb, fc]
    for step in range(60):
        root = rng.choice(roots)
        name = f"f{rng.randrange(12)}.txt"
        folder_name = rng.choice(["", "d1", "d2"])
        where = root / folder_name if folder_name else root
        action = rng.random()
        try:
            where.mkdir(exist_ok=True)
            if action < 0.6:
                (where / name).write_bytes(b"step %d from %s" % (step, root.parent.name.encode()))
            elif action < 0.8 and (where / name).exists():
                os.unlink(where / name)
            elif (where / name).exists():
                os.rename(where / name, where / f"r{rng.randrange(12)}.txt")
        except OSError:
            pass  # a folder removed by a change arriving meanwhile: the next step goes on
        if step % 10 == 9:
            time.sleep(0.3)

    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): read_bytes(p) if p.is_file() else b"<dir>"
            for p in root.rglob("*") if not p.name.startswith(".websync-")
        }

    def agree() -> bool:
        one, two, three = tree(a.mnt), tree(fb), tree(fc)
        differ = {
            path: (one.get(path), two.get(path), three.get(path))
            for path in one.keys() | two.keys() | three.keys()
            if not one.get(path) == two.get(path) == three.get(path)
        }
        # Raised rather than returned so that a timeout shows where the trees differ.
        assert not differ, f"A, B and C differ at {differ}"
        for machine in (b, c):
            status = json.loads(machine.cli("status", "--json").stdout)
            assert status["pending"] == 0, f"{machine.name} still holds changes: {status}"
            assert 0 <= status["status_age"] < 30, status  # the running sync writes its state every second
        return True

    eventually(agree, timeout=90, what="the mount and both folders to hold the same tree")


def _word_save(folder: Path, data: bytes) -> None:
    """Word: owner file, new content in ~WRD, the document moved to ~WRL, ~WRD renamed in, ~WRL deleted."""
    (folder / "~$port.docx").write_bytes(b"owner")
    (folder / "~WRD0000.tmp").write_bytes(data)
    os.rename(folder / "report.docx", folder / "~WRL0001.tmp")
    os.rename(folder / "~WRD0000.tmp", folder / "report.docx")
    os.unlink(folder / "~WRL0001.tmp")
    os.unlink(folder / "~$port.docx")


def _vim_save(folder: Path, data: bytes) -> None:
    """vim: the probe 4913, a swap file, the document moved to a backup, written anew, backup removed."""
    (folder / ".report.docx.swp").write_bytes(b"swap")
    (folder / "4913").write_bytes(b"")
    os.unlink(folder / "4913")
    os.rename(folder / "report.docx", folder / "report.docx~")
    (folder / "report.docx").write_bytes(data)
    os.unlink(folder / "report.docx~")
    os.unlink(folder / ".report.docx.swp")


def _glib_save(folder: Path, data: bytes) -> None:
    """GLib (gedit): a .goutputstream-XXXXXX written and renamed over the document."""
    (folder / ".goutputstream-ABC123").write_bytes(data)
    os.rename(folder / ".goutputstream-ABC123", folder / "report.docx")


@pytest.mark.parametrize("save", [_word_save, _vim_save, _glib_save], ids=["word", "vim", "glib"])
def test_save_sequences_seen_by_the_watcher_are_one_version_each(
    new_machine: Callable[..., Machine], folder: Path, save: Callable[[Path, bytes], None]
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    (folder / "report.docx").write_bytes(b"version 1")
    eventually(_holds(a.path("report.docx"), b"version 1"), what="the first version")
    eventually(lambda: _settled(b), what="B's uploads")
    seen: set[str] = set()
    save(folder, b"version 2")

    def arrived() -> bool:
        seen.update(os.listdir(a.mnt))  # watched from the mount throughout the save
        return read_bytes(a.path("report.docx")) == b"version 2" and _settled(b)

    eventually(arrived, what="the saved version")  # and B's queue empty: nothing more is coming
    assert _versions(a, a.path("report.docx")) == 2
    assert sorted(os.listdir(a.mnt)) == ["report.docx"]
    assert seen == {"report.docx"}, f"the mount saw temporary or lock files: {sorted(seen)}"


def test_a_mount_inside_a_synced_folder_is_refused(new_machine: Callable[..., Machine], folder: Path) -> None:
    b = new_machine("B", mount=False)
    b.sync(folder)
    c = new_machine("C", mount=False)
    (folder / "inner").mkdir()
    refused = c.cli("mount", str(folder / "inner"), check=False)
    assert refused.returncode != 0 and "inside the synced folder" in refused.stderr
    assert not os.path.ismount(folder / "inner")


def test_offline_edits_on_both_sides_meet_after_reconnect(
    new_machine: Callable[..., Machine], folder: Path, proxy: Proxy
) -> None:
    a = new_machine("A")
    b = new_machine("B", mount=False, url=proxy.url)
    b.sync(folder)
    for name in ("both.txt", "here.txt", "there.txt"):
        (folder / name).write_bytes(b"v1")
    eventually(lambda: all(a.path(n).exists() for n in ("both.txt", "here.txt", "there.txt")), what="v1")
    eventually(lambda: _settled(b), what="B's uploads")
    proxy.online = False
    (folder / "here.txt").write_bytes(b"edited in the folder")
    (folder / "both.txt").write_bytes(b"both: folder")
    (folder / "new-offline.txt").write_bytes(b"made offline")
    a.path("there.txt").write_bytes(b"edited on the mount")
    a.path("both.txt").write_bytes(b"both: mount")
    eventually(lambda: _settled(a), what="A's uploads")
    proxy.online = True
    eventually(_holds(a.path("here.txt"), b"edited in the folder"), what="the folder's offline edit", timeout=60)
    eventually(_holds(a.path("new-offline.txt"), b"made offline"), what="the folder's offline new file")
    eventually(_holds(folder / "there.txt", b"edited on the mount"), what="the mount's edit", timeout=60)
    # Both edited the same file: both versions are kept, one under the conflict name.
    def both_kept() -> bool:
        texts = {read_bytes(folder / n) for n in os.listdir(folder) if n.startswith("both")}
        return texts == {b"both: folder", b"both: mount"}

    eventually(both_kept, what="both edits of one file", timeout=60)
    eventually(lambda: sorted(os.listdir(a.mnt)) == sorted(n for n in os.listdir(folder)
                                                          if not n.startswith(".websync-")),
               what="the same tree on both")


def test_a_full_disk_pauses_downloads_and_they_resume_when_there_is_room(
    new_machine: Callable[..., Machine], tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    folder = tmpfs(tmp_path / "small", "8m") / "Sync"
    a, b = _mount_and_folder(new_machine, folder)
    first, second = os.urandom(5 << 20), os.urandom(5 << 20)
    a.path("first.bin").write_bytes(first)
    eventually(_holds(folder / "first.bin", first), what="the first file")
    a.path("second.bin").write_bytes(second)

    def reported() -> bool:
        problems = json.loads(b.cli("status", "--json").stdout)["problems"]
        return "disk full" in problems.get("second.bin", "")

    eventually(reported, what="the status to say the disk is full")
    assert not (folder / "second.bin").exists()
    assert not [n for n in os.listdir(folder) if n.startswith(".websync-tmp-")]
    os.unlink(folder / "first.bin")  # room again (and a delete that reaches the mount)
    eventually(_holds(folder / "second.bin", second), what="the paused download", timeout=60)
    eventually(_gone(a.path("first.bin")), what="the delete")


def test_only_the_chosen_folders_are_synced(new_machine: Callable[..., Machine], folder: Path) -> None:
    a = new_machine("A")
    for name in ("Documents", "Photos", "Other"):
        a.path(name).mkdir()
        a.path(name, "file.txt").write_bytes(name.encode())
    b = new_machine("B", mount=False)
    eventually(lambda: _settled(a), what="A's uploads")
    b.sync(folder, "--only", "Documents", "--only", "Photos/")
    assert sorted(os.listdir(folder)) == [".websync-folder", "Documents", "Photos"]
    assert read_bytes(folder / "Documents" / "file.txt") == b"Documents"
    (folder / "Other").mkdir()
    (folder / "Other" / "mine.txt").write_bytes(b"stays here")
    (folder / "Documents" / "new.txt").write_bytes(b"goes up")
    eventually(_holds(a.path("Documents", "new.txt"), b"goes up"), what="a file in a chosen folder")
    eventually(lambda: _settled(b), what="B's uploads")
    assert sorted(os.listdir(a.path("Other"))) == ["file.txt"]


def test_a_file_written_slowly_while_others_close_is_never_sent_half_written(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    pieces = [f"line {i} of a log written slowly\n".encode() * 50 for i in range(12)]
    with open(folder / "slow.log", "wb") as f:
        for i, piece in enumerate(pieces):
            f.write(piece)
            f.flush()
            # Other files are written and closed meanwhile: each alone would start a batch at once.
            (folder / f"done-{i}.txt").write_bytes(b"closed")
            # Longer than the wait after a closed file, shorter than an open writer's quiet period.
            time.sleep(0.06)
    eventually(_holds(a.path("slow.log"), b"".join(pieces)), what="the whole log")
    eventually(_holds(a.path("done-11.txt"), b"closed"), what="the other files")
    eventually(lambda: _settled(b), what="B's uploads")
    assert _versions(a, a.path("slow.log")) == 1


def test_a_folder_synced_by_root_takes_the_owners_chown_set(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    a.path("given.txt").write_bytes(b"to 1234")
    os.chown(a.path("given.txt"), 1234, 5678)
    a.path("theirs").mkdir()
    os.chown(a.path("theirs"), 1001, 1001)
    a.path("mine.txt").write_bytes(b"the store owner's")
    eventually(lambda: (folder / "given.txt").exists() and (folder / "theirs").is_dir()
               and (folder / "mine.txt").exists(), what="the files in the folder")
    eventually(lambda: os.stat(folder / "given.txt")[4:6] == (1234, 5678), what="the owner of a file")
    eventually(lambda: os.stat(folder / "theirs")[4:6] == (1001, 1001), what="the owner of a folder")
    assert os.stat(folder / "mine.txt")[4:6] == (os.getuid(), os.getgid())
    # A chown alone, of a file already here, comes down too.
    os.chown(a.path("mine.txt"), 1002, 1002)
    eventually(lambda: os.stat(folder / "mine.txt")[4:6] == (1002, 1002), what="a later chown")
    assert read_bytes(folder / "mine.txt") == b"the store owner's"
    # Files the syncing user makes in the folder are the store owner's on the mount.
    (folder / "made-here.txt").write_bytes(b"here")
    eventually(_holds(a.path("made-here.txt"), b"here"), what="a file from the folder")
    assert os.stat(a.path("made-here.txt"))[4:6] == (os.getuid(), os.getgid())


def test_a_chown_in_a_folder_synced_by_root_reaches_a_mount(
    new_machine: Callable[..., Machine], folder: Path
) -> None:
    a, b = _mount_and_folder(new_machine, folder)
    (folder / "given.txt").write_bytes(b"to 1234")
    (folder / "shared").mkdir()
    os.symlink("given.txt", folder / "link")
    eventually(lambda: os.path.islink(a.path("link")) and a.path("shared").is_dir()
               and a.path("given.txt").exists(), what="the files on the mount")
    eventually(lambda: _settled(b), what="B's uploads")
    inode = os.stat(folder / "given.txt").st_ino
    # chown, chgrp alone and a symlink's own owner, made in the folder, as a mount's chown would be.
    os.chown(folder / "given.txt", 1234, 5678)
    os.chown(folder / "shared", -1, 1001)
    os.lchown(folder / "link", 1002, 1002)
    eventually(lambda: os.stat(a.path("given.txt"))[4:6] == (1234, 5678), what="the chown of a file")
    eventually(lambda: os.stat(a.path("shared"))[4:6] == (os.getuid(), 1001), what="the chgrp of a folder")
    eventually(lambda: os.lstat(a.path("link"))[4:6] == (1002, 1002), what="the owner of a symlink")
    # A file that has another owner when it first goes up (as tar -x and rsync -a as root make them).
    (folder / "shared" / "untarred.txt").write_bytes(b"from a tarball")
    os.chown(folder / "shared" / "untarred.txt", 1003, 1004)
    eventually(lambda: os.stat(a.path("shared", "untarred.txt"))[4:6] == (1003, 1004), what="a new file's owner")
    eventually(lambda: _settled(b), what="B's uploads")
    # Nothing came back down over it: the same file, content and owner; one version of the content.
    assert os.stat(folder / "given.txt").st_ino == inode and os.stat(folder / "given.txt")[4:6] == (1234, 5678)
    assert read_bytes(a.path("given.txt")) == b"to 1234" and _versions(a, a.path("given.txt")) == 1
    # Given back to the syncing user (root here): the store owner's again, shown as A's user on A.
    os.chown(folder / "given.txt", os.getuid(), os.getgid())
    eventually(lambda: os.stat(a.path("given.txt"))[4:6] == (os.getuid(), os.getgid()), what="the chown back")
    # And a folder given back to the store owner on A comes down as the syncing user's.
    os.chown(a.path("shared"), os.getuid(), os.getgid())
    eventually(lambda: os.stat(folder / "shared")[4:6] == (os.getuid(), os.getgid()), what="A's chown of the folder")
    eventually(lambda: _settled(a) and _settled(b), what="both settled")
    assert os.stat(a.path("shared"))[4:6] == (os.getuid(), os.getgid())
    assert os.stat(a.path("shared", "untarred.txt"))[4:6] == (1003, 1004)
