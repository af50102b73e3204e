"""A synced folder's first sync, restart and disk use, in one run on 127.0.0.1.

Machine B's folder starts with N small files (1,000 bytes, 100 folders) and
syncs them up; machine C then syncs an empty folder and gets them all; B is
stopped and started again over its unchanged folder.  Measured: the seconds
until each `websync sync` returns (it returns after its start-up scan and
first batch), until B's queue is empty, and the disk used by C's folder,
cache and state.  Run::

    .venv/bin/python -m tests.bench.folder --files 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers import ServerProcess, add_user

WEBSYNC = str(Path(sys.executable).parent / "websync")
PASSWORD = "bench-password"


def _cli(home: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([WEBSYNC, "--home", str(home), *args], input=stdin, capture_output=True, text=True,
                          check=True, timeout=3600)
    return done.stdout


def _disk(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _timed(home: Path, folder: Path) -> float:
    start = time.monotonic()
    _cli(home, "sync", str(folder))
    return round(time.monotonic() - start, 2)


def measure(files: int, root: Path, server: ServerProcess) -> dict[str, float | int]:
    add_user(server.data_dir, "bench", PASSWORD)
    for name in ("B", "C"):
        _cli(root / name, "login", server.url, "--user", "bench", "--device", name, "--password-stdin",
             stdin=PASSWORD + "\n")
    fb, fc = root / "fb", root / "fc"
    for i in range(files):
        sub = fb / f"d{i % 100}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(os.urandom(1000))
    result: dict[str, float | int] = {"files": files, "content_bytes": 1000 * files}
    start = time.monotonic()
    result["first_sync_returns_s"] = _timed(root / "B", fb)
    while json.loads(_cli(root / "B", "status", "--json"))["pending"]:
        time.sleep(0.2)
    result["all_uploaded_s"] = round(time.monotonic() - start, 2)
    result["other_folder_first_sync_s"] = _timed(root / "C", fc)
    result["other_folder_files"] = sum(1 for _ in fc.rglob("*.txt"))
    result["cache_disk_running"] = _disk(root / "C" / "cache")
    _cli(root / "B", "sync", "--stop", str(fb))
    result["restart_unchanged_s"] = _timed(root / "B", fb)
    for home, folder in ((root / "B", fb), (root / "C", fc)):
        _cli(home, "sync", "--stop", str(folder))
    result["folder_disk"] = _disk(fc)
    result["cache_disk_stopped"] = _disk(root / "C" / "cache")
    result["state_disk"] = _disk(root / "C" / "state")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="websync-folder-bench-"))
    server = ServerProcess.start(root / "data")
    try:
        print(json.dumps(measure(args.files, root, server), indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
