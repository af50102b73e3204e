"""Model-based check: random operation sequences give the same results on the
mount as on a local directory -- return values, errno, contents, stat fields.

Hypothesis drives both trees with the same steps; any difference fails with the
shortest sequence that shows it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.clients import Machine, run_as

pytestmark = pytest.mark.mount

NAMES = ["a", "b", "d", "d/a", "d/e", "d/e/b"]
_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("errno", errno.errorcode.get(exc.errno or 0, exc.errno))


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a program could observe about the tree (times only where set)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            rel = str(p.relative_to(root))
            entry: dict[str, Any] = {"mode": st_.st_mode, "nlink": st_.st_nlink if not stat.S_ISDIR(st_.st_mode) else 0}
            if stat.S_ISREG(st_.st_mode):
                entry["size"] = st_.st_size
                entry["data"] = p.read_bytes()
            elif stat.S_ISLNK(st_.st_mode):
                entry["target"] = os.readlink(p)
            out[rel] = entry
    return out


class Model(RuleBasedStateMachine):
    machine: Machine
    local_root: Path

    def __init__(self) -> None:
        super().__init__()
        self.roots = [self.local_root, self.machine.mnt]
        self.handles: list[list[int]] = []

    @initialize()
    def clean(self) -> None:
        for root in self.roots:
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def both(self, fn: Any, *rel: Any) -> Any:
        results = []
        for root in self.roots:
            args = [str(root / r) if isinstance(r, str) and r in NAMES else r for r in rel]
            results.append(outcome(fn, *args))
        assert results[0] == results[1], f"{fn.__name__}{rel}: local {results[0]} != mount {results[1]}"
        return results[0]

    @rule(path=st.sampled_from(NAMES), data=st.binary(max_size=300), excl=st.booleans(),
          trunc=st.booleans(), append=st.booleans())
    def write_file(self, path: str, data: bytes, excl: bool, trunc: bool, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else 0) | (os.O_TRUNC if trunc else 0)
        flags |= os.O_APPEND if append else 0

        def op(p: str) -> int:
            fd = os.open(p, flags | os.O_NONBLOCK, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(NAMES), offset=st.integers(0, 9000), data=st.binary(min_size=1, max_size=100))
    def pwrite(self, path: str, offset: int, data: bytes) -> None:
        def op(p: str) -> int:
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(NAMES), offset=st.integers(0, 400), size=st.integers(0, 400))
    def pread(self, path: str, offset: int, size: int) -> None:
        def op(p: str) -> bytes:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(NAMES))
    def write_to_read_only_handle(self, path: str) -> None:
        def op(p: str) -> int:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            try:
                return os.write(fd, b"x")
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(NAMES), size=st.integers(0, 10000))
    def truncate(self, path: str, size: int) -> None:
        self.both(os.truncate, path, size)

    @rule(path=st.sampled_from(NAMES), size=st.integers(0, 5000))
    def ftruncate(self, path: str, size: int) -> None:
        def op(p: str) -> None:
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(NAMES))
    def mkdir(self, path: str) -> None:
        self.both(os.mkdir, path)

    @rule(path=st.sampled_from(NAMES))
    def rmdir(self, path: str) -> None:
        self.both(os.rmdir, path)

    @rule(path=st.sampled_from(NAMES))
    def unlink(self, path: str) -> None:
        self.both(os.unlink, path)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES),
          flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src: str, dst: str, flags: int) -> None:
        self.both(renameat2, src, dst, flags)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def link(self, src: str, dst: str) -> None:
        self.both(os.link, src, dst)

    @rule(path=st.sampled_from(NAMES), link_to=st.sampled_from(["a", "d/a", "../b", "nowhere"]))
    def symlink(self, path: str, link_to: str) -> None:
        self.both(lambda p: os.symlink(link_to, p), path)

    @rule(path=st.sampled_from(NAMES))
    def readlink(self, path: str) -> None:
        self.both(os.readlink, path)

    @rule(path=st.sampled_from(NAMES), mode=st.sampled_from([0o600, 0o644, 0o755, 0o400, 0o1777]))
    def chmod(self, path: str, mode: int) -> None:
        self.both(os.chmod, path, mode)

    @rule(path=st.sampled_from(NAMES), ns=st.integers(0, 2**62))
    def utime(self, path: str, ns: int) -> None:
        self.both(lambda p: os.utime(p, ns=(ns, ns), follow_symlinks=False), path)
        self.both(lambda p: os.lstat(p).st_mtime_ns, path)

    @rule(path=st.sampled_from(NAMES), key=st.sampled_from(["user.a", "user.b"]), value=st.binary(max_size=40))
    def xattr(self, path: str, key: str, value: bytes) -> None:
        self.both(lambda p: os.setxattr(p, key, value, follow_symlinks=False), path)
        self.both(lambda p: os.getxattr(p, key, follow_symlinks=False), path)
        self.both(lambda p: sorted(os.listxattr(p, follow_symlinks=False)), path)

    @rule(path=st.sampled_from(NAMES))
    def mkfifo(self, path: str) -> None:
        self.both(os.mkfifo, path)

    @rule(path=st.sampled_from(NAMES), data=st.binary(min_size=1, max_size=50))
    def unlink_open_file_keeps_handle(self, path: str, data: bytes) -> None:
        def op(p: str) -> bytes:
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
            try:
                os.unlink(p)
                os.pwrite(fd, data, 0)
                return os.pread(fd, 100, 0)
            finally:
                os.close(fd)

        self.both(op, path)

    @invariant()
    def trees_match(self) -> None:
        local, mounted = snapshot(self.roots[0]), snapshot(self.roots[1])
        assert local == mounted


@pytest.mark.timeout(900)
def test_mount_behaves_like_a_local_directory(a: Machine, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    _run(Model, a, local, examples=80)


def _run(model: type[Model], machine: Machine, local: Path, examples: int) -> None:
    """Run *model* against *machine*'s mount and *local*; MODEL_SCALE=N in the environment runs N times as many."""
    model.machine = machine
    model.local_root = local
    run_state_machine_as_test(
        model,
        settings=settings(max_examples=examples * int(os.environ.get("MODEL_SCALE", "1")), stateful_step_count=40, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck)),
    )


