"""History and trash: versions of a file, the trash of deleted nodes, and restore."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.server.conftest import Components
from tests.server.ops import create, delete, mkdir, rename, restore, setattr_, update
from websync_server._exceptions import CommitConflict, InvalidRequest, NotFound
from websync_server.protocol import ROOT_ID, new_node_id
from websync_server.store import MetadataStore


def refused(c: Components, *ops: dict[str, Any]) -> CommitConflict:
    with pytest.raises(CommitConflict) as caught:
        c.commit(*ops)
    return caught.value


def test_versions_are_numbered_from_1_oldest_first_current_last(components: Components) -> None:
    c = components
    contents = [c.put_file(n, seed=n) for n in (10, 20, 30)]
    f = create("f", size=contents[0][0], blocks=contents[0][1])
    seq = c.commit(f, device="laptop")
    before = time.time()
    seq = c.commit(update(f["id"], base=seq, size=contents[1][0], blocks=contents[1][1]), device="desk")
    seq = c.commit(setattr_(f["id"], mode=0o600))  # not a new version
    c.commit(update(f["id"], base=seq, size=contents[2][0], blocks=contents[2][1]), device="server")
    listed = c.store.versions(c.store_id, f["id"])
    assert [(v.version, v.size, v.device, v.current) for v in listed] == [
        (1, 10, "laptop", False), (2, 20, "desk", False), (3, 30, "server", True),
    ]  # fmt: skip
    assert [list(v.blocks) for v in listed] == [blocks for _, blocks in contents]
    assert listed[0].time <= before <= listed[1].time <= listed[2].time <= time.time()
    # The current version's seq is the precondition for the next update.
    assert listed[-1].seq == c.store.node_state(c.store_id, f["id"]).node.seq


def test_versions_of_unknown_or_malformed_ids(components: Components) -> None:
    with pytest.raises(NotFound):
        components.store.versions(components.store_id, new_node_id())
    with pytest.raises(InvalidRequest):
        components.store.versions(components.store_id, "nope")


def test_a_deleted_file_is_in_the_trash_with_its_place_and_deleter(components: Components) -> None:
    c = components
    d = mkdir("docs")
    f = create("a.txt", parent=d["id"])
    c.commit(d, f)
    seq = c.commit(delete(f["id"], "a.txt", parent=d["id"]), device="desk")
    [item] = c.store.trash(c.store_id)
    assert (item.node, item.kind, item.parent, item.name, item.path) == (f["id"], "file", d["id"], "a.txt", "docs/a.txt")
    assert (item.device, item.seq) == ("desk", seq) and abs(item.time - time.time()) < 60


def test_trash_is_newest_first_and_includes_replaced_files(components: Components) -> None:
    c = components
    a, b, tmp = create("a"), create("b"), create("b.tmp")
    c.commit(a, b, tmp)
    c.commit(delete(a["id"], "a"))
    c.commit(rename(tmp["id"], "b.tmp", "b", replace=b["id"]))
    assert [(i.node, i.name) for i in c.store.trash(c.store_id)] == [(b["id"], "b"), (a["id"], "a")]


def test_restore_brings_a_file_back_with_content_and_history(components: Components) -> None:
    c = components
    size, blocks = c.put_file(10)
    f = create("f", size=size, blocks=blocks)
    seq = c.commit(f)
    seq = c.commit(update(f["id"], base=seq, size=size, blocks=blocks))
    c.commit(delete(f["id"], "f"))
    restored = c.commit(restore(f["id"], "f"))
    state = c.store.node_state(c.store_id, f["id"])
    assert not state.node.deleted and state.node.seq == restored and list(state.node.blocks) == blocks
    assert [(e.parent, e.name) for e in state.entries] == [(ROOT_ID, "f")]
    assert [v.version for v in c.store.versions(c.store_id, f["id"])] == [1, 2]
    assert c.store.trash(c.store_id) == []
    changes = c.store.changes(c.store_id, restored - 1)
    assert [(n.id, n.deleted) for n in changes.nodes] == [(f["id"], False)]


def test_a_restored_folder_comes_back_empty_and_its_files_can_follow(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f", parent=d["id"])
    c.commit(d, f)
    c.commit(delete(f["id"], "f", parent=d["id"]), delete(d["id"], "d"))
    c.commit(restore(d["id"], "d"))
    assert {e.name for e in c.store.changes(c.store_id, 0).entries} == {"d"}  # the folder, empty
    [item] = c.store.trash(c.store_id)
    c.commit(restore(item.node, item.name, parent=item.parent))
    assert [e.name for e in c.store.node_state(c.store_id, f["id"]).entries] == ["f"]


def test_restore_conflicts(components: Components) -> None:
    c = components
    live, gone, other = create("live"), create("gone"), create("other")
    c.commit(live, gone, other)
    c.commit(delete(gone["id"], "gone"))
    conflict = refused(c, restore(live["id"], "elsewhere")).conflict
    assert conflict.reason == "exists" and conflict.node is not None and conflict.node.id == live["id"]
    assert refused(c, restore(new_node_id(), "x")).conflict.reason == "missing"
    conflict = refused(c, restore(gone["id"], "other")).conflict
    assert conflict.reason == "exists" and conflict.node is not None and conflict.node.id == other["id"]
    conflict = refused(c, restore(gone["id"], "x", parent=other["id"])).conflict
    assert conflict.reason == "not_dir" and conflict.node is not None and conflict.node.id == gone["id"]


def test_restore_past_the_retention_window_is_missing(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    c.commit(delete(f["id"], "f"))
    expired = MetadataStore(c.db, c.blocks, retention_s=0)
    assert expired.trash(c.store_id) == []
    with pytest.raises(CommitConflict) as caught:
        expired.commit(c.store_id, "dev", "late", [restore(f["id"], "f")])
    assert caught.value.conflict.reason == "missing"
    c.commit(restore(f["id"], "f"))  # within the default window it works


def test_delete_and_restore_in_one_batch(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    c.commit(delete(f["id"], "f"), restore(f["id"], "g"))
    assert [e.name for e in c.store.node_state(c.store_id, f["id"]).entries] == ["g"]
