"""The change journal: listings, incremental changes, paging on whole commits, resets."""

from __future__ import annotations

import base64
import stat
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event, update

from tests.server.conftest import Components, both_engines
from tests.server.ops import create, delete, mkdir, mknod, rename, setattr_, symlink
from websync_server.protocol import NODE_ROW, ROOT_ID, ChangeRows, Changes, Entry, Node, NodeId
from websync_server.schema import stores


engine = both_engines  # every test here runs on SQLite and on PostgreSQL


def seqs(changes: Changes) -> Counter[int]:
    """How many records of each commit a page holds."""
    return Counter([n.seq for n in changes.nodes] + [e.seq for e in changes.entries])


def test_listing_from_zero_has_no_tombstones(components: Components) -> None:
    c = components
    keep, gone, moved = create("keep"), create("gone"), create("old-name")
    c.commit(keep, gone, moved)
    c.commit(delete(gone["id"], "gone"), rename(moved["id"], "old-name", "new-name"))
    listing = c.store.changes(c.store_id, 0)
    assert {n.id for n in listing.nodes} == {ROOT_ID, keep["id"], moved["id"]}
    assert not any(n.deleted for n in listing.nodes)
    assert {(e.name, e.node) for e in listing.entries} == {("keep", keep["id"]), ("new-name", moved["id"])}
    assert listing.cursor == 3 and not listing.more and not listing.reset


def test_changes_since_a_cursor_include_tombstones_once_in_latest_state(components: Components) -> None:
    c = components
    f = create("f")
    cursor = c.commit(f)
    c.commit(setattr_(f["id"], mode=0o600))
    c.commit(setattr_(f["id"], mode=0o640))
    last = c.commit(delete(f["id"], "f"))
    changes = c.store.changes(c.store_id, cursor)
    assert [(n.id, n.deleted, n.seq, n.mode) for n in changes.nodes] == [(f["id"], True, last, 0o640)]
    assert [(e.name, e.node, e.seq) for e in changes.entries] == [("f", None, last)]
    assert changes.cursor == last


def test_changes_at_the_latest_cursor_are_empty(components: Components) -> None:
    c = components
    seq = c.commit(mkdir("d"))
    changes = c.store.changes(c.store_id, seq)
    assert (changes.nodes, changes.entries, changes.cursor, changes.more) == ((), (), seq, False)


def test_pages_end_on_whole_commits(components: Components) -> None:
    c = components
    commit_sizes = {}
    for n in range(6):
        # 3 creates: 6 records per commit, so a page of 10 can't hold two.
        seq = c.commit(*(create(f"f{n}-{i}") for i in range(3)))
        commit_sizes[seq] = 6
    cursor, seen, pages = 1, Counter[int](), 0
    while True:
        page = c.store.changes(c.store_id, cursor, limit=10)
        pages += 1
        for seq, count in seqs(page).items():
            assert count == commit_sizes[seq], f"page after {cursor} splits commit {seq}"
        assert page.cursor == max(seqs(page))
        seen.update(seqs(page))
        cursor = page.cursor
        if not page.more:
            break
    assert pages == 6 and dict(seen) == commit_sizes


def test_a_commit_bigger_than_a_page_comes_whole(components: Components) -> None:
    c = components
    big = c.commit(*(create(f"f{i}") for i in range(10)))
    after = c.commit(mkdir("d"))
    page = c.store.changes(c.store_id, 1, limit=5)
    assert dict(seqs(page)) == {big: 20} and page.more and page.cursor == big
    rest = c.store.changes(c.store_id, page.cursor, limit=5)
    assert dict(seqs(rest)) == {after: 2} and not rest.more and rest.cursor == after


def test_paged_listing_from_zero_ends_at_the_store_seq(components: Components) -> None:
    c = components
    files = [create(f"f{i}") for i in range(4)]
    for f in files:
        c.commit(f)
    last = c.commit(delete(files[0]["id"], "f0"))
    page = c.store.changes(c.store_id, 0, limit=3)
    names = {e.name for e in page.entries}
    while page.more:
        page = c.store.changes(c.store_id, page.cursor, limit=3)
        names |= {e.name for e in page.entries if e.node is not None}
        names -= {e.name for e in page.entries if e.node is None}
    assert names == {"f1", "f2", "f3"} and page.cursor == last


def test_one_change_in_a_big_store_costs_as_little_as_in_a_small_one(components: Components) -> None:
    """O(changes): the work for "what changed" must not grow with the store."""
    c = components
    small_store, big_store = c.store_id, c.accounts.add_user("bob", "pw")
    for batch in range(10):
        c.store.commit(big_store, "dev", f"fill-{batch}", [create(f"f-{batch}-{i}") for i in range(500)])
    targets = {}
    for store in (small_store, big_store):
        targets[store] = create("target")
        c.store.commit(store, "dev", "target", [targets[store]])
    steps = _count_sqlite_steps(c) if c.db.is_sqlite else _count_postgresql_rows(c)

    def cost_of_one_change(store: str) -> int:
        cursor = c.store.commit(store, "dev", "touch", [setattr_(targets[store]["id"], mtime_ns=1)])
        steps[0] = 0
        changes = c.store.changes(store, cursor - 1)
        assert [n.id for n in changes.nodes] == [targets[store]["id"]] and changes.entries == ()
        return steps[0]

    small, big = cost_of_one_change(small_store), cost_of_one_change(big_store)
    # 5,000 more files, 10,000 more rows: a scan of them would cost 100s of times more.
    assert 0 < big < small * 2, (small, big)


