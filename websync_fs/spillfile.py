"""The bytes behind a working copy: in memory while small, in a local file once they grow.

Most files written are small, and a working-copy file costs an open, a truncate
and an unlink on the local disk: on ext4 about 0.5 ms a file, more than the rest
of a small file's close.  Up to `SMALL` bytes the bytes live in a bytearray; the
first write or truncate past that moves them into the file for good.  At most
`MEMORY_MAX` bytes of memory are promised to copies at once (each in memory
reserves `SMALL`); later copies start in their file.

Nothing here is durable by itself: what close() promises is in the cache and
the write-back queue (workcopy.py); fsync() syncs the file, or records the
bytes of a copy in memory, in the state database (fsynced.py).

The interface is the few calls a working copy makes on its file descriptor, with
their meaning: `pwrite` may write less than asked (a nearly full disk), `pread`
returns what is there.  Not thread-safe: a copy in memory is only read or written
on the event loop (workcopy.py hashes in threads only blocks of copies on disk).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from . import portable

__all__ = ["MEMORY_MAX", "SMALL", "SpillFile"]

#: Largest copy kept in memory.
SMALL = 64 * 1024
#: Memory reserved for copies in memory, over all of them.
MEMORY_MAX = 64 * 1024 * 1024

_reserved = 0


class SpillFile:
    def __init__(self, path: Path, size: int) -> None:
        global _reserved
        self.path = path
        self._fd: int | None = None
        self._buf: bytearray | None = None
        if size <= SMALL and _reserved + SMALL <= MEMORY_MAX:
            _reserved += SMALL
            self._buf = bytearray(size)
        else:
            self._open(size)

    @property
    def on_disk(self) -> bool:
        return self._fd is not None

    def _open(self, size: int) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | portable.OPEN_FLAGS, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def spill(self) -> None:
        """Move the bytes into the file; on failure (a full disk) they stay in memory."""
        global _reserved
        if self._buf is None:
            return
        self._open(0)
        assert self._fd is not None
        try:
            # Released on the way out: a view the traceback kept alive would forbid
            # resizing the buffer while the caller handles the error (BufferError).
            with memoryview(self._buf) as view:
                done = 0
                while done < len(view):
                    done += portable.pwrite(self._fd, view[done:], done)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            self._unlink()
            raise
        self._buf = None
        _reserved -= SMALL

    def _descriptor(self) -> int:
        if self._fd is None:
            # What a closed descriptor gives: a worker thread still reading after
            # close() (workcopy.py) takes it for "closed meanwhile".
            raise OSError(errno.EBADF, "working copy closed")
        return self._fd

    def is_hole(self, offset: int, length: int) -> bool:
        """Whether the *length* bytes at *offset* are a hole of the file on disk (they read as zeros).

        Asked with SEEK_DATA, so a sparse file's holes are never read; False where
        the system cannot tell (no SEEK_DATA) or the bytes are in memory.
        """
        if self._fd is None or not hasattr(os, "SEEK_DATA"):
            return False
        try:
            return os.lseek(self._fd, offset, os.SEEK_DATA) >= offset + length
        except OSError as exc:
            return exc.errno == errno.ENXIO  # no data from *offset* to the end

    def pwrite(self, data: bytes | memoryview, offset: int) -> int:
        end = offset + len(data)
        if self._buf is not None and end > SMALL:
            self.spill()
        if self._buf is None:
            return portable.pwrite(self._descriptor(), data, offset)
        if end > len(self._buf):
            self._buf.extend(bytes(end - len(self._buf)))
        self._buf[offset:end] = data
        return len(data)

    def pread(self, length: int, offset: int) -> bytes:
        if self._buf is None:
            return portable.pread(self._descriptor(), length, offset)
        return bytes(self._buf[offset : offset + length])

    def sync(self) -> None:
        """fsync the file (blocking); a copy in memory has none."""
        if self._fd is not None:
            os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        if self._buf is not None and size > SMALL:
            self.spill()
        if self._buf is None:
            os.ftruncate(self._descriptor(), size)
        elif size < len(self._buf):
            del self._buf[size:]
        else:
            self._buf.extend(bytes(size - len(self._buf)))

    def close(self) -> None:
        """Free the memory or close and remove the file; safe to call twice."""
        global _reserved
        if self._buf is not None:
            self._buf = None
            _reserved -= SMALL
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._unlink()

    def _unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
