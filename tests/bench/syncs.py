"""How many disk syncs a file system makes for a program's fsync, counted with strace.

A fast fsync is only worth comparing with another if both make the bytes
durable.  This runs a small program that appends 4 KiB and fsyncs, again and
again, while `strace -c` counts the fsync-family calls of the process that
keeps the file: the mount's own process for a FUSE file system, the program
itself for a local disk (where its fsync is the sync).  The count takes in
what the mount syncs meanwhile for other reasons too (its state database's
log), so it is at least, not exactly, the syncs the fsyncs made.  Zero means
the file system answered every fsync without syncing anything: its bytes
would not survive a power loss.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["SYNC_CALLS", "count_syncs", "parse_summary"]

#: The calls that push a file's bytes (or a whole file system) to the disk.
SYNC_CALLS = ("fsync", "fdatasync", "syncfs", "sync", "sync_file_range", "msync")

_LOOP = """
import os, sys
path, count = sys.argv[1], int(sys.argv[2])
payload = os.urandom(4096)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
print("ready", flush=True)
sys.stdin.readline()  # the tracer is attached
for _ in range(count):
    os.write(fd, payload)
    os.fsync(fd)
os.close(fd)
"""


def parse_summary(text: str) -> int:
    """The number of sync calls in a `strace -c` summary (its table: ... calls [errors] syscall)."""
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in SYNC_CALLS and parts[3].isdigit():
            total += int(parts[3])
    return total


def _wait_line(stream: object, what: str, timeout: float) -> str:
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{what} said nothing within {timeout} s")
    return stream.readline().decode(errors="replace")  # type: ignore[attr-defined]


def count_syncs(keeper: int | None, path: Path, count: int, timeout: float = 60.0) -> int:
    """Sync calls made while a program appends and fsyncs *path* *count* times.

    *keeper* is the pid of the process that keeps the file (a mount), or None
    to count the program's own calls.  Raises FileNotFoundError when strace
    is not installed.
    """
    strace = shutil.which("strace")
    if strace is None:
        raise FileNotFoundError("strace is not installed (apt-get install strace)")
    program = subprocess.Popen([sys.executable, "-c", _LOOP, str(path), str(count)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    tracer = None
    with tempfile.NamedTemporaryFile(prefix="websync-bench-strace-", suffix=".txt") as out:
        try:
            _wait_line(program.stdout, "the fsync program", timeout)
            target = program.pid if keeper is None else keeper
            # -f: every thread, also the worker threads the keeper starts meanwhile.
            tracer = subprocess.Popen([strace, "-f", "-c", "-e", "trace=" + ",".join(SYNC_CALLS), "-o", out.name,
                                       "-p", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            line = _wait_line(tracer.stderr, "strace", timeout)
            if "attached" not in line:
                raise RuntimeError(f"strace did not attach to {target}: {line.strip()}")
            assert program.stdin is not None
            program.stdin.write(b"go\n")
            program.stdin.flush()
            if program.wait(timeout=timeout) != 0:
                raise RuntimeError(f"the fsync program exited {program.returncode}")
            tracer.send_signal(signal.SIGINT)  # detach and write the summary
            tracer.wait(timeout=timeout)
            return parse_summary(Path(out.name).read_text())
        finally:
            for proc in (program, tracer):
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        if pipe is not None:
                            pipe.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

