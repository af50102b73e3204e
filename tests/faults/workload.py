"""A random but reproducible file workload that remembers what it did.

`Workload` runs operations a person's programs run -- write a new file,
overwrite, append, rename (also over an existing file), delete, make and
remove folders, move folders, save through a temporary file -- on a directory
(a mount point) and keeps a model of what the directory must hold: the tree
after every operation that returned.

An operation that was running when the client was killed may or may not have
happened, and may have stopped halfway (a file created but not yet written).
`possible()` lists every tree the directory may hold then; `settle()` takes the
one the mount really shows as the new model.  What counts as "happened" is the
close-to-open promise: a file's bytes count once close() (or fsync()) returned.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.serverstate import DIR, Tree, diff

#: Errors that mean "the mount went away under us" (killed client): the op is uncertain.
GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT, errno.EBADF, errno.ENXIO}


@dataclass
class Op:
    name: str
    path: str
    to: str = ""
    #: Trees the directory may show if the op was cut short, besides before and after.
    partial: list[Tree] = field(default_factory=list, repr=False)


class Workload:
    def __init__(self, root: Path, seed: int, *, big: float = 0.01, max_big: int = 6 * 1024 * 1024,
                 model: Tree | None = None, max_files: int = 0) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.model: Tree = dict(model or {})
        self.big = big
        #: With more files than this (0: no limit), the workload deletes more than it writes.
        self.max_files = max_files
        self.max_big = max_big
        self.done = 0
        self.counts: dict[str, int] = {}
        #: The op that started but did not return: (op, tree before it, tree after it).
        self.inflight: tuple[Op, Tree, Tree] | None = None
        #: What ran, in order ("rename a -> b"), for the failure message.
        self.history: list[str] = []
        self._serial = 0
        #: Ops that took longer than ``slow`` seconds (a mount that stalls is a bug too).
        self.slow = 2.0
        self.slow_ops: list[tuple[str, float]] = []

    # -- choosing ----------------------------------------------------------------
    def _files(self) -> list[str]:
        return [p for p, v in self.model.items() if v is not DIR]

    def _dirs(self) -> list[str]:
        return [""] + [p for p, v in self.model.items() if v is DIR]

    def _new_name(self, folder: str, kind: str) -> str:
        self._serial += 1
        name = f"{kind}{self._serial:05d}" + (".dat" if kind == "f" else "")
        if self.rng.random() < 0.05:
            name = f"{kind} {self._serial:05d} é✓" + (".txt" if kind == "f" else "")
        return f"{folder}/{name}" if folder else name

    def _content(self) -> bytes:
        r = self.rng.random()
        if r < self.big:
            size = self.rng.randint(1024 * 1024, self.max_big)
        elif r < 0.25:
            size = self.rng.randint(4096, 200_000)
        else:
            size = self.rng.randint(0, 4096)
        return self.rng.randbytes(size)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    # -- running -----------------------------------------------------------------
    def run(self, count: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Run *count* ops, or until *stop*() or the mount goes away (then the last op is in flight)."""
        for _ in range(count):
            if stop():
                return
            try:
                self.step()
            except OSError as exc:
                if exc.errno in GONE:
                    return
                raise

    def step(self) -> None:
        files, dirs = self._files(), self._dirs()
        shrink = bool(self.max_files) and len(files) > self.max_files
        choices: list[tuple[float, Callable[[], tuple[Op, Tree, Callable[[], None]]]]] = [
            (5 if shrink else 30, self._write_new),
            (12 if files else 0, self._overwrite),
            (5 if files else 0, self._append),
            (4 if files else 0, self._fsync_write),
            (13 if files else 0, self._rename_file),
            (3 if len(files) > 1 else 0, self._rename_over),
            (40 if shrink else 12 if files else 0, self._delete),
            (8 if len(dirs) < 60 else 1, self._mkdir),
            (3 if len(dirs) > 1 else 0, self._rmdir),
            (3 if len(dirs) > 1 else 0, self._move_dir),
            (3 if files else 0, self._save_via_temp),
        ]
        total = sum(w for w, _ in choices)
        pick = self.rng.uniform(0, total)
        for weight, make in choices:
            if pick < weight:
                break
            pick -= weight
        op, after, act = make()
        self.inflight = (op, dict(self.model), after)
        self.history.append(f"{op.name} {op.path}" + (f" -> {op.to}" if op.to else ""))
        start = time.monotonic()
        act()
        took = time.monotonic() - start
        if took > self.slow:
            self.history[-1] += f"  [{took:.1f} s]"
            self.slow_ops.append((op.name, round(took, 2)))
        self.model = after
        self.inflight = None
        self.done += 1
        self.counts[op.name] = self.counts.get(op.name, 0) + 1

    def _write_new(self) -> tuple[Op, Tree, Callable[[], None]]:
        path = self._new_name(self.rng.choice(self._dirs()), "f")
        data = self._content()
        empty = dict(self.model, **{path: b""})
        return Op("write_new", path, partial=[empty]), dict(self.model, **{path: data}), lambda: self._p(path).write_bytes(data)

    def _overwrite(self) -> tuple[Op, Tree, Callable[[], None]]:
        path = self.rng.choice(self._files())
        data = self._content()
        # open(O_TRUNC) may reach the server as its own empty version before the write
        return Op("overwrite", path, partial=[dict(self.model, **{path: b""})]), dict(self.model, **{path: data}), lambda: self._p(path).write_bytes(data)

    def _append(self) -> tuple[Op, Tree, Callable[[], None]]:
        path = self.rng.choice(self._files())
        extra = self.rng.randbytes(self.rng.randint(1, 5000))
        old = self.model[path]
        assert isinstance(old, bytes)

        def act() -> None:
            with open(self._p(path), "ab") as f:
                f.write(extra)

        return Op("append", path), dict(self.model, **{path: old + extra}), act

    def _fsync_write(self) -> tuple[Op, Tree, Callable[[], None]]:
        """Write, fsync, write more, close: the fsync'd prefix is promised even before close."""
        path = self.rng.choice(self._files())
        first, second = self._content(), self.rng.randbytes(self.rng.randint(1, 3000))

        def act() -> None:
            with open(self._p(path), "wb") as f:
                f.write(first)
                f.flush()
                os.fsync(f.fileno())
                f.write(second)

        # Cut short after the fsync, the first part is there; before it, the old bytes or
        # (open truncates) none.
        return (Op("fsync_write", path, partial=[dict(self.model, **{path: first}), dict(self.model, **{path: b""})]),
                dict(self.model, **{path: first + second}), act)

    def _rename_file(self) -> tuple[Op, Tree, Callable[[], None]]:
        src = self.rng.choice(self._files())
        dst = self._new_name(self.rng.choice(self._dirs()), "f")
        after = dict(self.model)
        after[dst] = after.pop(src)
        return Op("rename", src, dst), after, lambda: os.rename(self._p(src), self._p(dst))

    def _rename_over(self) -> tuple[Op, Tree, Callable[[], None]]:
        src, dst = self.rng.sample(self._files(), 2)
        after = dict(self.model)
        after[dst] = after.pop(src)
        return Op("rename_over", src, dst), after, lambda: os.rename(self._p(src), self._p(dst))

    def _delete(self) -> tuple[Op, Tree, Callable[[], None]]:
        path = self.rng.choice(self._files())
        after = dict(self.model)
        del after[path]
        return Op("delete", path), after, lambda: os.unlink(self._p(path))

    def _mkdir(self) -> tuple[Op, Tree, Callable[[], None]]:
        path = self._new_name(self.rng.choice(self._dirs()), "d")
        return Op("mkdir", path), dict(self.model, **{path: DIR}), lambda: os.mkdir(self._p(path))

    def _rmdir(self) -> tuple[Op, Tree, Callable[[], None]]:
        empty = [d for d in self._dirs()[1:] if not any(p.startswith(d + "/") for p in self.model)]
        if not empty:
            return self._mkdir()
        path = self.rng.choice(empty)
        after = dict(self.model)
        del after[path]
        return Op("rmdir", path), after, lambda: os.rmdir(self._p(path))

    def _move_dir(self) -> tuple[Op, Tree, Callable[[], None]]:
        src = self.rng.choice(self._dirs()[1:])
        targets = [d for d in self._dirs() if d != src and not d.startswith(src + "/")]
        dst = self._new_name(self.rng.choice(targets), "d")
        after: Tree = {}
        for p, v in self.model.items():
            if p == src:
                after[dst] = v
            elif p.startswith(src + "/"):
                after[dst + p[len(src):]] = v
            else:
                after[p] = v
        return Op("move_dir", src, dst), after, lambda: os.rename(self._p(src), self._p(dst))

    def _save_via_temp(self) -> tuple[Op, Tree, Callable[[], None]]:
        """Save the way LibreOffice and GLib do: write a temporary file, rename it over the document."""
        path = self.rng.choice(self._files())
        data = self._content()
        tmp = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        tmp += f".goutputstream-{self.rng.randrange(10**6):06d}"

        def act() -> None:
            with open(self._p(tmp), "wb") as f:
                f.write(data)
            os.rename(self._p(tmp), self._p(path))

        partial = [dict(self.model, **{tmp: b""}), dict(self.model, **{tmp: data})]
        return Op("save_via_temp", path, partial=partial), dict(self.model, **{path: data}), act

    # -- after a kill --------------------------------------------------------------
    def possible(self) -> list[Tree]:
        """Every tree the directory may hold now: the model, or the in-flight op before, half or done."""
        if self.inflight is None:
            return [self.model]
        op, before, after = self.inflight
        return [before, after, *op.partial]

    def settle(self, actual: Tree) -> None:
        """Take *actual* as the model if it is one of the possible trees; fail with a diff if not."""
        options = self.possible()
        if actual in options:
            self.model = actual
            self.inflight = None
            return
        closest = min(options, key=lambda t: len(diff(t, actual, limit=10**6).splitlines()))
        what = f" (in flight: {self.inflight[0]})" if self.inflight else ""
        raise AssertionError(f"the mount matches no possible state{what}:\n" + self.explain(closest, actual))

    def check(self, actual: Tree, where: str) -> None:
        """Fail unless *actual* (the server's tree, a machine's) is exactly the model."""
        if actual != self.model:
            raise AssertionError(f"{where} differs from the model:\n" + self.explain(self.model, actual))

    def explain(self, expected: Tree, actual: Tree) -> str:
        """The difference, and the ops that touched the paths that differ (all in workload-history.txt)."""
        (self.root.parent / "workload-history.txt").write_text("\n".join(self.history) + "\n")
        wrong = [line.split(":")[0].strip() for line in diff(expected, actual, limit=5).splitlines()]
        story = [h for h in self.history if any(w and w in h for w in wrong)]
        return (
            f"{diff(expected, actual)}\nops on those paths, of {len(self.history)}:\n  " + "\n  ".join(story[-20:])
        )
