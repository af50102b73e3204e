"""Hard links, special nodes and extended attributes."""

from __future__ import annotations

import base64
import stat
from typing import Any

import pytest

from tests.server.conftest import Components
from tests.server.ops import create, delete, link, mkdir, mknod, rename, setattr_, update
from websync_server._exceptions import CommitConflict, InvalidRequest
from websync_server.protocol import ROOT_ID, XATTR_VALUE_MAX, new_node_id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refused(c: Components, *ops: dict[str, Any]) -> CommitConflict:
    with pytest.raises(CommitConflict) as caught:
        c.commit(*ops)
    return caught.value


def test_a_hard_link_is_a_second_entry_and_leaves_the_node_seq(components: Components) -> None:
    c = components
    f = create("f")
    created = c.commit(f)
    c.commit(link(f["id"], "g"))
    state = c.store.node_state(c.store_id, f["id"])
    assert {e.name for e in state.entries} == {"f", "g"} and state.node.seq == created
    # An update based on the seq before the link still applies.
    c.commit(update(f["id"], base=created))


def test_a_node_lives_until_its_last_link_is_deleted(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f")
    c.commit(d, f, link(f["id"], "g", parent=d["id"]))
    c.commit(delete(f["id"], "f"))
    assert not c.store.node_state(c.store_id, f["id"]).node.deleted
    assert c.store.trash(c.store_id) == []
    c.commit(delete(f["id"], "g", parent=d["id"]))
    [item] = c.store.trash(c.store_id)
    assert c.store.node_state(c.store_id, f["id"]).node.deleted and (item.path, item.parent) == ("d/g", d["id"])


def test_link_conflicts_and_directories(components: Components) -> None:
    c = components
    d, f, g = mkdir("d"), create("f"), create("g")
    c.commit(d, f, g)
    assert refused(c, link(new_node_id(), "x")).conflict.reason == "missing"
    conflict = refused(c, link(f["id"], "g")).conflict
    assert conflict.reason == "exists" and conflict.node is not None and conflict.node.id == g["id"]
    assert refused(c, link(f["id"], "x", parent=g["id"])).conflict.reason == "not_dir"
    with pytest.raises(InvalidRequest, match="hard links"):
        c.commit(link(d["id"], "d2"))


def test_mknod_makes_a_special_node_that_keeps_its_type_bits(components: Components) -> None:
    c = components
    fifo = mknod("pipe", stat.S_IFIFO | 0o644)
    dev = mknod("null", stat.S_IFCHR | 0o666, rdev=(1 << 8) | 3)
    c.commit(fifo, dev)
    c.commit(setattr_(fifo["id"], mode=0o600))
    nodes = {n.id: n for n in c.store.changes(c.store_id, 0).nodes}
    assert (nodes[fifo["id"]].kind, nodes[fifo["id"]].mode) == ("special", stat.S_IFIFO | 0o600)
    assert (nodes[dev["id"]].mode, nodes[dev["id"]].rdev) == (stat.S_IFCHR | 0o666, 259)


@pytest.mark.parametrize("mode", [0o644, stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755])
def test_mknod_needs_a_special_file_type(components: Components, mode: int) -> None:
    with pytest.raises(InvalidRequest, match="S_IFMT"):
        components.commit(mknod("x", mode))


def test_xattrs_are_set_and_removed_by_setattr(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    c.commit(setattr_(f["id"], xattrs={"user.tag": b64(b"red"), "user.empty": b64(b"")}))
    c.commit(setattr_(f["id"], xattrs={"user.tag": b64(b"blue"), "user.empty": None, "user.gone": None}))
    node = c.store.node_state(c.store_id, f["id"]).node
    assert node.xattrs == {"user.tag": b64(b"blue")}
    listed = {n.id: n for n in c.store.changes(c.store_id, 0).nodes}
    assert listed[f["id"]].xattrs == {"user.tag": b64(b"blue")} and listed[ROOT_ID].xattrs == {}


@pytest.mark.parametrize(
    "xattrs",
    [
        {"security.selinux": b64(b"x")}, {"user.": b64(b"x")}, {"user.x": "not base64!"}, {"user.x": 5},
        {"user." + "n" * 251: b64(b"x")}, {"user.big": b64(b"x" * (XATTR_VALUE_MAX + 1))}, ["user.x"],
    ],
)  # fmt: skip
def test_bad_xattrs_are_invalid(components: Components, xattrs: Any) -> None:
    with pytest.raises(InvalidRequest, match="xattrs"):
        components.commit(setattr_(ROOT_ID, xattrs=xattrs))


def test_xattrs_of_a_node_are_limited_in_total(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    value = b64(b"v" * XATTR_VALUE_MAX)
    c.commit(setattr_(f["id"], xattrs={f"user.{i}": value for i in range(3)}))
    with pytest.raises(InvalidRequest, match="attributes would take"):
        c.commit(setattr_(f["id"], xattrs={"user.3": value, "user.4": value}))
    assert len(c.store.node_state(c.store_id, f["id"]).node.xattrs) == 3


def test_nodes_can_be_made_with_xattrs(components: Components) -> None:
    c = components
    ops = [
        {**mkdir("d"), "xattrs": {"user.a": b64(b"1")}},
        {**create("f"), "xattrs": {"user.b": b64(b"2"), "user.none": None}},
        {**mknod("p", stat.S_IFIFO | 0o600), "xattrs": {"user.c": b64(b"3")}},
    ]
    c.commit(*ops)
    got = {n.id: n.xattrs for n in c.store.changes(c.store_id, 0).nodes}
    assert [got[op["id"]] for op in ops] == [{"user.a": b64(b"1")}, {"user.b": b64(b"2")}, {"user.c": b64(b"3")}]
    with pytest.raises(InvalidRequest, match="xattrs"):
        c.commit({**create("g"), "xattrs": {"trusted.x": b64(b"1")}})


def test_rename_exchange_swaps_two_entries(components: Components) -> None:
    c = components
    a, b = mkdir("a"), create("b")
    made = c.commit(a, b)
    seq = c.commit(rename(a["id"], "a", "b", exchange=b["id"]))
    assert [e.name for e in c.store.node_state(c.store_id, a["id"]).entries] == ["b"]
    assert [e.name for e in c.store.node_state(c.store_id, b["id"]).entries] == ["a"]
    changes = c.store.changes(c.store_id, made)
    assert {(e.name, e.node) for e in changes.entries} == {("a", b["id"]), ("b", a["id"])}
    assert changes.nodes == () and changes.cursor == seq  # entries only: node seqs stay


def test_rename_exchange_conflicts(components: Components) -> None:
    c = components
    a = mkdir("a")
    inner = mkdir("inner", parent=a["id"])
    f, g = create("f"), create("g")
    c.commit(a, inner, f, g)
    conflict = refused(c, rename(f["id"], "f", "g", exchange=a["id"])).conflict
    assert conflict.reason == "missing" and conflict.node is not None and conflict.node.id == f["id"]
    # Swapping a with something inside it would put a inside itself.
    assert refused(c, rename(inner["id"], "inner", "a", parent=a["id"], exchange=a["id"])).conflict.reason == "cycle"
    with pytest.raises(InvalidRequest, match="both replace and exchange"):
        c.commit({**rename(f["id"], "f", "g", exchange=g["id"]), "replace": g["id"]})
