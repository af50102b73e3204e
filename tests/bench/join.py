"""A new machine joining a big store: how long until its tree is whole, and is it ever shown half.

The store is filled through the commit API (folders of 1,000 empty files); a
new machine then logs in and mounts.  Measured: the seconds until `websync
mount` returns, and the entries a walk of the mount finds right then (the
mount must never show a folder as complete before it is).  Run::

    .venv/bin/python -m tests.bench.join --files 20000 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.server_api import fill_store
from tests.clients import Machine
from tests.servers import ServerProcess, add_user

PASSWORD = "join-bench-password-1"


def _entries(root: Path) -> int:
    count = 0
    for _, dirs, files in os.walk(root):
        count += len(dirs) + len(files)
    return count


def join(files: int, workdir: Path) -> tuple[float, float, int, int]:
    """Fill a store with *files*, mount a new machine: (fill s, mount s, entries seen at once, expected)."""
    server = ServerProcess.start(workdir / "server")
    machine: Machine | None = None
    try:
        store = add_user(server.data_dir, "joiner", PASSWORD)
        maker = Machine("maker", workdir, server.url)
        maker.login("joiner", PASSWORD)
        token = (maker.home / "token").read_text().strip()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as client:
            start = time.perf_counter()
            folders = fill_store(client, store, files)
            filled = time.perf_counter() - start
        machine = Machine("new", workdir, server.url)
        machine.login("joiner", PASSWORD)
        start = time.perf_counter()
        machine.mount()
        mounted = time.perf_counter() - start
        return filled, mounted, _entries(machine.mnt), files + folders
    finally:
        if machine is not None:
            machine.cleanup()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.join", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[20_000, 200_000])
    args = parser.parse_args()
    print("| files | fill through the API, s | first mount returned, s | entries seen then | entries |")
    print("|---:|---:|---:|---:|---:|")
    for files in args.files:
        workdir = Path(tempfile.mkdtemp(prefix="websync-join-", dir="/var/tmp"))
        try:
            filled, mounted, seen, expected = join(files, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"| {files:,} | {filled:.1f} | {mounted:.1f} | {seen:,} | {expected:,} |", flush=True)


if __name__ == "__main__":
    main()
