"""The workloads of issue 7, each run on one target and reported as numbers per row.

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
import sqlite3
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
from .targets import MiB, Target, WebSyncTarget, drop_caches

__all__ = ["PHASES", "Params", "Results"]

BIG_FILES = ("seq.bin", "rand.bin", "ttfb.bin")
SMALL_DIR = "small"
PROP_FILE = "prop.txt"
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

    _drop(p, r)
    r.set("ls_lR", t.key, p.files / _timed_run(["ls", "-lR", str(t.b / SMALL_DIR)]))
    r.set("find_ls", t.key, p.files / _timed_run(["find", str(t.b / SMALL_DIR), "-ls"]))

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
    deadline = time.monotonic() + 120
    while True:
        try:
            if b.read_bytes() == b"start\n":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the propagation file did not reach B within 120 s")
        time.sleep(0.02)
    samples: list[float] = []
    missed = 0
    for i in range(p.edits):
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

#: In order: later phases use what earlier ones left (the big files).
def _tarball(path: Path, p: Params, entries: int) -> None:
    """A tar of *entries* small files (1-16 KiB) in a few folders, as a source tree would be."""
    rng = random.Random(p.seed)
    folders = max(1, entries // 50)
    with tarfile.open(path, "w") as tar:
        for i in range(entries):
            data = rng.randbytes(rng.randint(1024, 16 * 1024))
            info = tarfile.TarInfo(f"tree/d{i % folders:03d}/f{i:05d}.c")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def phase_programs(t: Target, p: Params, r: Results) -> None:
    """Small-file work as programs do it: SQLite autocommit inserts, a write and fsync, `tar xf`."""
    count = max(20, p.files // 20)
    work = t.a / "programs"
    work.mkdir()
    db = sqlite3.connect(work / "bench.db", isolation_level=None)  # autocommit: a commit per insert
    db.execute("CREATE TABLE t (x TEXT)")
    start = time.perf_counter()
    for _ in range(count):
        db.execute("INSERT INTO t VALUES (?)", ("x" * 100,))
    r.set("sqlite_commit", t.key, count / (time.perf_counter() - start))
    db.close()

    payload = random.Random(p.seed).randbytes(4096)
    fd = os.open(work / "log.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, payload)
            os.fsync(fd)
        r.set("small_fsync", t.key, count / (time.perf_counter() - start))
    finally:
        os.close(fd)

    entries = max(20, p.files // 2)
    with tempfile.TemporaryDirectory(prefix="websync-bench-tar-") as tmp:
        tarball = Path(tmp) / "tree.tar"
        _tarball(tarball, p, entries)
        r.set("tar_x", t.key, entries / _timed_run(["tar", "xf", str(tarball), "-C", str(work)]))
    subprocess.run(["rm", "-rf", str(work)], check=True)


PHASES: dict[str, Phase] = {
    "big": phase_big_files,
    "reads": phase_reads,
    "small": phase_small_files,
    "propagation": phase_propagation,
    "edit": phase_edit,
    "changes": phase_changes,
    "programs": phase_programs,
}
