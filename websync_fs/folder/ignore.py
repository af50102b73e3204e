"""Which paths of a synced folder never leave this machine.

Three sources, matched against the path relative to the folder:

* the folder's own files (``.websync-folder``, downloads in flight named
  ``.websync-tmp-*``): they belong to this machine's copy only;
* the lock and swap names of `names.NamePolicy` (``~$*.docx``,
  ``.~lock.*#``, ``*.swp``): the same rule as the mount, so a document open in
  Word on two machines does not fight over its owner file;
* the user's own patterns in ``.websyncignore`` at the top of the folder,
  gitignore syntax (read by `pathspec`, the library behind many tools' own
  ignore files), re-read whenever it changes.

A path outside the ``--only`` folders is out of scope: neither sent nor fetched.

A name that is not valid UTF-8 (bytes a Linux file system takes, which Python
carries as lone surrogates) has no spelling on the server, whose names are
text: it stays on this machine, said once in the log.  It had stopped the sync
for good.

A folder at the top that is another synced folder -- a shared folder shown
here (folder/grafts.py), or any folder holding a marker of its own
(guards.py) -- is left alone entirely: its own engine syncs it with its own
store, and nothing in it is this folder's to send, fetch or delete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pathspec

from ..names import NamePolicy
from .guards import MARKER

log = logging.getLogger(__name__)

#: Names of the folder's own files start with this; none is ever synced.
OWN_PREFIX = ".websync-"
IGNORE_FILE = ".websyncignore"


class IgnoreRules:
    """Decides, by relative path, what the synced folder leaves alone."""

    def __init__(self, root: Path, names: NamePolicy, only: Iterable[str] = ()) -> None:
        self.root = root
        self.names = names
        self.only = tuple(p.strip("/") for p in only if p.strip("/"))
        self._spec: pathspec.PathSpec | None = None
        self._stamp: tuple[int, int] | None = None
        #: Names at the top that the shared folders shown here take (set before each folder is made).
        #: Replaced, never changed in place: the watcher's threads read it.
        self.grafted: frozenset[str] = frozenset()
        #: Names at the top of folders that hold a marker of their own, as last looked (`reload`).
        self._nested: frozenset[str] = frozenset()
        self._top_stamp: int | None = None  # the top's mtime when _nested was listed
        self._unspellable: set[str] = set()  # said in the log already
        self.reload()

    def reload(self) -> None:
        """Read ``.websyncignore`` again if it changed (a bad line is reported, the rest still applies).

        Also look again for other synced folders at the top (a graft's left from a
        run before this one is known by its marker before the start-up scan).
        """
        self._look_for_nested()
        path = self.root / IGNORE_FILE
        try:
            st = path.stat()
        except OSError:
            self._spec, self._stamp = None, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            lines = path.read_text(errors="replace").splitlines()
            self._spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
        except (OSError, ValueError) as exc:
            log.warning("cannot use %s: %s", path, exc)
            self._spec = None

    def _look_for_nested(self) -> None:
        """List the top's folders holding a marker again, only if the top changed (every batch asks)."""
        try:
            stamp: int | None = os.stat(self.root).st_mtime_ns
        except OSError:
            stamp = None
        if stamp is None or stamp != self._top_stamp:
            self._top_stamp = stamp
            self._nested = frozenset(_nested(self.root))

    def elsewhere(self, rel: str) -> bool:
        """True if *rel* is in another synced folder at the top: never this folder's to look at."""
        top = rel.split("/", 1)[0]
        return top in self.grafted or top in self._nested

    def in_scope(self, rel: str) -> bool:
        """True if *rel* is inside an ``--only`` folder, or on the way to one."""
        if not self.only:
            return True
        return any(rel == p or rel.startswith(p + "/") or p.startswith(rel + "/") for p in self.only)

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        """True if *rel* (relative, '/'-separated) is never synced."""
        parts = rel.split("/")
        if any(part.startswith(OWN_PREFIX) for part in parts) or self.elsewhere(rel):
            return True
        if not _spellable(rel):
            if rel not in self._unspellable:
                self._unspellable.add(rel)
                log.warning("%r stays on this machine: its name is not valid UTF-8, as every name on the "
                            "server is; rename it to sync it", rel)
            return True
        if not is_dir and self.names.local_only(parts[-1]):
            return True
        if not self.in_scope(rel):
            return True
        if self._spec is not None:
            # Each parent too: a pattern naming a folder covers what is inside it.
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if self._spec.match_file(sub + ("/" if i < len(parts) or is_dir else "")):
                    return True
        return False


def _spellable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nested(root: Path) -> list[str]:
    """The folders at the top of *root* that hold a synced folder's marker."""
    try:
        with os.scandir(root) as entries:
            return [e.name for e in entries
                    if e.is_dir(follow_symlinks=False) and os.path.lexists(os.path.join(e.path, MARKER))]
    except OSError:
        return []
