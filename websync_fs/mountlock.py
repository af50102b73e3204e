"""Whether a home is mounted: an flock the running mount holds on ``STATE/mount.pid``.

A pid file alone cannot say it: after a crash or a power cut the file stays,
and its pid may belong to another live process by then (pids are reused after
a reboot), or to the killed mount that has not quite ended.  The kernel drops
an flock when its last descriptor closes, whatever ended the process, so the
lock is held exactly while a mount runs.  The file's text is the holder's pid,
for people and messages; it is never trusted without the lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

__all__ = ["MountLock", "flock_file", "holder"]


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
        while (fd := flock_file(path, fcntl.LOCK_EX)) is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
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
    fd = flock_file(path, fcntl.LOCK_SH)  # shared: probes never stand in each other's way
    if fd is not None:
        os.close(fd)  # nobody held it: whatever the file says is stale
        return None
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def flock_file(path: Path, how: int) -> int | None:
    """A descriptor of *path* (made if missing) holding its flock *how*, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
