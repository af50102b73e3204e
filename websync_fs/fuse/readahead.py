"""The kernel's read-ahead window for the mount: larger than its default.

The kernel gives a FUSE mount the default window of 128 KiB, so a program
reading a file sends one read request every 128 KiB, and each request is a
trip through Python (PERFORMANCE.md: ~100 µs).  A 1 MiB window (FUSE's
largest request) makes that four to eight times fewer requests: reads of
content on this machine's disk went from ~300 to ~480 MB/s.  Random reads
are unaffected: the kernel starts with a small window and only grows it for
a program that reads on.

The window lives in sysfs (``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb``),
writable by root only; for anyone else the mount keeps the default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WINDOW_KIB = 1024
SYSFS = Path("/sys/class/bdi")
MOUNTINFO = Path("/proc/self/mountinfo")


def device_of(mountpoint: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """``MAJOR:MINOR`` of the file system mounted at *mountpoint*, from mountinfo.

    Read from /proc rather than by `stat`ing the mount point: the mount's own
    process must not ask its own file system before it serves requests.
    """
    # Resolve the folder it is in, never the mount point itself: that would be a
    # request to this very process, which is not serving yet.
    path = os.path.abspath(mountpoint)
    target = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    found = None
    for line in text.splitlines():
        fields = line.split()
        # ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...; spaces in paths are \040.
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
            found = fields[2]  # the last one listed is the one on top
    return found


def widen(mountpoint: str | os.PathLike[str], kib: int = WINDOW_KIB) -> bool:
    """Set the read-ahead window of the mount at *mountpoint*; True if it was set."""
    try:
        device = device_of(mountpoint)
        if device is None:
            return False
        (SYSFS / device / "read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("read-ahead window left at the kernel's default: %s", exc)
        return False
    log.info("read-ahead window %d KiB", kib)
    return True
