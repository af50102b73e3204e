"""Whose CPU a burst of small files costs: each process, and each thread of the mount.

The small-file create row of the main bench (``O_CREAT|O_EXCL``, one write of
1-16 KiB, close; 100 folders), run here on the ceiling and on WebSync with its
server and machine B running, as in real use.  Printed per run: files/s, and
the CPU milliseconds per file of each process while the program ran -- machine
A's mount split into its main thread (the event loop every FUSE request waits
for) and its worker threads -- then what the server and B spend after it.
Run::

    .venv/bin/python -m tests.bench.cpu_split --files 1000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from .targets import CeilingTarget, Target, WebSyncTarget, remove_workdir

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(stat_path: str) -> float:
    """User + system seconds from a /proc ``stat`` file."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of *pid*: ``main``, and the others summed by name."""
    found: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = "main" if tid == str(pid) else text[text.index("(") + 1 : text.rindex(")")]
        found[name] = found.get(name, 0.0) + _cpu_s(f"/proc/{pid}/task/{tid}/stat")
    return found


def _sample(target: Target, keeper: int) -> dict[str, float]:
    seconds = {f"A {name}": s for name, s in _threads(keeper).items()}
    for name, pid in target.pids().items():
        if pid != keeper:
            seconds[name] = _cpu_s(f"/proc/{pid}/stat")
    seconds["program"] = sum(os.times()[:2])
    return seconds


def _burst(root: Path, files: int, seed: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(16384)
    for d in range(100):
        (root / f"d{d:03d}").mkdir(parents=True)
    for i in range(files):
        fd = os.open(root / f"d{i % 100:03d}" / f"f{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload[: rng.randint(1024, 16384)])
        finally:
            os.close(fd)


def _per_file_ms(before: dict[str, float], after: dict[str, float], files: int) -> str:
    spent = {k: (after[k] - before.get(k, 0.0)) * 1000 / files for k in after}
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.005)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cpu_split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=3.0, help="the wait after each burst (default 3)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="websync-bench-cpu-"))
    try:
        for kind in (CeilingTarget, WebSyncTarget):
            target = kind(base / kind.key)
            try:
                keeper = target.keeper_pid()
                assert keeper is not None
                for run in range(args.runs):
                    before = _sample(target, keeper)
                    start = time.perf_counter()
                    _burst(target.a / f"run{run}", args.files, seed=run)
                    took = time.perf_counter() - start
                    during = _sample(target, keeper)
                    time.sleep(args.settle_s)
                    after = _sample(target, keeper)
                    print(f"{target.key} run {run}: {args.files / took:,.0f} files/s; CPU ms a file while the "
                          f"program ran: {_per_file_ms(before, during, args.files)}; in the {args.settle_s:g} s "
                          f"after: {_per_file_ms(during, after, args.files)}", flush=True)
            finally:
                target.close()
    finally:
        remove_workdir(base)


if __name__ == "__main__":
    main()
