"""``python -m tests.bench.scaled``: the scaled set-up (PostgreSQL + S3, 1/2/4 processes) beside the single box.

Everything runs on this machine, on loopback: a private PostgreSQL cluster
(tests/postgres.py), SeaweedFS's S3 gateway (tests/seaweed.py) and the server
processes.  The load is spread round-robin over the processes straight (no
load balancer, whose own CPU would blur the per-process figure).  Each row is
bounded in count:

- commits/s: `WRITERS` threads, each its own user, `COMMITS` one-op commits each;
- block reads MiB/s: `READERS` threads reading 4 MiB blocks `READS` times each;
- propagation: a commit through one process, a long poll held by another (the
  next one round-robin), `PROPAGATIONS` times; p50/p99 from commit sent to poll answered;
- long polls: `DEVICES` polls spread over the processes and `DEVICE_STORES`
  stores, one commit in each store; p50/p99 from that commit to each poll's answer.

It prints a Markdown table; docs/benchmarks.md has the one of the last run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.postgres import PostgresCluster
from tests.seaweed import SeaweedS3
from tests.servers import ServerProcess, add_user, login
from websync_server.protocol import BLOCK_SIZE, ROOT_ID, new_node_id

WRITERS, COMMITS = 8, 60
READERS, READS = 8, 12
PROPAGATIONS = 60
DEVICES, DEVICE_STORES = 1000, 20
MiB = 1024 * 1024


@dataclass
class Site:
    """Server processes on one storage, with logged-in users."""

    urls: list[str]
    tokens: dict[str, tuple[str, str]]  # user -> (token, store)

    def http(self, index: int, user: str) -> httpx.Client:
        token = self.tokens[user][0]
        return httpx.Client(base_url=self.urls[index % len(self.urls)],
                            headers={"Authorization": f"Bearer {token}"}, timeout=120)  # fmt: skip


@contextmanager
def site(root: Path, processes: int, storage: tuple[str, ...], users: list[str]) -> Iterator[Site]:
    for user in users:
        add_user(root / "p0", user, f"{user}-password", storage)
    started: list[ServerProcess] = []
    try:
        for i in range(processes):
            started.append(ServerProcess.start(root / f"p{i}", storage=storage, extra_args=("--gc-every", "0")))
        tokens = {}
        for user in users:
            answer = login(started[0].url, user, f"{user}-password")
            tokens[user] = (answer["token"], answer["store"])
        yield Site([s.url for s in started], tokens)
    finally:
        for server in started:
            server.stop()


def in_threads(count: int, work: Callable[[int], None]) -> float:
    """Run *work(i)* on *count* threads at once; the seconds until all are done."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def commits_per_second(s: Site) -> float:
    def write(i: int) -> None:
        user = f"u{i}"
        store = s.tokens[user][1]
        with s.http(i, user) as http:
            for n in range(COMMITS):
                op = {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": f"d{n}", "mode": 0o755,
                      "mtime_ns": 0}  # fmt: skip
                http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]}).raise_for_status()

    return WRITERS * COMMITS / in_threads(WRITERS, write)


def reads_mib_per_second(s: Site) -> float:
    hashes: dict[int, str] = {}
    for i in range(READERS):
        data = os.urandom(BLOCK_SIZE)
        hashes[i] = hashlib.sha256(data).hexdigest()
        with s.http(0, f"u{i}") as http:
            http.put(f"/v1/blocks/{hashes[i]}", content=data).raise_for_status()

    def read(i: int) -> None:
        with s.http(i, f"u{i}") as http:
            for _ in range(READS):
                assert len(http.get(f"/v1/blocks/{hashes[i]}").content) == BLOCK_SIZE

    return READERS * READS * BLOCK_SIZE / MiB / in_threads(READERS, read)


def propagation(s: Site) -> tuple[float, float]:
    user = "u0"
    store = s.tokens[user][1]
    writer, reader = s.http(0, user), s.http(1, user)
    cursor = reader.get(f"/v1/stores/{store}/changes", params={"cursor": 0}).json()["cursor"]
    delays: list[float] = []
    try:
        for n in range(PROPAGATIONS):
            answered: list[float] = []

            def poll() -> None:
                reader.get(f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": 30})
                answered.append(time.perf_counter())

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.05)  # the poll is waiting before the commit is sent
            sent = time.perf_counter()
            op = {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": f"p{n}", "mode": 0o755, "mtime_ns": 0}
            cursor = writer.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]}).json()["seq"]
            t.join()
            delays.append(answered[0] - sent)
    finally:
        writer.close()
        reader.close()
    return _percentile(delays, 50), _percentile(delays, 99)


