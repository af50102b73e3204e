"""Names for conflict copies: ``name (conflict from HOST YYYY-MM-DD HHMMSS).ext``.

Inside a git repository's ``refs`` a file is a branch or a tag, and git refuses
a name with spaces or parentheses: one such copy made ``git log --all``,
``fsck`` and ``gc`` fail.  There the copy is named as a branch git accepts,
``main.conflict-from-HOST-YYYY-MM-DD-HHMMSS``, and the other machine's commit
shows up as that branch, ready to merge.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from websync_server.protocol import NAME_MAX

MARK = " (conflict from "
#: The mark of a conflict copy inside a git repository's refs.
REF_MARK = ".conflict-from-"
_NOT_IN_A_REF = re.compile(r"[^A-Za-z0-9_-]+")


def conflict_name(
    name: str, device: str, when: float | None = None, taken: Callable[[str], bool] = lambda n: False,
    folder: str | None = None,
) -> str:
    """The name of the conflict copy of *name* written by *device*, free in its folder.

    The extension stays last so the copy opens in the same program; a leading
    dot (``.bashrc``) is not an extension.  Long names are shortened so the
    result fits in 255 bytes.  *folder* is the store path of the folder the
    copy goes in, where known: inside a git repository's refs the name is one
    git accepts as a branch.
    """
    clock = time.localtime(time.time() if when is None else when)
    if folder is not None and in_git_refs(folder):
        host = _NOT_IN_A_REF.sub("-", device).strip("-") or "machine"
        stamp = time.strftime("%Y-%m-%d-%H%M%S", clock)
        stem, ext = name, ""
        mark, close, sep = f"{REF_MARK}{host}-", "", "-"
    else:
        stamp = time.strftime("%Y-%m-%d %H%M%S", clock)
        stem, ext = os.path.splitext(name)
        if not stem or len(ext) > 16:
            stem, ext = name, ""
        mark, close, sep = f"{MARK}{device} ", ")", " "
    n = 1
    while True:
        suffix = f"{mark}{stamp}{'' if n == 1 else f'{sep}{n}'}{close}{ext}"
        room = NAME_MAX - len(suffix.encode())
        base = stem.encode()[: max(1, room)].decode("utf-8", "ignore")
        candidate = base + suffix
        if not taken(candidate):
            return candidate
        n += 1


def in_git_refs(folder: str) -> bool:
    """Whether store folder *folder* lies in the refs of a git repository (``.git/refs/heads``)."""
    parts = folder.split("/")
    return any(part.endswith(".git") and "refs" in parts[i + 1:] for i, part in enumerate(parts))


def is_conflict_copy(name: str) -> bool:
    return MARK in name or REF_MARK in name
