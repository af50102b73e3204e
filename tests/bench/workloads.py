"""The benchmark's workloads, each run on one target and reported as numbers per row.

A phase is a function ``phase(target, params, results)`` that records its rows
with `Results.set`.  Phases depend on earlier ones (reads read what the write
phase wrote), so the harness runs them in `PHASES` order; on a target that
lacks a second machine the rows that need one are left out.

Data: every MiB written is a random buffer stamped with a per-file salt and its
index, so no two 4 MiB blocks are alike anywhere in a run (WebSync's
content-addressed cache and deduplication must not turn a "cold" read or an
upload into a no-op) and generating it costs no time inside the timings.
"""

from __future__ import annotations

import math
import os
import io
import random
import shutil
import sqlite3
import stat
import statistics
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .server_api import changes_call_cost, fetch_blocks
from .syncs import count_syncs
from .targets import MiB, Target, WebSyncTarget, drop_caches

__all__ = ["PHASES", "Params", "Results"]

BIG_FILES = ("seq.bin", "rand.bin", "ttfb.bin")
SMALL_DIR = "small"
PROP_FILE = "prop.txt"
PROP_START_TIMEOUT = 60.0  # for a new file to reach B at all
PROP_GIVE_UP = 3  # edits that all missed before the rest are counted as missed without waiting
SERVER_WAIT_BASE, SERVER_WAIT_FACTOR = 60.0, 10.0  # a program's files must be on the server within 60 s + 10x its run
SYNC_COUNT = 100  # fsyncs whose disk syncs are counted (under strace: not timed)
EDIT_OFFSET = 12_345  # past the middle, inside one 4 MiB block: a realistic unaligned edit


@dataclass
class Params:
    size: int = 1024 * MiB  # each big file
    files: int = 10_000
    folders: int = 100
    edits: int = 200
    store_files: int = 200_000
    rand_ops: int = 1_000
    warm_repeat: int = 5
    changes_repeat: int = 30
    drop_caches: bool = True
    seed: int = 7
    edit_timeout: float = 30.0
    git_files: int = 300  # files in the repository that `git clone` copies
    #: Runs of each program row, each on fresh data; the row is their median.  One run of
    #: a few hundred files takes under 2 s, and the same code moved 15-20 % between runs.
    program_runs: int = 3


@dataclass
class Results:
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    dropped_caches: bool | None = None

    def set(self, row: str, target: str, value: float) -> None:
        self.values.setdefault(row, {})[target] = value

    def get(self, row: str, target: str) -> float | None:
        return self.values.get(row, {}).get(target)

    def note(self, text: str) -> None:
        print(f"bench:   note: {text}", flush=True)
        self.notes.append(text)


def _drop(params: Params, results: Results) -> None:
    done = drop_caches(params.drop_caches)
    if params.drop_caches and not done and results.dropped_caches is None:
        results.note("could not drop the kernel caches (needs root): cold rows may be served from the page cache")
    if results.dropped_caches is None or not done:
        results.dropped_caches = done


# -- data --------------------------------------------------------------------
class Chunks:
    """Distinct 1 MiB chunks: one random buffer, stamped with (salt, index)."""

    def __init__(self, seed: int) -> None:
        self._buf = bytearray(random.Random(seed).randbytes(MiB))
        self._salt = seed

    def chunk(self, index: int) -> bytearray:
        self._buf[:16] = struct.pack("<QQ", self._salt, index)
        return self._buf


