"""Several machines changing the same folders at once, with a log of who wrote what.

Each `Actor` runs random operations on one machine's mount, on a small set of
names in a few nested folders, so that machines keep stepping on each other:
write a file, append to it, make a folder, move a file into another folder,
delete a file, delete a whole folder (``rm -rf``), save through a temporary
file (``name.tmp`` renamed over ``name``), move a folder across another, make
a hard link.  Errors the other machines cause (ENOENT, EEXIST, ENOTEMPTY, ...)
are part of the game and only counted.

Every whole write puts unique bytes (the writer's name and a serial number
first) into a file, and the log keeps when it finished.  `protected()` then
names the writes that nothing later can have removed: no operation on any
machine that started after the write finished named the file's path or a
folder above it.  Those bytes must be in the final tree, at their name or in a
conflict copy; that is the no-loss half of convergence, checked without
guessing at how concurrent operations interleave.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: The folders the actors work in (parents first) and the file names in each.
FOLDERS = ["a", "b", "a/c", "b/d", "a/c/e"]
FILES = ["f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt", "f5.txt"]

#: Errors another machine's work (or a killed mount) causes: counted, not failures.
#: ELOOP: a folder another machine moved is looked up at its new place while the kernel's
#: cache still holds its old name above that place (the mount drops old names from a thread,
#: after the replica changed): the kernel refuses a folder inside itself, as it does on NFS.
EXPECTED = {
    errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EINVAL,
    errno.EXDEV, errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.EBUSY, errno.EPERM,
    errno.ENETUNREACH, errno.ESTALE, errno.ELOOP,
}


@dataclass(frozen=True)
class Event:
    """One operation as it ran: who, what, on which paths, and when it started and ended."""

    actor: str
    op: str
    paths: tuple[str, ...]
    start: float
    end: float
    ok: bool
    #: The bytes a whole write left at ``paths[-1]`` (None for every other op).
    data: bytes | None = None

    def __str__(self) -> str:
        state = "" if self.ok else " (failed)"
        return f"{self.start:9.3f} {self.actor}: {self.op} {' -> '.join(self.paths)}{state}"


#: What an operation names, the bytes a whole write leaves (or None), and the act itself.
Plan = tuple[tuple[str, ...], "bytes | None", Callable[[], None]]


@dataclass
class Actor:
    """Random operations on one machine's mount point, logged as `Event`s."""

    name: str
    root: Path
    seed: int
    events: list[Event] = field(default_factory=list)
    failures: int = 0
    _serial: int = 0
    #: Set to stop this actor alone (its machine is being killed).
    halt: threading.Event = field(default_factory=threading.Event)
    #: Hard links (a synced folder keeps each name as a file of its own: none there).
    links: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- choosing ----------------------------------------------------------------------
    def _folder(self) -> str:
        return self.rng.choice(["", *FOLDERS])

    def _file(self) -> str:
        folder = self._folder()
        name = self.rng.choice(FILES)
        return f"{folder}/{name}" if folder else name

    def _data(self) -> bytes:
        self._serial += 1
        size = self.rng.choice([0, 10, 100, 3000, 20_000])
        return f"{self.name}-{self._serial}\n".encode() + self.rng.randbytes(size)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    # -- operations: each names its paths and the bytes a whole write leaves, then acts ------
    def _write(self) -> Plan:
        path, data = self._file(), self._data()
        return (path,), data, lambda: None if self._p(path).write_bytes(data) else None

    def _append(self) -> Plan:
        path, data = self._file(), self._data()

        def act() -> None:
            fd = os.open(self._p(path), os.O_WRONLY | os.O_APPEND)  # no create: appends to what is there
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

        return (path,), None, act

    def _mkdir(self) -> Plan:
        path = self.rng.choice(FOLDERS)
        return (path,), None, lambda: os.mkdir(self._p(path))

    def _move_file(self) -> Plan:
        src = self._file()
        folder = self._folder()
        leaf = src.rsplit("/", 1)[-1]
        dst = f"{folder}/{leaf}" if folder else leaf
        if dst == src:
            dst = dst[:-4] + "m.txt"
        return (src, dst), None, lambda: os.rename(self._p(src), self._p(dst))

    def _delete(self) -> Plan:
        path = self._file()
        return (path,), None, lambda: os.unlink(self._p(path))

    def _rm_rf(self) -> Plan:
        path = self.rng.choice(FOLDERS)

        def act() -> None:
            if not self._p(path).is_dir():
                raise FileNotFoundError(errno.ENOENT, "no such folder", str(self._p(path)))
            shutil.rmtree(self._p(path))

        return (path,), None, act

    def _save(self) -> Plan:
        path, data = self._file(), self._data()
        tmp = path[:-4] + ".tmp"

        def act() -> None:
            self._p(tmp).write_bytes(data)
            os.rename(self._p(tmp), self._p(path))

        return (tmp, path), data, act

    def _move_folder(self) -> Plan:
        src = self.rng.choice(FOLDERS)
        parent = self.rng.choice([f for f in ["", *FOLDERS] if f != src and not f.startswith(src + "/")])
        leaf = src.rsplit("/", 1)[-1]
        dst = f"{parent}/{leaf}" if parent else leaf
        if dst == src:
            dst += "m"
        return (src, dst), None, lambda: os.rename(self._p(src), self._p(dst))

    def _link(self) -> Plan:
        src, dst = self._file(), self._file()
        return (src, dst), None, lambda: os.link(self._p(src), self._p(dst))

    def step(self) -> None:
        ops: list[tuple[int, str, Callable[[], Plan]]] = [
            (25, "write", self._write), (8, "append", self._append), (8, "mkdir", self._mkdir),
            (12, "move", self._move_file), (10, "delete", self._delete), (3, "rm -rf", self._rm_rf),
            (12, "save", self._save), (3, "move folder", self._move_folder),
            (3 if self.links else 0, "link", self._link),
        ]
        _, name, plan = self.rng.choices(ops, weights=[w for w, _, _ in ops])[0]
        paths, data, act = plan()
        start = time.monotonic()
        try:
            act()
            ok = True
        except OSError as exc:
            if exc.errno not in EXPECTED:
                raise
            ok = False
            self.failures += 1
        self.events.append(Event(self.name, name, paths, start, time.monotonic(), ok, data if ok else None))

    def run(self, until: float, rate: float, stop: threading.Event) -> None:
        """Operations at about *rate* a second until the monotonic time *until* or *stop*."""
        gap = 1.0 / rate
        while time.monotonic() < until and not stop.is_set() and not self.halt.is_set():
            began = time.monotonic()
            self.step()
            time.sleep(max(0.0, gap - (time.monotonic() - began)))