def long_polls(s: Site) -> tuple[float, float]:
    async def run() -> list[float]:
        users = [f"u{i}" for i in range(DEVICE_STORES)]
        clients = [httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=DEVICES))
                   for url in s.urls]  # fmt: skip
        try:
            cursors = {}
            for user in users:
                token, store = s.tokens[user]
                answer = await clients[0].get(f"/v1/stores/{store}/changes", params={"cursor": 0},
                                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                cursors[user] = answer.json()["cursor"]
            sent: dict[str, float] = {}
            delays: list[float] = []

            async def device(n: int) -> None:
                user = users[n % len(users)]
                token, store = s.tokens[user]
                answer = await clients[n % len(clients)].get(
                    f"/v1/stores/{store}/changes", params={"cursor": cursors[user], "wait": 30},
                    headers={"Authorization": f"Bearer {token}"},
                )
                answer.raise_for_status()
                if user not in sent:
                    raise RuntimeError(f"poll {n} was answered before its store's commit")
                delays.append(time.perf_counter() - sent[user])

            tasks = [asyncio.create_task(device(n)) for n in range(DEVICES)]
            await asyncio.sleep(3.0)  # every poll is held before the commits
            for user in users:
                token, store = s.tokens[user]
                op = {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": "wake", "mode": 0o755,
                      "mtime_ns": 0}  # fmt: skip
                sent[user] = time.perf_counter()
                await clients[1 % len(clients)].post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(),
                                                     "ops": [op]}, headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            await asyncio.gather(*tasks)
            return delays
        finally:
            for c in clients:
                await c.aclose()

    delays = asyncio.run(run())
    return _percentile(delays, 50), _percentile(delays, 99)


def _percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def main() -> int:
    cores = os.cpu_count() or 1
    users = [f"u{i}" for i in range(max(WRITERS, READERS, DEVICE_STORES))]
    postgres, s3 = PostgresCluster.start(), SeaweedS3.start()
    os.environ.update(s3.environment)
    rows = []
    try:
        setups: list[tuple[str, int, Callable[[Path], tuple[str, ...]]]] = [
            ("single box (SQLite + folder)", 1, lambda root: ()),
            *((f"PostgreSQL + S3, {n} process{'es' if n > 1 else ''}", n,
               lambda root: ("--database", postgres.new_database(), "--blocks", s3.new_url())) for n in (1, 2, 4)),
        ]  # fmt: skip
        for name, processes, storage in setups:
            with tempfile.TemporaryDirectory(prefix="websync-scaled-") as tmp:
                with site(Path(tmp), processes, storage(Path(tmp)), users) as s:
                    commits = commits_per_second(s)
                    reads = reads_mib_per_second(s)
                    p50, p99 = propagation(s)
                    d50, d99 = long_polls(s)
                rows.append((name, processes, commits, reads, p50, p99, d50, d99))
                print(f"{name}: {commits:.0f} commits/s, {reads:.0f} MiB/s", file=sys.stderr)
    finally:
        s3.stop()
        postgres.stop()
    print(f"{cores} cores; {WRITERS}x{COMMITS} commits, {READERS}x{READS} block reads of 4 MiB, "
          f"{PROPAGATIONS} propagations, {DEVICES} long polls on {DEVICE_STORES} stores\n")  # fmt: skip
    print("| set-up | processes | commits/s | commits/s per core | block reads MiB/s | propagation p50 / p99 ms "
          "| 1,000 long polls woken p50 / p99 ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, processes, commits, reads, p50, p99, d50, d99 in rows:
        print(f"| {name} | {processes} | {commits:.0f} | {commits / cores:.0f} | {reads:.0f} "
              f"| {p50 * 1000:.1f} / {p99 * 1000:.1f} | {d50 * 1000:.0f} / {d99 * 1000:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
