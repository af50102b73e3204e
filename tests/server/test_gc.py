"""The collector in-process: retention, journal compaction, grace, dry runs and what it reports."""

from __future__ import annotations

import os
import time

from tests.server.conftest import Components
from tests.server.ops import create, delete, mkdir, update
from websync_server.gc import Collector
from websync_server.retention import write_setting
from websync_server.usage import read_usage


def collect(c: Components, **options: float | bool) -> object:
    return Collector(c.db, c.blocks).run(**options)  # type: ignore[arg-type]


def age(c: Components, seconds: float) -> None:
    """Make every commit and version so far look *seconds* older (the server's clock moved on)."""
    shift = int(seconds * 1e9)
    with c.db.write() as conn:
        conn.exec_driver_sql("UPDATE batches SET time_ns = time_ns - ?", (shift,))
        conn.exec_driver_sql("UPDATE versions SET replaced_ns = replaced_ns - ?, written_ns = written_ns - ?",
                             (shift, shift))


def age_blocks(c: Components, seconds: float) -> None:
    for folder, _, files in os.walk(c.blocks.root / c.user):
        for name in files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def present(c: Components, blocks: list[str]) -> list[bool]:
    return [c.blocks.size(c.user, b) is not None for b in blocks]


def test_a_deleted_files_blocks_stay_while_in_the_trash_and_go_after(components: Components) -> None:
    c = components
    size, blocks = c.put_file(100, seed=1)
    f = create("f", size=size, blocks=blocks)
    c.commit(f)
    c.commit(delete(f["id"], "f"))
    age_blocks(c, 2 * 86400)
    report = Collector(c.db, c.blocks).run()
    assert present(c, blocks) == [True] and report.blocks == 0 and report.trash == 0
    age(c, 31 * 86400)
    report = Collector(c.db, c.blocks).run()
    assert present(c, blocks) == [False] and report.blocks == 1 and report.bytes > 0 and report.trash == 1
    assert c.store.trash(c.store_id) == []


def test_trash_and_version_days_zero_empty_both_now(components: Components) -> None:
    c = components
    v1, v2, gone = c.put_file(10, seed=1), c.put_file(10, seed=2), c.put_file(10, seed=3)
    f, g = create("f", size=v1[0], blocks=v1[1]), create("g", size=gone[0], blocks=gone[1])
    seq = c.commit(f, g)
    c.commit(update(f["id"], base=seq, size=v2[0], blocks=v2[1]), delete(g["id"], "g"))
    age_blocks(c, 2 * 86400)
    dry = Collector(c.db, c.blocks).run(dry_run=True, trash_days=0, version_days=0)
    assert dry.blocks == 2 and present(c, v1[1] + gone[1]) == [True, True]
    report = Collector(c.db, c.blocks).run(trash_days=0, version_days=0)
    assert (report.blocks, report.versions, report.trash) == (2, 1, 1)
    assert present(c, v1[1] + v2[1] + gone[1]) == [False, True, False]
    assert [v.current for v in c.store.versions(c.store_id, f["id"])] == [True]


def test_a_block_shared_with_a_kept_file_stays(components: Components) -> None:
    c = components
    size, blocks = c.put_file(10, seed=7)
    a, b = create("a", size=size, blocks=blocks), create("b", size=size, blocks=blocks)
    c.commit(a, b)
    c.commit(delete(a["id"], "a"))
    age_blocks(c, 2 * 86400)
    Collector(c.db, c.blocks).run(trash_days=0)
    assert present(c, blocks) == [True]


def test_an_upload_never_committed_goes_after_the_grace_period(components: Components) -> None:
    c = components
    _, fresh = c.put_file(10, seed=1)
    _, old = c.put_file(10, seed=2)
    age_blocks(c, 2 * 86400)
    _, new = c.put_file(10, seed=3)
    assert c.blocks.put(c.user, fresh[0], bytes([1]) * 10) is False  # uploaded again: counts as fresh
    report = Collector(c.db, c.blocks).run()
    assert present(c, fresh + old + new) == [True, False, True] and report.blocks == 1
    assert Collector(c.db, c.blocks).run(grace_hours=0).blocks == 2


def test_compaction_purges_old_tombstones_and_raises_the_horizon(components: Components) -> None:
    c = components
    d = mkdir("d")
    f = create("f", parent=d["id"])
    c.commit(d, f)
    c.commit(delete(f["id"], "f", parent=d["id"]))
    last = c.commit(delete(d["id"], "d"))
    age(c, 31 * 86400)
    c.commit(create("new"))
    report = Collector(c.db, c.blocks).run()
    assert report.tombstones >= 4  # two removed entries, two deleted nodes (and batch records)
    assert c.store.changes(c.store_id, last - 1).reset
    assert not c.store.changes(c.store_id, last).reset
    listing = c.store.changes(c.store_id, 0)
    assert {e.name for e in listing.entries} == {"new"}
    with c.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM entries WHERE node IS NULL").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM nodes WHERE deleted").scalar() == 0


def test_a_node_in_the_trash_outlives_the_horizon_when_the_trash_is_longer(components: Components) -> None:
    c = components
    f = create("f")
    c.commit(f)
    c.commit(delete(f["id"], "f"))
    write_setting(c.db, "trash_days", 90, user_id=1)
    age(c, 31 * 86400)
    c.commit(create("later"))
    fresh = type(c.store)(c.db, c.blocks)  # reads the new setting
    Collector(c.db, c.blocks).run()
    assert [i.node for i in fresh.trash(c.store_id)] == [f["id"]]
    assert fresh.trash(c.store_id)[0].until > time.time() + 58 * 86400


def test_versions_and_trash_say_until_when_they_are_kept(components: Components) -> None:
    c = components
    f = create("f")
    seq = c.commit(f)
    c.commit(update(f["id"], base=seq, size=0, blocks=[]))
    old, current = c.store.versions(c.store_id, f["id"])
    assert current.until is None and old.until is not None
    assert abs(old.until - (time.time() + 30 * 86400)) < 60
    assert old.to_wire()["until"] == old.until


def test_usage_counts_current_history_trash_and_disk(components: Components) -> None:
    c = components
    one, two, three = c.put_file(1000, seed=1), c.put_file(2000, seed=2), c.put_file(4000, seed=3)
    f, g = create("f", size=one[0], blocks=one[1]), create("g", size=three[0], blocks=three[1])
    seq = c.commit(f, g)
    c.commit(update(f["id"], base=seq, size=two[0], blocks=two[1]), delete(g["id"], "g"))
    [usage] = read_usage(c.db, c.blocks.root)
    assert (usage.user, usage.current, usage.history, usage.trash, usage.blocks) == ("alice", 2000, 1000, 4000, 3)
    assert usage.disk >= 7000
