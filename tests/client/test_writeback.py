"""The write-back queue: order, coalescing, the state machine and crash recovery."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from websync_fs.statedb import StateDb
from websync_fs import writeback
from websync_fs.writeback import WriteBackQueue
from websync_server.protocol import (
    BlockHash,
    Create,
    Delete,
    Mkdir,
    NodeId,
    Rename,
    SetAttr,
    Update,
)


class Protection:
    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def protect(self, hashes: object) -> None:
        self.count.update(hashes)  # type: ignore[arg-type]

    def unprotect(self, hashes: object) -> None:
        self.count.subtract(hashes)  # type: ignore[arg-type]

    def held(self) -> set[str]:
        return {h for h, n in self.count.items() if n > 0}


def make(tmp_path: Path, quiet: float = 0.0) -> tuple[WriteBackQueue, Protection, StateDb]:
    db = StateDb(tmp_path / "state.db")
    prot = Protection()
    return WriteBackQueue(db, quiet=quiet, protect=prot.protect, unprotect=prot.unprotect), prot, db


def create(node: str, name: str, blocks: list[str] | None = None, parent: str = "root") -> Create:
    blocks = blocks or []
    return Create(id=NodeId(node), parent=NodeId(parent), name=name, mode=0o644, mtime_ns=1, size=len(blocks),
                  blocks=tuple(BlockHash(h) for h in blocks))


def test_items_keep_their_order(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1))
    q.enqueue(create("f", "file", parent="d"))
    assert [i.op["op"] for i in q.take()] == ["mkdir", "create"]


def test_updates_coalesce_into_the_create(tmp_path: Path) -> None:
    q, prot, _ = make(tmp_path)
    q.enqueue(create("f", "a.txt", ["h1"]))
    q.enqueue(Update(id="f", size=2, blocks=("h2",), mtime_ns=5))
    q.enqueue(Update(id="f", size=3, blocks=("h3",), mtime_ns=6))
    items = q.items()
    assert len(items) == 1
    assert items[0].op["op"] == "create" and items[0].op["blocks"] == ["h3"] and items[0].op["mtime_ns"] == 6
    assert prot.held() == {"h3"}


def test_a_merge_protects_and_unprotects_only_the_blocks_it_changes(tmp_path: Path) -> None:
    """Each block of a queued item holds one reference; a merge that keeps a block calls nothing for it."""
    q, prot, _ = make(tmp_path)
    calls: list[tuple[str, list[str]]] = []
    q._protect_cb = lambda hs: (calls.append(("protect", list(hs))), prot.protect(hs))  # type: ignore[method-assign]
    q._unprotect_cb = lambda hs: (calls.append(("unprotect", list(hs))), prot.unprotect(hs))  # type: ignore[method-assign]
    q.enqueue(create("f", "a.txt", ["h1", "h2", "h2"]))
    calls.clear()
    q.enqueue(SetAttr(id=NodeId("f"), mode=0o600))
    assert [c for c in calls if c[1]] == [] and prot.count == Counter({"h1": 1, "h2": 2})
    q.enqueue(Update(id=NodeId("f"), size=3, blocks=(BlockHash("h2"), BlockHash("h3")), mtime_ns=6))
    assert prot.count == Counter({"h2": 1, "h3": 1, "h1": 0})
    assert [c for c in calls if c[1]] == [("protect", ["h3"]), ("unprotect", ["h1", "h2"])]


def test_temporary_file_costs_nothing(tmp_path: Path) -> None:
    q, prot, _ = make(tmp_path)
    q.enqueue(create("t", "~WRD0000.tmp", ["h1"]))
    q.enqueue(Rename(id="t", parent="root", name="~WRD0000.tmp", new_parent="root", new_name="x.tmp"))
    q.enqueue(Delete(id="t", parent="root", name="x.tmp"))
    assert len(q) == 0
    assert prot.held() == set()


def test_rename_of_unsent_file_moves_its_create_to_the_end(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(create("f", "a"))
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1))
    q.enqueue(Rename(id="f", parent="root", name="a", new_parent="d", new_name="b"))
    ops = [i.op for i in q.items()]
    assert [o["op"] for o in ops] == ["mkdir", "create"]
    assert (ops[1]["parent"], ops[1]["name"]) == ("d", "b")


def test_delete_of_folder_that_queued_children_use_is_kept(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1))
    q.enqueue(Mkdir(id="e", parent="d", name="sub", mode=0o755, mtime_ns=1))
    q.enqueue(Rename(id="e", parent="d", name="sub", new_parent="root", new_name="sub"))
    q.enqueue(Delete(id="d", parent="root", name="dir"))
    assert [i.op["op"] for i in q.items()] == ["mkdir", "mkdir", "rename", "delete"]


def test_no_coalescing_into_an_item_being_uploaded(tmp_path: Path) -> None:
    q, prot, _ = make(tmp_path)
    q.enqueue(create("f", "a", ["h1"]))
    batch = q.take()
    q.enqueue(Update(id="f", size=1, blocks=("h2",), mtime_ns=2))
    assert len(q) == 2
    q.done(batch)
    assert [i.op["op"] for i in q.items()] == ["update"]
    assert prot.held() == {"h2"}


def test_quiet_period_holds_back_later_items(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path, quiet=60)
    q.enqueue(create("f", "a"))
    assert q.take() == []
    assert q.next_ready_at() is not None


def test_a_first_change_waits_the_short_quiet_period_and_a_file_that_keeps_changing_the_long_one(
    tmp_path: Path,
) -> None:
    db = StateDb(tmp_path / "state.db")
    q = WriteBackQueue(db, quiet=60, first_quiet=0.0)
    q.enqueue(create("e", "empty"))  # a file still being written goes up empty...
    q.done(sent := q.take())
    assert [i.node for i in sent] == ["e"]
    q.enqueue(Update(id=NodeId("e"), size=1, blocks=(BlockHash("h0"),), mtime_ns=2))
    assert [i.node for i in q.take()] == ["e"]  # ...and its content, at its close, waits no longer for it
    q.enqueue(create("f", "a", ["h1"]))
    q.enqueue(SetAttr(id=NodeId("f"), mode=0o600))  # the program's chmod after its close: same item, no longer wait
    assert [(i.node, i.op["mode"]) for i in q.take()] == [("f", 0o600)]
    q.enqueue(create("g", "b"))  # another file's first change is not held by f's
    q.enqueue(Update(id=NodeId("f"), size=1, blocks=(BlockHash("h2"),), mtime_ns=2))
    assert [i.node for i in q.take()] == ["g"]  # f's content was just sent: its next waits for the writer to pause
    assert q.next_ready_at() is not None
    assert q.first_quiet == 0.0 and WriteBackQueue(db, quiet=5.0).first_quiet == 5.0  # by default one period


def test_a_wall_clock_set_back_does_not_hold_back_what_is_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock goes back ten minutes (NTP, a machine resumed) while a change waits 50 ms: it goes in 50 ms."""
    q, _, _ = make(tmp_path, quiet=0.05)
    q.enqueue(create("f", "a"))
    real = time.time
    monkeypatch.setattr(writeback.time, "time", lambda: real() - 600)
    time.sleep(0.1)
    assert q.has_ready() and [i.node for i in q.take()] == ["f"]


