"""Two machines change the same things at the same time: nothing is ever lost.

"At the same time" means within one quiet period, before either machine has
seen the other's change; a barrier starts both changes together.  With one
machine offline the same cases are replayed when it comes back.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.proxy import Proxy

pytestmark = pytest.mark.mount


def together(*actions: Callable[[], None]) -> None:
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        barrier.wait()
        try:
            action()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(act,)) for act in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def listing(m: Machine, *parts: str) -> list[str]:
    return sorted(os.listdir(m.path(*parts)))


def same_everywhere(machines: tuple[Machine, ...], *parts: str) -> list[str]:
    def check() -> list[str] | None:
        names = [listing(m, *parts) for m in machines]
        return names[0] if all(n == names[0] for n in names) else None

    return eventually(check, what=f"same listing of {parts or '/'} on every machine")


def seed(a: Machine, b: Machine, name: str, data: bytes) -> None:
    a.path(name).write_bytes(data)
    eventually(lambda: read_bytes(b.path(name)) == data, what=f"{name} on B")


@pytest.fixture
def offline_b(new_machine: Callable[..., Machine], a: Machine, proxy: Proxy) -> Machine:
    return new_machine("B", url=proxy.url)


def test_both_edit_gives_a_listed_conflict_copy(a: Machine, b: Machine) -> None:
    seed(a, b, "plan.txt", b"v0")
    together(lambda: a.path("plan.txt").write_bytes(b"from A"), lambda: b.path("plan.txt").write_bytes(b"from B"))
    eventually(lambda: len(listing(a)) == 2 and len(listing(b)) == 2, what="conflict copies")
    names = same_everywhere((a, b))
    copy = next(n for n in names if n != "plan.txt")
    assert {read_bytes(a.path("plan.txt")), read_bytes(a.path(copy))} == {b"from A", b"from B"}
    for m in (a, b):
        listed = json.loads(m.cli("conflicts", "--json").stdout)["conflicts"]
        assert [c["path"] for c in listed] == [copy]


def test_edit_on_a_delete_on_b_keeps_the_edit(a: Machine, b: Machine) -> None:
    seed(a, b, "keep.txt", b"v0")
    together(lambda: a.path("keep.txt").write_bytes(b"edited on A"), lambda: b.path("keep.txt").unlink())
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("keep.txt")) == b"edited on A", what=f"edit on {m.name}")
    assert same_everywhere((a, b)) == ["keep.txt"]


def test_rename_on_a_edit_on_b_lands_in_the_renamed_file(a: Machine, b: Machine) -> None:
    seed(a, b, "old-name.txt", b"v0")
    together(lambda: a.path("old-name.txt").rename(a.path("new-name.txt")),
             lambda: b.path("old-name.txt").write_bytes(b"edited on B"))
    for m in (a, b):
        eventually(lambda m=m: listing(m) == ["new-name.txt"], what=f"rename on {m.name}")
        eventually(lambda m=m: read_bytes(m.path("new-name.txt")) == b"edited on B", what=f"edit on {m.name}")


def test_both_create_the_same_folder_gives_one_folder_with_both_files(a: Machine, b: Machine) -> None:
    def make(m: Machine) -> Callable[[], None]:
        def act() -> None:
            m.path("Photos").mkdir()
            m.path("Photos", f"from-{m.name}.jpg").write_bytes(m.name.encode())
        return act

    together(make(a), make(b))
    for m in (a, b):
        eventually(lambda m=m: listing(m) == ["Photos"] and listing(m, "Photos") == ["from-A.jpg", "from-B.jpg"],
                   what=f"merged folder on {m.name}")
    assert read_bytes(b.path("Photos", "from-A.jpg")) == b"A"
    assert read_bytes(a.path("Photos", "from-B.jpg")) == b"B"


def test_folder_deleted_on_a_while_b_adds_a_file_keeps_the_file(a: Machine, b: Machine) -> None:
    a.path("Project").mkdir()
    a.path("Project", "old.txt").write_bytes(b"old")
    eventually(lambda: read_bytes(b.path("Project", "old.txt")) == b"old", what="project on B")

    def delete_on_a() -> None:
        a.path("Project", "old.txt").unlink()
        a.path("Project").rmdir()

    together(delete_on_a, lambda: b.path("Project", "new.txt").write_bytes(b"new from B"))
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("Project", "new.txt")) == b"new from B",
                   what=f"B's file on {m.name}")
    assert same_everywhere((a, b), "Project") == ["new.txt"]


def test_offline_edit_conflicts_are_settled_on_reconnect(a: Machine, offline_b: Machine, proxy: Proxy) -> None:
    b = offline_b
    seed(a, b, "doc.txt", b"v0")
    seed(a, b, "gone.txt", b"v0")
    proxy.online = False
    b.path("doc.txt").write_bytes(b"offline edit on B")
    b.path("gone.txt").write_bytes(b"B edits what A deletes")
    b.path("new-offline").mkdir()
    b.path("new-offline", "f.txt").write_bytes(b"made offline")
    a.path("doc.txt").write_bytes(b"online edit on A")
    a.path("gone.txt").unlink()
    status = json.loads(b.cli("status", "--json").stdout)
    assert status["pending"] >= 3
    # A's edit reaches the server first, so B's is the one kept beside it (the copy's name says B).
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="A's changes sent")
    proxy.online = True
    eventually(lambda: read_bytes(b.path("new-offline", "f.txt")) == b"made offline", what="f.txt on B")
    for m in (a, b):
        eventually(lambda m=m: len(listing(m)) == 4, what=f"settled tree on {m.name}")
        eventually(lambda m=m: read_bytes(m.path("gone.txt")) == b"B edits what A deletes", what="edit wins")
        eventually(lambda m=m: read_bytes(m.path("new-offline", "f.txt")) == b"made offline", what="offline work")
    names = same_everywhere((a, b))
    copy = next(n for n in names if n.startswith("doc (conflict from B "))
    assert read_bytes(a.path("doc.txt")) == b"online edit on A"
    assert read_bytes(a.path(copy)) == b"offline edit on B"


def test_a_move_into_a_folder_deleted_elsewhere_keeps_the_file(a: Machine, offline_b: Machine, proxy: Proxy) -> None:
    b = offline_b
    a.path("Old").mkdir()
    seed(a, b, "f.txt", b"moved by B")
    eventually(lambda: listing(b) == ["Old", "f.txt"], what="the folder on B")
    proxy.online = False
    b.path("f.txt").rename(b.path("Old", "f.txt"))
    a.path("Old").rmdir()
    # The folder is gone from the server before B's move reaches it.  (Had the move gone
    # first, A's delete of a folder the server no longer has empty would bring it back,
    # with the file in it: one tree too, but not this case.)
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="A's delete sent")
    proxy.online = True
    names = eventually(lambda: same_everywhere((a, b)) if "Old" not in listing(a) + listing(b) else None,
                       what="f.txt kept")
    assert "Old" not in names
    assert read_bytes(b.path("f.txt")) == b"moved by B"


def test_crossing_folder_moves_on_two_machines_end_in_one_tree(a: Machine, offline_b: Machine, proxy: Proxy) -> None:
    b = offline_b
    a.path("x").mkdir()
    a.path("y").mkdir()
    seed(a, b, "y/in-y.txt", b"y")
    seed(a, b, "x/in-x.txt", b"x")
    proxy.online = False
    b.path("y").rename(b.path("x", "y"))  # B: y into x
    a.path("x").rename(a.path("y", "x"))  # A: x into y -- together, a cycle
    proxy.online = True

    def one_tree() -> list[str] | None:
        trees = [sorted(str(p.relative_to(m.mnt)) for p in m.mnt.rglob("*")) for m in (a, b)]
        return trees[0] if trees[0] == trees[1] else None

    tree = eventually(one_tree, what="one tree on both machines")
    assert tree in (["y", "y/in-y.txt", "y/x", "y/x/in-x.txt"], ["x", "x/in-x.txt", "x/y", "x/y/in-y.txt"])


def test_a_file_moved_out_of_a_folder_deleted_elsewhere_survives(a: Machine, offline_b: Machine, proxy: Proxy) -> None:
    b = offline_b
    a.path("d").mkdir()
    seed(a, b, "d/keep.txt", b"keep me")
    proxy.online = False
    b.path("d", "keep.txt").rename(b.path("keep.txt"))
    a.path("d", "keep.txt").unlink()
    a.path("d").rmdir()
    proxy.online = True
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("keep.txt")) == b"keep me", what=f"keep.txt on {m.name}")
    assert same_everywhere((a, b)) == ["keep.txt"]
