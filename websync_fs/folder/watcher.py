"""Local changes as they happen: watchdog's events turned into dirty paths on the trio loop.

watchdog watches with inotify here (FSEvents on macOS, ReadDirectoryChangesW
on Windows) from its own threads.  Each event only names paths; what changed
is decided later by comparing the path with the last synced state, so a lost
or reordered event costs nothing as long as the path is looked at again.
When the kernel's event queue overflows, watchdog logs it: that log record
asks for a full scan, so an overflow is never a silent miss.

Writers.  A file written to (created or modified) and not closed since is
being written: `DirtyPaths.writing` keeps when it was last written.  inotify
tells when a writer closes the file (watchdog's ``closed`` event,
IN_CLOSE_WRITE): the writer finished, so a batch of such paths need not wait
for a quiet moment.  A file written and never closed as far as the watcher can
tell (a program that keeps it open, FSEvents and ReadDirectoryChangesW, which
report no closes) waits for `QUIET` after its last write as before.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import trio
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger(__name__)

#: Events that change nothing: watchdog 4+ reports every open and read-only close,
#: so each file the merger read for upload came back as a dirty path.
UNCHANGED = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})
#: A file written to less than this ago and not closed since is taken as still being written.
QUIET = 0.3
#: Write events older than this are forgotten (a writer that never closes, a FIFO made).
_FORGET_WRITES = 60.0


class DirtyPaths:
    """Relative paths waiting to be looked at, and whether everything must be."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.everything = False
        #: Renames since the last batch, in order: those that changed only case or normalisation
        #: (`take_respelled`) are ones that no scan can tell from nothing where the file system folds.
        self.moves: list[tuple[str, str]] = []
        #: Last names of the chains carried from the last batch: one not gone on by the next is dropped.
        self._carried: set[str] = set()
        self.changed = trio.Event()
        self.last = trio.current_time()
        #: Files written to and not closed since, with when they were last written.
        self.writing: dict[str, float] = {}

    def add(self, *paths: str) -> None:
        self.paths.update(paths)
        self.last = trio.current_time()
        self.changed.set()

    def wrote(self, path: str) -> None:
        """*path* was created or written to: being written until it is closed (or quiet)."""
        self.writing[path] = trio.current_time()
        self.add(path)

    def closed(self, path: str) -> None:
        """A writer closed *path*, or it went: nothing writes it now (as far as the watcher saw)."""
        self.writing.pop(path, None)
        self.add(path)

    def moved(self, src: str, dst: str) -> None:
        if (when := self.writing.pop(src, None)) is not None:
            self.writing[dst] = when  # renamed while open: still being written
        self.moves.append((src, dst))
        self.add(src, dst)

    def busy(self, path: str) -> bool:
        """True if *path* was written to less than `QUIET` ago and not closed since."""
        when = self.writing.get(path)
        return when is not None and trio.current_time() - when < QUIET

    def settled_at(self, settle: float) -> float:
        """When a batch may start: *settle* after the last event, or `QUIET` after the last write not closed."""
        now = trio.current_time()
        for path, when in list(self.writing.items()):
            if now - when > _FORGET_WRITES:
                del self.writing[path]
        return max(self.last + settle, max(self.writing.values(), default=-QUIET) + QUIET)

    def take_respelled(self, exists: Callable[[str], bool] = lambda path: True) -> list[tuple[str, str]]:
        """The batch's renames that changed only case or normalisation, a chain through other names as one.

        On Linux a rename onto the name the file system folds to the same
        file does nothing (rename(2) on one inode), so there a case change is
        made through a third name (``Readme -> tmp -> README``): one rename.
        A chain whose last name is gone (*exists* says no) may be half-way:
        it is carried into the next batch once, to meet its next step.
        """
        chains: dict[str, list[str]] = {}  # last name -> every name it had this batch, in order
        for src, dst in self.moves:
            chains[dst] = [*chains.pop(src, [src]), dst]
        half_way = {last: chain for last, chain in chains.items() if last not in self._carried and not exists(last)}
        self.moves = [move for chain in half_way.values() for move in zip(chain, chain[1:])]
        self._carried = set(half_way)
        found = []
        for last, chain in chains.items():
            # The first name of the same file in another case (a download's temporary may come before it).
            first = next((name for name in chain[:-1] if name != last and _loose(name) == _loose(last)), None)
            if first is not None:
                found.append((first, last))
        return sorted(found, key=lambda move: move[1].count("/"))  # a folder before what it holds

    def rescan(self) -> None:
        self.everything = True
        self.add()

    def take(self) -> tuple[set[str], bool]:
        paths, everything = self.paths, self.everything
        self.paths, self.everything = set(), False
        self.changed = trio.Event()
        return paths, everything


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, token: trio.lowlevel.TrioToken, dirty: DirtyPaths,
                 elsewhere: Callable[[str], bool]) -> None:
        self.root = str(root)
        self.token = token
        self.dirty = dirty
        self.elsewhere = elsewhere

    def _rel(self, path: str | bytes) -> str | None:
        text = os.fsdecode(path)
        if text == self.root:
            return ""
        if not text.startswith(self.root + os.sep):
            return None
        return text[len(self.root) + 1:].replace(os.sep, "/")

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in UNCHANGED:
            return
        rels = [self._rel(event.src_path)]
        if getattr(event, "dest_path", ""):
            rels.append(self._rel(event.dest_path))
        # Another synced folder inside this one (a shared folder shown here) has its own watcher:
        # a move between the two is a delete on one side and a new file on the other.
        found = [r for r in rels if r is not None and not self.elsewhere(r)]
        if len(found) == 2 and found[0] != found[1]:
            self._report(self.dirty.moved, found[0], found[1])
        elif found and not event.is_directory and event.event_type in _WRITES:
            self._report(self.dirty.wrote, found[0])
        elif found and not event.is_directory and event.event_type in _ENDS:
            self._report(self.dirty.closed, found[0])
        elif found:
            self._report(self.dirty.add, *found)

    def _report(self, fn: Callable[..., None], *paths: str) -> None:
        try:
            self.token.run_sync_soon(fn, *paths)
        except trio.RunFinishedError:
            pass