def _count_sqlite_steps(c: Components) -> list[int]:
    """Count SQLite virtual machine instructions on every new connection."""
    steps = [0]

    def on_connect(dbapi_connection: object, _record: object) -> None:
        def tick() -> int:
            steps[0] += 1
            return 0

        dbapi_connection.set_progress_handler(tick, 1)  # type: ignore[attr-defined]

    c.db.engine.dispose()
    event.listen(c.db.engine, "connect", on_connect)
    return steps


def _count_postgresql_rows(c: Components) -> list[int]:
    """Count the rows every plan node of every query handles, as EXPLAIN ANALYZE reports them.

    PostgreSQL has no per-instruction hook; the rows each scan, join and sort
    passes on are its measure of work, and a scan of the store would show as
    thousands of them.
    """
    with c.db.write() as conn:
        conn.exec_driver_sql("ANALYZE")  # plans on the filled tables' real sizes
    steps = [0]

    def after_execute(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            with conn.connection.cursor() as explain:
                explain.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
                steps[0] += _plan_rows(explain.fetchone()[0][0]["Plan"])

    event.listen(c.db.engine, "after_cursor_execute", after_execute)
    return steps


def _plan_rows(plan: dict[str, Any]) -> int:
    return int(plan["Actual Rows"] * plan["Actual Loops"]) + sum(_plan_rows(p) for p in plan.get("Plans", ()))


def test_a_cursor_ahead_of_the_store_resets(components: Components) -> None:
    changes = components.store.changes(components.store_id, 999)
    assert changes.reset and changes.cursor == 0 and changes.nodes == ()


def test_a_cursor_below_the_tombstone_horizon_resets(components: Components) -> None:
    c = components
    for name in "abcd":
        c.commit(mkdir(name))
    with c.db.write() as conn:
        conn.execute(update(stores).where(stores.c.id == c.store_id).values(horizon=3))
    assert c.store.changes(c.store_id, 2).reset
    assert not c.store.changes(c.store_id, 3).reset
    assert not c.store.changes(c.store_id, 0).reset  # a listing is always possible


# -- the compact form (format=compact) -------------------------------------------


def test_compact_pages_hold_the_same_records_as_object_pages(components: Components) -> None:
    c = components
    size, blocks = c.put_file(10)
    f, d, link_ = create("f", size=size, blocks=blocks), mkdir("d"), symlink("l", "f")
    c.commit(f, d, link_, mknod("p", stat.S_IFIFO | 0o600))
    cursor = c.commit(setattr_(f["id"], xattrs={"user.tag": base64.b64encode(b"red").decode()}))
    c.commit(delete(d["id"], "d"), rename(link_["id"], "l", "m"))
    for start, limit in ((0, 3), (0, 10_000), (cursor, 10_000)):
        after = start
        while True:
            objects = c.store.changes(c.store_id, after, limit=limit)
            rows = c.store.change_rows(c.store_id, after, limit=limit)
            assert isinstance(rows, ChangeRows) and rows.to_changes() == objects
            assert ChangeRows.from_wire(rows.to_wire()) == rows
            after = objects.cursor
            if not objects.more:
                break


def test_a_compact_node_leaves_out_trailing_defaults() -> None:
    plain = Node(id=NodeId("a" * 32), kind="file", mode=0o644, size=0, mtime_ns=5, seq=3)
    assert plain.to_row() == ["a" * 32, "file", 0o644, 0, 5, 3]
    made = Node(id=NodeId("a" * 32), kind="file", mode=0o644, size=0, mtime_ns=5, seq=3, device="desk")
    assert made.to_row() == ["a" * 32, "file", 0o644, 0, 5, 3, "desk"]
    full = Node(id=NodeId("b" * 32), kind="special", mode=0o644, size=0, mtime_ns=5, seq=3, device="desk",
                deleted=True, rdev=7, xattrs={"user.a": "eA=="}, uid=1000, gid=0)
    assert len(full.to_row()) == len(NODE_ROW) and full.to_row()[7:9] == [[], ""]
    group_only = Node(id=NodeId("c" * 32), kind="file", mode=0o644, size=0, mtime_ns=5, seq=3, gid=100)
    assert group_only.to_row()[-3:] == [{}, None, 100]
    for node in (plain, made, full, group_only):
        assert Node.from_row(node.to_row()) == node
    gone = Entry(parent=NodeId("root"), name="x", node=None, seq=4)
    assert Entry.from_row(gone.to_row()) == gone and gone.to_row() == ["root", "x", None, 4]


def test_change_rows_read_an_object_page_from_a_server_without_the_compact_form() -> None:
    node = Node(id=NodeId("a" * 32), kind="dir", mode=0o755, size=0, mtime_ns=5, seq=3, device="desk")
    changes = Changes(cursor=3, nodes=(node,), entries=(Entry(NodeId("root"), "d", node.id, 3),), more=True)
    assert "format" not in changes.to_wire()
    assert ChangeRows.from_wire(changes.to_wire()) == changes.to_rows()
    assert ChangeRows.from_wire(changes.to_wire()).to_changes() == changes


@pytest.mark.parametrize("nodes, entries", [
    ([["a" * 32, "file", 0, 0, 0]], []),  # a node without its seq
    ([{"id": "a" * 32}], []),  # an object in a compact page
    ([], [["root", "x", None]]),
    ("nodes", []),
])  # fmt: skip
def test_a_malformed_compact_page_is_refused(nodes: Any, entries: Any) -> None:
    with pytest.raises(ValueError):
        ChangeRows.from_wire({"format": "compact", "cursor": 1, "nodes": nodes, "entries": entries})
