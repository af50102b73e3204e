"""Many small blocks in one upload (``POST /v1/blocks``): how long the server takes to store them durably.

A real server on 127.0.0.1 and a fresh data directory; each request carries
N blocks of random bytes, so every block is new.  Printed: the median time of
a request and the blocks a second it makes.  Run::

    .venv/bin/python -m tests.bench.block_batches --blocks 1000 --size 1000 --requests 8
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import ServerProcess, add_user, login

PASSWORD = "blocks-bench-password-1"


def frames(blocks: list[bytes]) -> bytes:
    return b"".join(hashlib.sha256(b).hexdigest().encode() + len(b).to_bytes(4, "big") + b for b in blocks)


def run(workdir: Path, blocks: int, size: int, requests: int) -> list[float]:
    """Seconds of each request of *blocks* new blocks of *size* bytes."""
    with ServerProcess.start(workdir / "data") as server:
        add_user(server.data_dir, "bench", PASSWORD)
        token = login(server.url, "bench", PASSWORD)["token"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
            times = []
            for _ in range(requests):
                body = frames([os.urandom(size) for _ in range(blocks)])
                start = time.perf_counter()
                answer = http.post("/v1/blocks", content=body)
                times.append(time.perf_counter() - start)
                answer.raise_for_status()
            return times


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.block_batches", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, default in (("--blocks", 1000), ("--size", 1000), ("--requests", 8)):
        parser.add_argument(option, type=int, default=default)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="websync-blocks-") as tmp:
        times = run(Path(tmp), args.blocks, args.size, args.requests)
    median = statistics.median(times)
    print(f"{args.blocks} blocks of {args.size} bytes a request, {args.requests} requests: "
          f"median {median * 1000:.0f} ms, {args.blocks / median:,.0f} blocks/s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
