"""A folder's listing is remembered until the state database changes, and never shown stale."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from websync_fs import replica as replica_module
from websync_fs.replica import ROOT_INO, Replica
from websync_fs.statedb import StateDb
from websync_server.protocol import KIND_DIR, KIND_FILE, ROOT_ID, NodeId


@pytest.fixture
def rep(tmp_path: Path):
    db = StateDb(tmp_path / "state.db")
    try:
        yield Replica(db)
    finally:
        db.close()


def _add(rep: Replica, parent: str, name: str, kind: str = KIND_FILE) -> str:
    node = NodeId(f"n-{parent}-{name}")
    with rep.tx():
        rep.add_node(node, kind, 0o644 if kind == KIND_FILE else 0o755)
        rep.set_entry(parent, name, node)
    return node


def _names(rep: Replica, ino: int = ROOT_INO) -> list[str]:
    found = rep.folder_listing(ino)
    assert found is not None
    return [name for name, _, _ in found[1]]


def _entry_reads(rep: Replica) -> list[str]:
    reads: list[str] = []
    rep._db.set_trace_callback(lambda sql: reads.append(sql) if "FROM entries" in sql else None)
    return reads


@pytest.mark.timeout(30)
def test_an_unchanged_folder_is_listed_once_and_every_write_shows_at_once(rep: Replica) -> None:
    _add(rep, ROOT_ID, "a")
    assert _names(rep) == ["a"]
    reads = _entry_reads(rep)
    assert _names(rep) == ["a"]
    assert reads == []  # remembered
    _add(rep, ROOT_ID, "b")
    assert _names(rep) == ["a", "b"]
    with rep.tx():
        rep.update_node(NodeId(f"n-{ROOT_ID}-a"), size=7)
    found = rep.folder_listing(ROOT_INO)
    assert found is not None and found[1][0][1].size == 7
    with rep.tx():
        rep.remove_entry(ROOT_ID, "a")
    assert _names(rep) == ["b"]


@pytest.mark.timeout(30)
def test_a_commit_by_another_connection_shows_at_once(rep: Replica, tmp_path: Path) -> None:
    """`websync` commands beside a running mount open the state database themselves."""
    _add(rep, ROOT_ID, "a")
    assert _names(rep) == ["a"]
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        other.execute("DELETE FROM entries WHERE name='a'")
    finally:
        other.close()
    assert _names(rep) == []


@pytest.mark.timeout(30)
def test_what_a_rolled_back_transaction_read_is_not_remembered(rep: Replica) -> None:
    _add(rep, ROOT_ID, "a")
    with pytest.raises(RuntimeError), rep.tx():
        rep.remove_entry(ROOT_ID, "a")
        assert _names(rep) == []  # the transaction's own view
        raise RuntimeError("rolled back")
    assert _names(rep) == ["a"]


@pytest.mark.timeout(30)
def test_listings_are_bounded_and_the_oldest_go_first(rep: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_module, "LISTED_MAX", 5)
    folders = [_add(rep, ROOT_ID, f"d{i}", KIND_DIR) for i in range(3)]
    for folder in folders:
        for j in range(2):
            _add(rep, folder, f"f{j}")
    inos = [row.ino for row in (rep.by_id(f) for f in folders) if row is not None]
    for ino in inos:
        assert _names(rep, ino) == ["f0", "f1"]
    assert list(rep._listings) == inos[1:]  # 6 entries would pass 5: the first folder's went
    assert rep._listed == 4
    reads = _entry_reads(rep)
    assert _names(rep, inos[0]) == ["f0", "f1"]
    assert reads  # read again
    assert list(rep._listings) == inos[2:] + inos[:1]
    assert rep.folder_listing(10_000) is None
    _add(rep, folders[0], "f2")  # any write: the next listing forgets every other
    assert _names(rep, inos[1]) == ["f0", "f1"]
    assert list(rep._listings) == inos[1:2] and rep._listed == 2


@pytest.mark.timeout(30)
def test_a_folder_given_the_id_a_name_shows_is_no_orphan_and_lists_its_files(rep: Replica) -> None:
    """A folder deleted here (an orphan) folded into the one made again elsewhere, which a name shows.

    Renamed to that folder's id it kept its orphan flag: the name showed it,
    and every listing of it said it was gone (a whole folder missing here).
    """
    old = _add(rep, ROOT_ID, "old", KIND_DIR)
    _add(rep, old, "mine.txt")
    theirs = _add(rep, ROOT_ID, "a", KIND_DIR)
    with rep.tx():
        rep.remove_entry(ROOT_ID, "old")
        rep.set_orphan(old)
        rep.drop_node(theirs)
        rep.remap(old, theirs)
    row = rep.lookup(ROOT_ID, "a")
    assert row is not None and row.id == theirs and not row.orphan
    assert _names(rep, row.ino) == ["mine.txt"]
