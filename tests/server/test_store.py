"""The metadata store: every op, every conflict reason, atomicity, retries, concurrency."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select

from tests.server.conftest import Components, both_engines
from tests.server.ops import create, delete, mkdir, rename, setattr_, symlink, update
from websync_server._exceptions import CommitConflict, InvalidRequest, NotFound
from websync_server.protocol import BLOCK_SIZE, ROOT_ID, Node, new_node_id
from websync_server.schema import versions


engine = both_engines  # every test here runs on SQLite and on PostgreSQL


def node(c: Components, node_id: str) -> Node:
    return c.store.node_state(c.store_id, node_id).node


def names(c: Components, node_id: str) -> set[tuple[str, str]]:
    return {(e.parent, e.name) for e in c.store.node_state(c.store_id, node_id).entries}


def refused(c: Components, *ops: dict[str, Any]) -> CommitConflict:
    with pytest.raises(CommitConflict) as caught:
        c.commit(*ops)
    return caught.value


# -- each op ------------------------------------------------------------------


def test_new_store_holds_only_the_root_dir(components: Components) -> None:
    changes = components.store.changes(components.store_id, 0)
    assert [(n.id, n.kind, n.deleted) for n in changes.nodes] == [(ROOT_ID, "dir", False)]
    assert changes.entries == () and changes.cursor == 1


def test_mkdir_create_and_symlink_make_nodes_named_by_entries(components: Components) -> None:
    c = components
    size, blocks = c.put_file(10)
    d, f, s = mkdir("docs"), create("a.txt", size=size, blocks=blocks), symlink("link", "docs/a.txt")
    f["parent"] = d["id"]
    seq = c.commit(d, f, s, device="desk")
    assert seq == 2
    assert node(c, d["id"]).kind == "dir" and names(c, d["id"]) == {(ROOT_ID, "docs")}
    file = node(c, f["id"])
    assert (file.kind, file.size, list(file.blocks), file.mode, file.device) == ("file", 10, blocks, 0o644, "desk")
    assert names(c, f["id"]) == {(d["id"], "a.txt")}
    link = node(c, s["id"])
    assert (link.kind, link.target, link.size) == ("symlink", "docs/a.txt", len("docs/a.txt"))


def test_every_row_a_commit_touches_takes_its_seq(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f", parent=d["id"])
    seq = c.commit(d, f)
    changes = c.store.changes(c.store_id, 1)
    assert {n.id: n.seq for n in changes.nodes} == {d["id"]: seq, f["id"]: seq}
    assert {e.name: e.seq for e in changes.entries} == {"d": seq, "f": seq}
    assert changes.cursor == seq == c.commit(mkdir("other")) - 1


def test_mode_keeps_only_permission_bits(components: Components) -> None:
    f = create("f", mode=0o100640)  # a client may send st_mode as it is
    components.commit(f)
    assert node(components, f["id"]).mode == 0o640


def test_update_replaces_content_and_keeps_the_old_version(components: Components) -> None:
    c = components
    old_size, old_blocks = c.put_file(100, seed=1)
    f = create("f", size=old_size, blocks=old_blocks)
    first = c.commit(f, device="laptop")
    new_size, new_blocks = c.put_file(200, seed=2)
    second = c.commit(update(f["id"], base=first, size=new_size, blocks=new_blocks, mode=0o600), device="desk")
    now = node(c, f["id"])
    assert (now.size, list(now.blocks), now.seq, now.device, now.mode) == (200, new_blocks, second, "desk", 0o600)
    with c.db.read() as conn:
        history = conn.execute(select(versions).where(versions.c.node == f["id"])).all()
    assert [(v.seq, v.size, v.device, v.replaced_seq) for v in history] == [(first, 100, "laptop", second)]
    assert old_blocks[0] in history[0].blocks


def test_setattr_changes_mode_and_mtime_only(components: Components) -> None:
    c = components
    size, blocks = c.put_file(5)
    f = create("f", size=size, blocks=blocks)
    c.commit(f)
    seq = c.commit(setattr_(f["id"], mode=0o600, mtime_ns=42))
    now = node(c, f["id"])
    assert (now.mode, now.mtime_ns, now.seq, now.size, list(now.blocks)) == (0o600, 42, seq, 5, blocks)


def test_owners_are_kept_as_numbers_or_as_the_store_owner(components: Components) -> None:
    c = components
    f = create("f")
    c.commit({**f, "uid": 1001, "gid": 3000})
    assert (node(c, f["id"]).uid, node(c, f["id"]).gid) == (1001, 3000)
    c.commit(setattr_(f["id"], uid="owner"))
    assert (node(c, f["id"]).uid, node(c, f["id"]).gid) == (None, 3000)
    c.commit(setattr_(f["id"], gid=0))
    assert (node(c, f["id"]).uid, node(c, f["id"]).gid) == (None, 0)
    plain = create("g")
    c.commit(plain)
    assert (node(c, plain["id"]).uid, node(c, plain["id"]).gid) == (None, None)


@pytest.mark.parametrize("bad", ["bob", -1, 2**32 - 1, 1.5, True, [1]])
def test_an_owner_that_is_no_uid_is_refused(components: Components, bad: object) -> None:
    c = components
    f = create("f")
    c.commit(f)
    with pytest.raises(InvalidRequest, match="uid"):
        c.commit(setattr_(f["id"], uid=bad))
    with pytest.raises(InvalidRequest, match="gid"):
        c.commit({**create("h"), "gid": bad})


def test_rename_moves_the_entry_and_leaves_the_node_alone(components: Components) -> None:
    c = components
    d, f = mkdir("d"), create("f")
    created = c.commit(d, f)
    moved = c.commit(rename(f["id"], "f", "g", new_parent=d["id"]))
    assert names(c, f["id"]) == {(d["id"], "g")}
    # The node keeps its seq: a pending update based on it stays valid.
    assert node(c, f["id"]).seq == created
    changes = c.store.changes(c.store_id, created)
    assert {(e.parent, e.name, e.node) for e in changes.entries} == {(ROOT_ID, "f", None), (d["id"], "g", f["id"])}
    assert changes.nodes == () and changes.cursor == moved


def test_rename_with_replace_deletes_the_replaced_file(components: Components) -> None:
    c = components
    tmp, doc = create("doc.tmp"), create("doc")
    c.commit(tmp, doc)
    seq = c.commit(rename(tmp["id"], "doc.tmp", "doc", replace=doc["id"]))
    assert names(c, tmp["id"]) == {(ROOT_ID, "doc")}
    replaced = node(c, doc["id"])
    assert replaced.deleted and replaced.seq == seq and names(c, doc["id"]) == set()


def test_rename_replacing_an_empty_dir(components: Components) -> None:
    c = components
    a, b = mkdir("a"), mkdir("b")
    c.commit(a, b)
    c.commit(rename(a["id"], "a", "b", replace=b["id"]))
    assert node(c, b["id"]).deleted and names(c, a["id"]) == {(ROOT_ID, "b")}


def test_rename_onto_its_own_name_changes_nothing(components: Components) -> None:
    c = components
    f = create("f")
    created = c.commit(f)
    c.commit(rename(f["id"], "f", "f"))
    assert names(c, f["id"]) == {(ROOT_ID, "f")} and node(c, f["id"]).seq == created


def test_delete_leaves_tombstones_for_node_and_entry(components: Components) -> None:
    c = components
    f = create("f")
    created = c.commit(f)
    seq = c.commit(delete(f["id"], "f", base=created))
    gone = node(c, f["id"])
    assert gone.deleted and gone.seq == seq and names(c, f["id"]) == set()
    changes = c.store.changes(c.store_id, created)
    assert [(e.name, e.node) for e in changes.entries] == [("f", None)]
    assert [(n.id, n.deleted) for n in changes.nodes] == [(f["id"], True)]


def test_a_removed_name_can_be_used_again(components: Components) -> None:
    c = components
    first = create("f")
    c.commit(first)
    c.commit(delete(first["id"], "f"))
    second = create("f")
    c.commit(second)
    assert names(c, second["id"]) == {(ROOT_ID, "f")}


def test_empty_dir_can_be_deleted(components: Components) -> None:
    d = mkdir("d")
    components.commit(d)
    components.commit(delete(d["id"], "d"))
    assert node(components, d["id"]).deleted


# -- conflicts -----------------------------------------------------------------


def test_op_into_missing_parent_is_missing(components: Components) -> None:
    conflict = refused(components, mkdir("x", parent=new_node_id())).conflict
    assert (conflict.index, conflict.reason, conflict.node) == (0, "missing", None)


def test_op_into_deleted_parent_is_missing(components: Components) -> None:
    c = components
    d = mkdir("d")
    c.commit(d)
    c.commit(delete(d["id"], "d"))
    conflict = refused(c, create("f", parent=d["id"])).conflict
    # The node the op names (the new one) does not exist: no node to report.
    assert (conflict.reason, conflict.node) == ("missing", None)


def test_op_into_a_file_is_not_dir(components: Components) -> None:
    f = create("f")
    components.commit(f)
    conflict = refused(components, mkdir("x", parent=f["id"])).conflict
    assert (conflict.reason, conflict.node) == ("not_dir", None)


def test_taken_name_is_exists_with_the_node_there(components: Components) -> None:
    f = create("f")
    components.commit(f)
    for op in (create("f"), mkdir("f"), symlink("f", "x")):
        conflict = refused(components, op).conflict
        assert conflict.reason == "exists" and conflict.node is not None and conflict.node.id == f["id"]


def test_reused_id_is_exists_also_after_delete(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    assert refused(c, create("g", id=f["id"])).conflict.reason == "exists"
    c.commit(delete(f["id"], "f"))
    conflict = refused(c, create("g", id=f["id"])).conflict
    assert conflict.reason == "exists" and conflict.node is not None and conflict.node.deleted


def test_root_id_can_not_be_created(components: Components) -> None:
    assert refused(components, mkdir("x", id=ROOT_ID)).conflict.reason == "exists"


def test_update_with_stale_base_is_changed_with_current_node(components: Components) -> None:
    c = components
    f = create("f")
    first = c.commit(f)
    second = c.commit(update(f["id"], base=first, size=3, blocks=[c.put_block(b"abc")]))
    c.commit(setattr_(f["id"], mode=0o600))
    conflict = refused(c, update(f["id"], base=first)).conflict
    assert conflict.reason == "changed" and conflict.node is not None and conflict.node.seq == second + 1


def test_update_over_only_a_mode_or_time_set_since_its_base_is_taken(components: Components) -> None:
    """A touch or chmod elsewhere moved the seq, not the content: the new version replaces nothing unseen."""
    c = components
    f = create("f")
    first = c.commit(f)
    c.commit(setattr_(f["id"], mode=0o600, mtime_ns=7))
    edited = [c.put_block(b"edited")]
    seq = c.commit(update(f["id"], base=first, size=6, blocks=edited))
    now = node(c, f["id"])
    assert (now.seq, now.blocks, now.size, now.mode & 0o777) == (seq, tuple(edited), 6, 0o600)


def test_update_and_setattr_of_deleted_node_are_missing(components: Components) -> None:
    c = components
    f = create("f")
    created = c.commit(f)
    c.commit(delete(f["id"], "f"))
    assert refused(c, update(f["id"], base=created)).conflict.reason == "missing"
    assert refused(c, setattr_(f["id"], mode=0o600)).conflict.reason == "missing"
    assert refused(c, setattr_(new_node_id(), mode=0o600)).conflict.reason == "missing"


def test_rename_of_an_entry_that_names_another_node_is_missing(components: Components) -> None:
    c = components
    f, g = create("f"), create("g")
    c.commit(f, g)
    assert refused(c, rename(g["id"], "f", "h")).conflict.reason == "missing"
    assert refused(c, rename(f["id"], "nothing-here", "h")).conflict.reason == "missing"


def test_rename_into_missing_or_non_dir_parent(components: Components) -> None:
    c = components
    f, g = create("f"), create("g")
    c.commit(f, g)
    for new_parent, reason in ((new_node_id(), "missing"), (g["id"], "not_dir")):
        conflict = refused(c, rename(f["id"], "f", "x", new_parent=new_parent)).conflict
        # For reasons other than exists, the node reported is the one the op names.
        assert conflict.reason == reason and conflict.node is not None and conflict.node.id == f["id"]


def test_rename_of_dir_into_its_own_subtree_is_cycle(components: Components) -> None:
    c = components
    a = mkdir("a")
    b = mkdir("b", parent=a["id"])
    cc = mkdir("c", parent=b["id"])
    c.commit(a, b, cc)
    assert refused(c, rename(a["id"], "a", "x", new_parent=cc["id"])).conflict.reason == "cycle"
    assert refused(c, rename(a["id"], "a", "x", new_parent=a["id"])).conflict.reason == "cycle"
    # Moving a sibling's subtree in is fine.
    d = mkdir("d")
    c.commit(d)
    c.commit(rename(d["id"], "d", "d", new_parent=cc["id"]))
    assert names(c, d["id"]) == {(cc["id"], "d")}


def test_rename_onto_a_taken_name_without_replace_is_exists(components: Components) -> None:
    c = components
    f, g, h = create("f"), create("g"), create("h")
    c.commit(f, g, h)
    conflict = refused(c, rename(f["id"], "f", "g")).conflict
    assert conflict.reason == "exists" and conflict.node is not None and conflict.node.id == g["id"]
    # replace must name the node that is there, not any node.
    assert refused(c, rename(f["id"], "f", "g", replace=h["id"])).conflict.reason == "exists"


def test_rename_replacing_a_non_empty_dir_is_not_empty(components: Components) -> None:
    c = components
    a, b = mkdir("a"), mkdir("b")
    c.commit(a, b, create("inside", parent=b["id"]))
    assert refused(c, rename(a["id"], "a", "b", replace=b["id"])).conflict.reason == "not_empty"


def test_rename_of_a_folder_over_a_file_or_back_is_invalid(components: Components) -> None:
    """rename(2) refuses both (ENOTDIR, EISDIR); the server must not put a folder where a file was."""
    c = components
    d, f = mkdir("d"), create("f")
    c.commit(d, f)
    with pytest.raises(InvalidRequest, match="a folder over a file"):
        c.commit(rename(d["id"], "d", "f", replace=f["id"]))
    with pytest.raises(InvalidRequest, match="a file over a folder"):
        c.commit(rename(f["id"], "f", "d", replace=d["id"]))
    assert names(c, d["id"]) == {(ROOT_ID, "d")} and names(c, f["id"]) == {(ROOT_ID, "f")}


def test_delete_conflicts(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f", parent=d["id"])
    created = c.commit(d, f)
    assert refused(c, delete(f["id"], "f")).conflict.reason == "missing"  # wrong parent
    assert refused(c, delete(d["id"], "d")).conflict.reason == "not_empty"
    c.commit(setattr_(f["id"], mtime_ns=5))
    assert refused(c, delete(f["id"], "f", parent=d["id"], base=created)).conflict.reason == "changed"


# -- atomicity, retries, validation -------------------------------------------


def test_a_batch_whose_third_op_fails_leaves_nothing(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f", parent=d["id"])
    conflict = refused(c, d, f, mkdir("x", parent=new_node_id())).conflict
    assert conflict.index == 2 and conflict.reason == "missing"
    changes = c.store.changes(c.store_id, 0)
    assert [n.id for n in changes.nodes] == [ROOT_ID] and changes.entries == () and changes.cursor == 1
    with pytest.raises(NotFound):
        c.store.node_state(c.store_id, d["id"])
    assert c.commit(mkdir("later")) == 2  # the refused batch used no seq


def test_a_retried_batch_answers_its_first_seq_and_changes_nothing(components: Components) -> None:
    c = components
    f = create("f")
    first = c.commit(f, batch="batch-1")
    assert c.commit(f, batch="batch-1") == first
    assert c.store.changes(c.store_id, first).nodes == ()
    assert c.commit(mkdir("d"), batch="batch-2") == first + 1


def test_create_needs_its_blocks_on_the_server(components: Components) -> None:
    with pytest.raises(InvalidRequest, match="not on the server"):
        components.commit(create("f", size=3, blocks=["ab" * 32]))


def test_create_size_must_equal_the_blocks_sizes(components: Components) -> None:
    size, blocks = components.put_file(10)
    with pytest.raises(InvalidRequest, match="size is 11"):
        components.commit(create("f", size=11, blocks=blocks))


def test_only_the_last_block_may_be_short(components: Components) -> None:
    c = components
    short, full = c.put_block(b"x" * 1000), c.put_block(b"y" * BLOCK_SIZE)
    with pytest.raises(InvalidRequest, match="every block but the last"):
        c.commit(create("f", size=BLOCK_SIZE + 1000, blocks=[short, full]))
    c.commit(create("g", size=BLOCK_SIZE + 1000, blocks=[full, short]))


def test_update_of_a_directory_is_invalid(components: Components) -> None:
    d = mkdir("d")
    seq = components.commit(d)
    with pytest.raises(InvalidRequest, match="needs a file"):
        components.commit(update(d["id"], base=seq))


@pytest.mark.parametrize(
    "op",
    [
        create(".."), create("."), create(""), create("a/b"), create("a\0b"), create("é" * 128),
        mkdir("x", parent="ROOT"), mkdir("x", id="123"), create("f", size=1, blocks=["xyz"]),
        create("f", size=1, blocks=[]), {**mkdir("x"), "mode": True}, {**mkdir("x"), "mtime_ns": 1.5},
        {**mkdir("x"), "mode": 0o1000000}, {"op": "chmod", "id": ROOT_ID}, "not an object",
        rename(ROOT_ID, "x", "y"), delete(ROOT_ID, "x"), setattr_(ROOT_ID), symlink("l", ""),
        {k: v for k, v in create("f").items() if k != "mtime_ns"},
    ],
)  # fmt: skip
def test_malformed_ops_are_invalid(components: Components, op: Any) -> None:
    with pytest.raises(InvalidRequest, match="op 0"):
        components.commit(op)
    assert components.store.changes(components.store_id, 1).cursor == 1


def test_names_of_255_bytes_are_fine(components: Components) -> None:
    f = create("é" * 127 + "x")  # 255 bytes of UTF-8
    components.commit(f)
    assert names(components, f["id"]) == {(ROOT_ID, "é" * 127 + "x")}


@pytest.mark.parametrize("batch", ["", "x" * 129, None, 7, "tab\there"])
def test_bad_batch_ids_are_invalid(components: Components, batch: Any) -> None:
    with pytest.raises(InvalidRequest, match="batch"):
        components.store.commit(components.store_id, "dev", batch, [mkdir("d")])


def test_empty_batch_is_invalid(components: Components) -> None:
    with pytest.raises(InvalidRequest, match="non-empty"):
        components.store.commit(components.store_id, "dev", "b", [])


def test_unknown_store_is_not_found(components: Components) -> None:
    with pytest.raises(NotFound):
        components.store.commit("0" * 32, "dev", "b", [mkdir("d")])
    with pytest.raises(NotFound):
        components.store.changes("0" * 32, 0)


def test_node_state_lists_live_entries_and_deleted_nodes(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    assert names(c, f["id"]) == {(ROOT_ID, "f")}
    c.commit(delete(f["id"], "f"))
    state = c.store.node_state(c.store_id, f["id"])
    assert state.node.deleted and state.entries == ()
    with pytest.raises(NotFound):
        c.store.node_state(c.store_id, new_node_id())
    with pytest.raises(InvalidRequest):
        c.store.node_state(c.store_id, "../etc")


# -- concurrency ---------------------------------------------------------------


def run_threads(count: int, work: Any) -> None:
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_concurrent_commits_each_get_their_own_seq(components: Components) -> None:
    c = components
    seqs: list[int] = []

    def work(index: int) -> None:
        for n in range(10):
            seqs.append(c.commit(create(f"f-{index}-{n}")))

    run_threads(8, work)
    assert sorted(seqs) == list(range(2, 82))
    listing = c.store.changes(c.store_id, 0)
    assert len(listing.entries) == 80 and listing.cursor == 81


def test_concurrent_updates_from_one_base_let_exactly_one_win(components: Components) -> None:
    c = components
    f = create("f")
    base = c.commit(f)
    outcomes: list[str] = []

    def work(index: int) -> None:
        try:
            c.commit(setattr_(f["id"], mode=0o600), update(f["id"], base=base))
            outcomes.append("ok")
        except CommitConflict as exc:
            outcomes.append(exc.conflict.reason)

    run_threads(6, work)
    assert sorted(outcomes) == ["changed"] * 5 + ["ok"]


def test_base_means_the_seq_before_the_batch(components: Components) -> None:
    c = components
    f = create("f")
    base = c.commit(f)
    # Earlier ops of the same batch don't make a later op's base stale.
    seq = c.commit(setattr_(f["id"], mode=0o600), update(f["id"], base=base), delete(f["id"], "f", base=base))
    assert node(c, f["id"]).deleted and node(c, f["id"]).seq == seq
    g = create("g")
    c.commit(g, update(g["id"], base=12345))  # created by the batch: nothing else can have changed it
    assert refused(c, setattr_(g["id"], mode=0o600), update(g["id"], base=base)).conflict.reason == "changed"
