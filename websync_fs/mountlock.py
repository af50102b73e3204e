"""Whether a home is mounted: a lock the running mount holds on ``STATE/mount.pid``.

A pid file alone cannot say it: after a crash or a power cut the file stays,
and its pid may belong to another live process by then (pids are reused after
a reboot), or to the killed mount that has not quite ended.  The system drops
a file lock when its last descriptor closes, whatever ended the process, so the
lock is held exactly while a mount runs (portable.py: flock, or msvcrt's lock).  The file's text is the holder's pid,
for people and messages; it is never trusted without the lock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .portable import lock_file, pwrite

__all__ = ["MountLock", "holder"]


class MountLock:
    """The lock of one running mount; `release` (or the process's end) drops it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, wait: float = 0.0) -> MountLock | None:
        """Take the lock and write our pid into it; None if a mount still holds it after *wait* s.

        Waiting covers a mount killed a moment ago whose descriptors the kernel
        has not closed yet, and a `holder` probe taking the lock for a moment.
        """
        deadline = time.monotonic() + wait
        while (fd := lock_file(path)) is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        pwrite(fd, str(os.getpid()).encode(), 0)
        return cls(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # the file stays: removing it would let a second mount lock a new one
            os.close(fd)


def holder(path: Path) -> int | None:
    """The pid of the mount holding the lock at *path*, or None when no mount runs.

    A holder whose pid is not written yet (it is starting) reads as 0.
    """
    for _ in range(3):
        fd = lock_file(path, shared=True)  # shared: probes never stand in each other's way
        if fd is not None:
            os.close(fd)  # nobody held it: whatever the file says is stale
            return None
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit():
            return int(text)
        # A mount starting, or (Windows, no shared locks) another probe this instant: look again.
        time.sleep(0.02)
    return 0
