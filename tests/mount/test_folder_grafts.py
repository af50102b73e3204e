"""Shared folders inside each member's synced folder (folder/grafts.py), beside mounts that show them too.

Alice shares ``Family`` with Bob (read-write) and Carol (read-only).  Bob syncs
his own store with a folder on machine B and mounts it on machine M: the
folder is in both, at the top, and nothing of it ever reaches Bob's own store.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.clients import Machine, arrival, eventually, read_bytes
from tests.servers import ServerProcess, add_user

pytestmark = [pytest.mark.mount, pytest.mark.timeout(300)]


@dataclass
class Household:
    alice: Machine  # Alice's own mount
    bob: Machine  # Bob's own synced folder (at bob.mnt, a plain folder)
    bob_mount: Machine  # Bob's own mount on another machine
    carol: Machine  # Carol's own synced folder, Family read-only
    users: tuple[str, str]  # bob's and carol's user names
    owner: str  # alice's


@pytest.fixture
def household(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> Iterator[Household]:
    alice = new_machine("A", mount=False)
    bob, bob_mount, carol = (new_machine(name, mount=False) for name in ("B", "M", "C"))
    users = (f"{account[0]}-bob", f"{account[0]}-carol")
    for user in users:
        add_user(server.data_dir, user, f"pw-{user}-long-enough")
    for machine, user in ((bob, users[0]), (bob_mount, users[0]), (carol, users[1])):
        machine.login(user, f"pw-{user}-long-enough")
    alice.cli("share", "Family", users[0])
    alice.cli("share", "Family", users[1], "--read-only")
    alice.mount()
    eventually(alice.path("Family").is_dir, what="Family in alice's mount")
    alice.path("Family", "before.txt").write_bytes(b"there before bob synced")
    bob.sync(bob.mnt)
    carol.sync(carol.mnt)
    bob_mount.mount()
    yield Household(alice, bob, bob_mount, carol, users, account[0])
    for machine in (alice, bob, bob_mount, carol):
        errors = [line for line in machine.log().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not errors, f"{machine.name} logged errors:\n" + "\n".join(errors[:20])


def _own(machine: Machine) -> list[str]:
    """The top of a mount, without the shared folders it shows (each is a graft, not the own store's)."""
    return sorted(os.listdir(machine.mnt))


def test_a_shared_folder_is_a_subfolder_of_a_members_synced_folder_and_never_part_of_their_own_store(
    household: Household,
) -> None:
    h = household
    eventually(lambda: read_bytes(h.bob.path("Family", "before.txt")) == b"there before bob synced",
               what="Family came down into bob's synced folder")
    # Both ways, with the owner and with the member's own mount of the same folder.
    h.bob.path("Family", "from-folder.txt").write_bytes(b"written in bob's folder")
    eventually(lambda: read_bytes(h.alice.path("Family", "from-folder.txt")) == b"written in bob's folder",
               what="bob's file reached alice")
    eventually(lambda: read_bytes(h.bob_mount.path("Family", "from-folder.txt")) == b"written in bob's folder",
               what="bob's file reached his mount")
    h.bob_mount.path("Family", "sub").mkdir()
    h.bob_mount.path("Family", "sub", "from-mount.txt").write_bytes(b"written in bob's mount")
    h.alice.path("Family", "from-alice.txt").write_bytes(b"written by alice")
    eventually(lambda: read_bytes(h.bob.path("Family", "sub", "from-mount.txt")) == b"written in bob's mount",
               what="the mount's file reached the folder")
    eventually(lambda: read_bytes(h.bob.path("Family", "from-alice.txt")) == b"written by alice",
               what="alice's file reached the folder")
    h.bob.path("Family", "from-alice.txt").unlink()
    eventually(lambda: not h.alice.path("Family", "from-alice.txt").exists(), what="the delete reached alice")
    # Bob's own files go on as before, beside it, and the folder's arrive as fast (medians of one run).
    h.bob.path("own.txt").write_bytes(b"bob's own")
    eventually(lambda: read_bytes(h.bob_mount.path("own.txt")) == b"bob's own", what="bob's own file")
    own, shared = [], []
    for i in range(5):
        own.append(arrival(h.bob.path(f"own-{i}.txt"), h.bob_mount.path(f"own-{i}.txt"), b"own %d" % i))
        shared.append(arrival(h.bob.path("Family", f"timed-{i}.txt"), h.bob_mount.path("Family", f"timed-{i}.txt"),
                               b"shared %d" % i))
    print(f"median arrival from the synced folder: own files {statistics.median(own):.3f} s, "
          f"shared folder {statistics.median(shared):.3f} s")
    assert statistics.median(shared) < 2.5 * statistics.median(own)
    for i in range(5):
        h.bob.path(f"own-{i}.txt").unlink()
    eventually(lambda: not h.bob_mount.path("own-4.txt").exists(), what="the timed own files gone")
    # A file moved from the own folder into the shared one leaves the own store and joins the folder.
    h.bob.path("moved.txt").write_bytes(b"moved in")
    eventually(lambda: h.bob_mount.path("moved.txt").exists(), what="moved.txt in bob's own store first")
    os.rename(h.bob.path("moved.txt"), h.bob.path("Family", "moved.txt"))
    eventually(lambda: read_bytes(h.alice.path("Family", "moved.txt")) == b"moved in", what="moved in, at alice")
    eventually(lambda: not h.bob_mount.path("moved.txt").exists(), what="moved out of bob's own store")
    # Bob's own store never got anything of Family: his mount shows the shared folder alone under its name
    # (an own entry "Family" would push it to "Family (alice)"), and his own files.
    assert _own(h.bob_mount) == ["Family", "own.txt"]
    status = json.loads(h.bob.cli("status", "--json").stdout)
    assert [(p["name"], p["folder"]) for p in status["places"]] == [("Family", str(h.bob.path("Family")))]
    assert status["pending"] == 0 and not status["problems"]
    # Stopped and started again: the start-up scan leaves the subfolder to its own engine, which sends
    # what was written there meanwhile.
    h.bob.cli("sync", "--stop", str(h.bob.mnt))
    eventually(lambda: h.bob.pid() is None, what="bob's sync stopped")
    assert json.loads(h.bob.cli("--shared", "Family", "status", "--json").stdout)["shared"]["revoked"] == ""
    h.bob.path("Family", "while-stopped.txt").write_bytes(b"written while stopped")
    h.bob.sync(h.bob.mnt)
    eventually(lambda: read_bytes(h.alice.path("Family", "while-stopped.txt")) == b"written while stopped",
               what="the file written while stopped reached alice")
    h.bob.path("own-2.txt").write_bytes(b"bob's own again")
    eventually(lambda: h.bob_mount.path("own-2.txt").exists(), what="bob's own file after the restart")
    assert _own(h.bob_mount) == ["Family", "own-2.txt", "own.txt"]
    # The subfolder deleted: nothing is deleted on the server, it stops here until reset.
    shutil.rmtree(h.bob.path("Family"))
    eventually(lambda: "shared folder Family not shown now" in h.bob.log(), what="the shared folder stopped")
    assert read_bytes(h.alice.path("Family", "while-stopped.txt")) == b"written while stopped"
    assert _own(h.bob_mount) == ["Family", "own-2.txt", "own.txt"]
    h.bob.cli("sync", "--shared", "Family", "--reset", str(h.bob.path("Family")))
    eventually(lambda: read_bytes(h.bob.path("Family", "while-stopped.txt")) == b"written while stopped",
               timeout=90, what="Family back in bob's synced folder after the reset")


def test_read_only_shared_folder_comes_down_and_what_is_changed_there_stays_and_is_named(
    household: Household,
) -> None:
    h = household
    eventually(lambda: read_bytes(h.carol.path("Family", "before.txt")) == b"there before bob synced",
               what="Family came down into carol's synced folder")
    h.alice.path("Family", "later.txt").write_bytes(b"later")
    eventually(lambda: read_bytes(h.carol.path("Family", "later.txt")) == b"later", what="alice's change came down")
    h.carol.path("Family", "mine.txt").write_bytes(b"carol's, not the folder's")

    def named() -> bool:
        shared = json.loads(h.carol.cli("--shared", "Family", "status", "--json").stdout)
        return "mine.txt" in shared["problems"] and shared["pending"] == 0
    eventually(named, what="carol's change named as not synced")
    assert "not synced: mine.txt" in h.carol.cli("--shared", "Family", "status").stdout
    assert "synced with " + str(h.carol.path("Family")) + " (read-only: synced down only)" in h.carol.cli("status").stdout
    assert not h.alice.path("Family", "mine.txt").exists()
    assert read_bytes(h.carol.path("Family", "mine.txt")) == b"carol's, not the folder's"
    # Made writable for her, what she changed there goes up (the list is looked at again, the refused retried).
    h.alice.cli("share", "Family", h.users[1])
    eventually(lambda: read_bytes(h.alice.path("Family", "mine.txt")) == b"carol's, not the folder's",
               timeout=150, what="carol's change went up once she may write")


def test_a_folder_shared_while_syncing_appears_and_one_unshared_goes_leaving_the_own_files(
    household: Household,
) -> None:
    h = household
    eventually(lambda: h.bob.path("Family", "before.txt").exists(), what="Family in bob's synced folder")
    (h.bob.path("Photos")).mkdir()
    h.bob.path("Photos", "mine.jpg").write_bytes(b"bob's own photo")
    h.bob.path("keep.txt").write_bytes(b"bob's own file")
    eventually(lambda: h.bob_mount.path("Photos", "mine.jpg").exists(), what="bob's own Photos in his store")
    # Shared while syncing: it appears; bob has a Photos of his own, so it is Photos (alice).
    h.alice.cli("share", "Photos", h.users[0])
    # Without the server's word that the list changed, a front end looks again every RECHECK seconds.
    eventually(h.alice.path("Photos").is_dir, timeout=90, what="Photos in alice's mount")
    h.alice.path("Photos", "beach.jpg").write_bytes(b"alice's photo")
    alice_name = h.owner
    shown = h.bob.path(f"Photos ({alice_name})")
    eventually(lambda: read_bytes(shown / "beach.jpg") == b"alice's photo", timeout=90, what="Photos (alice) came")
    (shown / "from-bob.jpg").write_bytes(b"bob's photo for alice")
    eventually(lambda: read_bytes(h.alice.path("Photos", "from-bob.jpg")) == b"bob's photo for alice",
               what="bob's photo reached alice")
    # Unshared: the subfolder goes with everything that came from it; bob's own files stay, the sync goes on.
    pid = h.bob.pid()
    h.alice.cli("unshare", "Family", h.users[0])
    eventually(lambda: not h.bob.path("Family").exists(), timeout=90, what="Family left bob's synced folder")
    assert "Family is no longer shared with you" in h.bob.cli("--shared", "Family", "status").stdout
    assert h.bob.pid() == pid
    assert read_bytes(h.bob.path("keep.txt")) == b"bob's own file"
    assert read_bytes(h.bob.path("Photos", "mine.jpg")) == b"bob's own photo"
    h.bob.path("after.txt").write_bytes(b"still syncing")
    eventually(lambda: read_bytes(h.bob_mount.path("after.txt")) == b"still syncing", what="the own sync goes on")
    eventually(lambda: read_bytes(shown / "beach.jpg") == b"alice's photo", what="Photos (alice) stays")
    # Nothing of either shared folder ever reached bob's own store.
    eventually(lambda: _own(h.bob_mount) == sorted(["Photos", f"Photos ({alice_name})", "after.txt", "keep.txt"]),
               what="bob's own store as his mount shows it")
    assert sorted(os.listdir(h.bob_mount.path("Photos"))) == ["mine.jpg"]
    assert sorted(p.name for p in h.alice.mnt.iterdir()) == ["Family", "Photos"]
