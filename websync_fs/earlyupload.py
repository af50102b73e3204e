"""Blocks of files still being written go to the server before the file is closed.

A program writing a big file finishes one block long before it closes the
file.  The working copy hashes such a block ahead (workcopy.py) and offers it
here with its bytes still in memory; a few workers send it at once.  An
appending writer's first block is not offered: most files of one block (a
photo) are closed right after it, and its upload beside the writing of the
next file cost `cp -a` of photos a quarter of its speed for no earlier end
(docs/benchmarks.md).  When the
file is closed, the write-back queue's commit asks the server which blocks it
lacks and finds most of them there already: "on the server" follows close()
by one block and one commit instead of the whole file.

This is only a head start, never a second path to the server:

* Sending a block commits nothing.  Blocks are content-addressed and the
  server keeps blocks that no node references yet, so an early block of a
  file that is then rewritten or deleted is harmless, and the server still
  refuses a commit naming a block it has not stored durably.
* An offer is dropped, not waited for, when the workers are busy or the
  server is out of reach: the writer never slows down for it, and the
  queue's own upload sends whatever did not go early.
* The queue waits (`settle`) for early sends of the blocks it is about to
  commit, so a block is not sent twice at the same time.

Blocks of local-only files are never offered (the owner checks, vfs.py).
"""

from __future__ import annotations

import logging
import math
import time

import trio

from websync_server.protocol import BlockHash

from .errors import RemoteError
from .remote import Remote

log = logging.getLogger(__name__)

#: Blocks sent at once.  One: the server's share of a block (receive, hash, write,
#: fsync) costs more CPU than the writer's, and on a small machine a second sender
#: slowed the writer by a third while bringing the upload's end forward by little.
WORKERS = 1
#: Offers waiting for a worker; more are dropped.  With WORKERS this bounds the
#: memory held to (WORKERS + BACKLOG) blocks.
BACKLOG = 1
#: After a failed send, offers are dropped this long: an unreachable or full
#: server is not asked again for every block of a file being written.
QUIET_AFTER_FAILURE = 10.0


class EarlyUploads:
    """Sends offered blocks in the background; `run` owns the workers."""

    def __init__(self, remote: Remote, *, workers: int = WORKERS, backlog: int = BACKLOG) -> None:
        self._remote = remote
        self._workers = workers
        self._send, self._receive = trio.open_memory_channel[tuple[BlockHash, bytes]](backlog)
        #: Hashes offered and not yet sent or given up, each with the event set when it is.
        self._busy: dict[str, trio.Event] = {}
        self._quiet_until = -math.inf
        self.sent_bytes = 0

    def offer(self, h: str, data: bytes) -> bool:
        """Send block *h* soon if a worker can take it; False when the offer was dropped."""
        if h in self._busy or time.monotonic() < self._quiet_until:
            return False
        try:
            self._send.send_nowait((BlockHash(h), data))
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self._busy[h] = trio.Event()
        return True

    async def settle(self, hashes: list[str]) -> None:
        """Wait until none of *hashes* is still being sent early (sent or given up)."""
        for h in hashes:
            done = self._busy.get(h)
            if done is not None:
                await done.wait()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._worker)
            task_status.started()

    async def _worker(self) -> None:
        async for h, data in self._receive:
            try:
                await self._upload(h, data)
            finally:
                self._busy.pop(h).set()

    async def _upload(self, h: BlockHash, data: bytes) -> None:
        if time.monotonic() < self._quiet_until:
            return  # offered before a failure: not sent either
        try:
            # A rewrite of unchanged bytes (cp over a copy) is on the server already.
            if await self._remote.missing([h]):
                await self._remote.put_block(h, data)
                self.sent_bytes += len(data)
        except RemoteError as exc:
            # The queue sends this block with the commit and handles the error there.
            log.debug("early upload of %s failed: %s", h, exc)
            self._quiet_until = time.monotonic() + QUIET_AFTER_FAILURE
