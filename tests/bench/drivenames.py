"""``python -m tests.bench.drivenames``: what the drive's name mapping costs a lookup in a big folder.

A WinFsp path goes through `DriveNames.stored` once per folder on the way.
This times one call in folders of 100, 1,000 and 10,000 names made in a real
engine's replica (folders, which need no open file; one name in a hundred
has a ``:``): with the folder's map kept (its names unchanged), made anew,
and in a folder holding a case pair, beside a bare `Vfs.lookup` of the name;
then a new name made before each call (a file copied in: the map is brought
up to date by what came), beside the `mkdir` alone.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.client.engine import EngineMachine, Server
from websync_fs.replica import ROOT_INO
from websync_fs.winfsp.aliases import DriveNames


def _per_call(fn: Callable[[], object], at_least: float = 0.3) -> float:
    """Seconds per call of *fn* (after one call not counted), over enough calls to take *at_least* seconds."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < at_least:
        fn()
        calls += 1
    return elapsed / calls


def _name(i: int) -> str:
    return f"file {i:05d}: notes.txt" if i % 100 == 0 else f"file {i:05d} notes.txt"


def main() -> None:
    print("| names in the folder | Vfs.lookup | stored, map kept | stored, map made anew | stored, with a case pair "
          "| mkdir | mkdir, then stored (the map brought up to date) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count in (100, 1_000, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp) / "server")
            machine = EngineMachine("A", Path(tmp) / "a", server)
            try:
                vfs = machine.vfs
                plain = vfs.mkdir(ROOT_INO, "plain", 0o755).ino
                paired = vfs.mkdir(ROOT_INO, "paired", 0o755).ino
                for folder in (plain, paired):
                    for i in range(count):
                        # One name in a hundred is one Windows refuses.
                        vfs.mkdir(folder, _name(i), 0o755)  # a name is a name: no open file
                vfs.mkdir(paired, "README.md", 0o755)
                vfs.mkdir(paired, "Readme.md", 0o755)
                names = DriveNames(vfs)
                asked = _name(count // 2).replace(":", "：")
                lookup = _per_call(lambda: vfs.lookup(plain, _name(count // 2)))
                kept = _per_call(lambda: names.stored(plain, asked))

                def rebuilt() -> None:
                    names._maps.clear()
                    names.stored(plain, asked)

                fresh = _per_call(rebuilt)
                pair = _per_call(lambda: names.stored(paired, asked))
                made = iter(range(10**9))
                alone = _per_call(lambda: vfs.mkdir(plain, f"alone {next(made)}", 0o755))
                more = _per_call(lambda: (vfs.mkdir(plain, f"more {next(made)}", 0o755), names.stored(plain, asked)))
                print(f"| {count:,} | {lookup * 1e6:.0f} µs | {kept * 1e3:.2f} ms | {fresh * 1e3:.2f} ms "
                      f"| {pair * 1e3:.2f} ms | {alone * 1e3:.2f} ms | {more * 1e3:.2f} ms |")
            finally:
                machine.close()
                server.close()


if __name__ == "__main__":
    main()
