"""Where a file's content is: the per-file state shown by ``websync status PATH`` and an xattr.

One word names a file's state, the most pressing first:

=====================  ========================================================
``waiting-for-upload``  changed here and not on the server yet (queued, or open
                        for writing)
``conflict``            a conflict copy (``name (conflict from HOST ...)``)
                        for someone to look at and delete
``pinned``              in a pinned folder: kept local, fetched as it changes
``cached``              all of its content is local
``partly-cached``       some of its blocks are local
``online-only``         none of its content is local: opening it needs the server
=====================  ========================================================

A folder that is not pinned gets the word its files add up to (``cached`` when
every file inside is local, empty folders included), measured over at most
`FOLDER_BLOCKS` blocks so that a file manager asking about the root stays
fast; beyond that, the answer is marked incomplete.  Symbolic links are always
local.  The mount shows the word as the extended attribute `XATTR`
(``getfattr -n user.websync.state FILE``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .conflicts import is_conflict_copy
from .errors import FsError
from .pins import files_under
from .replica import NodeRow, Replica
from .storepaths import path_of, resolve
from .writeback import WriteBackQueue

XATTR = "user.websync.state"

PENDING = "waiting-for-upload"
CONFLICT = "conflict"
PINNED = "pinned"
CACHED = "cached"
PARTLY = "partly-cached"
ONLINE = "online-only"

#: A folder's state is measured over at most this many blocks.
FOLDER_BLOCKS = 10_000


@dataclass(frozen=True)
class FileState:
    path: str
    kind: str
    size: int
    local_bytes: int
    pinned: bool
    pending: bool
    conflict: bool
    #: False when a folder was too large to measure completely.
    complete: bool = True
    #: Why a pending change has not gone yet (the server's refusal, e.g. a full quota); '' if it just waits.
    held: str = ""

    @property
    def state(self) -> str:
        if self.pending:
            return PENDING
        if self.conflict:
            return CONFLICT
        if self.pinned:
            return PINNED
        if self.local_bytes >= self.size:
            return CACHED
        return PARTLY if self.local_bytes else ONLINE

    def describe(self) -> str:
        """The state in words, with where the content is when the word alone does not say."""
        share = self.local_bytes * 100 // self.size if self.size else 100
        if self.local_bytes >= self.size:
            where = "cached"
        elif self.local_bytes:
            where = f"partly cached ({share}% local)"
        else:
            where = "online only"
        state = self.state
        if state == PENDING:
            text = "waiting for upload" + (", conflict copy" if self.conflict else "")
            text += f" (held back: {self.held})" if self.held else ""
        elif state == CONFLICT:
            text = f"conflict copy, {where}"
        elif state == PINNED:
            text = "pinned" if self.local_bytes >= self.size else f"pinned (fetching, {share}% local)"
        else:
            text = where
        return text if self.complete else f"{text} (measured in part)"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path, "kind": self.kind, "state": self.state, "size": self.size,
            "local_bytes": self.local_bytes, "pinned": self.pinned, "pending": self.pending,
            "conflict": self.conflict, "complete": self.complete, "held": self.held,
        }


class FileStates:
    """Computes `FileState`s from the replica, the cache, the queue and the pins."""

    def __init__(
        self, replica: Replica, present: Callable[[Iterable[str]], dict[str, int]], queue: WriteBackQueue,
        is_pinned: Callable[[str], bool], busy: Callable[[str], bool] = lambda node: False,
    ) -> None:
        self._replica = replica
        self._present = present
        self._queue = queue
        self._is_pinned = is_pinned
        self._busy = busy

    def of_path(self, path: str) -> FileState:
        """The state of the node at store path *path* (`BadPath` if there is none)."""
        return self.of_row(resolve(self._replica, path), path)

    def xattr(self, ino: int) -> str:
        """The state word of inode *ino*, for the extended attribute."""
        row = self._replica.get(ino)
        if row is None:
            raise FsError(errno.ENOENT)
        return self.of_row(row).state

    def of_row(self, row: NodeRow, path: str | None = None) -> FileState:
        if path is None:
            path = path_of(self._replica, row.id) or ""
        name = path.rsplit("/", 1)[-1]
        pinned = self._is_pinned(row.id)
        if row.kind == "dir":
            return self._folder(row, path, pinned)
        pending = bool(self._queue.items(row.id)) or self._busy(row.id)
        if row.kind != "file":
            size = len(row.target.encode())
            return FileState(path, row.kind, size, size, pinned, pending, is_conflict_copy(name))
        local = self._local_bytes([row])
        held = self._queue.first_error(row.id) if pending else ""
        return FileState(path, row.kind, row.size, local, pinned, pending, is_conflict_copy(name), held=held)

    def _folder(self, row: NodeRow, path: str, pinned: bool) -> FileState:
        files: list[NodeRow] = []
        blocks = 0
        complete = True
        for f in files_under(self._replica, row):
            if blocks + len(f.blocks) > FOLDER_BLOCKS and files:
                complete = False
                break
            files.append(f)
            blocks += len(f.blocks)
        pending_nodes = self._queue.pending_nodes()
        pending = row.id in pending_nodes or any(f.id in pending_nodes or self._busy(f.id) for f in files)
        size = sum(f.size for f in files)
        return FileState(
            path, "dir", size, self._local_bytes(files), pinned, pending,
            is_conflict_copy(path.rsplit("/", 1)[-1]), complete,
        )

    def _local_bytes(self, files: list[NodeRow]) -> int:
        present = self._present(h for f in files for h in f.blocks)
        return sum(present.get(h, 0) for f in files for h in f.blocks)
