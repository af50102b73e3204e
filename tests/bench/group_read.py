"""``python -m tests.bench.group_read``: reading a group of small blocks for upload, per block or per group.

The uploader sends small files' blocks in groups, one request each; it reads
them from the block cache in a worker thread.  This times both ways in one
process, alternating, on one cache of 1–16 KiB blocks: the wall time of a
group, and the event loop's own CPU time for it (the loop is the one that
answers FUSE requests, so its time is what the mount's writers wait for).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from cache import BlockCache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.group_read", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=60, help="blocks in a group (default 60)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two ways (default 5)")
    parser.add_argument("--repeat", type=int, default=50, help="groups read per way and round (default 50)")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="websync-bench-groupread-", dir="/var/tmp") as tmp:
        cache = BlockCache(tmp, 1 << 30)
        hashes = []
        for _ in range(args.blocks):
            data = rng.randbytes(rng.randint(1024, 16 * 1024))
            h = hashlib.sha256(data).hexdigest()
            cache.put(h, data)
            hashes.append(h)

        async def per_block() -> None:
            for h in hashes:
                await trio.to_thread.run_sync(cache.get, h)

        async def per_group() -> None:
            await trio.to_thread.run_sync(lambda: [cache.get(h) for h in hashes])

        ways: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("a thread trip per block", per_block), ("one trip per group", per_group))

        async def run() -> None:
            for rnd in range(args.rounds):
                for name, way in ways:
                    start, cpu = time.perf_counter(), time.thread_time()
                    for _ in range(args.repeat):
                        await way()
                    wall = (time.perf_counter() - start) / args.repeat * 1000
                    loop = (time.thread_time() - cpu) / args.repeat * 1000
                    print(f"round {rnd}, {name}: {wall:.2f} ms a group of {len(hashes)}, event loop CPU "
                          f"{loop:.2f} ms (load {os.getloadavg()[0]:.1f})", flush=True)

        trio.run(run)


if __name__ == "__main__":
    main()
