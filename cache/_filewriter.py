"""Writing a new block file: through the page cache, or straight to the disk, whichever is faster here.

A whole block written by this machine is already in memory twice when it
reaches the cache: in the program's buffers and in the mount's page cache.  A
buffered write makes a third copy in the cache file's page cache, and what
that costs depends on the machine.  On a laptop it is a memcpy at several
GB/s.  On a virtual machine whose host takes freed guest memory back (virtio
free page reporting), every fresh page-cache page is a page fault on the host:
1 GiB of 4 MiB writes into new files ran at 280-340 MiB/s and 3-3.7 s of CPU
there, while the same writes with O_DIRECT ran at 800-1,070 MiB/s and 0.3-0.5 s
of CPU (docs/benchmarks.md, profile 13).  On a spinning disk it is the other way
round: a direct write waits for the platter.

So the writer measures.  Writes of `DIRECT_MIN` bytes or more alternate at
first, then take whichever way has cost fewer seconds per byte over its last
`WINDOW` writes (the median: one write that met a stalled disk, 0.4 s against
the usual 5 ms, must not decide), and go the other way now and then so a change
is noticed: buffered writes here cost 1-3 ms a block while freed pages were at
hand, then 15-20 ms once they were used up.  How often follows the gap: every
`PROBE_EVERY` writes while the two ways cost about the same, and rarer as the
slower way costs more, so that measuring it costs at most `PROBE_SHARE` of the
writes' time (up to every `PROBE_EVERY_MAX`).  At a fixed one in eight, a
buffered write of 37 ms among direct ones of 4 ms (measured here) nearly doubled
what a block cost on average.  Smaller
writes are always buffered: a direct write's latency would dominate them, and
small files are where the page cache pays.

A direct write needs an aligned buffer and length: the bytes are copied into a
page-aligned buffer (a reused one, so this memory is never fresh) padded to
whole pages, and the file is cut back to its size.  A file system that refuses
O_DIRECT (EINVAL) turns direct writes off for the process.  Nothing here
changes what is durable: neither way syncs (BlockStore.sync does).
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

try:
    import fcntl
except ImportError:  # Windows: no O_DIRECT either, so never needed
    fcntl = None  # type: ignore[assignment]

#: Writes at least this large may go direct: whole blocks, not small files' blocks.
DIRECT_MIN = 1 << 20
#: One write in this many, at most, goes the way that is not the faster one, to measure it anew.
PROBE_EVERY = 8
#: ... and at least one in this many, however much slower that way is.
PROBE_EVERY_MAX = 64
#: The share of the writes' time that measuring the slower way may cost.
PROBE_SHARE = 0.1
#: Writes of each way whose median is its cost.
WINDOW = 5
_ALIGN = mmap.PAGESIZE
Bytes = bytes | bytearray | memoryview
_O_DIRECT: int = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0  # Linux; elsewhere buffered


class FileWriter:
    """Writes whole new files; thread-safe.  One per cache directory (a disk has one character)."""

    def __init__(self, mode: str = "auto") -> None:
        """*mode*: "auto" (measure and choose), "direct" or "buffered" (always, where possible)."""
        if mode not in ("auto", "direct", "buffered"):
            raise ValueError(f"mode {mode!r} is not auto, direct or buffered")
        self._mode = mode
        self._direct_ok = mode != "buffered" and _O_DIRECT != 0
        self._lock = threading.Lock()
        self._samples: dict[bool, deque[float]] = {False: deque(maxlen=WINDOW), True: deque(maxlen=WINDOW)}
        self._count = 0
        self._buffers: list[mmap.mmap] = []  # free aligned buffers, reused

    def write(self, fd: int, data: Bytes | Sequence[Bytes]) -> None:
        """Write all of *data* (bytes, or pieces of them in order) to the new, empty file *fd*."""
        pieces: list[Bytes] = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        size = sum(len(piece) for piece in pieces)
        if size < DIRECT_MIN or not self._direct_ok:
            _write_pieces(fd, pieces)
            return
        direct = self._choose()
        start = time.perf_counter()
        if direct:
            try:
                self._write_direct(fd, pieces, size)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_ok = False  # this file system takes no O_DIRECT
                os.ftruncate(fd, 0)
                _set_direct(fd, False)
                _write_pieces(fd, pieces)
                return
        else:
            _write_pieces(fd, pieces)
        if self._mode == "auto":  # a fixed way needs no measuring
            self._record(direct, (time.perf_counter() - start) / size)

    @property
    def direct(self) -> bool:
        """Whether writes may go direct: O_DIRECT exists here, is allowed, and was not refused."""
        return self._direct_ok

    @property
    def costs(self) -> dict[str, float | None]:
        """Seconds per MiB each way has cost lately, in "auto" mode (None: not measured yet)."""
        with self._lock:
            return {("direct" if k else "buffered"): statistics.median(v) * (1 << 20) if v else None
                    for k, v in self._samples.items()}

    def _choose(self) -> bool:
        if self._mode == "direct":
            return True
        with self._lock:
            self._count += 1
            buffered, direct = self._samples[False], self._samples[True]
            if len(direct) < 2 or len(buffered) < 2:
                return len(buffered) > len(direct)  # alternate to measure each way first
            direct_cost, buffered_cost = statistics.median(direct), statistics.median(buffered)
            faster = direct_cost < buffered_cost
            every = _probe_every(min(direct_cost, buffered_cost), max(direct_cost, buffered_cost))
            return (not faster) if self._count % every == 0 else faster

    def _record(self, direct: bool, cost: float) -> None:
        with self._lock:
            self._samples[direct].append(cost)

    def _write_direct(self, fd: int, pieces: list[Bytes], size: int) -> None:
        padded = -(-size // _ALIGN) * _ALIGN
        buffer = self._take(padded)
        try:
            at = 0
            for piece in pieces:
                buffer[at:at + len(piece)] = piece
                at += len(piece)
            buffer[size:padded] = bytes(padded - size)
            _set_direct(fd, True)
            with memoryview(buffer) as view, view[:padded] as part:
                done = os.write(fd, part)
            _set_direct(fd, False)
            if done < size:
                # A nearly full disk took part: the rest goes the ordinary way (or fails).
                _write_all(fd, memoryview(buffer[done:size]))  # a copy: no view outlives the buffer
            if done != size:
                os.ftruncate(fd, size)
        finally:
            self._give(buffer)

    def _take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buffer in enumerate(self._buffers):
                if len(buffer) >= size:
                    return self._buffers.pop(i)
        return mmap.mmap(-1, size)

    def _give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._buffers) < 4:  # as many as write at once, about
                self._buffers.append(buffer)
                return
        buffer.close()


def _probe_every(fast: float, slow: float) -> int:
    """How many writes apart the slower way is measured, costing *slow* seconds a byte against *fast*."""
    if fast <= 0:
        return PROBE_EVERY_MAX
    return max(PROBE_EVERY, min(PROBE_EVERY_MAX, math.ceil((slow - fast) / (PROBE_SHARE * fast))))


def _set_direct(fd: int, on: bool) -> None:
    if sys.platform == "win32":
        return  # no O_DIRECT there (_O_DIRECT is 0): never called
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))


def _write_pieces(fd: int, pieces: list[Bytes]) -> None:
    for piece in pieces:
        _write_all(fd, memoryview(piece))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]