def _touches(event: Event, path: str) -> bool:
    """True if *event* names *path* or a folder above it, or something inside it."""
    for p in event.paths:
        if p == path or path.startswith(p + "/") or p.startswith(path + "/"):
            return True
    return False


def places(path: str, moves: Iterable[tuple[str, str]], most: int = 2000) -> set[str]:
    """Every path the file at *path* may be at, given *moves* (src, dst) made on any machine.

    A move made on another machine while this one wrote carries the written
    file along (the node moves, not the name), whenever it reached the server;
    so every move counts, in either order, and folders carry what is in them.
    Moves of folders into each other in every order would nest without end: a
    place deeper than the folders moved can nest is dropped, and past *most*
    places the set is returned as it is (the write is then checked less, not
    wrongly).
    """
    moves = list(moves)
    folders = {part for pair in moves for p in pair for part in p.split("/")}
    deepest = len(folders) + 1
    by_source: dict[str, set[str]] = {}
    for src, dst in moves:
        by_source.setdefault(src, set()).add(dst)
    # Rounds of every move applied to the places the last round found (each move
    # looked up by the path and the folders above it, not tried on every place).
    found, fresh = {path}, {path}
    for _ in range(16):
        grown: set[str] = set()
        for p in fresh:
            for src in _self_and_folders(p):
                for dst in by_source.get(src, ()):
                    moved = dst + p[len(src):]
                    if moved.count("/") < deepest and moved not in found:
                        grown.add(moved)
        found |= grown
        if not grown or len(found) > most:
            return found
        fresh = grown
    return found


def _self_and_folders(path: str) -> list[str]:
    """*path* and every folder above it (``a/b/c``: ``a/b/c``, ``a/b``, ``a``)."""
    parts = path.split("/")
    return ["/".join(parts[:k]) for k in range(len(parts), 0, -1)]


def protected(events: Iterable[Event]) -> list[Event]:
    """The whole writes whose bytes no later operation (on any machine) can have removed.

    Later means started after the write ended, or overlapping it; and an
    operation counts if it named any place the file may have been moved to.
    """
    ordered = sorted(events, key=lambda e: e.start)
    moves = [(e.paths[0], e.paths[1]) for e in ordered if len(e.paths) == 2]
    # A hard link: a write at either name shows at the other.
    moves += [(e.paths[1], e.paths[0]) for e in ordered if e.op == "link"]
    kept = []
    for i, write in enumerate(ordered):
        if write.data is None or not write.ok:
            continue
        targets = places(write.paths[-1], moves)
        if len(targets) > 2000:
            continue  # moved about too much to tell where it is: not counted
        # Later (started after it ended) or overlapping it: every other event that ended after it began.
        named = {p for e in ordered if e is not write and e.end >= write.start for p in e.paths}
        inside = {folder for p in named for folder in _self_and_folders(p)}
        # Touched: a place named, or a folder above it, or something inside it (`_touches`).
        if not any(t in inside or any(f in named for f in _self_and_folders(t)) for t in targets):
            kept.append(write)
    return kept


#: A tree with modes: store path -> (kind, bytes or link target, permission bits).
Tree = dict[str, tuple[str, bytes, int]]


def read_tree(root: Path) -> Tree:
    """Every entry under *root*: kind, content and mode, as a machine shows it."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if not n.startswith(".websync-")]
        for name in [*dirnames, *filenames]:
            if name.startswith(".websync-"):
                continue  # a synced folder's marker and downloads on their way
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full).encode(), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", b"", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", full.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def difference(expected: Tree, actual: Tree, limit: int = 20) -> list[str]:
    """The paths where two trees differ, one line each."""
    lines = []
    for path in sorted(set(expected) | set(actual)):
        want, got = expected.get(path), actual.get(path)
        if want != got:
            lines.append(f"{path}: {_show(want)} against {_show(got)}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _show(entry: tuple[str, bytes, int] | None) -> str:
    if entry is None:
        return "absent"
    kind, data, mode = entry
    if kind == "file":
        return f"file {data[:12]!r}.. ({len(data)} bytes, {mode:o})"
    return f"{kind} {mode:o}" if kind == "dir" else f"link to {data.decode()}"


def story(events: Iterable[Event], paths: Iterable[str], most: int = 40) -> str:
    """The operations that named any of *paths* (or a folder above them): a shrunk list to replay."""
    wanted = [p.split(" (conflict", 1)[0] for p in paths]
    lines = [str(e) for e in sorted(events, key=lambda e: e.start) if any(_touches(e, p) for p in wanted)]
    return "\n".join(lines[-most:])