def write_big(path: Path, size: int, seed: int) -> float:
    """Write *size* bytes sequentially in 1 MiB writes; seconds until close() returned."""
    chunks = Chunks(seed)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for index in range(size // MiB):
            os.write(fd, chunks.chunk(index))
        rest = size % MiB
        if rest:
            os.write(fd, chunks.chunk(size // MiB)[:rest])
    finally:
        os.close(fd)
    return time.perf_counter() - start


def read_all(path: Path, size: int) -> float:
    """Read *path* start to end in 1 MiB reads; seconds."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [view])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"read {total} bytes of {path}, expected {size}")
    return elapsed


def random_reads(path: Path, offsets: list[int], repeat: int = 1) -> float:
    """pread 4 KiB at each offset (*repeat* times over); seconds."""
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for _ in range(repeat):
            for offset in offsets:
                if len(os.pread(fd, 4096, offset)) != 4096:
                    raise RuntimeError(f"short read at {offset} in {path}")
        return time.perf_counter() - start
    finally:
        os.close(fd)


def first_byte(path: Path, offset: int) -> float:
    """Seconds from open() to the first 4 KiB at *offset*."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, 4096, offset)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    if len(data) != 4096:
        raise RuntimeError(f"short read at {offset} in {path}")
    return elapsed


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- phases ------------------------------------------------------------------
def phase_big_files(t: Target, p: Params, r: Results) -> None:
    """Sequential write of the big files, each timed to close() and to the server.

    The rows are the median of the three files: on a shared machine one write
    of 1 GiB moved by a factor of two between runs.
    """
    closed, durable = [], []
    for index, name in enumerate(BIG_FILES):
        path = t.a / name
        since = t.version(name)
        start = time.perf_counter()
        closed.append(p.size / MiB / write_big(path, p.size, p.seed * 100 + index + 1))
        t.wait_uploaded(name, p.size, since)
        durable.append(p.size / MiB / (time.perf_counter() - start))
    r.set("seq_write", t.key, statistics.median(closed))
    r.set("seq_write_durable", t.key, statistics.median(durable))
    r.note(f"{t.key}: each file until close() / on the server (MiB/s): "
           + ", ".join(f"{c:.0f} / {d:.0f}" for c, d in zip(closed, durable)))
    for name in BIG_FILES:
        t.wait_visible(name, p.size)


def phase_reads(t: Target, p: Params, r: Results) -> None:
    """Cold and warm reads on the reading side of files it has never read."""
    # One cold first byte swings 10-220 ms with the virtual disk's latency: each row is
    # the median of one sample per big file, each after dropping every cache.
    middle = (p.size // 2 + 7 * 4096) // 4096 * 4096
    for row, offset in (("ttfb_cold", 0), ("ttfb_seek_cold", middle)):
        samples = []
        for name in BIG_FILES:
            _drop(p, r)
            samples.append(first_byte(t.b / name, offset) * 1000)
        r.set(row, t.key, statistics.median(samples))
        r.note(f"{t.key}: first byte at {offset:,} of each cold file (ms): "
               + ", ".join(f"{s:.1f}" for s in samples))

    _drop(p, r)
    mib = p.size / MiB
    r.set("seq_read_cold", t.key, mib / read_all(t.b / "seq.bin", p.size))
    r.set("seq_read_warm", t.key, mib / read_all(t.b / "seq.bin", p.size))
    if t.two_machines:
        _drop(p, r)
        r.set("seq_read_cache", t.key, mib / read_all(t.b / "seq.bin", p.size))
    if isinstance(t, WebSyncTarget):
        # The baseline of the cold-read target: the same blocks with a plain client.
        blocks = t.blocks_of("seq.bin")
        _drop(p, r)
        r.set("seq_read_http", t.key, mib / fetch_blocks(t.server.url, t.token, blocks))

    rng = random.Random(p.seed)
    pages = p.size // 4096
    offsets = [rng.randrange(pages) * 4096 for _ in range(p.rand_ops)]
    _drop(p, r)
    r.set("rand_read_cold", t.key, len(offsets) / random_reads(t.b / "rand.bin", offsets))
    r.set("rand_read_warm", t.key,
          len(offsets) * p.warm_repeat / random_reads(t.b / "rand.bin", offsets, p.warm_repeat))


def _small_paths(root: Path, p: Params) -> list[Path]:
    return [root / SMALL_DIR / f"d{i % p.folders:03d}" / f"f{i:05d}.dat" for i in range(p.files)]


def _count_listed(root: Path, p: Params) -> int:
    total = 0
    for d in range(p.folders):
        try:
            total += len(os.listdir(root / SMALL_DIR / f"d{d:03d}"))
        except OSError:
            pass
    return total


def _timed_run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - start


def phase_small_files(t: Target, p: Params, r: Results) -> None:
    """Create, (propagate), stat, read, list and delete many small files."""
    rng = random.Random(p.seed)
    payload = rng.randbytes(16 * 1024)
    sizes = [rng.randint(1024, 16 * 1024) for _ in range(p.files)]
    paths_a = _small_paths(t.a, p)

    start = time.perf_counter()
    (t.a / SMALL_DIR).mkdir()
    for d in range(p.folders):
        (t.a / SMALL_DIR / f"d{d:03d}").mkdir()
    for path, size in zip(paths_a, sizes):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload[:size])
        finally:
            os.close(fd)
    created = time.perf_counter() - start
    r.set("small_create", t.key, p.files / created)

    if t.two_machines:
        start = time.perf_counter()
        deadline = start + 1800
        while _count_listed(t.b, p) < p.files:
            if time.perf_counter() > deadline:
                raise TimeoutError("the small files did not all appear on B within 30 minutes")
            time.sleep(0.1)
        r.set("small_visible", t.key, time.perf_counter() - start)

    start = time.perf_counter()
    for path, size in zip(paths_a, sizes):
        if os.stat(path).st_size != size:
            raise RuntimeError(f"{path} has the wrong size")
    r.set("small_stat", t.key, p.files / (time.perf_counter() - start))

    start = time.perf_counter()
    for path, size in zip(paths_a, sizes):
        fd = os.open(path, os.O_RDONLY)
        try:
            if len(os.read(fd, 32 * 1024)) != size:
                raise RuntimeError(f"{path} read back short")
        finally:
            os.close(fd)
    r.set("small_read", t.key, p.files / (time.perf_counter() - start))

    # A round of 1,000 files takes some 40 ms, and one round moved by a quarter between runs.
    listed: dict[str, list[float]] = {"ls_lR": [], "find_ls": []}
    for _ in range(p.program_runs):
        _drop(p, r)
        listed["ls_lR"].append(p.files / _timed_run(["ls", "-lR", str(t.b / SMALL_DIR)]))
        listed["find_ls"].append(p.files / _timed_run(["find", str(t.b / SMALL_DIR), "-ls"]))
    for row, figures in listed.items():
        r.set(row, t.key, statistics.median(figures))
        if len(figures) > 1:
            r.note(f"{t.key}: {row}, each run: " + "; ".join(_figure(x) for x in figures))

    start = time.perf_counter()
    for path in paths_a:
        os.unlink(path)
    for d in range(p.folders):
        os.rmdir(t.a / SMALL_DIR / f"d{d:03d}")
    os.rmdir(t.a / SMALL_DIR)
    r.set("small_delete", t.key, p.files / (time.perf_counter() - start))


def phase_propagation(t: Target, p: Params, r: Results) -> None:
    """Edit a small file on A, time from close() until B reads the new bytes."""
    if not t.two_machines:
        return
    rng = random.Random(p.seed)
    a, b = t.a / PROP_FILE, t.b / PROP_FILE
    a.write_bytes(b"start\n")
    deadline = time.monotonic() + PROP_START_TIMEOUT
    while True:
        try:
            if b.read_bytes() == b"start\n":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            # rclone at its defaults keeps B's listing for 5 minutes: the file never shows up in time.
            r.note(f"{t.label}: a new file on A was not seen on B within {PROP_START_TIMEOUT:.0f} s; "
                   "propagation counted at that timeout")
            r.set("prop_p50", t.key, PROP_START_TIMEOUT * 1000)
            r.set("prop_p99", t.key, PROP_START_TIMEOUT * 1000)
            return
        time.sleep(0.02)
    samples: list[float] = []
    missed = 0
    for i in range(p.edits):
        if missed >= PROP_GIVE_UP and missed == len(samples):
            # Every edit so far missed: the rest would too, each costing the full timeout.
            samples += [p.edit_timeout] * (p.edits - i)
            missed += p.edits - i
            break
        # A new length every time, so no client can mistake it for the old version by size.
        data = f"edit {i:05d} {rng.random()}\n".encode() * (1 + i % 7)
        fd = os.open(a, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, data)
        start = time.perf_counter()
        os.close(fd)
        while True:
            try:
                if b.read_bytes() == data:
                    break
            except OSError:
                pass
            if time.perf_counter() - start > p.edit_timeout:
                missed += 1
                break
            time.sleep(0.005)
        samples.append(time.perf_counter() - start)
    if missed:
        r.note(f"{t.label}: {missed} of {p.edits} edits did not reach B within {p.edit_timeout:.0f} s "
               "(counted at the timeout)")
    r.set("prop_p50", t.key, percentile(samples, 50) * 1000)
    r.set("prop_p99", t.key, percentile(samples, 99) * 1000)
    r.extra[f"prop_mean_{t.key}"] = statistics.mean(samples) * 1000
    r.extra[f"prop_max_{t.key}"] = max(samples) * 1000


def phase_edit(t: Target, p: Params, r: Results) -> None:
    """Overwrite 1 MiB in the middle of the big file on A; count what goes up to the server."""
    before = t.uploaded()
    if before is None:
        return
    name = "seq.bin"
    since = t.version(name)
    fd = os.open(t.a / name, os.O_WRONLY)
    try:
        os.pwrite(fd, random.Random(p.seed + 99).randbytes(MiB), p.size // 2 + EDIT_OFFSET)
    finally:
        os.close(fd)
    t.wait_uploaded(name, p.size, since)
    after = t.uploaded()
    assert after is not None
    r.set("edit_upload", t.key, (after.bytes - before.bytes) / MiB)
    if after.blocks is not None and before.blocks is not None:
        r.extra[f"edit_blocks_{t.key}"] = after.blocks - before.blocks


def phase_changes(t: Target, p: Params, r: Results) -> None:
    """Time one changes call (1 change) on a big store and on a 100-file store, over HTTP."""
    if not isinstance(t, WebSyncTarget):
        return
    for row, files, user in (("changes_small", 100, "small-store"), ("changes_big", p.store_files, "big-store")):
        token, store = t.add_user(user)
        cost = changes_call_cost(t.server.url, token, store, files, repeat=p.changes_repeat)
        r.set(row, t.key, cost.median_ms)
        r.extra[f"{row}_build_s"] = cost.build_s
        r.extra[f"{row}_min_ms"] = min(cost.samples_ms)


Phase = Callable[[Target, Params, Results], None]


# -- programs ------------------------------------------------------------------
def _tarball(path: Path, entries: int, seed: int) -> None:
    """A tar of *entries* small files (1-16 KiB) in a few folders, as a source tree would be."""
    rng = random.Random(seed)
    folders = max(1, entries // 50)
    with tarfile.open(path, "w") as tar:
        for i in range(entries):
            data = rng.randbytes(rng.randint(1024, 16 * 1024))
            info = tarfile.TarInfo(f"tree/d{i % folders:03d}/f{i:05d}.c")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def _tree_sizes(root: Path) -> dict[str, int]:
    """Every regular file under *root*: its path relative to *root* and its size."""
    found = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                found[str(path.relative_to(root))] = st.st_size
    return found


def _on_server(t: Target, r: Results, row: str, rel: str, started: float, finished: float) -> float:
    """Seconds from *started* until every file under *rel* on A is on the target's server.

    The walk of A that lists the files is inside the time: it only makes the
    figure larger, and it runs after the program has finished, as a user's
    "is it all up yet?" would.  A target that never gets there (rclone has
    left files on its server under rsync's temporary names) is counted at the
    timeout, with a note.
    """
    timeout = SERVER_WAIT_BASE + SERVER_WAIT_FACTOR * finished
    try:
        t.wait_tree_uploaded(rel, _tree_sizes(t.a / rel), timeout=timeout)
    except TimeoutError as exc:
        r.note(f"{t.label}: {row}: not all on the server within {timeout:.0f} s ({exc}); counted at the timeout")
        return finished + timeout
    return time.perf_counter() - started


def _program(t: Target, r: Results, row: str, rel: str, argv: list[str], amount: float,
             tolerate: str = "") -> tuple[float, float | None]:
    """Run *argv* (it writes into A's *rel*): its figure (amount/s, or s when *amount* is 0) and, on a
    target with a server, the same until every file is there.

    A failure whose every message starts with *tolerate* is noted, not raised:
    the files are there, only something the target cannot keep is missing.
    """
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    finished = time.perf_counter() - started
    if done.returncode != 0:
        messages = done.stderr.decode(errors="replace").splitlines()
        if not tolerate or not messages or not all(m.startswith(tolerate) for m in messages):
            raise subprocess.CalledProcessError(done.returncode, argv, stderr=done.stderr)
        r.note(f"{t.label}: {row}: {argv[0]} exited {done.returncode} with {len(messages)} messages like "
               f"{messages[0]!r}; counted anyway")
    figure = amount / finished if amount else finished
    if not t.has_server:
        return figure, None
    durable = _on_server(t, r, row, rel, started, finished)
    return figure, amount / durable if amount else durable


def _runs(t: Target, p: Params, r: Results, row: str, one: Callable[[int], tuple[float, float | None]]) -> None:
    """Record *row* (and *row*_server) as the median of `Params.program_runs` runs of *one*(run number).

    Each run brings data of its own: a content-addressed store would find the
    bytes of an earlier run already there.  The runs' figures go into a note.
    """
    runs = [one(run) for run in range(p.program_runs)]
    r.set(row, t.key, statistics.median(figure for figure, _ in runs))
    server = [durable for _, durable in runs if durable is not None]
    if server:
        r.set(f"{row}_server", t.key, statistics.median(server))
    if len(runs) > 1:
        r.note(f"{t.key}: {row}, each run: " + "; ".join(
            _figure(figure) + ("" if durable is None else f" ({_figure(durable)} until on the server)")
            for figure, durable in runs))


def _figure(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _git_repository(repo: Path, files: int, seed: int) -> None:
    """A repository of *files* source-like files in a few folders, built up over five commits."""
    rng = random.Random(seed)
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "GIT_AUTHOR_DATE": "1700000000 +0000", "GIT_COMMITTER_DATE": "1700000000 +0000"}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, check=True)

    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], env=env, capture_output=True, check=True)
    folders = max(1, files // 30)
    paths = [repo / f"src{i % folders:02d}" / f"m{i:04d}.py" for i in range(files)]
    for commit in range(5):
        # The first commit adds most files; each later one adds a few and edits some.
        upto = files * (6 + commit) // 10 if commit < 4 else files
        for path in paths[:upto]:
            if not path.exists() or rng.random() < 0.1:
                path.parent.mkdir(exist_ok=True)
                lines = [f"value_{rng.getrandbits(64):x} = {rng.random()!r}\n" for _ in range(rng.randint(10, 200))]
                path.write_text("".join(lines))
        git("add", "-A")
        git("commit", "-q", "-m", f"commit {commit}")


def _photos(folder: Path, total: int, seed: int) -> int:
    """Photo-sized files (1-8 MiB of distinct data) adding up to about *total* bytes; their byte count."""
    rng = random.Random(seed)
    chunks = Chunks(seed)
    folder.mkdir(parents=True)
    written, index, number = 0, 0, 0
    while written < total or number < 3:
        size = rng.randint(MiB, 8 * MiB)
        with open(folder / f"IMG_{number:04d}.jpg", "wb") as f:
            for offset in range(0, size, MiB):
                f.write(chunks.chunk(index)[:min(MiB, size - offset)])
                index += 1
        written += size
        number += 1
    return written


def _sqlite_and_fsync(t: Target, p: Params, r: Results, work: Path) -> None:
    # At least 200: at 50 the local folder's whole row took ~10 ms and moved 2x between runs.
    count = max(200, p.files // 20)

    def commits(run: int) -> tuple[float, None]:
        db = sqlite3.connect(work / f"bench{run}.db", isolation_level=None)  # autocommit: a commit per insert
        try:
            db.execute("CREATE TABLE t (x TEXT)")
            start = time.perf_counter()
            for _ in range(count):
                db.execute("INSERT INTO t VALUES (?)", ("x" * 100,))
            return count / (time.perf_counter() - start), None
        finally:
            db.close()

    payload = random.Random(p.seed).randbytes(4096)

    def fsyncs(run: int) -> tuple[float, None]:
        fd = os.open(work / f"log{run}.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            start = time.perf_counter()
            for _ in range(count):
                os.write(fd, payload)
                os.fsync(fd)
            return count / (time.perf_counter() - start), None
        finally:
            os.close(fd)

    _runs(t, p, r, "sqlite_commit", commits)
    _runs(t, p, r, "small_fsync", fsyncs)
    # Counted apart from the timed loop: strace slows every call it sees.
    try:
        r.set("fsync_syncs", t.key, count_syncs(t.keeper_pid(), work / "synced.dat", SYNC_COUNT) / SYNC_COUNT)
    except (OSError, RuntimeError, TimeoutError) as exc:  # no strace, or it may not trace here
        r.note(f"{t.label}: disk syncs per fsync not counted: {exc}")


def _tar_and_rsync(t: Target, p: Params, r: Results, work: Path) -> None:
    entries = max(20, p.files // 2)
    with tempfile.TemporaryDirectory(prefix="websync-bench-tree-", dir="/var/tmp") as tmp:
        tarball = Path(tmp) / "tree.tar"

        def tar(run: int) -> tuple[float, float | None]:
            _tarball(tarball, entries, p.seed + 2 * run)
            rel = f"programs/tar/{run}"
            (t.a / rel).mkdir(parents=True)
            return _program(t, r, "tar_x", rel, ["tar", "xf", str(tarball), "-C", str(t.a / rel)], entries)

        def rsync(run: int) -> tuple[float, float | None]:
            # Another seed than tar's: the same bytes again would be deduplicated.
            _tarball(tarball, entries, p.seed + 2 * run + 1)
            source = Path(tmp) / f"source{run}"
            source.mkdir()
            subprocess.run(["tar", "xf", str(tarball), "-C", str(source)], check=True)
            rel = f"programs/rsync/{run}"
            (t.a / rel).parent.mkdir(exist_ok=True)
            return _program(t, r, "rsync_a", rel, ["rsync", "-a", f"{source}/tree/", str(t.a / rel)], entries)

        _runs(t, p, r, "tar_x", tar)
        _runs(t, p, r, "rsync_a", rsync)


def _git_clone(t: Target, p: Params, r: Results, work: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="websync-bench-git-", dir="/var/tmp") as tmp:
        def clone(run: int) -> tuple[float, float | None]:
            repo = Path(tmp) / f"repo{run}"
            _git_repository(repo, p.git_files, p.seed + run)
            rel = f"programs/clone{run}"
            return _program(t, r, "git_clone", rel, ["git", "clone", "-q", f"file://{repo}", str(t.a / rel)], 0)

        _runs(t, p, r, "git_clone", clone)


def _cp_photos(t: Target, p: Params, r: Results, work: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="websync-bench-photos-", dir="/var/tmp") as tmp:
        def copy(run: int) -> tuple[float, float | None]:
            source = Path(tmp) / f"photos{run}"
            size = _photos(source, p.size, p.seed * 1000 + 17 + run)
            rel = f"programs/photos{run}"
            # rclone mount answers chmod with EIO: cp -a copies every byte, then fails on the modes.
            argv = ["cp", "-a", str(source), str(t.a / rel)]
            figure = _program(t, r, "cp_photos", rel, argv, size / MiB, tolerate="cp: preserving permissions for")
            shutil.rmtree(source)
            return figure

        _runs(t, p, r, "cp_photos", copy)


def phase_programs(t: Target, p: Params, r: Results) -> None:
    """Small-file work as programs do it: SQLite, fsync, `tar xf`, `rsync -a`, `git clone`, `cp -a` of photos.

    Each program's rows are measured on their own: one that fails (rclone's
    cache has corrupted SQLite databases) is recorded and the others still run.
    """
    work = t.a / "programs"
    work.mkdir()
    for name, part in (("sqlite/fsync", _sqlite_and_fsync), ("tar/rsync", _tar_and_rsync),
                       ("git clone", _git_clone), ("cp photos", _cp_photos)):
        try:
            part(t, p, r, work)
        except Exception as exc:  # noqa: BLE001 - recorded; the other programs go on
            detail = exc.stderr.decode(errors="replace").strip()[-300:] if isinstance(
                exc, subprocess.CalledProcessError) and exc.stderr else ""
            r.errors[f"programs ({name}) on {t.label}"] = f"{type(exc).__name__}: {exc} {detail}".strip()
    done = subprocess.run(["rm", "-rf", str(work)], capture_output=True, check=False)
    if done.returncode != 0:
        r.note(f"{t.label}: rm -rf of the programs' folder failed: {done.stderr.decode(errors='replace')[-200:]}")


#: In order: later phases use what earlier ones left (the big files).
PHASES: dict[str, Phase] = {
    "big": phase_big_files,
    "reads": phase_reads,
    "small": phase_small_files,
    "propagation": phase_propagation,
    "edit": phase_edit,
    "changes": phase_changes,
    "programs": phase_programs,
}
