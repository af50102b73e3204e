"""The server's life cycle measured: a collection of a big store, and backup and restore against cp -a.

A store is filled through the API (not by hand in the database): *blocks*
distinct small blocks, each the content of one file, committed 1,000 files a
batch; then half the files are deleted.  Measured:

* ``websync-server gc --trash-days 0 --version-days 0 --grace-hours 0`` on it
  while the server runs: seconds, peak memory of the collecting process, blocks
  freed; and the p50/p99 of a small commit and of a block read made by a second
  client during the collection, against the same calls with no collection;
* ``websync-server backup`` of the data folder against ``cp -a`` of it, and
  ``websync-server restore`` of the backup.

Run::

    .venv/bin/python -m tests.bench.lifecycle --blocks 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.servers import ServerProcess, add_user, login, server_command
from websync_server.protocol import ROOT_ID, new_node_id

PASSWORD = "lifecycle-password-1"


def _fill(client: httpx.Client, store: str, blocks: int) -> list[tuple[str, str]]:
    """*blocks* files of one distinct 1 KiB block each, in folders of 1,000; their (node, name, parent) kept."""
    now = time.time_ns()
    made: list[tuple[str, str]] = []
    for start in range(0, blocks, 1000):
        folder = new_node_id()
        ops: list[dict[str, Any]] = [{"op": "mkdir", "id": folder, "parent": ROOT_ID, "name": f"d{start // 1000:05d}",
                                      "mode": 0o755, "mtime_ns": now}]
        frames = []
        for i in range(start, min(start + 1000, blocks)):
            data = i.to_bytes(8, "big") + os.urandom(1016)
            h = hashlib.sha256(data).hexdigest()
            frames.append(h.encode() + len(data).to_bytes(4, "big") + data)
            node = new_node_id()
            ops.append({"op": "create", "id": node, "parent": folder, "name": f"f{i:07d}", "mode": 0o644,
                        "mtime_ns": now, "size": len(data), "blocks": [h]})
            made.append((node, folder))
        client.post("/v1/blocks", content=b"".join(frames),
                    headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        for chunk in range(0, len(ops), 1000):
            _commit(client, store, ops[chunk:chunk + 1000])
    return made


def _commit(client: httpx.Client, store: str, ops: list[dict[str, Any]]) -> None:
    client.post(f"/v1/stores/{store}/commit", json={"batch": uuid.uuid4().hex, "ops": ops}).raise_for_status()


def _delete_half(client: httpx.Client, store: str, made: list[tuple[str, str]]) -> None:
    ops = [{"op": "delete", "id": node, "parent": folder, "name": f"f{i:07d}"}
           for i, (node, folder) in enumerate(made) if i % 2 == 0]
    for chunk in range(0, len(ops), 1000):
        _commit(client, store, ops[chunk:chunk + 1000])


def _probe(url: str, token: str, store: str, block: str, seconds: float) -> tuple[list[float], list[float]]:
    """Small commits and block reads, one after the other, for *seconds*: their latencies in ms."""
    commits: list[float] = []
    reads: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            _commit(client, store, [{"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID,
                                     "name": uuid.uuid4().hex, "mode": 0o755, "mtime_ns": time.time_ns()}])
            commits.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            client.get(f"/v1/blocks/{block}").raise_for_status()
            reads.append((time.perf_counter() - t0) * 1000)
    return commits, reads


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    """Run *cmd*: (seconds, peak memory of the children in MiB, stdout)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return time.perf_counter() - start, peak, done.stdout


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(blocks: int, workdir: Path, probe_s: float) -> list[str]:
    data = workdir / "data"
    server = ServerProcess.start(data)
    rows = []
    try:
        store = add_user(server.data_dir, "keeper", PASSWORD)
        token = login(server.url, "keeper", PASSWORD)["token"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:
            t0 = time.perf_counter()
            made = _fill(c, store, blocks)
            fill_s = time.perf_counter() - t0
            _delete_half(c, store, made)
            some_block = c.get(f"/v1/stores/{store}/nodes/{made[1][0]}").json()["node"]["blocks"][0]
        quiet = _probe(server.url, token, store, some_block, probe_s)
        during: tuple[list[float], list[float]] = ([], [])
        gc_cmd = server_command("gc", "--data", str(data), "--trash-days", "0", "--version-days", "0",
                                "--grace-hours", "0", "--json")
        result: dict[str, Any] = {}

        def collect() -> None:
            seconds, peak, out = _timed(gc_cmd)
            result.update(seconds=seconds, peak=peak, report=json.loads(out))

        thread = threading.Thread(target=collect)
        thread.start()
        while thread.is_alive():
            c_ms, r_ms = _probe(server.url, token, store, some_block, 1.0)
            during[0].extend(c_ms)
            during[1].extend(r_ms)
        thread.join()
        rows.append(f"| store filled through the API ({blocks:,} blocks, 1 KiB each) | {fill_s:.1f} s |")
        rows.append(f"| collection after deleting half (freed: {json.dumps(result['report'])[:120]}...) "
                    f"| {result['seconds']:.1f} s, peak {result['peak']} MiB |")
        for name, (q, d) in {"commit": (quiet[0], during[0]), "block read": (quiet[1], during[1])}.items():
            rows.append(f"| {name} p50 / p99 without a collection | {_p(q, 50):.1f} / {_p(q, 99):.1f} ms |")
            rows.append(f"| {name} p50 / p99 during the collection | {_p(d, 50):.1f} / {_p(d, 99):.1f} ms |")
        size = _size(data) / (1 << 20)
        backup_s, _, _ = _timed(server_command("backup", "--data", str(data), str(workdir / "backup")))
        cp_s, _, _ = _timed(["cp", "-a", str(data), str(workdir / "copy")])
        restore_s, _, _ = _timed(server_command("restore", "--data", str(workdir / "restored"),
                                                str(workdir / "backup")))
        rows.append(f"| backup of the data folder ({size:.0f} MiB), server running | {backup_s:.1f} s "
                    f"({size / backup_s:.0f} MiB/s) |")
        rows.append(f"| cp -a of the same folder | {cp_s:.1f} s ({size / cp_s:.0f} MiB/s) |")
        rows.append(f"| restore of the backup into a new folder | {restore_s:.1f} s ({size / restore_s:.0f} MiB/s) |")
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.lifecycle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="websync-lifecycle-", dir="/var/tmp"))
    try:
        rows = run(args.blocks, workdir, args.probe_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| measure | result |\n|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