#: Who acts: root and two other users; U1 is also in the shared group.
USERS = {"root": (0, 0, (0,)), "u1": (1001, 1001, (1001, 3000)), "u2": (1002, 1002, (1002,))}


def _as(who: str, cwd: Path, fn: Any, *args: Any) -> Any:
    """``outcome(fn, *args)`` in a child that is *who* (uid, gid and groups), in *cwd*."""
    return run_as(*USERS[who], cwd, lambda: outcome(fn, *args))


class OwnersModel(Model):
    """The same operations, each by root or one of two other users, with owners, groups and set-id modes."""

    def __init__(self) -> None:
        super().__init__()
        self.who = "root"

    @initialize()
    def clean(self) -> None:
        """The base's empty trees, open to all, with a setgid folder of the shared group to start from."""
        super().clean()
        for root in self.roots:
            os.chmod(root, 0o777)
            os.mkdir(root / "d")
            os.chown(root / "d", 0, 3000)
            os.chmod(root / "d", 0o2777)

    def both(self, fn: Any, *rel: Any) -> Any:
        # Paths relative to the root the child stands in: it may not pass pytest's folders.
        results = [_as(self.who, root, fn, *rel) for root in self.roots]
        assert results[0] == results[1], f"{self.who}: {fn.__name__}{rel}: local {results[0]} != mount {results[1]}"
        return results[0]

    @rule(path=st.sampled_from(NAMES), link_to=st.sampled_from(["a", "d/a", "nowhere"]))
    def symlink(self, path: str, link_to: str) -> None:
        # Not "../b": outside the two roots, the answer for another user depends on
        # the folders above them (pytest's are root's alone), not on the mount.
        self.both(lambda p: os.symlink(link_to, p), path)

    @rule(who=st.sampled_from(["u1", "u2", "root"]))
    def become(self, who: str) -> None:
        self.who = who

    @rule(path=st.sampled_from(NAMES), uid=st.sampled_from([-1, 0, 1001, 1002, 4242]),
          gid=st.sampled_from([-1, 0, 1001, 1002, 3000]))
    def chown(self, path: str, uid: int, gid: int) -> None:
        self.both(lambda p: os.chown(p, uid, gid, follow_symlinks=False), path)

    @rule(path=st.sampled_from(NAMES),
          mode=st.sampled_from([0o777, 0o666, 0o1777, 0o2777, 0o2775, 0o4755, 0o6755, 0o6777, 0o700]))
    def chmod_special(self, path: str, mode: int) -> None:
        self.both(os.chmod, path, mode)

    @rule(path=st.sampled_from(NAMES), ns=st.integers(0, 2**62))
    def utime(self, path: str, ns: int) -> None:
        # Times are compared only where set: a refused utime leaves the times each tree made.
        if self.both(lambda p: os.utime(p, ns=(ns, ns), follow_symlinks=False), path)[0] == "ok":
            self.both(lambda p: os.lstat(p).st_mtime_ns, path)

    @rule(path=st.sampled_from(NAMES))
    def utime_now(self, path: str) -> None:
        self.both(lambda p: os.utime(p, None, follow_symlinks=False), path)

    @invariant()
    def owners_match(self) -> None:
        assert owners(self.roots[0]) == owners(self.roots[1])


def owners(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st_ = os.lstat(Path(dirpath) / name)
            found[str((Path(dirpath) / name).relative_to(root))] = (st_.st_uid, st_.st_gid)
    return found


@pytest.mark.timeout(900)
def test_mount_behaves_like_a_local_directory_for_three_users(new_machine: Any, tmp_path: Path) -> None:
    a: Machine = new_machine("A", options=("--allow-other",))
    local = tmp_path / "local"
    local.mkdir()
    _run(OwnersModel, a, local, examples=40)
