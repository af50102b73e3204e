"""A one-line progress bar for terminals: files, bytes, rate and time left."""

from __future__ import annotations

import shutil
import time
from collections import deque
from typing import TextIO

from ._common import human

#: Seconds of history the transfer rate is averaged over.
RATE_WINDOW = 5.0
#: At most this many redraws per second.
REDRAWS = 10


class ProgressBar:
    """Redraws one line of *stream* (a terminal) in place; `close()` ends the line."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._samples: deque[tuple[float, int]] = deque()
        self._drawn = 0.0
        self._line = ""
        encoding = (getattr(stream, "encoding", None) or "ascii").lower()
        self._full, self._empty = ("█", "░") if "utf" in encoding else ("#", "-")

    def update(self, files_local: int, files: int, bytes_local: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        self._samples.append((now, bytes_local))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        if not force and now - self._drawn < 1 / REDRAWS:
            return
        self._drawn = now
        rate = self.rate()
        left = total - bytes_local
        parts = [
            f"{files_local}/{files} files",
            f"{human(bytes_local)} of {human(total)}",
            f"{human(rate)}/s",
        ]
        if left <= 0:
            parts.append("done")
        elif rate > 0:
            parts.append(f"{_duration(left / rate)} left")
        else:
            parts.append("waiting")
        text = "  ".join(parts)
        width = shutil.get_terminal_size((80, 24)).columns
        bar_width = max(10, min(30, width - len(self._label) - len(text) - 6))
        fraction = 1.0 if total == 0 else bytes_local / total
        filled = int(bar_width * fraction)
        bar = self._full * filled + self._empty * (bar_width - filled)
        line = f"{self._label} {bar} {text}"[: max(width - 1, 20)]
        # \r returns to the start, \x1b[K clears what a longer previous line left.
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()
        self._line = line

    def rate(self) -> float:
        """Bytes per second over the last `RATE_WINDOW` seconds."""
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def close(self) -> None:
        if self._line:
            self._stream.write("\n")
            self._stream.flush()
            self._line = ""


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