#: A file's events that mean a writer has it open, and those that mean none has any more.
_WRITES = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED})
_ENDS = frozenset({EVENT_TYPE_CLOSED, EVENT_TYPE_DELETED})


def _loose(path: str) -> str:
    """Equal for paths that differ in case or normalisation only (the merger applies the real rules)."""
    return unicodedata.normalize("NFD", path).casefold()


class _Overflow(logging.Handler):
    """watchdog reports a kernel queue overflow only in its log: turn that into a rescan."""

    def __init__(self, token: trio.lowlevel.TrioToken, dirty: DirtyPaths) -> None:
        super().__init__(logging.WARNING)
        self.token = token
        self.dirty = dirty

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            try:
                self.token.run_sync_soon(self.dirty.rescan)
            except trio.RunFinishedError:
                pass


class Watcher:
    """A recursive watch on the folder for as long as `run` runs (*elsewhere*: paths it does not report)."""

    def __init__(self, root: Path, dirty: DirtyPaths, elsewhere: Callable[[str], bool] = lambda rel: False) -> None:
        self.root = root
        self.dirty = dirty
        self.elsewhere = elsewhere

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        observer = Observer()
        overflow = _Overflow(token, self.dirty)
        logging.getLogger("watchdog").addHandler(overflow)
        try:
            # Starting the observer walks the tree to add a watch per folder: not on the loop.
            observer.schedule(_Handler(self.root, token, self.dirty, self.elsewhere), str(self.root), recursive=True)
            await trio.to_thread.run_sync(observer.start)
            task_status.started()
            await trio.sleep_forever()
        finally:
            logging.getLogger("watchdog").removeHandler(overflow)
            observer.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(observer.join, 5.0)
