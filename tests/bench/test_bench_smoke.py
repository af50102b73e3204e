"""The benchmark harness still works: every workload runs at tiny sizes on WebSync and a local dir.

No timing is asserted (CI machines are shared and noisy): only that every
phase runs without error, every row it should fill gets a positive number,
and the table and the target checks render.  rclone is left out so CI needs
nothing beyond FUSE.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench.harness import run
from tests.bench.report import (
    check_targets,
    render_checks,
    render_section,
    render_table,
    rows,
    write_doc,
)
from tests.bench.targets import MiB, mounted_under
from tests.bench.workloads import PHASES, Params, Results

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]  # 80 s seen at a load of 6 on 2 cores

LOCAL_ROWS = {
    "seq_write", "seq_write_durable", "seq_read_cold", "seq_read_warm", "rand_read_cold", "rand_read_warm",
    "ttfb_cold", "ttfb_seek_cold", "small_create", "small_stat", "small_read", "ls_lR", "find_ls", "small_delete",
    "sqlite_commit", "small_fsync", "fsync_syncs", "tar_x", "tar_x_server", "rsync_a", "rsync_a_server", "git_clone",
    "git_clone_server", "cp_photos", "cp_photos_server",
}
WEBSYNC_ROWS = LOCAL_ROWS | {
    "seq_read_cache", "seq_read_http", "small_visible", "prop_p50", "prop_p99", "edit_upload",
    "changes_big", "changes_small",
}


def test_every_workload_runs_on_websync_and_a_local_dir(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: the benchmark mounts WebSync through FUSE")
    params = Params(size=8 * MiB, files=60, folders=6, edits=3, store_files=300, rand_ops=50, warm_repeat=1,
                    changes_repeat=3, drop_caches=False, git_files=20, program_runs=2)

    results = run(params, ("local", "websync"), tuple(PHASES), workdir=tmp_path)

    assert results.errors == {}
    assert not mounted_under(tmp_path), "the harness left a mount behind"
    for key, expected in (("local", LOCAL_ROWS), ("websync", WEBSYNC_ROWS)):
        measured = {row for row, by_target in results.values.items() if key in by_target}
        assert measured == expected, f"{key}: missing {expected - measured}, unexpected {measured - expected}"
        for row in measured:
            assert results.values[row][key] > 0, f"{row} on {key} is {results.values[row][key]}"
    assert results.extra["edit_blocks_websync"] >= 1
    # Each of the program's fsyncs is a disk sync on a local disk, and reaches the disk through WebSync too.
    assert results.values["fsync_syncs"]["local"] == 1
    assert results.values["fsync_syncs"]["websync"] >= 1
    # A program row is the median of its runs, each on data of its own, and the note gives every run.
    for key in ("local", "websync"):
        runs = [note for note in results.notes if note.startswith(f"{key}: tar_x, each run: ")]
        assert len(runs) == 1 and runs[0].count(";") == 1, runs
    assert "until on the server" in next(n for n in results.notes if n.startswith("websync: rsync_a, each run: "))

    table = render_table(params, results)
    for line in rows(params):
        assert line.label in table
    checks = render_checks(check_targets(params, results))
    assert "propagation p50" in checks
    doc = tmp_path / "benchmarks.md"
    write_doc(doc, "smoke", render_section("smoke", "cmd", "today", {
        "nproc": "2", "cpu": "cpu", "memory": "1 GiB", "kernel": "k", "python": "3", "disk": "d", "commit": "c",
    }, params, results, 1.0, "rclone not run"))
    write_doc(doc, "smoke", "replaced\n")  # a second run replaces its own section only
    text = doc.read_text()
    assert text.count("<!-- bench:smoke:begin -->") == 1 and "replaced" in text and "| workload |" not in text


def test_the_ceiling_file_system_runs_the_small_file_rows_and_unmounts(tmp_path: Path) -> None:
    """The in-memory pyfuse3 file system (`tests.bench.ceiling`) behind the "vs ceiling" ratios."""
    params = Params(size=4 * MiB, files=60, folders=6, drop_caches=False, git_files=20, program_runs=1)
    results = run(params, ("ceiling",), ("small", "programs"), workdir=tmp_path)
    assert results.errors == {}
    assert not mounted_under(tmp_path), "the ceiling file system was left mounted"
    for row in ("small_create", "small_stat", "small_read", "small_delete", "sqlite_commit", "small_fsync", "tar_x",
                "rsync_a", "git_clone", "cp_photos"):
        assert results.values[row]["ceiling"] > 0, row
    assert "rsync_a_server" not in results.values, "the ceiling has no server to wait for"
    assert results.values["fsync_syncs"]["ceiling"] == 0, "the in-memory file system syncs nothing"
    assert "WebSync vs ceiling" in render_table(params, results)


def test_the_report_compares_with_both_rclones_and_checks_the_small_file_targets() -> None:
    """Figures made up for the purpose: each target line says met or not met from them."""
    params = Params(files=60)
    results = Results()
    figures = {
        "small_create": {"ceiling": 1000.0, "websync": 700.0, "rclone": 600.0, "rclone-defaults": 800.0},
        "small_fsync": {"local": 1000.0, "websync": 400.0, "rclone": 100.0, "rclone-defaults": 1600.0},
        "git_clone": {"ceiling": 1.0, "websync": 2.0, "rclone": 3.0, "rclone-defaults": 3.0},
        "git_clone_server": {"websync": 3.0},
        "fsync_syncs": {"local": 1.0, "websync": 1.0, "rclone": 0.0, "rclone-defaults": 0.0},
    }
    for row, by_target in figures.items():
        for target, value in by_target.items():
            results.set(row, target, value)
    table = render_table(params, results)
    assert "rclone at defaults" in table and "WebSync vs rclone defaults" in table
    assert "0.88× behind" in table  # 700 creates/s against rclone's 800 at its defaults
    lines = render_checks(check_targets(params, results)).splitlines()
    verdict = {line.split(": ", 1)[1].split(" — ")[0]: line.split(":")[0] for line in lines}
    assert verdict["every small-file row ≥ 0.6× the ceiling"] == "- **not met**"  # git clone at 0.5x
    assert verdict["fsync of a small file (and a SQLite commit) ≤ 3× a plain folder's time"] == "- **met**"
    assert verdict["until everything is on the server ≤ 2× until the program finished"] == "- **met**"
    assert verdict["on every row, ahead of rclone mount (tuned: write-back 0 s, listings 1 s)"] == "- **met**"
    assert verdict["on every row, ahead of rclone mount at its defaults"] == "- **not met**"
    # Counts of disk syncs are no race: no "vs" cells; a win by syncing nothing is named as such.
    assert "| 1.00 | 0 | 0 |  |  |  |  |" in table
    assert "small_fsync (0.25×, whose fsync synced nothing)" in "\n".join(lines)