def test_a_due_time_set_by_a_clock_since_set_back_is_due_at_the_next_start(tmp_path: Path) -> None:
    """A process stopped with changes queued; the clock went back an hour before the next start."""
    q, _, db = make(tmp_path, quiet=3600 + 60)  # as seen by the clock set back: due in an hour and a minute
    q.enqueue(create("f", "a"))
    q.enqueue(create("g", "b"))
    assert not q.has_ready()
    db.close()
    q2, _, _ = make(tmp_path)
    assert q2.has_ready()  # not an hour and a minute more
    assert [i.node for i in q2.take()] == ["f", "g"]


def test_failed_batch_returns_to_queued_with_backoff(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(create("f", "a"))
    batch = q.take()
    q.fail(batch, 30, "offline")
    assert q.take() == []
    item = q.items()[0]
    assert item.state == "queued" and item.attempts == 1


def test_batch_in_flight_survives_a_crash_with_its_id(tmp_path: Path) -> None:
    q, _, db = make(tmp_path)
    q.enqueue(create("f", "a", ["h1"]))
    q.enqueue(create("g", "b", ["h2"]))
    batch = q.take()
    db.close()  # the process dies here
    q2, _, _ = make(tmp_path)
    again = q2.inflight()
    assert [i.n for i in again] == [i.n for i in batch]
    assert {i.batch for i in again} == {batch[0].batch}
    assert sorted(q2.all_blocks()) == ["h1", "h2"]


def test_pending_keys_name_nodes_and_entries(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(create("f", "a"))
    q.enqueue(Rename(id="x", parent="root", name="old", new_parent="root", new_name="new"))
    assert q.pending_nodes() == {"f", "x"}
    assert q.pending_entries() == {("root", "a"), ("root", "old"), ("root", "new")}


def test_remap_rewrites_every_reference(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1))
    q.take()  # sent: no coalescing with what follows
    q.enqueue(create("f", "a", parent="d"))
    q.remap("d", "e")
    ops = [i.op for i in q.items()]
    assert ops[0]["id"] == "e" and ops[1]["parent"] == "e"


def test_unrelated_items_overtake_one_that_waits(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(create("t", "draft.tmp"), quiet=60)
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1))
    q.enqueue(create("f", "in-dir", parent="d"))
    q.enqueue(Update(id="t", size=0, blocks=(), mtime_ns=3))
    assert [i.op["id"] for i in q.take()] == ["d", "f"]


def test_waiting_item_holds_back_what_depends_on_it(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path)
    q.enqueue(Mkdir(id="d", parent="root", name="dir", mode=0o755, mtime_ns=1), quiet=60)
    q.enqueue(create("f", "in-dir", parent="d"))
    q.enqueue(Rename(id="x", parent="e", name="a", new_parent="root", new_name="dir"))
    q.enqueue(create("g", "other"))
    assert [i.op["id"] for i in q.take()] == ["g"]


