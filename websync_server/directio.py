"""Writing a whole block file straight to the disk (O_DIRECT), past the page cache.

The server fsyncs every block before it answers, so a copy in the page cache
first is pure cost: on a virtual machine whose host takes freed memory back,
each fresh page-cache page is a fault on the host, and 1 GiB of buffered block
writes cost 3 s of CPU against 0.3-0.5 s direct (docs/benchmarks.md, profile
13).  Small blocks go through the page cache: a direct write's latency would
dominate them.  A file system that refuses O_DIRECT (EINVAL; tmpfs, or a
system without it) turns direct writes off for the process.

The client's cache measures both ways instead (cache/_filewriter.py); the
server needs only this one, and keeps it so a server installs without the
client's packages.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

try:
    import fcntl
except ImportError:  # Windows: no O_DIRECT
    fcntl = None  # type: ignore[assignment]

#: Writes at least this large go direct.
DIRECT_MIN = 1 << 20
_ALIGN = mmap.PAGESIZE
_O_DIRECT: int = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0
_direct_ok = _O_DIRECT != 0
_buffers = threading.local()  # one aligned buffer per worker thread, reused: never fresh memory


def write_new(fd: int, pieces: list[bytes]) -> None:
    """Write *pieces* in order to the new, empty file *fd*."""
    global _direct_ok
    size = sum(len(p) for p in pieces)
    if size >= DIRECT_MIN and _direct_ok:
        try:
            _write_direct(fd, pieces, size)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _direct_ok = False
            os.ftruncate(fd, 0)
            _set_direct(fd, False)
    for piece in pieces:
        _write_all(fd, memoryview(piece))


def _write_direct(fd: int, pieces: list[bytes], size: int) -> None:
    padded = -(-size // _ALIGN) * _ALIGN
    buffer: mmap.mmap | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < padded:
        buffer = _buffers.buffer = mmap.mmap(-1, padded)
    at = 0
    for piece in pieces:
        buffer[at:at + len(piece)] = piece
        at += len(piece)
    buffer[size:padded] = bytes(padded - size)
    _set_direct(fd, True)
    with memoryview(buffer) as view, view[:padded] as part:
        done = os.write(fd, part)
    _set_direct(fd, False)
    if done < size:  # a nearly full disk took part: the rest the ordinary way (or ENOSPC)
        _write_all(fd, memoryview(buffer[done:size]))
    if done != size:
        os.ftruncate(fd, size)


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]
