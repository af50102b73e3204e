"""Sparse files on a mount: ``truncate -s`` to a big size, and a byte written far out.

A real server and two mounted machines (the bench's WebSync target).  Printed:
the seconds each call took on machine A, how long the file then took to be on
the server, and what machine B reads in its hole and at its end.  Run::

    .venv/bin/python -m tests.bench.sparse --gib 16
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from .targets import WebSyncTarget, remove_workdir


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.sparse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=int, default=16, help="the big size, in GiB (default 16)")
    args = parser.parse_args()
    size = args.gib << 30
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="websync-bench-sparse-"))
    target = WebSyncTarget(base / "websync")
    try:
        for label, cmd in [("truncate -s 1G", ["truncate", "-s", "1G", str(target.a / "one")]),
                           (f"truncate -s {args.gib}G", ["truncate", "-s", f"{args.gib}G", str(target.a / "big")])]:
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"{label}: {time.perf_counter() - start:.2f} s", flush=True)
        start = time.perf_counter()
        with open(target.a / "far", "wb") as far:
            far.seek(size)
            far.write(b"x")
        print(f"1 byte written at {args.gib} GiB, until close(): {time.perf_counter() - start:.2f} s", flush=True)
        start = time.perf_counter()
        target.wait_uploaded("far", size + 1, timeout=600)
        print(f"... then on the server after {time.perf_counter() - start:.2f} s", flush=True)
        target.wait_visible("far", size + 1)
        with open(target.b / "far", "rb") as far:
            far.seek(size // 2)
            middle = far.read(8)
            far.seek(size - 3)
            end = far.read()
        print(f"machine B reads {middle!r} in the middle and {end!r} at the end")
    finally:
        target.close()
        remove_workdir(base)


if __name__ == "__main__":
    main()
