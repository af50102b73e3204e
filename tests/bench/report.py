"""The benchmark's table, the issue's targets checked against it, and docs/benchmarks.md.

`render_table` gives one Markdown table (it reads fine in a terminal too);
`check_targets` turns the issue's targets into met / not met lines; `write_doc`
puts both, with the machine and the command, between this run mode's markers
in docs/benchmarks.md and leaves every hand-written line outside them alone.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .workloads import Params, Results

__all__ = ["PROGRAM_ROWS", "ROWS", "Row", "SMALL_ROWS", "check_targets", "machine_info", "render_table",
           "write_doc"]

TARGETS = (("local", "local dir"), ("ceiling", "ceiling"), ("websync", "WebSync"), ("rclone", "rclone mount"),
           ("rclone-defaults", "rclone at defaults"))
RCLONES = (("rclone", "rclone mount (tuned: write-back 0 s, listings 1 s)"),
           ("rclone-defaults", "rclone mount at its defaults"))


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    #: False: a fact about each target rather than a speed; no "WebSync vs" cells, not in "ahead on every row".
    compared: bool = True


def _size(n: int) -> str:
    gib = n / (1 << 30)
    return f"{gib:g} GiB" if gib >= 1 else f"{n / (1 << 20):g} MiB"


def rows(p: Params) -> list[Row]:
    size, files, tree = _size(p.size), f"{p.files:,}", f"{max(20, p.files // 2):,}"
    median = f"median of {p.program_runs} runs" if p.program_runs > 1 else ""
    runs, in_parens = (f"; {median}", f" ({median})") if median else ("", "")
    return [
        Row("seq_write", f"sequential write of {size}, until close() returns (median of 3 files)", "MiB/s"),
        Row("seq_write_durable", "… until it is on the server (local: + fsync)", "MiB/s"),
        Row("seq_read_cold", f"sequential read of {size}, cold (machine B, page cache dropped)", "MiB/s"),
        Row("seq_read_warm", "… warm (read again on B)", "MiB/s"),
        Row("seq_read_cache", "… from B's disk cache (page cache dropped)", "MiB/s"),
        Row("seq_read_http", "… plain HTTP GET of the same blocks, cold (httpx, 1 connection)", "MiB/s"),
        Row("rand_read_cold", f"4 KiB random reads in a {size} file, cold ({p.rand_ops:,} reads)", "ops/s"),
        Row("rand_read_warm", "… warm (the same offsets again)", "ops/s"),
        Row("ttfb_cold", f"time to first byte of a cold {size} file (open + 4 KiB at 0; median of 3 files)", "ms", False),
        Row("ttfb_seek_cold", "… after a seek to the middle, cold (median of 3 files)", "ms", False),
        Row("small_create", f"create {files} files of 1–16 KiB in {p.folders} folders", "files/s"),
        Row("small_visible", "… until all are listed on machine B", "s", False),
        Row("small_stat", "stat them", "files/s"),
        Row("small_read", "read them", "files/s"),
        Row("ls_lR", f"ls -lR of the {files} files (on B, kernel caches dropped{runs})", "files/s"),
        Row("find_ls", f"find -ls of them (on B, right after each{runs})", "files/s"),
        Row("small_delete", "delete them", "files/s"),
        Row("prop_p50", f"propagation: close() on A until B reads the new bytes, p50 of {p.edits}", "ms", False),
        Row("prop_p99", "… p99", "ms", False),
        Row("edit_upload", f"bytes uploaded for a 1 MiB edit in the middle of the {size} file", "MiB", False),
        Row("changes_big", f"changes call, 1 change, store of {p.store_files:,} files", "ms", False),
        Row("changes_small", "changes call, 1 change, store of 100 files", "ms", False),
        Row("sqlite_commit", f"SQLite autocommit inserts ({max(200, p.files // 20):,}, a commit each{runs})", "commits/s"),
        Row("small_fsync", f"append 4 KiB and fsync, the same number of times{runs}", "fsyncs/s"),
        Row("fsync_syncs", "… disk syncs made meanwhile, per fsync (strace of A's mount; local: the program)",
            "syncs", compared=False),
        Row("tar_x", f"tar xf of {tree} files of 1–16 KiB{in_parens}", "files/s"),
        Row("tar_x_server", _SERVER, "files/s"),
        Row("rsync_a", f"rsync -a of a tree of {tree} files of 1–16 KiB{in_parens}", "files/s"),
        Row("rsync_a_server", _SERVER, "files/s"),
        Row("git_clone", f"git clone (file://) of a repository of {p.git_files:,} files in 5 commits{in_parens}", "s", False),
        Row("git_clone_server", _SERVER, "s", False),
        Row("cp_photos", f"cp -a of a folder of photos of 1–8 MiB, about {size} in all{in_parens}", "MiB/s"),
        Row("cp_photos_server", _SERVER, "MiB/s"),
    ]


#: The label of a program's "until on the server" row, timed from the program's start.
_SERVER = "… until all of it is on the server (local: + syncfs)"

#: Rows of small-file work, each held to 0.6x the ceiling.
SMALL_ROWS = ("small_create", "small_stat", "small_read", "ls_lR", "find_ls", "small_delete",
              "sqlite_commit", "small_fsync", "tar_x", "rsync_a", "git_clone")

#: Rows timed by fsyncs: a target whose fsync syncs nothing wins them by promising less.
_FSYNC_ROWS = ("sqlite_commit", "small_fsync")

#: Programs whose time until on the server is held to 2x their own run time.
PROGRAM_ROWS = ("tar_x", "rsync_a", "git_clone", "cp_photos")


ROWS = rows(Params())


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _speedup(row: Row, ours: float | None, other: float | None) -> float | None:
    """How many times better WebSync is than *other* on *row* (>1: ahead)."""
    if ours is None or other is None or ours <= 0 or other <= 0:
        return None
    return ours / other if row.higher_is_better else other / ours


def render_table(p: Params, r: Results) -> str:
    others = [("local", "local"), ("ceiling", "ceiling"), ("rclone", "rclone"), ("rclone-defaults", "rclone defaults")]
    lines = [
        "| workload | unit | " + " | ".join(label for _key, label in TARGETS) + " | "
        + " | ".join(f"WebSync vs {label}" for _key, label in others) + " |",
        "|---|---|" + "---:|" * (len(TARGETS) + len(others)),
    ]
    for row in rows(p):
        values = r.values.get(row.key, {})
        if not values:
            continue
        ws = values.get("websync")
        cells = [fmt(values.get(key)) for key, _label in TARGETS]
        ratios = [_ratio(_speedup(row, ws, values.get(key)), ahead=key.startswith("rclone")) if row.compared else ""
                  for key, _ in others]
        lines.append(f"| {row.label} | {row.unit} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _ratio(x: float | None, ahead: bool = False) -> str:
    if x is None:
        return ""
    text = f"{x:.2f}×" if x < 10 else f"{x:,.0f}×"
    if ahead:
        text += " ahead" if x >= 1 else " behind"
    return text


@dataclass(frozen=True)
class Check:
    text: str
    met: bool | None  # None: not measured in this run
    detail: str


def check_targets(p: Params, r: Results) -> list[Check]:
    v = r.get
    checks: list[Check] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    warm = ratio(v("seq_read_warm", "websync"), v("seq_read_warm", "local"))
    checks.append(Check("warm sequential read ≥ 0.8× the local directory",
                        None if warm is None else warm >= 0.8, f"{_x(warm)} of local"))
    cold = ratio(v("seq_read_cold", "websync"), v("seq_read_http", "websync"))
    checks.append(Check("cold read ≥ 0.5× a plain HTTP client fetching the same bytes",
                        None if cold is None else cold >= 0.5, f"{_x(cold)} of plain HTTP"))
    write = ratio(v("seq_write", "websync"), v("seq_write", "local"))
    durable = ratio(v("seq_write_durable", "websync"), v("seq_write_durable", "local"))
    checks.append(Check("sequential write ≥ 0.5× local", None if write is None else write >= 0.5,
                        f"{_x(write)} of local until close(); {_x(durable)} until on the server vs local + fsync"))
    small_rows = ["small_create", "small_stat", "small_read", "ls_lR", "find_ls", "small_delete"]
    slow = []
    measured = False
    for key in small_rows:
        times = ratio(v(key, "local"), v(key, "websync"))  # rates, so local/ours = our time / local time
        if times is None:
            continue
        measured = True
        if times > 3:
            slow.append(f"{key} {times:.1f}×")
    factors = ", ".join(
        f"{key} {ratio(v(key, 'local'), v(key, 'websync')):.1f}×" for key in small_rows
        if ratio(v(key, "local"), v(key, "websync")) is not None
    )
    checks.append(Check("small files and metadata ≤ 3× the local directory's time",
                        None if not measured else not slow, f"time vs local: {factors}"))
    p50, p99 = v("prop_p50", "websync"), v("prop_p99", "websync")
    checks.append(Check("propagation p50 ≤ 300 ms and p99 ≤ 1 s",
                        None if p50 is None or p99 is None else p50 <= 300 and p99 <= 1000,
                        f"p50 {fmt(p50)} ms, p99 {fmt(p99)} ms"))
    blocks = r.extra.get("edit_blocks_websync")
    checks.append(Check("the 1 MiB edit uploads at most 2 blocks", None if blocks is None else blocks <= 2,
                        f"{fmt(blocks)} new blocks, {fmt(v('edit_upload', 'websync'))} MiB"))
    big, small = v("changes_big", "websync"), v("changes_small", "websync")
    changes = ratio(big, small)
    checks.append(Check(f"the {p.store_files:,}-file changes call costs ≤ 2× the 100-file one",
                        None if changes is None else changes <= 2,
                        f"{fmt(big)} ms vs {fmt(small)} ms ({_x(changes)})"))
    checks += _program_checks(p, r)
    for key, label in RCLONES:
        behind = []
        compared = False
        unsynced = v("fsync_syncs", key) == 0
        for row in rows(p):
            x = _speedup(row, v(row.key, "websync"), v(row.key, key))
            if x is None or not row.compared:
                continue
            compared = True
            if x < 1:
                why = ", whose fsync synced nothing" if unsynced and row.key in _FSYNC_ROWS else ""
                behind.append(f"{row.key} ({x:.2f}×{why})")
        checks.append(Check(f"on every row, ahead of {label}", None if not compared else not behind,
                            "behind on: " + ", ".join(behind) if behind else "ahead on every row measured on both"))
    return checks


def _program_checks(p: Params, r: Results) -> list[Check]:
    """The small-file targets: against the ceiling, fsync against a plain folder, the server against the program."""
    by_key = {row.key: row for row in rows(p)}
    checks = []

    def measured(pairs: dict[str, tuple[float | None, float | None]]) -> dict[str, float]:
        """WebSync's lead (`_speedup`) on each row where both figures of its pair were measured."""
        found = {key: _speedup(by_key[key], ours, other) for key, (ours, other) in pairs.items()}
        return {key: x for key, x in found.items() if x is not None}

    shares = measured({key: (r.get(key, "websync"), r.get(key, "ceiling")) for key in SMALL_ROWS})
    checks.append(Check("every small-file row ≥ 0.6× the ceiling", None if not shares else min(shares.values()) >= 0.6,
                        "of the ceiling: " + ", ".join(f"{key} {x:.2f}×" for key, x in shares.items())))
    fsyncs = measured({key: (r.get(key, "local"), r.get(key, "websync")) for key in ("small_fsync", "sqlite_commit")})
    checks.append(Check("fsync of a small file (and a SQLite commit) ≤ 3× a plain folder's time",
                        None if not fsyncs else max(fsyncs.values()) <= 3,
                        "time vs local: " + ", ".join(f"{key} {x:.1f}×" for key, x in fsyncs.items())))
    waits = measured({key: (r.get(key, "websync"), r.get(f"{key}_server", "websync")) for key in PROGRAM_ROWS})
    checks.append(Check("until everything is on the server ≤ 2× until the program finished",
                        None if not waits else max(waits.values()) <= 2,
                        "WebSync, server time / program time: " + ", ".join(f"{key} {x:.2f}×"
                                                                              for key, x in waits.items())))
    return checks


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def render_checks(checks: list[Check]) -> str:
    mark = {True: "**met**", False: "**not met**", None: "not measured"}
    return "\n".join(f"- {mark[c.met]}: {c.text} — {c.detail}" for c in checks)


