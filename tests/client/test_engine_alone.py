"""One machine alone, its sends and journal pages at random points between its changes.

Nobody else changes anything, so nothing it sends or hears back may change
what it shows: after every step the tree (kinds, contents, modes) is what its
own changes made, no commit of its own is refused as a conflict, and in
the end the server holds that same tree with nothing left queued.  A machine that settles conflicts against its own
commits (an exchange naming a file it never sent, a delete of an entry that
already moved) fails here in milliseconds, with the steps that show it; the
mount's POSIX model found such cases only now and then.

``WEBSYNC_ALONE_SEED=N`` replays one case.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from websync_fs.errors import FsError
from websync_server.protocol import ROOT_ID

NAMES = ["a", "b", "d", "d/a", "d/e", "d/e/b"]
STEPS = 60


def _cases(request: pytest.FixtureRequest) -> list[int]:
    if os.environ.get("WEBSYNC_ALONE_SEED"):
        return [int(os.environ["WEBSYNC_ALONE_SEED"])]
    return list(range(1, (2000 if request.config.getoption("--slow") else 80) + 1))


def _snapshot(m: EngineMachine) -> dict[str, tuple[str, tuple[str, ...], int]]:
    nodes = m.replica.all_nodes()
    children: dict[str, list[tuple[str, str]]] = {}
    for (parent, name), node in m.replica.all_entries().items():
        children.setdefault(parent, []).append((name, node))
    out: dict[str, tuple[str, tuple[str, ...], int]] = {}

    def walk(parent: str, prefix: str) -> None:
        for name, node_id in sorted(children.get(parent, [])):
            row = nodes[node_id]
            out[prefix + name] = (row.kind, tuple(row.blocks), row.mode & 0o7777)
            if row.kind == "dir":
                walk(node_id, f"{prefix}{name}/")

    walk(ROOT_ID, "")
    return out


async def _op(rng: random.Random, m: EngineMachine, step: int) -> str:
    """One random change on *m*; what it was, for the report."""
    f, path, other = m.files, rng.choice(NAMES), rng.choice(NAMES)
    kind = rng.choices(["write", "unlink", "mkdir", "rmdir", "rename", "exchange", "chmod", "clean"],
                       weights=[20, 8, 14, 8, 16, 10, 6, 2])[0]
    if kind == "write":
        await f.write(path, f"{step}".encode() * rng.choice([1, 100]))
    elif kind == "unlink":
        await f.unlink(path)
    elif kind == "mkdir":
        await f.mkdir(path)
    elif kind == "rmdir":
        await f.rmdir(path)
    elif kind == "rename":
        await f.rename(path, other, noreplace=rng.random() < 0.3)
    elif kind == "exchange":
        (p1, n1), (p2, n2) = await f._parent(path), await f._parent(other)
        await f._call(m.vfs.exchange, p1, n1, p2, n2)
    elif kind == "chmod":
        path = rng.choice([path, ""])  # "": the top folder
        await f.chmod(path, rng.choice([0o600, 0o755, 0o2775]))
    else:
        for name in await f.listdir(""):
            await _rmtree(m, name)
        await f.mkdir("d")
        return "clean"
    return f"{kind} {path} {other}"


async def _rmtree(m: EngineMachine, path: str) -> None:
    if (await m.files.kind_size_mode(path))[0] != "dir":
        await m.files.unlink(path)
        return
    for name in await m.files.listdir(path):
        await _rmtree(m, f"{path}/{name}")
    await m.files.rmdir(path)


async def _run(seed: int, root: Path, steps: int) -> str:
    """Case *seed* for *steps* steps: '' when it holds, else what went wrong and the steps taken."""
    server = Server(root / "server")
    m = EngineMachine("A", root / "A", server)
    rng = random.Random(seed)
    done: list[str] = []
    conflicts = _Conflicts()
    logging.getLogger("websync_fs.uploader").addHandler(conflicts)
    try:
        await m.files.mkdir("d")
        for step in range(steps):
            what = rng.choices(["op", "send", "apply"], weights=[6, 2, 2])[0]
            before = _snapshot(m)
            if what == "op":
                try:
                    done.append(await _op(rng, m, step))
                except (OSError, FsError) as exc:
                    done.append(f"(refused: {errno.errorcode.get(exc.errno or 0, exc.errno)})")
                continue
            done.append(what)
            await (m.send_one() if what == "send" else m.apply_one())
            if conflicts.seen:
                return _report(f"the {what} at step {step} met a conflict: {conflicts.seen}", before, before, done)
            if _snapshot(m) != before:
                return _report(f"the {what} at step {step} changed the tree", before, _snapshot(m), done)
        before = _snapshot(m)
        await m.settle()
        if conflicts.seen:
            return _report(f"settling met a conflict: {conflicts.seen}", before, before, done)
        if _snapshot(m) != before:
            return _report("settling changed the tree", before, _snapshot(m), done)
        if len(m.queue):
            return _report(f"{len(m.queue)} change(s) still queued", before, before, done)
        if server.tree() != m.tree():
            return _report("the server differs", m.tree(), server.tree(), done)
        return ""
    finally:
        logging.getLogger("websync_fs.uploader").removeHandler(conflicts)
        m.close()
        server.close()


class _Conflicts(logging.Handler):
    """The conflicts the uploader settles: a machine alone must meet none."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("conflict on"):
            self.seen.append(record.getMessage())


def _report(what: str, before: dict[str, Any], after: dict[str, Any], done: list[str]) -> str:
    diff = sorted(set(before.items()) ^ set(after.items()))
    return f"{what}: {diff[:6]}; steps: {done}"


@pytest.mark.timeout(600)
def test_a_machine_alone_shows_what_it_did_whatever_it_sends_or_hears_back(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for seed in _cases(request):
        problem = trio.run(_run, seed, tmp_path / f"case{seed}", STEPS)
        if problem:
            pytest.fail(f"WEBSYNC_ALONE_SEED={seed}: {problem}")
