"""The synced folder's merger over an in-process engine, with a program acting in the windows between its steps.

Through the kernel these interleavings need a loaded machine and luck; here
the program's action is made to happen at the exact moment (see engine.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from websync_fs.folder import merger as merger_module
from websync_fs.folder.client import FolderClient
from websync_fs.folder.corepaths import CorePaths
from websync_fs.folder.ignore import IgnoreRules
from websync_fs.folder.known import KnownTree
from websync_fs.folder.merger import Merger
from websync_fs.names import NamePolicy



def _a_and_bs_folder(tmp_path: Path, folder: Path,
                     body: Callable[[EngineMachine, EngineMachine, Merger], Awaitable[None]]) -> None:
    """Run *body* with machine A's engine and machine B's engine behind a merger of *folder*; all closed after."""
    async def run() -> None:
        server = Server(tmp_path / "server")
        a, b = EngineMachine("A", tmp_path / "A", server), EngineMachine("B", tmp_path / "B", server)
        known = KnownTree(tmp_path / "known.db")
        try:
            merger = Merger(folder, CorePaths(b.vfs), b.replica, known, IgnoreRules(folder, NamePolicy((), ())), "B")
            await body(a, b, merger)
        finally:
            known.close()
            a.close()
            b.close()
            server.close()

    trio.run(run)


@pytest.mark.timeout(60)
def test_a_write_right_after_a_download_lands_is_sent_up_not_taken_for_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program writes the file in the instant after the download was renamed into place.

    The last synced state must hold what the download wrote; had it been read
    off the disk after the rename, the program's bytes would count as synced
    and never go up: the machines would differ for good.
    """
    folder = tmp_path / "folder"
    folder.mkdir()
    real_replace = os.replace

    def replace_then_write(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if Path(dst).name == "doc.txt":
            Path(dst).write_bytes(b"written here at once")

    async def body(a: EngineMachine, b: EngineMachine, merger: Merger) -> None:
        await a.files.write("doc.txt", b"from A")
        await a.settle()
        await b.settle()
        monkeypatch.setattr(merger_module.os, "replace", replace_then_write)
        await merger.settle(set(), remote=True)
        monkeypatch.setattr(merger_module.os, "replace", real_replace)
        assert (folder / "doc.txt").read_bytes() == b"written here at once"
        await merger.settle({"doc.txt"})  # the watcher's event for the program's write
        await b.settle()
        await a.settle()
        assert await a.files.read("doc.txt") == b"written here at once"

    _a_and_bs_folder(tmp_path, folder, body)


class _Program:
    """A program working in the synced folder with real calls; it reports what it touched, as the watcher would."""

    PLACES = ("", "d1", "d2")

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.dirty: set[str] = set()
        self.step = 0

    def _name(self) -> str:
        place = self.rng.choice(self.PLACES)
        name = f"f{self.rng.randrange(5)}.txt"
        return f"{place}/{name}" if place else name

    def act(self, near: str | None = None) -> None:
        """One random change; *near*: on that path, where the merger just changed something."""
        self.step += 1
        path, action = near or self._name(), self.rng.random()
        full = self.root / path
        try:
            if action < 0.1:
                place = self.rng.choice(self.PLACES[1:])
                os.mkdir(self.root / place)
                self.dirty.add(place)
            elif action < 0.13:
                place = self.rng.choice(self.PLACES[1:])
                os.rmdir(self.root / place)
                self.dirty.add(place)
            elif action < 0.15:
                place = self.rng.choice(self.PLACES[1:])
                shutil.rmtree(self.root / place)  # rm -rf: a folder and what is in it, the other machine's too
                self.dirty.add(place)
            elif action < 0.2:
                src, dst = self.rng.sample(self.PLACES[1:], 2)
                os.rename(self.root / src, self.root / dst)  # a folder moved, over an empty one too
                self.dirty.update((src, dst))
            elif action < 0.6:
                full.write_bytes(b"program %d" % self.step)
                self.dirty.add(path)
            elif action < 0.75:
                os.unlink(full)
                self.dirty.add(path)
            else:
                dst = self._name()
                os.rename(full, self.root / dst)
                self.dirty.update((path, dst))
        except OSError:
            pass  # not there, not empty, a file where a folder is: as a real program meets them


class _Interrupting:
    """The merger's `os`, where each change it makes on disk may be followed at once by the program's."""

    def __init__(self, program: _Program, rng: random.Random) -> None:
        self.program = program
        self.rng = rng

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def _then(self, path: str) -> None:
        chance = self.rng.random()
        if chance < 0.2:
            self.program.act()
        elif chance < 0.4:
            near = os.path.relpath(path, self.program.root)
            if not near.startswith("..") and not os.path.basename(near).startswith(merger_module.TMP_PREFIX):
                self.program.act(near)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)
        self._then(str(dst))

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)
        self._then(str(dst))

    def unlink(self, path: Path) -> None:
        os.unlink(path)
        self._then(str(path))

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)
        self._then(str(path))


async def _machine_a_acts(a: EngineMachine, rng: random.Random, step: int) -> None:
    place = rng.choice(_Program.PLACES)
    path = f"{place}/f{rng.randrange(5)}.txt" if place else f"f{rng.randrange(5)}.txt"
    action = rng.random()
    try:
        if action < 0.1 and place:
            await a.files.mkdir(place)
        elif action < 0.15:
            src, dst = rng.sample(_Program.PLACES[1:], 2)
            await a.files.rename(src, dst)
        elif action < 0.6:
            await a.files.write(path, b"machine A %d" % step)
        elif action < 0.75:
            await a.files.unlink(path)
        else:
            other = rng.choice(_Program.PLACES)
            await a.files.rename(path, f"{other}/r{rng.randrange(3)}.txt" if other else f"r{rng.randrange(3)}.txt")
    except OSError:
        pass


