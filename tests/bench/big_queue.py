"""A write-back queue of many changes: what each look the mount takes at it costs.

A machine offline for a day, or one that unpacked a big archive while the
server was away, holds tens of thousands of queued changes.  The mount keeps
working on its event loop meanwhile: the status is written every 2 s, the
uploader takes a batch of 1,000 at a time, and the follower compares other
machines' changes with what waits here.  Each of those is timed here on a
real state database of N queued creates (100 files a folder).  Printed: the
median milliseconds of each call.  Run::

    .venv/bin/python -m tests.bench.big_queue --items 100000
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from websync_fs.statedb import StateDb
from websync_fs.writeback import WriteBackQueue
from websync_server.protocol import BlockHash, Create, NodeId, new_node_id


def fill(queue: WriteBackQueue, items: int) -> None:
    """Queue *items* creates of small files, 100 to a folder, in one transaction."""
    folder = NodeId("root")
    with queue.state.tx():
        for i in range(items):
            if i % 100 == 0:
                folder = new_node_id()
            block = BlockHash(f"{i:064x}")
            queue.enqueue(Create(id=new_node_id(), parent=folder, name=f"file-{i}.txt", mode=0o644,
                                 mtime_ns=time.time_ns(), size=1 + i % 16384, blocks=(block,)), quiet=0.0)


def timed(call: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of *repeat* calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(workdir: Path, items: int, repeat: int) -> dict[str, float]:
    db = StateDb(workdir / "state.db")
    try:
        queue = WriteBackQueue(db)
        fill(queue, items)

        def fresh_sum() -> object:
            queue._bytes = (0, -math.inf)  # never the sum of an earlier call
            return queue.pending_bytes()

        def take_and_send() -> object:
            batch = queue.take(max_ops=1000)
            queue.done(batch)
            return batch

        calls: dict[str, Callable[[], object]] = {
            "len (the status)": lambda: len(queue),
            "pending_bytes (the status, summed afresh)": fresh_sum,
            "first_error (the status)": queue.first_error,
            "inflight (the uploader, every turn)": queue.inflight,
            "has_ready (the uploader)": queue.has_ready,
            "next_ready_at (the uploader)": queue.next_ready_at,
            "pending_nodes (the follower, a page of other machines' changes)": queue.pending_nodes,
            "pending_entries (the follower)": queue.pending_entries,
            "pending_parents (the follower)": queue.pending_parents,
            "moving_nodes (the follower)": queue.moving_nodes,
            "take and done of a batch of 1,000 (the uploader)": take_and_send,
        }
        return {name: timed(call, repeat) for name, call in calls.items()}
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.big_queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="queued changes (default 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="calls of each, the median is printed (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="websync-bench-queue-") as workdir:
        results = run(Path(workdir), args.items, args.repeat)
    print(f"| call, with {args.items:,} changes queued | ms (median of {args.repeat}) |")
    print("|---|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
