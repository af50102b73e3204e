"""A shared folder mounted on members' machines, each mount a place of its own, through the kernel.

Alice shares ``Family`` with Bob (read-write) and Carol (read-only); each
mounts it with ``websync mount DIR --shared Family`` beside nothing else (their
own stores are not mounted: a place does not need them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import statistics
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import Machine, _kill, arrival, eventually, read_bytes
from tests.mount.test_concurrent_changes import together
from tests.servers import ServerProcess, add_user

pytestmark = pytest.mark.mount


class Place:
    """One machine's mount of the shared folder: its mount point and its own home under the machine's."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.mnt = machine.mnt.parent / "family"
        self.mnt.mkdir(exist_ok=True)

    def mount(self) -> None:
        self.machine.cli("mount", str(self.mnt), "--shared", "Family")
        assert os.path.ismount(self.mnt)

    @property
    def home(self) -> Path:
        [place] = (self.machine.home / "state" / "shared").iterdir()
        return place

    def pid(self) -> int | None:
        try:
            return int((self.home / "mount.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def path(self, *parts: str) -> Path:
        return self.mnt.joinpath(*parts)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.machine.cli("--shared", "Family", *args, check=check)

    def cleanup(self) -> None:
        pid = self.pid() if (self.machine.home / "state" / "shared").is_dir() else None
        # Also a mount whose process died (ENOTCONN: not a mount point to os.path.ismount).
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)
        if pid:
            _kill(pid, signal.SIGTERM, wait=10)
            _kill(pid, signal.SIGKILL)

    def errors(self) -> list[str]:
        log = self.home / "websync.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if " ERROR " in line or "Traceback" in line]


@pytest.fixture
def family(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> Iterator[tuple[Place, Place, Place]]:
    """Alice's, Bob's and Carol's mounts of Alice's ``Family`` (Carol read-only)."""
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    c = new_machine("C", mount=False)
    bob, carol = (f"{account[0]}-bob", "pw-bob-long-enough"), (f"{account[0]}-carol", "pw-carol-long-enough")
    for machine, user in ((b, bob), (c, carol)):
        add_user(server.data_dir, *user)
        machine.login(*user)
    a.cli("share", "Family", bob[0])
    a.cli("share", "Family", carol[0], "--read-only")
    places = (Place(a), Place(b), Place(c))
    try:
        for place in places:
            place.mount()
        yield places
    finally:
        for place in places:
            place.cleanup()
    for place in places:
        assert not place.errors(), f"{place.machine.name} logged errors:\n" + "\n".join(place.errors()[:20])


def test_members_mounts_of_a_shared_folder_converge_as_fast_as_own_files_keep_conflicts_and_restore(
    family: tuple[Place, Place, Place], new_machine: Callable[..., Machine]
) -> None:
    alice, bob, carol = family
    # A member's change arrives as fast as a change of one's own files: one run, two paths (alice's own
    # mount to her second machine, alice's place to bob's), the same long poll; medians compared, not times.
    alice.machine.mount()
    own_a2 = new_machine("A2")
    own, shared = [], []
    for i in range(6):
        own.append(arrival(alice.machine.path(f"own-{i}.txt"), own_a2.path(f"own-{i}.txt"), b"own %d" % i))
        shared.append(arrival(alice.path(f"shared-{i}.txt"), bob.path(f"shared-{i}.txt"), b"shared %d" % i))
    own_median, shared_median = statistics.median(own), statistics.median(shared)
    print(f"median arrival: own files {own_median:.3f} s, shared folder {shared_median:.3f} s")
    assert shared_median < 2.5 * own_median
    alice.path("from-alice.txt").write_bytes(b"hello from alice")
    eventually(lambda: read_bytes(bob.path("from-alice.txt")) == b"hello from alice", what="alice's file on bob")
    bob.path("Photos").mkdir()
    bob.path("Photos", "from-bob.jpg").write_bytes(b"bob's photo")
    for place in (alice, carol):
        eventually(lambda p=place: read_bytes(p.path("Photos", "from-bob.jpg")) == b"bob's photo",
                   what=f"bob's file on {place.machine.name}")
    together(lambda: alice.path("from-alice.txt").write_bytes(b"edit by alice"),
             lambda: bob.path("from-alice.txt").write_bytes(b"edit by bob"))

    def both_kept(place: Place) -> set[bytes] | None:
        names = [n for n in os.listdir(place.mnt) if n.startswith("from-alice")]
        return {read_bytes(place.path(n)) for n in names} if len(names) == 2 else None

    for place in family:
        eventually(lambda p=place: both_kept(p) == {b"edit by alice", b"edit by bob"},
                   what=f"both edits on {place.machine.name}")
    # Each place is its own client: its status names the folder; the user's own store is untouched.
    status = json.loads(bob.cli("status", "--json").stdout)
    assert status["shared"]["name"] == "Family" and status["shared"]["read_only"] is False
    assert status["mountpoint"] == str(bob.mnt) and status["pending"] == 0
    own = json.loads(bob.machine.cli("status", "--json").stdout)
    assert own["mounted"] is False
    assert [(p["name"], p["mountpoint"]) for p in own["places"]] == [("Family", str(bob.mnt))]
    assert f"shared:     Family of {_user(alice)} mounted at {bob.mnt}" in bob.machine.cli("status").stdout
    # History and trash work inside the folder, through the place's CLI.
    bob.path("list.txt").write_bytes(b"milk")
    eventually(lambda: read_bytes(alice.path("list.txt")) == b"milk", what="list on alice")
    alice.path("list.txt").unlink()
    eventually(lambda: not bob.path("list.txt").exists(), what="delete on bob")
    trashed = eventually(lambda: [i for i in json.loads(bob.cli("trash", "--json").stdout)["trash"]
                                  if i["path"] == "list.txt"], what="list.txt in the trash")
    assert trashed[0]["device"] == "A"
    bob.cli("restore", "list.txt")
    for place in (alice, bob):
        eventually(lambda p=place: read_bytes(p.path("list.txt")) == b"milk", what=f"restored on {place.machine.name}")
    # `websync unmount DIR` finds the place whose mount DIR is.
    assert bob.machine.cli("unmount", str(bob.mnt)).stdout.startswith(f"unmounted {bob.mnt}")
    assert not os.path.ismount(bob.mnt) and bob.pid() is None


def test_a_read_only_member_reads_and_every_change_is_erofs_with_nothing_queued(
    family: tuple[Place, Place, Place],
) -> None:
    alice, _, carol = family
    alice.path("Docs").mkdir()
    alice.path("Docs", "rules.txt").write_bytes(b"house rules")
    eventually(lambda: read_bytes(carol.path("Docs", "rules.txt")) == b"house rules", what="rules on carol")
    target = carol.path("Docs", "rules.txt")
    changes: list[Callable[[], object]] = [
        lambda: carol.path("new.txt").write_bytes(b"x"),
        lambda: target.write_bytes(b"changed"),
        lambda: open(target, "ab").close(),
        lambda: carol.path("NewFolder").mkdir(),
        lambda: target.unlink(),
        lambda: carol.path("Docs").rmdir(),
        lambda: target.rename(carol.path("moved.txt")),
        lambda: os.chmod(target, 0o600),
        lambda: os.utime(target, (0, 0)),
        lambda: os.truncate(target, 1),
        lambda: os.setxattr(target, "user.tag", b"v"),
        lambda: os.symlink("rules.txt", carol.path("Docs", "link")),
    ]
    for change in changes:
        with pytest.raises(OSError) as refused:
            change()
        assert refused.value.errno == errno.EROFS
    assert read_bytes(target) == b"house rules"
    status = json.loads(carol.cli("status", "--json").stdout)
    assert status["pending"] == 0 and status["shared"]["read_only"] is True
    assert "read-only" in carol.cli("status").stdout
    unknown = carol.machine.cli("mount", str(carol.mnt.parent / "other"), "--shared", "Nope", check=False)
    assert unknown.returncode == 2 and "no shared folder is named 'Nope'" in unknown.stderr
    # A read-only folder cannot be a synced folder (its changes could never be sent).
    refused_sync = carol.machine.cli("sync", str(carol.mnt.parent / "fam-folder"), "--shared", "Family", check=False)
    assert refused_sync.returncode == 2 and "read-only for you" in refused_sync.stderr


def test_a_removed_member_stops_keeps_nothing_and_status_says_why(family: tuple[Place, Place, Place]) -> None:
    alice, bob, carol = family
    alice.path("secret.txt").write_bytes(b"for members only")
    eventually(lambda: read_bytes(carol.path("secret.txt")) == b"for members only", what="secret on carol")
    place_home = carol.home
    blocks = place_home.parent.parent.parent / "cache" / "shared" / place_home.name
    assert blocks.is_dir()
    alice.machine.cli("unshare", "Family", _user(carol))
    eventually(lambda: carol.pid() is None and not os.path.ismount(carol.mnt), what="carol's mount ended")
    assert os.listdir(carol.mnt) == []
    assert not blocks.exists() and not (place_home / "replica.db").exists()
    out = carol.cli("status").stdout
    assert "Family is no longer shared with you" in out
    assert json.loads(carol.cli("status", "--json").stdout)["shared"]["revoked"]
    # Removed while nothing of it ran: the next look at the server forgets it all the same.
    eventually(lambda: read_bytes(bob.path("secret.txt")) == b"for members only", what="secret on bob")
    bob.machine.cli("unmount", str(bob.mnt))
    assert (bob.home / "replica.db").exists()
    alice.machine.cli("unshare", "Family", _user(bob))
    again = bob.machine.cli("mount", str(bob.mnt), "--shared", "Family", check=False)
    assert again.returncode == 2 and "no shared folder is named 'Family'" in again.stderr
    assert not (bob.home / "replica.db").exists() and not (bob.machine.home / "cache" / "shared").joinpath(
        bob.home.name).exists()
    assert "Family is no longer shared with you" in bob.cli("status").stdout


@pytest.mark.timeout(120)
def test_a_member_removed_while_nothing_of_the_folder_ran_keeps_what_never_went_up(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> None:
    """Bob's mount of the folder dies (kill -9) with a saved file still waiting to go and a file open,
    fsync'd; Alice removes him meanwhile. His next look at the list forgets the place, as before, but
    first writes both files under ``kept/``, as a running mount would have; while they cannot be
    written, the place stays and the next look tries again."""
    a, b, bob = _alice_and_bob(server, account, new_machine)
    config = b.home / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "quiet_period": 600, "first_quiet_period": 600}))
    a.cli("share", "Family", bob[0])
    alice, mine = Place(a), Place(b)
    try:
        alice.mount()
        mine.mount()
        alice.path("theirs.txt").write_bytes(b"on the server")
        eventually(lambda: read_bytes(mine.path("theirs.txt")) == b"on the server", what="theirs.txt on bob")
        os.mkdir(mine.path("trip"))
        saved = os.urandom(300_000)
        mine.path("trip", "saved.bin").write_bytes(saved)
        writer = os.open(mine.path("open.log"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(writer, b"line 1\n")
        os.fsync(writer)
        pid = mine.pid()
        assert pid
        _kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # its file system is gone: ECONNABORTED
            os.close(writer)
        subprocess.run(["fusermount3", "-u", "-z", str(mine.mnt)], capture_output=True, timeout=30)
        assert not alice.path("trip").exists()  # nothing of it went up
        alice.machine.cli("unshare", "Family", bob[0])
        # Where the kept files go cannot be written (a full disk, here a file in the way): the place stays.
        blocked = b.home / "state" / "kept"
        blocked.write_bytes(b"in the way")
        again = b.cli("mount", str(mine.mnt), "--shared", "Family", check=False)
        assert again.returncode == 2 and "no shared folder is named 'Family'" in again.stderr
        assert (mine.home / "replica.db").exists() and "no longer shared" not in mine.cli("status").stdout
        blocked.unlink()
        again = b.cli("mount", str(mine.mnt), "--shared", "Family", check=False)
        assert again.returncode == 2 and "no shared folder is named 'Family'" in again.stderr
        assert not (mine.home / "replica.db").exists()
        (kept,) = (b.home / "state" / "kept").iterdir()
        assert kept.name.startswith("Family ")
        assert read_bytes(kept / "trip" / "saved.bin") == saved
        assert read_bytes(kept / "open.log") == b"line 1\n"
        assert not (kept / "theirs.txt").exists()  # on the server: alice has it
        said = mine.cli("status").stdout
        assert "Family is no longer shared with you" in said and "2 file(s)" in said and str(kept) in said, said
    finally:
        alice.cleanup()
        mine.cleanup()


def _alice_and_bob(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> tuple[Machine, Machine, tuple[str, str]]:
    """Machine A logged in as the account's user, machine B as a new user bob; nothing mounted."""
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    bob = (f"{account[0]}-bob", "pw-bob-long-enough")
    add_user(server.data_dir, *bob)
    b.login(*bob)
    return a, b, bob


def _user(place: Place) -> str:
    return str(json.loads(place.machine.cli("status", "--json").stdout)["user"])


def test_a_shared_folder_synced_as_a_folder_meets_a_mount_of_it_and_stops_when_unshared(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> None:
    """And once unshared, the folder keeps only what was the member's own."""
    a, b, bob = _alice_and_bob(server, account, new_machine)
    a.cli("share", "Family", bob[0])
    alice, synced = Place(a), Place(b)
    try:
        alice.mount()
        b.cli("sync", str(synced.mnt), "--shared", "Family")
        alice.path("from-mount.txt").write_bytes(b"written in the mount")
        eventually(lambda: read_bytes(synced.path("from-mount.txt")) == b"written in the mount", what="in the folder")
        synced.path("from-folder.txt").write_bytes(b"written in the folder")
        eventually(lambda: read_bytes(alice.path("from-folder.txt")) == b"written in the folder", what="in the mount")
        assert json.loads(synced.cli("status", "--json").stdout)["folder"] == str(synced.mnt)
        # Removed, the member's sync stops and keeps nothing of the folder; what never went to the
        # server (an Office lock file is never sent) is the member's own and stays.
        synced.path("~$mine.docx").write_bytes(b"never sent")
        a.cli("unshare", "Family", bob[0])
        eventually(lambda: synced.pid() is None, what="bob's sync stopped")
        assert "Family is no longer shared with you" in synced.cli("status").stdout
        assert not (synced.home / "replica.db").exists() and not (synced.home / "folder.db").exists()
        assert not (b.home / "cache" / "shared" / synced.home.name).exists()
        assert sorted(n for n in os.listdir(synced.mnt) if not n.startswith(".websync")) == ["~$mine.docx"]
        assert read_bytes(synced.path("~$mine.docx")) == b"never sent"
        assert read_bytes(alice.path("from-folder.txt")) == b"written in the folder"
    finally:
        alice.cleanup()
        synced.cleanup()
    assert not alice.errors() and not synced.errors()


def test_two_folders_of_one_name_are_told_apart_by_their_owner(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> None:
    a, b, bob = _alice_and_bob(server, account, new_machine)
    a.cli("share", "Family", bob[0])
    b.cli("share", "Family", account[0])  # bob's own folder of the same name
    clash = b.cli("--shared", "Family", "trash", check=False)
    assert clash.returncode == 2 and "2 shared folders are named 'Family'" in clash.stderr
    assert "Family (OWNER)" in clash.stderr
    assert b.cli("--shared", f"Family ({account[0]})", "trash").stdout == "the trash is empty\n"
    places = [json.loads(p.joinpath("share.json").read_text()) for p in (b.home / "state" / "shared").iterdir()]
    assert [(p["name"], p["owner"]) for p in places] == [("Family", account[0])]
