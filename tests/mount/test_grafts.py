"""Shared folders inside each member's own mount, through the kernel (fuse/grafts.py).

Alice shares ``Family`` with Bob (read-write) and Carol (read-only); each of
them mounts only their own store, and the folder is there, at the top.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import Machine, arrival, eventually, read_bytes
from tests.servers import ServerProcess, add_user, server_command
from websync_server.quotas import LIMITS_TTL_S

pytestmark = [pytest.mark.mount, pytest.mark.timeout(240)]


@pytest.fixture
def household(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> Iterator[tuple[Machine, Machine, Machine]]:
    """Alice's, Bob's and Carol's own mounts; Alice's ``Family`` shared with Bob, and with Carol read-only."""
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    c = new_machine("C", mount=False)
    for machine, user in ((b, "bob"), (c, "carol")):
        name = f"{account[0]}-{user}"
        add_user(server.data_dir, name, f"pw-{user}-long-enough")
        machine.login(name, f"pw-{user}-long-enough")
    a.cli("share", "Family", f"{account[0]}-bob")
    a.cli("share", "Family", f"{account[0]}-carol", "--read-only")
    for machine in (a, b, c):
        machine.mount()
    yield a, b, c
    for machine in (a, b, c):
        errors = [line for line in machine.log().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not errors, f"{machine.name} logged errors:\n" + "\n".join(errors[:20])


def _family_everywhere(machines: tuple[Machine, ...]) -> None:
    for machine in machines:
        eventually(machine.path("Family").is_dir, what=f"Family in {machine.name}'s mount")


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_a_shared_folder_is_inside_every_members_own_mount_and_changes_arrive_as_fast_as_own_ones(
    household: tuple[Machine, Machine, Machine], new_machine: Callable[..., Machine]
) -> None:
    alice, bob, carol = household
    _family_everywhere(household)
    assert "Family" in os.listdir(bob.mnt)
    assert os.stat(bob.mnt).st_nlink == 3  # ".", its own ".." and Family's ".."
    found = subprocess.run(["find", str(bob.mnt), "-type", "d"], capture_output=True, text=True, check=True)
    assert found.stdout.split() == [str(bob.mnt), str(bob.path("Family"))]
    alice.path("own.txt").write_bytes(b"alice's own")
    # One run, two paths: Alice's own files to her second machine, the shared folder to Bob; medians compared.
    alice2 = new_machine("A2")
    own, shared = [], []
    for i in range(5):
        own.append(arrival(alice.path(f"own-{i}.txt"), alice2.path(f"own-{i}.txt"), b"own %d" % i))
        shared.append(arrival(bob.path("Family", f"from-bob-{i}.txt"), alice.path("Family", f"from-bob-{i}.txt"),
                               b"bob %d" % i))
    print(f"median arrival: own files {statistics.median(own):.3f} s, shared folder {statistics.median(shared):.3f} s")
    assert statistics.median(shared) < 2.5 * statistics.median(own)
    assert read_bytes(alice2.path("Family", "from-bob-4.txt")) == b"bob 4"  # on all of Alice's machines
    eventually(lambda: read_bytes(carol.path("Family", "from-bob-4.txt")) == b"bob 4", what="carol reads it")
    # Own files stay own: Bob and Carol see only the shared folder of Alice's.
    assert sorted(os.listdir(bob.mnt)) == ["Family"]
    # Commands given a path inside the folder are about the folder: pin, state, history.
    bob.path("Family", "from-bob-1.txt").write_bytes(b"bob 1, second version")
    eventually(lambda: read_bytes(alice.path("Family", "from-bob-1.txt")) == b"bob 1, second version",
               what="the second version")
    assert "all local" in carol.cli("pin", str(carol.path("Family"))).stdout
    state = json.loads(carol.cli("status", "--json", str(carol.path("Family", "from-bob-4.txt"))).stdout)
    assert [f["state"] for f in state["files"]] == ["pinned"]
    versions = json.loads(alice.cli("history", "--json", str(alice.path("Family", "from-bob-1.txt"))).stdout)
    assert len(versions["versions"]) == 2
    # History and trash inside the folder, with the folder's own commands.
    bob.path("Family", "from-bob-0.txt").unlink()
    eventually(lambda: not alice.path("Family", "from-bob-0.txt").exists(), what="the delete reached alice")
    assert "from-bob-0.txt" in alice.cli("--shared", "Family", "trash").stdout
    alice.cli("--shared", "Family", "restore", "from-bob-0.txt")
    eventually(lambda: read_bytes(bob.path("Family", "from-bob-0.txt")) == b"bob 0", what="restored on bob")


def test_the_top_of_the_mount_keeps_stores_apart_and_read_only_members_get_erofs(
    household: tuple[Machine, Machine, Machine],
) -> None:
    alice, bob, carol = household
    _family_everywhere(household)
    family = bob.path("Family")
    assert _errno(lambda: bob.path("Family").mkdir()) == errno.EEXIST
    assert _errno(lambda: os.rmdir(family)) in (errno.EBUSY, errno.ENOTEMPTY)
    assert _errno(lambda: os.rename(family, bob.path("Elsewhere"))) == errno.EBUSY
    bob.path("mine.txt").write_bytes(b"bob's own")
    # Nothing moves between stores: mv copies and deletes, as across two file systems.
    assert _errno(lambda: os.rename(bob.path("mine.txt"), family / "mine.txt")) == errno.EXDEV
    assert _errno(lambda: os.link(bob.path("mine.txt"), family / "mine.txt")) == errno.EXDEV
    shutil.move(str(bob.path("mine.txt")), str(family / "mine.txt"))
    eventually(lambda: read_bytes(alice.path("Family", "mine.txt")) == b"bob's own", what="moved in, seen by alice")
    assert not bob.path("mine.txt").exists()
    # Carol reads, and every change is refused with nothing queued.
    eventually(lambda: read_bytes(carol.path("Family", "mine.txt")) == b"bob's own", what="carol reads it")
    assert _errno(lambda: carol.path("Family", "new.txt").write_bytes(b"x")) == errno.EROFS
    assert _errno(lambda: carol.path("Family", "mine.txt").unlink()) == errno.EROFS
    assert _errno(lambda: carol.path("Family", "dir").mkdir()) == errno.EROFS
    carol.path("carol.txt").write_bytes(b"her own store stays writable")
    status = json.loads(carol.cli("--shared", "Family", "status", "--json").stdout)
    assert status["shared"]["read_only"] and status["pending"] == 0 and status["mountpoint"] == str(carol.path("Family"))


def test_a_folder_shared_while_mounted_appears_and_one_unshared_goes_with_nothing_kept(
    household: tuple[Machine, Machine, Machine], server: ServerProcess, account: tuple[str, str]
) -> None:
    alice, bob, carol = household
    eventually(lambda: carol.path("Family").is_dir(), what="Family in carol's mount")
    alice.path("Family", "secret.txt").write_bytes(b"for members only")
    eventually(lambda: read_bytes(carol.path("Family", "secret.txt")) == b"for members only", what="secret on carol")
    place = next((carol.home / "state" / "shared").iterdir())
    bob.path("Photos").mkdir()
    bob.path("Photos", "mine.jpg").write_bytes(b"bob's own photo")
    # A second folder, shared while everyone is mounted, appears on its own.
    alice.cli("share", "Photos", f"{account[0]}-carol")
    assert alice.path("Photos").is_dir()  # share returns once the owner's own mount shows it
    eventually(lambda: carol.path("Photos").is_dir(), what="Photos appeared in carol's mount")
    # Bob had a Photos of his own: the shared one shows beside it as NAME (OWNER).
    alice.cli("share", "Photos", f"{account[0]}-bob")
    eventually(lambda: bob.path(f"Photos ({account[0]})").is_dir(), what="Photos (alice) in bob's mount")
    assert read_bytes(bob.path("Photos", "mine.jpg")) == b"bob's own photo"
    carol.path("Photos", "beach.jpg").write_bytes(b"jpeg")
    eventually(lambda: read_bytes(alice.path("Photos", "beach.jpg")) == b"jpeg", what="carol's photo reached alice")
    # Carol made read-write: the same mount takes her changes from then on.
    alice.cli("share", "Family", f"{account[0]}-carol")
    eventually(lambda: _errno(lambda: carol.path("Family", "from-carol.txt").write_bytes(b"now I may")) == 0,
               what="carol may write")
    eventually(lambda: read_bytes(alice.path("Family", "from-carol.txt")) == b"now I may", what="carol's write")
    # Removed: the folder goes from her mount and this machine keeps nothing of it.
    alice.cli("unshare", "Family", f"{account[0]}-carol")
    eventually(lambda: not carol.path("Family").exists(), what="Family left carol's mount")
    assert not (place / "replica.db").exists()
    assert not (carol.home / "cache" / "shared" / place.name).exists()
    assert "Family is no longer shared with you" in carol.cli("--shared", "Family", "status").stdout
    assert carol.path("Photos", "beach.jpg").exists() and carol.pid() is not None  # the rest goes on


def test_a_folder_shown_as_name_owner_is_that_folder_to_every_command_and_is_never_hidden(
    household: tuple[Machine, Machine, Machine], server: ServerProcess, account: tuple[str, str],
    new_machine: Callable[..., Machine],
) -> None:
    """Dave shares a Family of his own with Alice: her mount shows "Family (alice)" and "Family (dave)".

    Commands given "Family (alice)" (a path or a name) went to a folder of
    that literal name: history found nothing, and share made a new empty
    folder "Family (alice)" that took the shown name and hid the real one.
    """
    alice, bob, carol = household
    owner, kin = account[0], f"{account[0]}-dave"
    add_user(server.data_dir, kin, "pw-dave-long-enough")
    dave = new_machine("D", mount=False)
    dave.login(kin, "pw-dave-long-enough")
    _family_everywhere(household)
    alice.path("Family", "plan.txt").write_bytes(b"v1")
    eventually(lambda: read_bytes(bob.path("Family", "plan.txt")) == b"v1", what="v1 on bob")
    alice.path("Family", "plan.txt").write_bytes(b"v2")
    dave.cli("share", "Family", owner)
    mine = alice.path(f"Family ({owner})")
    eventually(lambda: sorted(os.listdir(alice.mnt)) == [f"Family ({owner})", f"Family ({kin})"],
               what="both Family folders in alice's mount")
    eventually(lambda: str(mine) in alice.cli("--shared", f"Family ({owner})", "status").stdout,
               what="the shown name in the folder's status")
    versions = json.loads(alice.cli("history", "--json", str(mine / "plan.txt")).stdout)["versions"]
    assert len(versions) == 2
    # Shared again by the path the mount shows: the same folder, and no new one.
    alice.cli("share", str(mine), f"{owner}-carol", "--read-only")
    stores = [s["store"] for s in json.loads(alice.cli("shares", "--json").stdout)]
    assert len(stores) == len(set(stores)) == 2
    assert read_bytes(mine / "plan.txt") == b"v2"
    # A folder of one's own is not shared as an empty namesake.
    alice.path("Photos").mkdir()
    alice.path("Photos", "a.jpg").write_bytes(b"jpeg")
    refused = alice.cli("share", "Photos", f"{owner}-bob", check=False)
    assert refused.returncode != 0 and "a shared folder starts empty" in refused.stderr, refused.stderr
    assert len(json.loads(alice.cli("shares", "--json").stdout)) == 2
    # Bob's folder is Bob's to share.
    theirs = alice.cli("share", f"Family ({kin})", f"{owner}-carol", check=False)
    assert theirs.returncode != 0 and "only its owner can share it" in theirs.stderr, theirs.stderr


def test_what_a_member_changed_and_never_sent_is_kept_on_their_machine_when_the_folder_is_unshared(
    household: tuple[Machine, Machine, Machine], server: ServerProcess, account: tuple[str, str]
) -> None:
    """Unshared (or its owner removed) while Bob's work had not gone up: that work stays on Bob's machine.

    One file waits for room in Alice's full quota; another is still open for
    writing.  Before, the folder's place was deleted with both in it.
    """
    alice, bob, _ = household
    _family_everywhere((alice, bob))
    bob.path("Family", "sent.txt").write_bytes(b"this one went up")
    eventually(lambda: alice.path("Family", "sent.txt").exists(), what="sent.txt on alice")
    subprocess.run(server_command("user", "set", account[0], "--quota", "1M", "--data", str(server.data_dir)),
                   check=True, capture_output=True, timeout=60)
    time.sleep(LIMITS_TTL_S + 1)  # until the running server reads the new bound
    held = os.urandom(2 * 1024 * 1024)
    os.mkdir(bob.path("Family", "trip"))
    bob.path("Family", "trip", "held.bin").write_bytes(held)
    eventually(lambda: "over their quota" in bob.cli("--shared", "Family", "status").stdout,
               what="bob's file held back by alice's quota")
    # Bob's plain status, and his list of conflicts, cover the folders shown in his mount.
    eventually(lambda: "(and 1 in shared folders)" in bob.cli("status").stdout, what="the shared folder's change")
    assert "1 change(s) waiting" in bob.cli("status").stdout
    bob.path("Family", "plan (conflict from A 2026-12-01 101500).txt").write_bytes(b"a copy")
    eventually(lambda: "Family/plan (conflict from A" in bob.cli("conflicts").stdout, what="the copy listed")
    writing = os.urandom(2 * 1024 * 1024)
    writer = os.open(bob.path("Family", "open.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(writer, writing)
        alice.cli("unshare", "Family", f"{account[0]}-bob")
        eventually(lambda: not bob.path("Family").exists(), what="Family left bob's mount")
    finally:
        assert _errno(lambda: os.close(writer)) in (0, errno.ESTALE)  # its folder is gone
    kept_root = bob.home / "state" / "kept"
    (kept,) = kept_root.iterdir()
    assert kept.name.startswith("Family ")
    assert read_bytes(kept / "trip" / "held.bin") == held
    assert read_bytes(kept / "open.bin") == writing
    assert not (kept / "sent.txt").exists()  # on the server: alice has it
    said = bob.cli("--shared", "Family", "status").stdout
    assert "Family is no longer shared with you" in said and str(kept) in said, said


def test_a_mount_started_offline_shows_the_shared_folders_it_had_and_sends_what_was_done_there_later(
    tmp_path: Path,
) -> None:
    from tests.conftest import MACHINE_SETTINGS
    from tests.mount.test_pins import OwnServer

    server = OwnServer(tmp_path / "server")
    add_user(server.data_dir, "bob", "pw-bob-long-enough")
    alice, bob = Machine("A", tmp_path, server.url), Machine("B", tmp_path, server.url)
    try:
        for machine, user in ((alice, ("alice", "pw-alice")), (bob, ("bob", "pw-bob-long-enough"))):
            machine.login(*user)
            config = machine.home / "config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), **MACHINE_SETTINGS}))
        alice.cli("share", "Family", "bob")
        alice.mount()
        bob.mount()
        eventually(bob.path("Family").is_dir, what="Family in bob's mount")
        bob.path("Family", "before.txt").write_bytes(b"written online")
        eventually(lambda: read_bytes(alice.path("Family", "before.txt")) == b"written online", what="online write")
        bob.unmount()
        server.stop()
        bob.mount()  # the server is away: the tree of each folder is the one this machine had
        assert read_bytes(bob.path("Family", "before.txt")) == b"written online"
        bob.path("Family", "offline.txt").write_bytes(b"written offline")
        server.start()
        eventually(lambda: read_bytes(alice.path("Family", "offline.txt")) == b"written offline",
                   timeout=60, what="the offline write reached alice")
    finally:
        for machine in (alice, bob):
            machine.cleanup()
        server.stop()
    for machine in (alice, bob):
        errors = [line for line in machine.log().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not errors, f"{machine.name} logged errors:\n" + "\n".join(errors[:20])
