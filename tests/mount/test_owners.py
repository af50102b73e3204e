"""Owners and groups through the kernel: kept, synced, and ruled as on a local disk.

The tests run as root; operations of other users run with that user's
effective ids (setgroups, setresgid, setresuid: `tests.clients.run_as`).  The
mount is made with --allow-other so that other users may enter at all.  Each
rule's answer on the mount is compared with the same operation on a directory
of the local disk (/tmp here is ext4).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, run_as

pytestmark = pytest.mark.mount

U1, U2, G_SHARED = 1001, 1002, 3000


def as_user(uid: int, gid: int, groups: tuple[int, ...], cwd: Path, fn: Callable[[], object]) -> str:
    """Run *fn* as *uid*/*gid* with *groups*, in *cwd*; its result or errno name."""
    def answer() -> str:
        try:
            return str(fn())
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))

    return run_as(uid, gid, groups, cwd, answer)


def user(uid: int, *extra: int) -> Callable[[Path, Callable[[], object]], str]:
    return lambda cwd, fn: as_user(uid, uid if uid else 0, (uid, *extra) if uid else (0,), cwd, fn)


ROOT = user(0)


def owner_of(path: str) -> str:
    st = os.lstat(path)
    return f"{st.st_uid}:{st.st_gid}:{stat.S_IMODE(st.st_mode):o}"


def _make_file(path: str, mode: int, uid: int, gid: int, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # chown clears set-id bits; the setup wants them


def _setup(base: Path) -> None:
    """The same starting tree in the mount and on the local disk, made by root."""
    os.chmod(base, 0o777)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        _make_file("u1", 0o644, U1, U1)
        _make_file("open", 0o666, U1, U1)
        _make_file("suid", 0o6755, U1, U1, b"#!/bin/sh\n")
        _make_file("open_suid", 0o6777, U1, U1, b"#!/bin/sh\n")
        _make_file("shared", 0o644, U1, G_SHARED)
        os.mkdir("sticky")
        os.chmod("sticky", 0o1777)
        _make_file("sticky/of_u1", 0o644, U1, U1)
        _make_file("sticky/of_u2", 0o644, U2, U2)
        os.mkdir("sgid")
        os.chown("sgid", 0, G_SHARED)
        os.chmod("sgid", 0o2777)
        os.mkdir("u1dir")
        os.chown("u1dir", U1, U1)
        os.chmod("u1dir", 0o1777)
        _make_file("u1dir/of_u2", 0o644, U2, U2)
    finally:
        os.chdir(cwd)


def _write(path: str) -> str:
    with open(path, "r+b") as f:
        f.write(b"y")
    return "ok"


def _truncate(path: str) -> str:
    os.truncate(path, 1)
    return "ok"


def _create(path: str) -> str:
    with open(path, "x"):
        pass
    return "ok"


def _do(fn: Callable[..., object], *args: object) -> Callable[[], object]:
    def run() -> object:
        result = fn(*args)
        return "ok" if result is None else result
    return run


#: Each rule: (name, who, what, the path whose owner, group and mode are compared after).
RULES: list[tuple[str, Callable[[Path, Callable[[], object]], str], Callable[[], object], str]] = [
    ("root gives a file away", ROOT, _do(os.chown, "u1", U2, G_SHARED), "u1"),
    ("owner may not give a file away", user(U1), _do(os.chown, "u1", U2, -1), "u1"),
    ("others may not chown", user(U2), _do(os.chown, "u1", U2, -1), "u1"),
    ("owner chown to self", user(U1), _do(os.chown, "u1", U1, -1), "u1"),
    ("owner chgrp to a group they are in", user(U1, G_SHARED), _do(os.chown, "u1", -1, G_SHARED), "u1"),
    ("owner chgrp to a group they are not in", user(U1), _do(os.chown, "u1", -1, G_SHARED), "u1"),
    ("others may not chgrp", user(U2, U1), _do(os.chown, "u1", -1, U1), "u1"),
    ("others may not chmod", user(U2), _do(os.chmod, "u1", 0o600), "u1"),
    ("owner chmod", user(U1), _do(os.chmod, "u1", 0o600), "u1"),
    ("owner chmod g+s outside the group drops it", user(U1), _do(os.chmod, "shared", 0o2755), "shared"),
    ("owner chmod g+s inside the group keeps it", user(U1, G_SHARED), _do(os.chmod, "shared", 0o2755), "shared"),
    ("write by another clears set-id", user(U2), lambda: _write("open_suid"), "open_suid"),
    ("write by the owner clears set-id", user(U1), lambda: _write("suid"), "suid"),
    ("truncate by the owner clears set-id", user(U1), lambda: _truncate("suid"), "suid"),
    ("chown by root clears set-id", ROOT, _do(os.chown, "suid", U2, -1), "suid"),
    ("chgrp by the owner clears set-id", user(U1, G_SHARED), _do(os.chown, "suid", -1, G_SHARED), "suid"),
    ("sticky: others may not delete", user(U2), _do(os.unlink, "sticky/of_u1"), "sticky/of_u1"),
    ("sticky: others may not rename away", user(U2), _do(os.rename, "sticky/of_u1", "sticky/x"), "sticky/of_u1"),
    ("sticky: others may not rename over", user(U1), _do(os.rename, "sticky/of_u1", "sticky/of_u2"),
     "sticky/of_u2"),
    ("sticky: the file's owner may delete", user(U1), _do(os.unlink, "sticky/of_u1"), "sticky/of_u1"),
    ("sticky: the folder's owner may delete", user(U1), _do(os.unlink, "u1dir/of_u2"), "u1dir/of_u2"),
    ("sticky: root may delete", ROOT, _do(os.unlink, "sticky/of_u2"), "sticky/of_u2"),
    ("setgid folder passes its group to files", user(U1), lambda: _create("sgid/new"), "sgid/new"),
    ("setgid folder passes itself to folders", user(U1), _do(os.mkdir, "sgid/sub", 0o755), "sgid/sub"),
    ("a new file is its maker's", user(U2), lambda: _create("made_by_u2"), "made_by_u2"),
    ("utime to a given time: others", user(U2), _do(os.utime, "open", (1, 1)), "open"),
    ("utime to a given time: owner", user(U1), _do(os.utime, "u1", (1, 1)), "u1"),
    ("utime to now: others without write access", user(U2), _do(os.utime, "u1", None), "u1"),
    ("utime to now: others with write access", user(U2), _do(os.utime, "open", None), "open"),
    ("others without write access may not truncate", user(U2), lambda: _truncate("u1"), "u1"),
]


def _outcome(base: Path, who: Callable[[Path, Callable[[], object]], str], what: Callable[[], object],
             seen: str) -> tuple[str, str]:
    answer = who(base, what)
    try:
        after = owner_of(str(base / seen))
    except FileNotFoundError:
        after = "gone"
    return answer, after


@pytest.fixture
def a(new_machine: Callable[..., Machine]) -> Machine:
    return new_machine("A", options=("--allow-other",))


@pytest.fixture
def local_dirs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        path = tmp_path / "local" / name
        path.mkdir(parents=True)
        return path

    yield make


def test_each_ownership_rule_answers_as_a_local_disk(a: Machine, local_dirs: Callable[[str], Path]) -> None:
    differences = {}
    table = {}
    for index, (name, who, what, seen) in enumerate(RULES):
        local, mounted = local_dirs(str(index)), a.path(str(index))
        mounted.mkdir()
        _setup(local)
        _setup(mounted)
        want, got = _outcome(local, who, what, seen), _outcome(mounted, who, what, seen)
        table[name] = want
        if want != got:
            differences[name] = {"local disk": want, "mount": got}
    assert not differences, json.dumps(differences, indent=1) + "\nlocal answers:\n" + json.dumps(table, indent=1)


def test_owners_set_by_root_reach_another_machine(new_machine: Callable[..., Machine], a: Machine) -> None:
    b = new_machine("B")
    f = a.path("given.txt")
    f.write_text("to 1234")
    os.chown(f, 1234, 5678)
    a.path("mine.txt").write_text("the store owner's")
    made = a.path("made_by_u2")
    os.chmod(a.mnt, 0o777)
    user(U2)(a.mnt, lambda: _create("made_by_u2"))
    assert owner_of(str(made)).startswith(f"{U2}:{U2}:")
    eventually(lambda: b.path("made_by_u2").exists() and b.path("given.txt").exists(), what="files on B")
    assert (b.path("given.txt").stat().st_uid, b.path("given.txt").stat().st_gid) == (1234, 5678)
    assert (b.path("made_by_u2").stat().st_uid, b.path("made_by_u2").stat().st_gid) == (U2, U2)
    # The store owner's own file is the mounting user's on B too.
    assert (b.path("mine.txt").stat().st_uid, b.path("mine.txt").stat().st_gid) == (os.getuid(), os.getgid())
    # Back to the store's owner: B shows its own mounting user again.
    os.chown(f, os.getuid(), os.getgid())
    eventually(lambda: b.path("given.txt").stat().st_uid == os.getuid(), what="owner back on B")


def test_a_machine_shows_a_mapped_number_as_its_own_and_stores_it_back(
    new_machine: Callable[..., Machine], a: Machine
) -> None:
    # On B the person behind the store's uid 1234 is 4321 (config.json's uid_map).
    b = new_machine("B", uid_map={"1234": 4321}, gid_map={"5678": 8765})
    a.path("given.txt").write_text("to 1234")
    os.chown(a.path("given.txt"), 1234, 5678)
    eventually(lambda: b.path("given.txt").exists() and b.path("given.txt").stat().st_uid == 4321, what="on B")
    assert b.path("given.txt").stat().st_gid == 8765
    b.path("from-b.txt").write_text("given on B")
    os.chown(b.path("from-b.txt"), 4321, 8765)
    eventually(lambda: a.path("from-b.txt").exists() and a.path("from-b.txt").stat().st_uid == 1234, what="on A")
    assert a.path("from-b.txt").stat().st_gid == 5678
    # A number the map does not name is shown as it is.
    os.chown(a.path("given.txt"), 1235, 5678)
    eventually(lambda: b.path("given.txt").stat().st_uid == 1235, what="an unmapped number on B")


def test_without_allow_other_other_users_are_kept_out(new_machine: Callable[..., Machine]) -> None:
    b = new_machine("B")
    b.path("f").write_text("x")
    os.chmod(b.mnt, 0o777)
    # The child enters the mount as root, then is U1: the kernel itself refuses U1.
    assert user(U1)(b.mnt, _do(os.stat, "f")) == "EACCES"
    assert ROOT(b.mnt, _do(os.stat, "f")) != "EACCES"


def test_allow_other_needs_user_allow_other_or_root(tmp_path: Path) -> None:
    from websync_fs.commands.session import _check_allow_other
    from websync_fs.errors import ConfigError

    without, with_it = tmp_path / "plain.conf", tmp_path / "allowing.conf"
    without.write_text("# mount_max = 1000\n")
    with_it.write_text("user_allow_other\n")
    tmp_path.chmod(0o755)

    def check(conf: Path) -> Callable[[], object]:
        def run() -> str:
            try:
                _check_allow_other(conf)
            except ConfigError as exc:
                return str(exc)
            return "ok"
        return run

    # Relative names: the child is in tmp_path, whose parents U1 may not pass.
    assert "user_allow_other" in user(U1)(tmp_path, check(Path(without.name)))
    assert user(U1)(tmp_path, check(Path(with_it.name))) == "ok"
    assert ROOT(tmp_path, check(Path(without.name))) == "ok"


def test_the_rule_table_is_not_trivial(local_dirs: Callable[[str], Path]) -> None:
    """The local disk refuses some rules and allows others: the comparison above means something."""
    answers = []
    for index, (_, who, what, seen) in enumerate(RULES):
        base = local_dirs(str(index))
        _setup(base)
        answers.append(_outcome(base, who, what, seen)[0])
    assert {"ok", "EPERM", "EACCES"} <= set(answers), answers


def _tree_of_several_owners(root: Path) -> None:
    """Files and folders of root, two users and a shared group, with set-id, sticky and setgid modes."""
    root.mkdir()
    layout = [  # a name ending in / is a folder
        ("etc/", 0o755, 0, 0), ("etc/conf", 0o644, 0, 0), ("home/", 0o755, 0, 0),
        ("home/u1/", 0o700, U1, U1), ("home/u1/notes", 0o600, U1, U1), ("home/u1/script", 0o4755, U1, U1),
        ("home/u2/", 0o750, U2, G_SHARED), ("home/u2/shared", 0o640, U2, G_SHARED),
        ("srv/", 0o2775, 0, G_SHARED), ("srv/app/", 0o2755, U1, G_SHARED), ("srv/app/run", 0o6755, U2, G_SHARED),
        ("tmp/", 0o1777, 0, 0), ("tmp/scratch", 0o666, U2, U2), ("orphan", 0o644, 4242, 4343),
    ]
    for rel, mode, uid, gid in layout:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir()
        else:
            path.write_bytes(rel.encode())
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    os.symlink("etc/conf", root / "link")
    os.lchown(root / "link", U1, G_SHARED)


def _owners_of(root: Path) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            found[str(path.relative_to(root))] = f"{st.st_uid}:{st.st_gid}:{stat.S_IMODE(st.st_mode):o}"
    return found


def test_tar_and_rsync_as_root_keep_every_owner_here_and_on_another_machine(
    new_machine: Callable[..., Machine], a: Machine, tmp_path: Path
) -> None:
    import subprocess

    b = new_machine("B")
    source = tmp_path / "source"
    _tree_of_several_owners(source)
    want = _owners_of(source)
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "-cf", str(archive), "--numeric-owner", "-C", str(source), "."], check=True)
    a.path("untarred").mkdir()
    subprocess.run(["tar", "-xpf", str(archive), "--numeric-owner", "-C", str(a.path("untarred"))], check=True)
    subprocess.run(["rsync", "-a", "--numeric-ids", f"{source}/", f"{a.path('rsynced')}/"], check=True)
    assert _owners_of(a.path("untarred")) == want
    assert _owners_of(a.path("rsynced")) == want
    eventually(lambda: _owners_of(b.path("untarred")) == want and _owners_of(b.path("rsynced")) == want,
               what="every owner on B")
    # And back out of the other machine's mount, as a backup would.
    back = tmp_path / "back"
    subprocess.run(["rsync", "-a", "--numeric-ids", f"{b.path('rsynced')}/", f"{back}/"], check=True)
    assert _owners_of(back) == want


def _next_tick() -> None:
    """Wait until the clock file times come from has moved on (ext4 stamps with the coarse clock)."""
    coarse = 5  # CLOCK_REALTIME_COARSE (linux/time.h); Python names only the fine clocks
    start = time.clock_gettime_ns(coarse)
    while time.clock_gettime_ns(coarse) == start:
        time.sleep(0.001)


#: Operations on "f" (a file with a second name "g") and "d" (a folder): does ctime move?
CTIME_OPS: list[tuple[str, str, Callable[[], object]]] = [
    ("chmod", "f", _do(os.chmod, "f", 0o600)),
    ("chown", "f", _do(os.chown, "f", U1, U1)),
    ("chown to the same owner", "f", _do(os.chown, "f", -1, -1)),
    ("utime", "f", _do(os.utime, "f", (5, 5))),
    ("write", "f", lambda: _write("f")),
    ("truncate", "f", lambda: _truncate("f")),
    ("rename", "f", _do(os.rename, "f", "h")),
    ("link", "f", _do(os.link, "f", "k")),
    ("unlink one of two names", "f", _do(os.unlink, "g")),
    ("setxattr", "f", _do(os.setxattr, "f", "user.x", b"1")),
    ("read", "f", lambda: open("f", "rb").read()),
    ("mkdir inside", "d", _do(os.mkdir, "d/sub")),
    ("chmod folder", "d", _do(os.chmod, "d", 0o700)),
]


def test_ctime_moves_where_a_local_disk_moves_it(a: Machine, local_dirs: Callable[[str], Path]) -> None:
    differences = {}
    for index, (name, seen, what) in enumerate(CTIME_OPS):
        answers = []
        for base in (local_dirs(f"c{index}"), a.path(f"c{index}")):
            base.mkdir(exist_ok=True)
            (base / "f").write_bytes(b"data")
            os.link(base / "f", base / "g")
            (base / "d").mkdir()
            before = os.lstat(base / seen).st_ctime_ns
            _next_tick()
            ROOT(base, what)
            after_path = base / ("h" if name == "rename" else seen)
            answers.append(os.lstat(after_path).st_ctime_ns > before)
        if answers[0] != answers[1]:
            differences[name] = {"local disk": answers[0], "mount": answers[1]}
    assert not differences, differences


def test_ctime_stays_when_a_file_reaches_the_server(a: Machine) -> None:
    # git's index compares ctimes: one that moved at upload made the next `git status`
    # read again every file that had gone up.  The kernel must forget the attributes
    # it holds (60 s) for the mount to be asked again.
    made = a.path("ct")
    made.mkdir()
    (made / "f").write_bytes(b"data")
    before = {p: os.lstat(made / p).st_ctime_ns for p in ("", "f")}
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="the upload")
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes: the next stat asks the mount
    assert {p: os.lstat(made / p).st_ctime_ns for p in ("", "f")} == before
