"""One machine reuses the same few names fast: what it shows is what reaches the server.

Programs and scripts delete a tree and make it again under the same names
within milliseconds (build outputs, `rm -rf x && mkdir x`, test fixtures).  The
queue then holds a file's delete, a folder made at its name, a move away, a new
file at the name again... all before anything was sent.  Nothing of that is a
conflict: one machine cannot disagree with itself.  Machine B shows what the
server holds; after A's queue drains it must equal A's tree, and no conflict
copy may appear anywhere.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.clients import Machine, eventually
from tests.faults.serverstate import read_tree
from tests.mount.test_pins import wait_uploaded

pytestmark = pytest.mark.mount

NAMES = ["a", "b", "d", "d/a"]


def clear(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def burst(root: Path, rng: random.Random) -> None:
    """A few writes, folders, moves and deletes on the same names, as fast as they go."""
    for _ in range(rng.randint(1, 7)):
        op = rng.choice(["write", "write", "mkdir", "rename", "unlink"])
        path = root / rng.choice(NAMES)
        try:
            if op == "write":
                path.write_bytes(os.urandom(rng.randint(0, 5)))
            elif op == "mkdir":
                path.mkdir()
            elif op == "rename":
                path.rename(root / rng.choice(["a", "b", "d"]))
            else:
                path.unlink()
        except OSError:
            pass  # the same errors a local disk gives; only what succeeded counts


def same_on_b(a: Machine, b: Machine, when: str) -> None:
    wait_uploaded(a)
    here = read_tree(a.path("work"))
    try:
        eventually(lambda: read_tree(b.path("work")) == here, timeout=30, what=f"B to show A's tree ({when})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nA: {here}\nB: {read_tree(b.path('work'))}") from None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_name_reuse_on_one_machine_is_never_a_conflict(a: Machine, b: Machine, seed: int) -> None:
    rng = random.Random(seed)
    root = a.path("work")
    root.mkdir()
    for round_ in range(60):
        clear(root)
        burst(root, rng)
        # Sometimes the queue sends part of the burst before the next one begins.
        time.sleep(rng.choice([0, 0, 0.05, 0.25, 0.4]))
        if round_ % 15 == 14:
            same_on_b(a, b, f"round {round_}")
    same_on_b(a, b, "the end")
    for machine in (a, b):
        copies = [name for name in read_tree(machine.path("work")) if "conflict" in name]
        assert copies == [], f"{machine.name} shows conflict copies of its own changes: {copies}"
    assert "conflict on" not in a.log(), "one machine's changes conflicted with themselves"
