"""The drive's names: each folder's store names shown under Windows' rules, and found back.

WinFsp calls by path, and Windows refuses some names the store holds
(``a:b``, ``CON``, ``trail.``) and folds case.  A folder's names are shown
as a synced folder on NTFS shows them (`websync_fs.namepolicy.assign`):
look-alikes and marks, ``README (case conflict).md`` for the second of a
case pair (the lower inode keeps the plain name), a hash where an alias is
too long.  A shown name is found back by the folder's map, else whatever its
case; a name that is in no map (a new file) is the original it stands for
(`decode`), so ``why？.txt`` made on Windows is ``why?.txt`` elsewhere.

A folder's map is made from its names at each call (one query; the nodes'
inodes only where two names fold together), so another machine's change is
seen at once; the last maps are kept while the names are the same.

A marked or shortened name is not the alias of its own text: a program that
saves by renaming (Word moves ``README (case conflict).md`` away and renames
its temporary file to that name) would make the mark a name on the server.
So the drive remembers which original each such name stood for, and a new
file given that name while the original is gone from the folder takes the
original's name back.
"""

from __future__ import annotations

import errno

from ..errors import FsError
from ..namepolicy import WINDOWS, Rules, assign, canonical, decode, encode, fold
from ..vfs import Vfs

#: Folders whose maps are kept (the ones a program works in).
KEPT = 64
#: Marked and shortened names remembered with their originals (a save's rename comes soon after).
REMEMBERED = 4096


class DriveNames:
    """Store name <-> shown name in the folders of one `Vfs`, under *rules*."""

    def __init__(self, vfs: Vfs, rules: Rules = WINDOWS) -> None:
        self.vfs = vfs
        self.rules = rules
        self._maps: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}  # node -> (names, map)
        self._stood_for: dict[tuple[str, str], str] = {}  # (folder node, marked or shortened name) -> original

    def shown(self, parent: int) -> dict[str, str]:
        """Store name -> shown name of every entry of folder *parent*."""
        node = self.vfs.node_id(parent)
        names = tuple(self.vfs.replica.names(node))
        kept = self._maps.get(node)
        if kept is not None and kept[0] == names:
            return kept[1]
        if len({fold(encode(n, self.rules), self.rules) for n in names}) < len(names):
            # Two fold together: who keeps the plain name goes by inode, which names alone do not say.
            shown = assign([(name, row.ino) for name, row in self.vfs.replica.children(node)], self.rules)
        else:
            shown = assign([(name, 0) for name in names], self.rules)
            if len(self._maps) >= KEPT:
                self._maps.pop(next(iter(self._maps)))
            self._maps[node] = (names, shown)
        self._remember(node, shown)
        return shown

    def _remember(self, node: str, shown: dict[str, str]) -> None:
        for original, alias in shown.items():
            if alias != encode(original, self.rules):
                self._stood_for.pop((node, alias), None)  # the newest last: the oldest go first
                self._stood_for[(node, alias)] = original
        while len(self._stood_for) > REMEMBERED:
            self._stood_for.pop(next(iter(self._stood_for)))

    def stored(self, parent: int, name: str) -> str:
        """The store name that shown *name* stands for in folder *parent* (for a new name, its `original`)."""
        key = fold(name, self.rules)
        found = None
        for original, alias in self.shown(parent).items():
            if alias == name:
                return original
            if found is None and fold(alias, self.rules) == key:
                found = original
        if found is not None:
            return found
        node = self.vfs.node_id(parent)
        before = self._stood_for.get((node, name))
        if before is not None and before not in self.vfs.replica.names(node):
            return before  # a save's rename onto a marked name: the original's name comes back
        return self.original(name)

    def original(self, name: str) -> str:
        """The store name a new shown *name* stands for; FsError(EINVAL) for one no original is shown as.

        ``‛‛x`` is such a name: made as ``‛x`` on the server, it would come
        back under another name than it was made with.
        """
        if not canonical(name, self.rules):
            raise FsError(errno.EINVAL, f"{name!r} reads as an alias of another name")
        return decode(name, self.rules)
