"""Names for conflict copies: ``name (conflict from HOST YYYY-MM-DD HHMMSS).ext``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from websync_server.protocol import NAME_MAX

MARK = " (conflict from "


def conflict_name(name: str, device: str, when: float | None = None, taken: Callable[[str], bool] = lambda n: False) -> str:
    """The name of the conflict copy of *name* written by *device*, free in its folder.

    The extension stays last so the copy opens in the same program; a leading
    dot (``.bashrc``) is not an extension.  Long names are shortened so the
    result fits in 255 bytes.
    """
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(time.time() if when is None else when))
    stem, ext = os.path.splitext(name)
    if not stem or len(ext) > 16:
        stem, ext = name, ""
    n = 1
    while True:
        suffix = f"{MARK}{device} {stamp}{'' if n == 1 else f' {n}'}){ext}"
        room = NAME_MAX - len(suffix.encode())
        base = stem.encode()[: max(1, room)].decode("utf-8", "ignore")
        candidate = base + suffix
        if not taken(candidate):
            return candidate
        n += 1


def is_conflict_copy(name: str) -> bool:
    return MARK in name
