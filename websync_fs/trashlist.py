"""The trash as a person reads it: what they deleted first, programs' internals summed up.

Programs delete files all the time as part of their work: git rewrites
``.git/index`` and packs loose objects away, SQLite removes its rollback journal
at every transaction, editors and build tools drop temporary files.  All of it
goes to the trash like anything else and stays restorable, but listed among
a person's deletions it buries them (one day of git and SQLite use put 41
entries there, ``test.db-journal`` five times).  An entry is a program's
internal when its path runs through a tool's folder (``.git``, ``__pycache__``,
...) or its name is a journal, lock or temporary file's (names.py).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .names import NamePolicy

__all__ = ["TrashList", "internal"]

#: Folders that belong to a program, not to the person whose files they sit among.
TOOL_FOLDERS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".tox", ".cache"})
#: Names programs give files they remove again themselves.
INTERNAL_NAMES = ("*-journal", "*-wal", "*-shm", "*.lock", "*.pyc", "*.o")
_INTERNAL = re.compile("|".join(fnmatch.translate(p) for p in INTERNAL_NAMES))


def internal(path: str, names: NamePolicy) -> bool:
    """True if the trash entry at store path *path* is a program's internal file."""
    parts = path.split("/")
    if TOOL_FOLDERS.intersection(parts[:-1]) or parts[-1] in TOOL_FOLDERS:
        return True
    name = parts[-1]
    return bool(_INTERNAL.match(name)) or names.temporary(name) or names.local_only(name)


class TrashList:
    """Trash entries (newest first, as the server lists them) split for a person."""

    def __init__(self, items: Iterable[dict[str, Any]], names: NamePolicy) -> None:
        self.items = [dict(i, internal=internal(str(i["path"]), names)) for i in items]

    @property
    def personal(self) -> list[dict[str, Any]]:
        return [i for i in self.items if not i["internal"]]

    @property
    def internals(self) -> list[dict[str, Any]]:
        return [i for i in self.items if i["internal"]]

    def summary(self) -> str:
        """One line about the internals: how many, and where most of them are."""
        groups: Counter[str] = Counter()
        for item in self.internals:
            parts = str(item["path"]).split("/")
            tool = next((f"{'/'.join(parts[: n + 1])}/" for n, p in enumerate(parts[:-1]) if p in TOOL_FOLDERS), None)
            groups[tool or str(item["path"])] += 1
        shown = ", ".join(f"{n} x {where}" if n > 1 else where for where, n in groups.most_common(4))
        more = ", ..." if len(groups) > 4 else ""
        return f"{len(self.internals)} file(s) programs made and removed ({shown}{more})"
