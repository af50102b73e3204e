"""The save detector's memory of names that files left."""

from __future__ import annotations

import time

import pytest

from websync_fs import saves
from websync_fs.replica import NodeRow
from websync_fs.saves import REMEMBERED, WINDOW, SaveDetector
from websync_server.protocol import KIND_FILE, NodeId


def row(i: int) -> NodeRow:
    return NodeRow(ino=i + 2, id=NodeId(f"n{i}"), kind=KIND_FILE, mode=0o644, size=0, mtime_ns=0, ctime_ns=0,
                   blocks=(), target="", seq=1, orphan=False, local=False)


def detector() -> SaveDetector:
    # left() reads neither the replica nor the queue.
    return SaveDetector(replica=None, queue=None, send=lambda *a, **k: None)  # type: ignore[arg-type]


def test_a_mass_delete_remembers_the_latest_names_only() -> None:
    d = detector()
    for i in range(REMEMBERED + 500):
        d.left("p", f"f{i}", row(i))
    assert len(d._left) == REMEMBERED
    assert ("p", "f499") not in d._left and ("p", "f500") in d._left
    assert ("p", f"f{REMEMBERED + 499}") in d._left


def test_names_older_than_the_window_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(saves.time, "monotonic", lambda: now[0])
    d = detector()
    d.left("p", "old", row(1))
    d.left("p", "again", row(2))
    now[0] += WINDOW / 2
    d.left("p", "again", row(2))  # left again: remembered from now
    now[0] += WINDOW / 2 + 1
    d.left("p", "new", row(3))
    assert list(d._left) == [("p", "again"), ("p", "new")]
    assert time.monotonic() == now[0]