# -- the document ----------------------------------------------------------------
def machine_info() -> dict[str, str]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    disk = ""
    try:
        disk = subprocess.run(["df", "-h", "--output=source,fstype,size", "/var/tmp"], capture_output=True,
                              text=True, check=False).stdout.splitlines()[-1]
        disk = " ".join(disk.split())
    except (OSError, IndexError):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "disk": disk,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


def render_section(mode: str, command: str, date: str, info: dict[str, str], p: Params, r: Results,
                   elapsed: float, rclone: str) -> str:
    parts = [
        f"### {mode} run, {date}",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min)",
        "",
        (
            f"Machine: {info['nproc']} cores ({info['cpu']}), {info['memory']} memory, Linux {info['kernel']}, "
            f"Python {info['python']}, disk `{info['disk']}`; WebSync at commit {info['commit']}; {rclone}; "
            f"page cache dropped for cold rows: {'yes' if r.dropped_caches else 'no'}."
            + (f" Load average (1 min, other users' work on the same cores): {info['load']}." if "load" in info else "")
        ),
        "",
        render_table(p, r),
        "",
        "Targets:",
        "",
        render_checks(check_targets(p, r)),
    ]
    extra = []
    for key, value in sorted(r.extra.items()):
        extra.append(f"{key} = {fmt(value)}")
    if extra:
        parts += ["", "Details: " + "; ".join(extra) + "."]
    if r.notes or r.errors:
        parts += ["", "Run notes:", ""]
        parts += [f"- {n}" for n in r.notes]
        parts += [f"- error in {k}: {v}" for k, v in r.errors.items()]
    return "\n".join(parts) + "\n"


DOC_HEAD = """# Benchmarks

WebSync side by side with a local directory on the same disk, an in-memory
FUSE file system doing no work (the ceiling), and rclone mount
(`--vfs-cache-mode full` over `rclone serve webdav`) twice, tuned to sync
quickly and at its defaults, on one machine in one run. The sections between the `bench:` markers are written by the
benchmark itself; everything else here is by hand.

"""


def write_doc(path: Path, mode: str, section: str) -> None:
    begin, end = f"<!-- bench:{mode}:begin -->", f"<!-- bench:{mode}:end -->"
    text = path.read_text() if path.exists() else DOC_HEAD
    block = f"{begin}\n{section}{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
