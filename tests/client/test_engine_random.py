"""Random interleavings of two or three machines' engines in one process: they always end in one tree.

The in-process twin of `tests/faults/test_convergence.py`: the same kinds of
operations on a few shared names, but every step is chosen by the seed --
which machine changes a file, which one sends a batch, which one applies a
journal page -- so a case replays exactly (``WEBSYNC_ENGINE_SEED=N``) and a
failure is shrunk to the shortest prefix of steps that still fails.  While a
commit or a question to the server is on its way, the seed may have the
machine's user act or its journal applied, as a mount does meanwhile.  After
the steps both machines send and apply until quiet (with the self-check),
and then:

* both trees equal the server's, and both queues are empty;
* every whole write that no later step on either machine named (its path, a
  folder above it, or a place a move on either machine took it to) is in the
  server's tree, at its name or in a copy.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from tests.faults.chaos import places

FOLDERS = ["a", "b", "a/c"]
FILES = ["f0.txt", "f1.txt", "f2.txt"]
EXPECTED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EINVAL}
STEPS = 120


def _cases(request: pytest.FixtureRequest) -> list[int]:
    if os.environ.get("WEBSYNC_ENGINE_SEED"):
        return [int(os.environ["WEBSYNC_ENGINE_SEED"])]
    count = 400 if request.config.getoption("--slow") else 40
    return list(range(1, count + 1))


def _touches(paths: tuple[str, ...], path: str) -> bool:
    return any(p == path or path.startswith(p + "/") or p.startswith(path + "/") for p in paths)


async def _step(rng: random.Random, m: EngineMachine, serial: int,
                links: list[tuple[str, str]]) -> tuple[tuple[str, ...], bytes | None]:
    """One random file operation on *m*: the paths it names and the bytes a whole write left.

    A hard link made is added to *links*: a write at either name shows at the other.
    """
    def file() -> str:
        folder = rng.choice(["", *FOLDERS])
        return f"{folder}/{rng.choice(FILES)}".lstrip("/")

    data = f"{m.name}-{serial}\n".encode() + rng.randbytes(rng.choice([0, 50, 3000]))
    kind = rng.choices(["write", "append", "mkdir", "move", "delete", "rmtree", "save", "movedir", "chmod", "link"],
                       weights=[25, 6, 8, 12, 10, 3, 12, 4, 5, 3])[0]
    f = m.files
    if kind == "write":
        path = file()
        await f.write(path, data)
        return (path,), data
    if kind == "append":
        path = file()
        await f.append(path, data)
        return (path,), None
    if kind == "mkdir":
        path = rng.choice(FOLDERS)
        await f.mkdir(path)
        return (path,), None
    if kind == "move":
        src, folder = file(), rng.choice(["", *FOLDERS])
        dst = f"{folder}/{src.rsplit('/', 1)[-1]}".lstrip("/")
        dst = dst if dst != src else dst[:-4] + "m.txt"
        await f.rename(src, dst)
        return (src, dst), None
    if kind == "link":
        src, dst = file(), file()
        await f.link(src, dst)
        links.append((src, dst))
        return (src, dst), None
    if kind == "chmod":
        path = file()
        await f.chmod(path, rng.choice([0o600, 0o644, 0o755]))
        return (), None  # a mode names no content: a write before it still counts
    if kind == "delete":
        path = file()
        await f.unlink(path)
        return (path,), None
    if kind == "rmtree":
        path = rng.choice(FOLDERS)
        try:
            await _rmtree(m, path)
        except OSError as exc:
            # Removed in part: a folder that a change arriving meanwhile filled again (a name
            # the other machine sent, kept from this one by a file of its own, is shown
            # again once that file is gone) stays, with what it got.  What went, went.
            exc.removed = (path,)  # type: ignore[attr-defined]
            raise
        return (path,), None
    if kind == "save":
        path = file()
        await f.write(path[:-4] + ".tmp", data)
        await f.rename(path[:-4] + ".tmp", path)
        return (path[:-4] + ".tmp", path), data
    src = rng.choice(FOLDERS)
    parent = rng.choice([p for p in ["", *FOLDERS] if p != src and not p.startswith(src + "/")])
    dst = f"{parent}/{src.rsplit('/', 1)[-1]}".lstrip("/")
    await f.rename(src, dst if dst != src else dst + "m")
    return (src, dst), None


async def _rmtree(m: EngineMachine, path: str) -> None:
    kind, _, _ = await m.files.kind_size_mode(path)
    if kind != "dir":
        raise OSError(errno.ENOTDIR, "not a folder")
    for name in await m.files.listdir(path):
        child = f"{path}/{name}"
        if (await m.files.kind_size_mode(child))[0] == "dir":
            await _rmtree(m, child)
        else:
            await m.files.unlink(child)
    await m.files.rmdir(path)


async def _run(seed: int, root: Path, steps: int) -> str:
    """Run case *seed* for *steps* steps; '' when it holds, else what went wrong.

    Every third case has three machines: a change can then be refused on behalf of
    one machine while a third one's news of it is on its way.
    """
    server = Server(root / "server")
    machines = [EngineMachine(name, root / name, server) for name in "ABC"[:3 if seed % 3 == 0 else 2]]
    rng = random.Random(seed)
    log: list[tuple[int, tuple[str, ...], bytes | None, str]] = []
    links: list[tuple[str, str]] = []
    serials = itertools.count()  # one per operation, in the order they ran (several may run in one step)

    async def op(m: EngineMachine) -> None:
        serial = next(serials)
        try:
            paths, data = await _step(rng, m, serial, links)
            log.append((serial, paths, data, m.name))
        except OSError as exc:
            if exc.errno not in EXPECTED:
                raise
            if hasattr(exc, "removed"):
                log.append((serial, exc.removed, None, m.name))

    def meanwhile(m: EngineMachine) -> Callable[[], Awaitable[None]]:
        async def act() -> None:
            # While a commit or a question is on its way, the user goes on and news comes in.
            what = rng.choices(["op", "apply", "none"], weights=[1, 1, 6])[0]
            if what == "op":
                await op(m)
            elif what == "apply":
                await m.apply_one()
        return act

    try:
        for _ in range(steps):
            m = rng.choice(machines)
            m.remote.meanwhile = meanwhile(m)
            what = rng.choices(["op", "send", "apply"], weights=[6, 2, 2])[0]
            if what == "send":
                await m.send_one()
            elif what == "apply":
                await m.apply_one()
            else:
                await op(m)
        for m in machines:
            m.remote.meanwhile = None
        for _ in range(2):
            for m in machines:
                await m.settle()
        truth = server.tree()
        for m in machines:
            if m.tree() != truth:
                diff = sorted(set(m.tree().items()) ^ set(truth.items()))
                return f"{m.name} differs from the server: {diff[:6]}"
            if len(m.queue):
                return f"{m.name} still has {len(m.queue)} change(s) queued"
            named_orphans = m.replica._db.execute(
                "SELECT id FROM nodes n WHERE orphan=1 AND EXISTS (SELECT 1 FROM entries e WHERE e.node=n.id)"
            ).fetchall()
            if named_orphans:
                # A name shows it, yet the front ends take it for gone (a folder lists as missing).
                return f"{m.name} holds nodes a name shows as orphans: {named_orphans}"
        held = {blocks for _, blocks in truth.values()}
        moves = [(p[0], p[1]) for _, p, _, _ in log if len(p) == 2] + [(dst, src) for src, dst in links]
        for i, paths, data, name in log:
            if not data:
                continue
            targets = places(paths[-1], moves)
            if any(_touches(p2, t) for j, p2, _, _ in log if j > i for t in targets):
                continue
            if (hashlib.sha256(data).hexdigest(),) not in held:
                return f"write {i} (on {name} to {paths[-1]}) is lost"
        return ""
    finally:
        for m in machines:
            m.close()
        server.close()


def _check(seed: int, root: Path, steps: int) -> str:
    return trio.run(_run, seed, root, steps)


@pytest.mark.timeout(900)
def test_random_interleavings_of_two_engines_end_in_one_tree(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for seed in _cases(request):
        problem = _check(seed, tmp_path / f"case{seed}", STEPS)
        if not problem:
            continue
        # Shrink: the shortest prefix of the steps that still fails.
        lo, hi = 1, STEPS
        while lo < hi:
            mid = (lo + hi) // 2
            if _check(seed, tmp_path / f"case{seed}-{mid}", mid):
                hi = mid
            else:
                lo = mid + 1
        pytest.fail(f"WEBSYNC_ENGINE_SEED={seed}: {problem} (fails after {lo} of {STEPS} steps)")
