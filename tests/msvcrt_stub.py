"""A stand-in for Windows' ``msvcrt.locking``, which cannot run here.

Windows locks byte ranges from a descriptor's position, refuses at once with
EACCES when another process holds them (``LK_NBLCK``), and drops them when the
handle closes or the process ends.  The stand-in gives the same with a POSIX
byte-range lock (``lockf``) at the same position, so the Windows branch of
`websync_fs.portable` runs its own code on Linux.  What it cannot show:
Windows' locks are mandatory (a locked byte cannot be read by others), so
`calls` records where each lock was taken, to check it lies past the content.
Nothing here has run on Windows.
"""

from __future__ import annotations

import errno
import fcntl
import os

LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

#: (mode, offset, length) of every call, in order.
calls: list[tuple[int, int, int]] = []


def locking(fd: int, mode: int, nbytes: int) -> None:
    start = os.lseek(fd, 0, os.SEEK_CUR)
    calls.append((mode, start, nbytes))
    if mode == LK_UNLCK:
        fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, start)
        return
    if mode != LK_NBLCK:
        raise AssertionError(f"the client asks only for LK_NBLCK, not mode {mode}")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, start)
    except (BlockingIOError, PermissionError):
        raise OSError(errno.EACCES, "Permission denied") from None