def test_take_leaves_items_behind_the_last_ready_one_unread(tmp_path: Path, monkeypatch: object) -> None:
    # A burst of deletes keeps hundreds waiting their quiet period behind the few that
    # are ready; the uploader takes after every enqueue, so take must not decode them all.
    import websync_fs.writeback as writeback

    q, _, _ = make(tmp_path)
    q.enqueue(create("a", "ready-1"))
    q.enqueue(create("b", "ready-2"))
    for i in range(50):
        q.enqueue(create(f"w{i}", f"waiting-{i}"), quiet=60)
    decoded: list[int] = []
    real = writeback._item
    monkeypatch.setattr(writeback, "_item", lambda r: decoded.append(r[0]) or real(r))  # type: ignore[attr-defined]

    assert [i.op["id"] for i in q.take()] == ["a", "b"]
    assert len(decoded) == 2
    assert q.take() == []  # nothing ready: nothing read
    assert len(decoded) == 2
    assert len(q) == 52  # the two taken stay, "uploading", until done()


class _RowsRead:
    """The queue's connection, counting the rows its queries hand back."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.rows = 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        return _Counted(self, self._conn.execute(sql, params))


class _Counted:
    def __init__(self, owner: _RowsRead, cursor: Any) -> None:
        self._owner, self._cursor = owner, cursor

    def __iter__(self) -> Iterator[Any]:
        for row in self._cursor:
            self._owner.rows += 1
            yield row

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        self._owner.rows += row is not None
        return row

    def fetchall(self) -> list[Any]:
        rows = self._cursor.fetchall()
        self._owner.rows += len(rows)
        return rows

    def close(self) -> None:
        self._cursor.close()


def test_a_big_queue_is_read_only_as_far_as_the_batch_goes(tmp_path: Path) -> None:
    """After a day offline 100,000 changes wait: every batch of 1,000 had fetched all of them (0.16 s)."""
    q, _, _ = make(tmp_path)
    with q.state.tx():
        for i in range(2000):
            q.enqueue(create(f"f{i}", f"file-{i}"))
    counted = _RowsRead(q._db)
    q._db = counted  # type: ignore[assignment]
    batch = q.take(max_ops=100)
    assert [i.node for i in batch] == [f"f{i}" for i in range(100)]
    assert counted.rows <= 102, counted.rows  # the last ready item's number, the batch, the one that ended it


def test_pending_bytes_are_summed_by_sqlite_and_a_big_queue_s_sum_serves_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status asks every 2 s; a sum that took long is reused for BYTES_REUSE times as long."""
    q, _, _ = make(tmp_path)
    now = [1000.0]

    def ticking() -> float:
        now[0] += 1.0  # every look at the clock takes a second: each sum "takes" one
        return now[0]

    monkeypatch.setattr(writeback, "clock", ticking)
    assert q.pending_bytes() == 0
    for node, size in (("a", 1000), ("b", 234)):
        q.enqueue(Create(id=NodeId(node), parent=NodeId("root"), name=node, mode=0o644, mtime_ns=1, size=size, blocks=()))
    assert q.pending_bytes() == 1234
    q.enqueue(Update(id=NodeId("a"), size=5000, blocks=(), mtime_ns=2))
    assert q.pending_bytes() == 1234  # within 20 s of a sum that took 1 s: the same sum
    now[0] += writeback.BYTES_REUSE
    assert q.pending_bytes() == 5234
    q.done(q.take())
    assert q.pending_bytes() == 0  # an empty queue at once, whatever sum was made before


def test_hurry_readies_a_node_waiting_the_quiet_period_and_keeps_longer_waits(tmp_path: Path) -> None:
    q, _, _ = make(tmp_path, quiet=60.0)
    woken: list[bool] = []
    q.on_enqueue(lambda: woken.append(True))
    q.enqueue(create("a", "a.txt"))
    q.enqueue(create("t", "a.tmp"), quiet=600.0)  # a temporary name's longer wait
    assert q.take() == []
    woken.clear()
    q.hurry("a")
    q.hurry("t")
    assert woken == [True]
    assert [i.op["id"] for i in q.take()] == ["a"]


def test_retry_refused_readies_changes_waiting_out_a_refusal_and_leaves_others_waiting(tmp_path: Path) -> None:
    """A member made read-write again: what the read-only mode refused goes now, not after its backoff."""
    q, _, _ = make(tmp_path, quiet=0.0)
    q.enqueue(create("a", "a.txt"))
    q.enqueue(create("t", "a.tmp"), quiet=600.0)  # waits its quiet period, refused by nothing
    (refused,) = q.take()
    q.fail([refused], 600.0, "the shared folder is read-only for this user")
    assert q.take() == []
    woken: list[bool] = []
    q.on_enqueue(lambda: woken.append(True))
    q.retry_refused()
    assert woken == [True]
    assert [i.op["id"] for i in q.take()] == ["a"]
