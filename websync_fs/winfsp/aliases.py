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
from dataclasses import dataclass

from ..errors import FsError
from ..namepolicy import WINDOWS, Rules, alias_of, assign, canonical, decode, encode, fold
from ..vfs import Vfs

#: Folders whose maps are kept (the ones a program works in).
KEPT = 64
#: Marked and shortened names remembered with their originals (a save's rename comes soon after).
REMEMBERED = 4096


@dataclass(frozen=True)
class FolderMap:
    """One folder's names both ways, for the names it was made from."""

    names: tuple[str, ...]
    shown: dict[str, str]  # store name -> shown name
    exact: dict[str, str]  # shown name -> store name
    folded: dict[str, str]  # fold(shown name) -> store name
    #: Two names fold together: who keeps the plain name went by inode.
    paired: bool


class DriveNames:
    """Store name <-> shown name in the folders of one `Vfs`, under *rules*."""

    def __init__(self, vfs: Vfs, rules: Rules = WINDOWS) -> None:
        self.vfs = vfs
        self.rules = rules
        self._maps: dict[str, FolderMap] = {}  # folder node -> its map, the most recently made last
        self._stood_for: dict[tuple[str, str], str] = {}  # (folder node, marked or shortened name) -> original

    def shown(self, parent: int) -> dict[str, str]:
        """Store name -> shown name of every entry of folder *parent*."""
        return self._map(self.vfs.node_id(parent)).shown

    def _map(self, node: str) -> FolderMap:
        names = tuple(self.vfs.replica.names(node))
        kept = self._maps.get(node)
        if kept is not None and kept.names == names:
            return kept
        made = self._changed(node, kept, names) if kept is not None and not kept.paired else None
        if made is None:
            made = self._made(node, names)
        self._maps.pop(node, None)
        self._maps[node] = made
        if len(self._maps) > KEPT:
            self._maps.pop(next(iter(self._maps)))
        return made

    def _made(self, node: str, names: tuple[str, ...]) -> FolderMap:
        """The folder's map from scratch."""
        shown = {name: alias_of(name, self.rules) for name in names}
        paired = len({fold(alias, self.rules) for alias in shown.values()}) < len(shown)
        if paired:
            # Who keeps the plain name goes by inode, which names alone do not say. The map is
            # kept while the names stay, so a node replaced under its name does not swap the two.
            shown = assign([(name, row.ino) for name, row in self.vfs.replica.children(node)], self.rules)
        self._remember(node, shown)
        return FolderMap(names, shown, {alias: name for name, alias in shown.items()},
                         {fold(alias, self.rules): name for name, alias in shown.items()}, paired)

    def _changed(self, node: str, kept: FolderMap, names: tuple[str, ...]) -> FolderMap | None:
        """*kept* brought up to *names* by what came and went (a file copied into a big folder);
        None if a name that came folds together with another (then the map is made again)."""
        before, now = set(kept.names), set(names)
        shown, exact, folded = dict(kept.shown), dict(kept.exact), dict(kept.folded)
        for name in before - now:
            alias = shown.pop(name)
            del exact[alias]
            del folded[fold(alias, self.rules)]
        for name in now - before:
            alias = alias_of(name, self.rules)
            key = fold(alias, self.rules)
            if key in folded:
                return None
            shown[name], exact[alias], folded[key] = alias, name, name
        self._remember(node, {name: shown[name] for name in now - before})
        return FolderMap(names, shown, exact, folded, False)

    def _remember(self, node: str, shown: dict[str, str]) -> None:
        for original, alias in shown.items():
            if alias != encode(original, self.rules):
                self._stood_for.pop((node, alias), None)  # the newest last: the oldest go first
                self._stood_for[(node, alias)] = original
        while len(self._stood_for) > REMEMBERED:
            self._stood_for.pop(next(iter(self._stood_for)))

    def stored(self, parent: int, name: str) -> str:
        """The store name that shown *name* stands for in folder *parent* (for a new name, its `original`)."""
        node = self.vfs.node_id(parent)
        folder = self._map(node)
        found = folder.exact.get(name)
        if found is None:
            found = folder.folded.get(fold(name, self.rules))
        if found is not None:
            return found
        before = self._stood_for.get((node, name))
        if before is not None and before not in folder.shown:
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
