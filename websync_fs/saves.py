"""Save detection: a document saved through a temporary file stays one document.

Programs save by putting a new file where the document was: Word renames the
document away and renames its temporary file into place, Excel deletes it
first, LibreOffice and GLib rename the temporary file over it, vim and Emacs
rename it to a backup name and write a new file.  Seen one step at a time that
is "a file went away, an unrelated file arrived" -- the document would lose its
history, and other machines would see it missing for a moment.

The detector remembers which server-known file left a name (moved away,
deleted, replaced) and, when a new local file arrives at that name soon after
while neither change has been sent, swaps their server identities:

* the arriving file takes the document's node id, and what the server gets is
  one ``update`` of the document -- one new version, history intact;
* the old local file takes a fresh id, so if it stays (Emacs' ``notes.txt~``) it
  reaches the server as a new file; if it is deleted (Word's ``~WRL0001.tmp``)
  the queue coalesces it away and nothing is sent.

Inode numbers do not change, so the kernel's view stays exactly what the
program did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from websync_server.protocol import (
    KIND_FILE,
    OP_CREATE,
    OP_DELETE,
    OP_RENAME,
    OP_SETATTR,
    OP_UPDATE,
    Create,
    NodeId,
    SetAttr,
    Update,
    new_node_id,
)

from .owners import chown_fields
from .replica import NodeRow, Replica
from .writeback import WriteBackQueue

log = logging.getLogger(__name__)

#: A new file arriving at a name this soon after the old one left is a save.
WINDOW = 60.0
#: Names remembered at most; beyond, the oldest are forgotten.
REMEMBERED = 10_000

Send = Callable[..., None]


class SaveDetector:
    def __init__(self, replica: Replica, queue: WriteBackQueue, send: Send) -> None:
        self.replica = replica
        self.queue = queue
        self._send = send
        self._left: dict[tuple[str, str], tuple[str, float]] = {}

    def left(self, parent: str, name: str, row: NodeRow) -> None:
        """File *row* stopped being ``parent/name`` (moved away, deleted or replaced)."""
        if row.kind != KIND_FILE or row.seq == 0 or row.local:
            return
        now = time.monotonic()
        key = (parent, name)
        self._left.pop(key, None)  # to the end: the dict stays oldest first
        self._left[key] = (row.id, now)
        # Forget from the oldest end, so that a mass delete costs O(1) a file (rebuilding
        # the whole dict each time made deleting 10,000 files quadratic).
        while len(self._left) > REMEMBERED or now - next(iter(self._left.values()))[1] > WINDOW:
            del self._left[next(iter(self._left))]

    def arrived(self, parent: str, name: str, row: NodeRow) -> bool:
        """File *row* became ``parent/name``; adopt the old identity if this is a save.

        Call inside the transaction that made the change; True if adopted.
        """
        left = self._left.pop((parent, name), None)
        if left is None or time.monotonic() - left[1] > WINDOW:
            return False
        old = self.replica.by_id(left[0])
        if old is None or old.id == row.id or row.kind != KIND_FILE or row.seq != 0 or row.local:
            return False
        old_items = self.queue.items(old.id)
        new_items = self.queue.items(row.id)
        # Only what took the document away from this name is undone; an earlier
        # move that brought it here (moved, then saved) must still reach the server.
        undone = [i for i in old_items if (i.op.get("parent"), i.op.get("name")) == (parent, name)]
        # Content the document got before it left (the previous save's update, still
        # queued or on its way) stays: it is a version of its own (see below).
        old_only_moved = all(i.op["op"] in (OP_RENAME, OP_DELETE, OP_SETATTR, OP_UPDATE) for i in old_items)
        unsent = all(i.state == "queued" for i in undone + new_items)
        new_born_here = bool(new_items) and new_items[0].op["op"] == OP_CREATE
        if not (unsent and old_only_moved and new_born_here and undone):
            return False
        if old_items[-1] is not undone[-1]:
            # The document went on from there (moved again, deleted elsewhere): leaving
            # this name was not the last thing that happened to it, so this is no save.
            return False
        if self.queue.in_exchange(old.id) or self.queue.in_exchange(row.id):
            # A queued exchange moved the other node of the pair too: undoing it would
            # leave that node where the server has it, not where this machine shows it.
            return False
        if self.queue.nodes_placed_at(parent, name) - {row.id, old.id}:
            # Something else stood at this name in between (a folder made there, a file
            # moved there and away again): its queued ops need the old file gone first.
            return False
        with self.replica.tx():
            for item in undone:
                self.queue.replace(item, None)
            for item in new_items:
                self.queue.replace(item, None)
            fresh = new_node_id()
            self.replica.remap(old.id, fresh)
            self.replica.remap(row.id, old.id, seq=old.seq)
            current = self.replica.by_id(old.id)
            assert current is not None
            self._send(
                Update(id=old.id, size=current.size, blocks=current.blocks, mtime_ns=current.mtime_ns,
                       mode=current.mode),
                # What this save replaced stays a version, however soon after the previous
                # save it came: git rewrites .git/config twice within milliseconds.
                version=True,
                # The new file may still be being written (vim writes it at the name):
                # the longer wait keeps its empty start from becoming a version.
                quiet=self.queue.quiet,
            )
            # An update carries no owner: the new file's (another user saved it, a setgid
            # folder's group) goes as a setattr, or the server kept the old one.
            owner = {k: getattr(current, k) for k in ("uid", "gid") if getattr(current, k) != getattr(old, k)}
            if owner:
                uid, gid = chown_fields(owner)
                self._send(SetAttr(id=old.id, uid=uid, gid=gid))
            for where, what in self.replica.entries_of(fresh):
                # The previous version stays here under another name: a file of its own.
                self._send(_create(fresh, where, what, old), name=what)
        log.info("save of %s: one new version of the same document", name)
        return True


def _create(node: NodeId, parent: NodeId, name: str, old: NodeRow) -> Create:
    return Create(id=node, parent=parent, name=name, mode=old.mode, mtime_ns=old.mtime_ns, size=old.size,
                  blocks=old.blocks)