async def _async(fn: Callable[[], None]) -> None:
    fn()


def _folder_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*")) if not p.name.startswith(merger_module.TMP_PREFIX)
    }


async def _store_tree(machine: EngineMachine) -> dict[str, bytes]:
    return {
        path: await machine.files.read(path) if kind == "file" else b"<dir>"
        for path, (kind, _blocks) in machine.tree().items()
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(int(os.environ.get("WEBSYNC_RACE_SEEDS", 12))))
def test_a_program_acting_between_the_mergers_steps_never_keeps_the_machines_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Machine A's engine and a program in machine B's synced folder work at once, in a random order.

    After each rename, replace or removal the merger makes on disk, the
    program may act at once (before the merger looks again).  Whatever the
    order, once everyone stops, the folder, B's engine and A hold one tree.
    The merger's own changes are not reported back to it as the watcher
    would: it must not need its own echo to find what it moved.  12 seeds run
    by default; ``WEBSYNC_RACE_SEEDS=900`` searches wider.
    """
    rng = random.Random(seed)
    folder = tmp_path / "folder"
    folder.mkdir()
    program = _Program(folder, rng)
    monkeypatch.setattr(merger_module, "os", _Interrupting(program, rng))

    async def body(a: EngineMachine, b: EngineMachine, merger: Merger) -> None:
        async def settle_folder() -> None:
            dirty, program.dirty = program.dirty, set()
            await merger.settle(dirty, remote=True)

        steps = [lambda step: _machine_a_acts(a, rng, step), lambda step: a.send_one(),
                 lambda step: a.apply_one(), lambda step: _async(program.act), lambda step: settle_folder(),
                 lambda step: b.send_one(), lambda step: b.apply_one()]
        for step in range(200):
            await rng.choice(steps)(step)
        monkeypatch.setattr(merger_module, "os", os)  # everyone stops: the merger's steps are its own
        for _ in range(20):
            for settle in (a.settle, b.settle, settle_folder, b.settle, a.settle, settle_folder):
                await settle()
            if not merger.again and not merger.problems and not program.dirty and len(b.queue) == 0:
                break
        here, there = _folder_tree(folder), await _store_tree(a)
        assert here == there, {p: (here.get(p), there.get(p)) for p in here.keys() | there.keys()
                               if here.get(p) != there.get(p)}
        assert await _store_tree(b) == there

    _a_and_bs_folder(tmp_path, folder, body)


class _Ticking(trio.abc.Clock):
    """A clock that moves on a millisecond at every reading, as a loaded machine's does between two."""

    def __init__(self) -> None:
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        self.now += 0.001
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        self.now = max(self.now, deadline)  # no real waiting: straight to the next deadline
        return 0.0


@pytest.mark.timeout(30)
def test_the_wait_for_quiet_survives_the_clock_passing_the_moment_between_two_readings() -> None:
    """A writer's quiet moment due between two readings of the clock once ended the sync (a negative sleep)."""
    clock = _Ticking()
    asked: list[float] = []

    class Dirty:
        def settled_at(self, settle: float) -> float:
            asked.append(clock.now)
            # Due half a tick after the next reading: past due by the one after it.
            return clock.now + 0.0015 if len(asked) == 1 else 0.0

    waiter = SimpleNamespace(dirty=Dirty())
    trio.run(lambda: FolderClient._settled(waiter), clock=clock)  # type: ignore[arg-type]
    assert len(asked) >= 2


_ARCHIVE = [f"t/d{i}/s{j}/f{k}.txt" for i in range(3) for j in range(2) for k in range(3)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(8))
def test_one_archive_unpacked_on_a_mount_and_in_a_synced_folder_at_once_is_one_tree_with_no_copies(
        tmp_path: Path, seed: int) -> None:
    """The same folders and files made on both machines, interleaved with sending and hearing at random.

    When two machines' folders of one name were merged, every entry of the
    later one whose name the other had too became a conflict copy: whole
    folders of them, and files of the very same bytes.
    """
    rng = random.Random(seed)
    folder = tmp_path / "folder"
    folder.mkdir()

    async def body(a: EngineMachine, b: EngineMachine, merger: Merger) -> None:
        on_a, on_b = list(_ARCHIVE), list(_ARCHIVE)
        dirty: set[str] = set()

        async def a_unpacks() -> None:
            path = on_a.pop(0)
            parts = path.split("/")
            for depth in range(1, len(parts)):
                with contextlib.suppress(FileExistsError):
                    await a.files.mkdir("/".join(parts[:depth]))
            await a.files.write(path, path.encode())

        async def b_unpacks() -> None:
            path = on_b.pop(0)
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(path.encode())
            dirty.update((path.split("/")[0], path))

        async def b_settles() -> None:
            await merger.settle(set(dirty), remote=True)
            dirty.clear()

        while on_a or on_b:
            steps = [a.send_one, a.apply_one, b.send_one, b.apply_one, b_settles]
            steps += [a_unpacks] * 3 * bool(on_a) + [b_unpacks] * 3 * bool(on_b)
            await rng.choice(steps)()
        for _ in range(10):
            for settle in (a.settle, b.settle, b_settles):
                await settle()
        here, there = _folder_tree(folder), await _store_tree(a)
        assert here == there
        assert sorted(there) == sorted({"/".join(p.split("/")[:d]) for p in _ARCHIVE for d in range(1, 5)})
        assert await _store_tree(b) == there

    _a_and_bs_folder(tmp_path, folder, body)
