"""Sends the write-back queue to the server and settles conflicts.

One task takes batches from the queue in order, uploads the blocks the server
lacks, and commits the batch.  A refused commit (409) is settled here so that
nobody's bytes are lost:

==========  ===========  =====================================================
op          reason       what happens
==========  ===========  =====================================================
update      changed      the server's version stays at the path; ours becomes
                         a conflict copy beside it (a new file)
update      missing      deleted elsewhere while edited here: the edit wins,
                         the file is created again at its path
create,     exists       the name was taken elsewhere: ours takes a conflict
mkdir,                   name beside it
symlink
create ...  missing,     the folder was deleted elsewhere: ours goes to the
            not_dir      top folder under a conflict name
delete      changed      edited elsewhere: the edit wins, the file comes back
delete      not_empty    files were added elsewhere: the folder comes back
delete      missing      already gone: nothing to do
link        exists       the name was taken elsewhere: a conflict name
link        missing      the file was deleted elsewhere: it comes back (restore)
                         at the new name; a folder deleted elsewhere: as create
rename      exists       the new name was taken elsewhere: a conflict name
rename      other        the source moved or vanished elsewhere: the server's
                         placement is taken; a file deleted elsewhere comes back
                         (restore) at the place it was moved to here
setattr     missing      the node is gone: nothing to do
==========  ===========  =====================================================
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from websync_server.protocol import (
    BLOCK_SIZE,
    CONFLICT_CHANGED,
    CONFLICT_EXISTS,
    CONFLICT_MISSING,
    KIND_DIR,
    KIND_FILE,
    OP_CREATE,
    OP_DELETE,
    OP_LINK,
    OP_MKDIR,
    OP_MKNOD,
    OP_RENAME,
    OP_RESTORE,
    OP_SETATTR,
    OP_SYMLINK,
    OP_UPDATE,
    ROOT_ID,
    Create,
    Rename,
    Restore,
    Update,
    BlockHash,
    Conflict,
    Node,
    NodeId,
    new_node_id,
)

from .errors import (
    BadRequest,
    CommitConflict,
    Forbidden,
    NotFound,
    Offline,
    OverQuota,
    ReadOnly,
    RemoteError,
    ServerFull,
    Unauthorized,
)
from .follower import Applier, backoff
from .remote import Remote
from .replica import NodeRow, Replica
from .storepaths import free_conflict_name
from .invalidation import Invalidation, Notify
from .writeback import NODE_REFS, Item, WriteBackQueue, clock

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Largest batch; a refused batch is split (halved until one change is alone) to find the change
#: the server refuses, so the others go ahead.
MAX_OPS = 1000
#: While changes keep coming, a batch starts at most this long after the one before.  A
#: batch costs the same few requests (missing, blocks, commit, and the changes the
#: follower fetches back) whatever its size: `tar` of small files sent as they became
#: ready went up a few files a batch.  A lone change waits for nothing more.
GATHER = 0.1
#: While a writer keeps on, each batch waits twice as long as the one before, up to
#: this: at 0.1 s a writer of small files paid for ten batches a second in its own
#: speed (the server's and the follower's work shares the cores).  The wait ends as
#: soon as the writer stops: the last batch leaves when its last change is due.
GATHER_MAX = 0.4
#: However long nothing is due, the uploader looks at the queue this often (one query): a wake
#: that never came (a commit callback that failed before it) then costs a change seconds, not
#: the wait for the next change to come along.
LOOK_EVERY = 5.0
#: Longest wait between tries of a change the server keeps refusing (400/404).
REFUSED_CAP = 600.0
#: Longest wait between tries while the server is unreachable or full.
RETRY_CAP = 60.0
#: Refusals (409) of one change after which it is settled for good (kept as a conflict copy
#: in the top folder, or dropped when it carries no bytes) rather than settled and tried again.
SETTLE_AFTER = 6
#: Refusals of one change that are retried at once; later ones back off.
RETRY_AT_ONCE = 2
#: Tries of one idempotent call (a block upload, "which blocks are missing") before the
#: batch gives up: on a flaky network one cut connection must not throw away a big batch.
BLOCK_TRIES = 3


class _Unanswered(Exception):
    """A commit got no answer: the server may or may not have applied it."""


class _LostBlock(RemoteError):
    """A block waiting for upload is gone from the cache (or damaged there): it cannot be sent."""


#: Blocks up to this size go up together, up to GROUP_BYTES a request.
SMALL_BLOCK = 512 * 1024
GROUP_BYTES = 2 * 1024 * 1024


def _by_size(missing: list[BlockHash], ops: list[dict[str, Any]]) -> tuple[list[BlockHash], list[list[BlockHash]]]:
    """Split *missing* into big blocks (one request each) and groups of small ones.

    A block's size follows from the op that names it: every block of a file is
    full but the last.
    """
    sizes: dict[str, int] = {}
    for op in ops:
        blocks = op.get("blocks") or []
        for i, h in enumerate(blocks):
            sizes[h] = BLOCK_SIZE if i < len(blocks) - 1 else int(op.get("size", 0)) - BLOCK_SIZE * i
    big: list[BlockHash] = []
    groups: list[list[BlockHash]] = []
    room = 0
    for h in missing:
        size = sizes.get(h, BLOCK_SIZE)
        if size > SMALL_BLOCK:
            big.append(h)
            continue
        if not groups or room < size + 68:
            groups.append([])
            room = GROUP_BYTES
        groups[-1].append(h)
        room -= size + 68
    return big, groups


def _same_file(op: dict[str, Any], node: Node) -> bool:
    """Whether the file *op* creates is *node* already: the same bytes and mode."""
    return (node.kind == KIND_FILE and not node.deleted and node.size == op.get("size", 0)
            and tuple(node.blocks) == tuple(op.get("blocks", ())) and node.mode & 0o7777 == op.get("mode", 0) & 0o7777)


def _first_remote_error(group: BaseExceptionGroup[BaseException]) -> RemoteError:
    """The first `RemoteError` in *group*; the group itself if anything else is in it (a bug)."""
    matched, rest = group.split(RemoteError)
    if rest is not None or matched is None:
        raise group
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, RemoteError)
    return leaf


#: Ops that give a node a name of its own: one taken elsewhere makes it a conflict name.
_NAMED = (OP_CREATE, OP_MKDIR, OP_SYMLINK, OP_MKNOD, OP_LINK)
_NODE_OPS = (OP_CREATE, OP_MKDIR, OP_SYMLINK, OP_MKNOD, OP_UPDATE, OP_SETATTR)


class Uploader:
    def __init__(
        self, queue: WriteBackQueue, replica: Replica, remote: Remote, read_block: Callable[[str], bytes | None],
        applier: Applier, notify: Notify, device: str, on_state: Callable[[bool, str], None],
        settle: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.queue = queue
        self.replica = replica
        self.remote = remote
        self._read_block = read_block
        self.applier = applier
        self.notify = notify
        self.device = device
        self.on_state = on_state
        self._settle = settle
        #: Told (with a sentence for the user) when a conflict was settled: the self-check
        #: (reconcile.py) compares the trees at the next quiet moment.
        self.on_conflict: Callable[[str], None] = lambda note: None
        #: Refusals (409) of each queue item (by its number) since this process started.
        self._refusals: dict[int, int] = {}
        self._wake = trio.Event()
        self._sleeping: trio.CancelScope | None = None
        self._last_start = -GATHER  # trio time the last batch was taken
        self._window = GATHER  # how long the next batch may wait after it (doubles while changes keep coming)
        self.failures = 0
        self.last_error = ""
        self.uploaded_bytes = 0
        self._max_ops = MAX_OPS
        self._retry = trio.Event()
        self._attempt_bytes = 0  # block bytes the current send() got through
        #: Batches whose commit went out (here, or before a restart: those found "uploading")
        #: and got no answer yet, with the ops sent.  The server may have applied one: it
        #: must go again under its own id with the same ops (the server checks a batch's ops
        #: before it looks up its id), whatever fails meanwhile, or it would be applied twice.
        self._sent: dict[str, list[dict[str, Any]] | None] = {}

    def wake(self) -> None:
        """Something was queued: come for it when it is ready (at once if it is ready now).

        A change waiting its quiet period does not wake the task: its sleep only
        ends sooner.  Thousands of changes a second would otherwise cost a queue
        scan each.
        """
        at = self.queue.ready_hint()
        scope = self._sleeping
        if scope is None or at <= clock():
            self._wake.set()
            return
        scope.deadline = min(scope.deadline, trio.current_time() + (at - clock()))

    def reconnected(self) -> None:
        """The server answers again (the follower reached it): end the backoff, retry now."""
        self.failures = 0
        self._retry.set()

    async def _pause(self, delay: float) -> None:
        """Back off for *delay* seconds, or until `reconnected`."""
        self._retry = trio.Event()
        with trio.move_on_after(delay):
            await self._retry.wait()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self._sent.update(dict.fromkeys(item.batch for item in self.queue.inflight() if item.batch))
        while True:
            # A batch whose commit got no answer (cut connection, crash) is sent again as it
            # was, under its batch id, before anything else: the server applies an id once.
            # take() reads the whole queue: only when something is ready (an enqueue
            # ends the sleep when its change is due, and thousands of them must not
            # cost a queue scan each).
            batch = self.queue.inflight()
            if not batch and self.queue.has_ready():
                await self._gather()
                batch = self.queue.take(max_ops=self._max_ops)
                self._last_start = trio.current_time()
            if not batch:
                await self._sleep()
                continue
            try:
                await self.send(batch)
            except Exception:
                # A bug in settling one batch must not end the mount (and with it every
                # other change): the batch waits and is tried again, loudly.
                log.exception("unexpected error while sending %d change(s); trying again later", len(batch))
                self.failures += 1
                self.queue.fail(batch, backoff(self.failures, cap=REFUSED_CAP), "unexpected error (see the log)")
                self._sent.pop(batch[0].batch or "", None)

    async def _sleep(self) -> None:
        self._wake = trio.Event()
        now = clock()
        ready = self.queue.next_ready_at(now)
        if ready is None and self.queue.has_ready(now):
            # An item became ready between the loop's look and this one (a sleep ends
            # at the very time an item is due): look again, never sleep without a deadline.
            ready = now + 0.01
        timeout = LOOK_EVERY if ready is None else min(LOOK_EVERY, max(0.0, ready - now))
        with trio.move_on_after(timeout) as self._sleeping:
            await self._wake.wait()
        self._sleeping = None

    async def _gather(self) -> None:
        """Right after a batch, while more changes are on their way, let them join the next one.

        The wait ends at the window's end, or once no change came since it began
        and the last one queued is due: a writer that stopped waits for nothing.
        """
        more = self.queue.next_ready_at()
        if more is None or more - clock() > self._window:
            self._window = GATHER
            return
        start = self._last_start + self._window
        self._window = min(GATHER_MAX, self._window * 2)
        while True:
            # Only changes on their way to this batch: a temporary name's 3 s wait held it
            # to the window's end.
            last = self.queue.last_ready_at(after=clock() + (start - trio.current_time()))
            until = start if last is None else min(start, trio.current_time() + (last - clock()))
            if until <= trio.current_time():
                return
            await trio.sleep_until(until)

    async def send(self, batch: list[Item]) -> bool:
        """Try to commit *batch*; True when it was committed."""
        self._attempt_bytes = 0
        batch = self._without_vanished(batch)
        if not batch:
            return True
        try:
            await self._commit(batch)
        except CommitConflict as exc:
            self._sent.pop(batch[0].batch or "", None)  # refused: it was not applied
            log.info("commit refused: %s", exc)
            try:
                await self._settle_conflict(batch, exc.conflict)
            except RemoteError as lost:
                # Settling may ask the server (where is that node now?) and the network
                # can go right then: nothing was settled, the batch is refused again later.
                self.failures += 1
                self.last_error = str(lost)
                delay = backoff(self.failures, cap=RETRY_CAP)
                log.info("conflict not settled (%s); retrying in %.1f s", lost, delay)
                self.queue.fail(batch, 0, str(lost))
                self.on_state(False, str(lost))
                await self._pause(delay)
                return False
            item, _ = self._locate(batch, exc.conflict.index)
            refusals = self._refusals.get(item.n, 0)
            delay = 0.0 if refusals <= RETRY_AT_ONCE else backoff(refusals - RETRY_AT_ONCE, cap=RETRY_CAP)
            self.queue.fail(batch, delay, str(exc))
            return False
        except _Unanswered as exc:
            # The items stay "uploading" under their batch id; run() sends them again.
            self.failures += 1
            self.last_error = str(exc)
            delay = backoff(self.failures, cap=RETRY_CAP)
            log.info("no answer to commit %s (%s); sending it again in %.1f s", batch[0].batch, exc, delay)
            self.on_state(False, str(exc))
            await self._pause(delay)
            return False
        except Forbidden as exc:
            self._sent.pop(batch[0].batch or "", None)  # refused: it was not applied
            if isinstance(exc, ReadOnly):
                self._refused(batch, exc)  # the mode changed since the mount: held with the server's sentence
                return False
            # The store itself is refused: a shared folder no longer shared with this user.  The
            # follower hears it too and the engine ends, forgetting the queue; until then it waits.
            log.info("commit refused (%s): waiting for the follower to end this folder", exc)
            self.queue.fail(batch, RETRY_CAP, str(exc))
            return False
        except (BadRequest, NotFound, _LostBlock) as exc:
            self._sent.pop(batch[0].batch or "", None)  # refused: it was not applied
            self._refused(batch, exc)
            return False
        except ServerFull as exc:
            # The server answers but cannot store blocks: these changes wait, others (a
            # rename, a delete) may still go, so the wait is the items', not the uploader's.
            self.failures += 1
            self.last_error = str(exc)
            delay = backoff(self.failures, cap=RETRY_CAP)
            log.warning("upload deferred (%s); retrying in %.1f s", exc, delay)
            self.on_state(True, str(exc))
            if isinstance(exc, OverQuota):
                # Never said of a batch that went: these wait, and later changes (deletes that
                # make room) go ahead of them.
                self._sent.pop(batch[0].batch or "", None)
            if batch[0].batch in self._sent:
                await self._pause(delay)
            else:
                self.queue.fail(batch, delay, str(exc))
            return False
        except (Offline, Unauthorized, RemoteError) as exc:
            # Nothing goes while the server is out of reach: the whole uploader waits, and
            # starts again at once when the follower reaches the server (reconnected()).
            # An attempt that got blocks through is progress on a bad network, not an
            # unreachable server: the next one follows at once instead of backing off.
            self.failures = 1 if self._attempt_bytes else self.failures + 1
            self.last_error = str(exc)
            delay = backoff(self.failures, cap=RETRY_CAP)
            log.info("upload deferred (%s); retrying in %.1f s", exc, delay)
            if batch[0].batch not in self._sent:
                self.queue.fail(batch, 0, str(exc))
            self.on_state(False, str(exc))
            await self._pause(delay)
            return False
        self._sent.pop(batch[0].batch or "", None)
        self.failures = 0
        self.last_error = ""
        self._max_ops = min(MAX_OPS, self._max_ops * 2)
        self.on_state(True, "")
        return True

    def _refused(self, batch: list[Item], exc: RemoteError) -> None:
        """A change of the batch cannot go (the server refuses it, its bytes are lost here): find it.

        One bad change must not hold back every other: the batch is tried
        again at once in halves, until the bad change is alone; that one
        waits (exponentially longer each time, up to `REFUSED_CAP`) while
        unrelated changes go ahead.  It is never dropped: it may hold the
        only copy of someone's bytes, and a fixed server may take it.
        """
        self.last_error = str(exc)
        if len(batch) > 1:
            self._max_ops = max(1, len(batch) // 2)
            log.warning("a batch of %d changes cannot go (%s); trying them in smaller batches", len(batch), exc)
            self.queue.fail(batch, 0, str(exc))
        else:
            item = batch[0]
            delay = backoff(item.attempts + 1, cap=REFUSED_CAP)
            log.error("the %s of node %s cannot go: %s (trying again in %.0f s)",
                      item.op["op"], item.node, exc, delay)
            self.queue.fail(batch, delay, str(exc))
        self.on_state(True, str(exc))  # reachable, but refusing

    def _without_vanished(self, batch: list[Item]) -> list[Item]:
        """Drop content updates of nodes this machine no longer has under that id.

        A file renamed to a local-only name leaves the server under its old id
        (a queued delete says so); an update still queued for that id has no
        precondition left to give and nothing to keep.  Only a batch that was
        never sent is trimmed: one in flight goes again exactly as it was.
        """
        if batch and batch[0].batch in self._sent:
            return batch
        kept = []
        for item in batch:
            if item.op["op"] == OP_UPDATE and self.replica.by_id(item.op["id"]) is None:
                log.info("dropping the update of %s: the node left this machine's tree", item.op["id"])
                self.queue.replace(item, None)
                continue
            kept.append(item)
        return kept

    def _ops(self, item: Item) -> list[dict[str, Any]]:
        """The server ops of *item*: ops it needs first (``before``), then its own."""
        op = dict(item.op)
        before = op.pop("before", [])
        blind = op.pop("blind", False)
        # The top folder's own attributes are not followed (follower.py): its mode or
        # times are set over whatever the server has, never refused as a conflict first.
        if op["op"] in (OP_UPDATE, OP_DELETE) or (op["op"] == OP_SETATTR and not blind and op["id"] != ROOT_ID):
            row = self.replica.by_id(op["id"])
            if row is not None:
                op["base"] = row.seq
        return [*before, op]

    async def _commit(self, batch: list[Item]) -> None:
        batch_id = batch[0].batch or ""
        ops = self._sent.get(batch_id) or [op for item in batch for op in self._ops(item)]
        hashes = list(dict.fromkeys(h for op in ops for h in op.get("blocks", ())))
        if self._settle is not None:
            await self._settle(hashes)  # blocks on their way early are not sent twice
        missing = await self._again(self.remote.missing, [BlockHash(h) for h in hashes])
        if missing:
            try:
                async with trio.open_nursery() as nursery:
                    limiter = trio.CapacityLimiter(4)
                    big, small = _by_size(missing, ops)
                    for h in big:
                        nursery.start_soon(self._upload, h, limiter)
                    for group in small:
                        nursery.start_soon(self._upload_group, group, limiter)
            except BaseExceptionGroup as group:
                # trio wraps the failed uploads in a group; the first one speaks for all
                # (the blocks that did go up stay on the server: a retry skips them).
                # Left wrapped, it would end the uploader and with it the mount.
                raise _first_remote_error(group) from group
        self._sent[batch_id] = ops
        try:
            seq = await self.remote.commit(batch_id, ops)
        except Offline as exc:
            raise _Unanswered(str(exc)) from exc
        # A mode or time set over another machine's change this one has not seen
        # yet (`blind`): the node's seq stays, so its next update still meets
        # that change as a conflict instead of replacing it unseen.
        blind = [op for op in ops if op["op"] == OP_SETATTR and "base" not in op]
        unseen = {op["id"] for op in blind} - {op["id"] for op in ops if op["op"] in _NODE_OPS and op not in blind}
        with self.replica.tx():
            self.replica.set_seqs((seq, op["id"]) for op in ops if op["op"] in _NODE_OPS and op["id"] not in unseen)
            for op in ops:
                if op["op"] in (OP_CREATE, OP_MKDIR, OP_SYMLINK, OP_MKNOD, OP_RESTORE, OP_LINK):
                    self.replica.set_entry_seq(op["parent"], op["name"], seq)
                elif op["op"] == OP_RENAME:
                    self.replica.set_entry_seq(op["new_parent"], op["new_name"], seq)
                    if not op.get("exchange"):
                        self.replica.mark_gone(op["parent"], op["name"], seq)
                    else:
                        self.replica.set_entry_seq(op["parent"], op["name"], seq)
                elif op["op"] == OP_DELETE:
                    self.replica.mark_gone(op["parent"], op["name"], seq)
            # What the journal said about these before our commit is history now.
            touched = {(op["parent"], op["name"]) for op in ops if "parent" in op and "name" in op}
            touched |= {(op["new_parent"], op["new_name"]) for op in ops if "new_parent" in op}
            # A rename or link changes entries only: the node's own remote state stays news.
            self.replica.drop_superseded({op["id"] for op in ops if op["op"] in _NODE_OPS} - unseen, touched, seq)
            self.queue.done(batch)
        self.applier.settle()

    async def _upload(self, h: BlockHash, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            data = await trio.to_thread.run_sync(self._read_block, h)
            if data is None:
                # Queued blocks are protected in the cache; losing one is a bug or disk damage.
                raise _LostBlock(f"block {h} waiting for upload is missing or damaged in the local cache")
            await self._again(self.remote.put_block, h, data)
            self.uploaded_bytes += len(data)
            self._attempt_bytes += len(data)

    async def _upload_group(self, hashes: list[BlockHash], limiter: trio.CapacityLimiter) -> None:
        """Several small blocks in one request (a folder of small files: one round trip)."""
        async with limiter:
            # One trip to a thread for the whole group: a trip per block cost more than
            # reading a small block, on the event loop the FUSE requests wait for.
            read = self._read_block
            datas = await trio.to_thread.run_sync(lambda: [read(h) for h in hashes])
            frames = []
            for h, data in zip(hashes, datas):
                if data is None:
                    raise _LostBlock(f"block {h} waiting for upload is missing or damaged in the local cache")
                frames.append((h, data))
            await self._again(self.remote.put_blocks, frames)
            sent = sum(len(d) for _, d in frames)
            self.uploaded_bytes += sent
            self._attempt_bytes += sent

    @staticmethod
    async def _again(call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Make an idempotent call, trying again at once (briefly) when the connection breaks."""
        for attempt in range(1, BLOCK_TRIES):
            try:
                return await call(*args)
            except Offline:
                await trio.sleep(backoff(attempt))
        return await call(*args)

    # -- conflicts -------------------------------------------------------------
    def _free_name(self, parent: str, name: str) -> str:
        return free_conflict_name(self.replica, parent, name, self.device)

    def _ino(self, node: str) -> int | None:
        row = self.replica.by_id(node)
        return row.ino if row else None

    def _locate(self, batch: list[Item], index: int) -> tuple[Item, int]:
        """The item holding op *index* of the batch, and the op's place among its ``before`` ops (-1: its own)."""
        for item in batch:
            count = len(item.op.get("before", ())) + 1
            if index < count:
                return item, index if index < count - 1 else -1
            index -= count
        raise RemoteError(f"the server named op {index} beyond the batch")

    @property
    def held(self) -> str:
        """Why the oldest change that failed to go is still waiting ('' when none)."""
        return self.queue.first_error()

    async def _settle_conflict(self, batch: list[Item], conflict: Conflict) -> None:
        item, place = self._locate(batch, conflict.index)
        op = dict(item.op)
        inv = Invalidation()
        if len(self._refusals) > 100_000:
            self._refusals.clear()  # bounded memory; a count starting again is harmless
        self._refusals[item.n] = self._refusals.get(item.n, 0) + 1
        if self._refusals[item.n] >= SETTLE_AFTER:
            self._settle_for_good(item, op, conflict, inv)
            self.notify(inv)
            self.applier.settle()
            return
        self.on_conflict("")
        if place >= 0:
            self._before_conflict(item, op, place, conflict)
            self.applier.settle()
            return
        kind, reason = op["op"], conflict.reason
        log.warning("conflict on %s of %s (%s): settling", kind, op.get("name") or op["id"], reason)
        if kind == OP_UPDATE:
            self._update_conflict(item, op, conflict, inv)
        elif kind == OP_MKDIR and reason == CONFLICT_EXISTS and conflict.node and conflict.node.kind == KIND_DIR:
            self._merge_folders(item, op, conflict.node, inv)
            log.warning("folder %s was made on another machine too: merged", op["name"])
        elif kind == OP_LINK and reason == CONFLICT_MISSING and (conflict.node is None or conflict.node.deleted):
            # The file was deleted elsewhere while it got a new name here: that name says the
            # file is wanted, so it comes back there (content and history).
            self.queue.replace(item, Restore(id=NodeId(op["id"]), parent=op["parent"], name=op["name"]))
            log.warning("%s was deleted on another machine while linked here: restored", op["name"])
        elif kind in _NAMED and reason == CONFLICT_EXISTS and conflict.node and conflict.node.id == op["id"]:
            self._already_made(item, op, conflict.node)
        elif (kind == OP_CREATE and reason == CONFLICT_EXISTS and conflict.node and _same_file(op, conflict.node)
              and not self.replica.entries_of(conflict.node.id)):
            self._made_alike(item, op, conflict.node, inv)
        elif kind in _NAMED:
            self._create_conflict(item, op, reason, inv)
        elif kind == OP_DELETE:
            with self.replica.tx():
                if reason != CONFLICT_MISSING and conflict.node is not None:
                    self._restore(op, conflict, inv)
                self.queue.replace(item, None)
        elif kind == OP_RENAME and reason == CONFLICT_EXISTS:
            with self.replica.tx():
                new_name = self._free_name(op["new_parent"], op["new_name"])
                self._move_entry(op["new_parent"], op["new_name"], new_name, op["id"], inv)
                self.queue.replace(item, dict(op, new_name=new_name))
                self.queue.remap_entry(op["new_parent"], op["new_name"], op["new_parent"], new_name, op["id"])
        elif kind == OP_RENAME:
            await self._take_server_placement(item, op, inv)
        elif kind == OP_SETATTR and reason == CONFLICT_CHANGED:
            self.queue.replace(item, dict(op, blind=True))  # set over the other change, which stays news here
        else:
            self.queue.replace(item, None)
        self.notify(inv)
        self.applier.settle()

    def _settle_for_good(self, item: Item, op: dict[str, Any], conflict: Conflict, inv: Invalidation) -> None:
        """A change the server refused again and again: keep its bytes where the server takes them.

        Whatever made it refused (a folder that cannot come back, a chain of
        settlements that does not end), the change is not tried again as it
        is: what it makes goes to the top folder under a conflict name, an
        edit becomes a file of its own there, and a change that carries no
        bytes (a rename, a delete, a mode) is dropped; the self-check then
        brings this machine's tree in line with the server's.
        """
        kind = op["op"]
        op.pop("before", None)
        where = op.get("name") or op["id"]
        if kind == OP_UPDATE:
            row = self.replica.by_id(op["id"])
            places = self.replica.entries_of(op["id"])
            if row is not None and places:
                fresh = new_node_id()
                with self.replica.tx():
                    self.replica.remap(op["id"], fresh)
                    self.queue.remap(op["id"], fresh)
                    parent, name = places[0]
                    op = _as_create(op, fresh, parent, name, row).to_wire()
                    self.queue.replace(item, op)
                kind, where = OP_CREATE, name
        if kind in _NAMED:
            self._create_conflict(item, op, "refused", inv)
            note = f"{where!r} was refused {SETTLE_AFTER} times ({conflict.reason}): kept in the top folder"
        else:
            self.queue.replace(item, None)
            note = f"the {kind} of {where!r} was refused {SETTLE_AFTER} times ({conflict.reason}): dropped"
        log.warning("%s", note)
        self.on_conflict(note)

    def _update_conflict(self, item: Item, op: dict[str, Any], conflict: Conflict, inv: Invalidation) -> None:
        row = self.replica.by_id(op["id"])
        places = self.replica.entries_of(op["id"])
        if row is None or not places:
            log.info("dropping the update of %s: it was deleted here too", op["id"])
            self.queue.replace(item, None)
            return
        parent, name = places[0]
        with self.replica.tx():
            if conflict.reason == CONFLICT_CHANGED and conflict.node is not None and not conflict.node.deleted:
                # The server's version stays at the path; ours goes beside it.
                copy = new_node_id()
                copy_name = self._free_name(parent, name)
                self.replica.add_node(
                    copy, row.kind, row.mode, size=op["size"], mtime_ns=op["mtime_ns"], blocks=tuple(op["blocks"]),
                    owner=(row.uid, row.gid),
                )
                self.replica.set_entry(parent, copy_name, copy)
                self.replica.apply_node(conflict.node)
                self.replica.forget_deferred_node(op["id"])
                self.queue.replace(item, _as_create(op, copy, parent, copy_name, row))
                self._follow_copy(op["id"], item, copy)
                inv.inodes.append(row.ino)
                self._entry_changed(parent, copy_name, inv)
                log.warning("%s was changed on another machine too: this machine's version is now %r",
                            name, copy_name)
            else:
                # Deleted elsewhere while edited here: the edit wins under a new id.  The
                # changes before this one went through as they are (the server refuses the
                # first that fails): they keep the old id, or a create of it ahead in this
                # batch would make the new id twice.
                fresh = new_node_id()
                self.replica.remap(op["id"], fresh)
                self.queue.remap(op["id"], fresh, since=item.n)
                self.queue.replace(item, _as_create(op, fresh, parent, name, row))
                log.warning("%s was deleted on another machine while edited here: keeping the edit", name)

    def _follow_copy(self, node: str, settled: Item, copy: NodeId) -> None:
        """Later queued edits of *node* go to its conflict copy *copy*, not over the server's version.

        They were made on this machine's version of the file, which is the copy
        now: sent to *node* with the server's seq as base, the next one would
        replace the other machine's bytes that the conflict just kept.
        """
        for later in self.queue.items(node):
            if later.n > settled.n and later.op["op"] == OP_UPDATE:  # queued, or in this refused batch
                edit = {k: v for k, v in later.op.items() if k != "base"}
                edit["id"] = copy
                self.queue.replace(later, edit)
                self.replica.update_node(copy, size=edit["size"], blocks=tuple(edit["blocks"]),
                                         mtime_ns=edit["mtime_ns"])

    def _restore_op(self, node: str) -> dict[str, Any] | None:
        """An op that brings folder *node* back at its place here, if it has one."""
        places = self.replica.entries_of(node)
        if not places or node == ROOT_ID:
            return None
        parent, name = places[0]
        return Restore(id=NodeId(node), parent=parent, name=name).to_wire()

    def _before_conflict(self, item: Item, op: dict[str, Any], place: int, conflict: Conflict) -> None:
        """A folder restore that *item* needs was refused."""
        before = list(op["before"])
        failed = before[place]
        if conflict.reason == CONFLICT_MISSING:
            # Its own folder is gone too: bring that back first.
            outer = self._restore_op(failed["parent"])
            if outer is not None and outer not in before:
                before.insert(place, outer)
            else:
                del before[place]
        elif (conflict.reason == CONFLICT_EXISTS and failed["op"] == OP_RESTORE and conflict.node is not None
              and conflict.node.kind == KIND_DIR and conflict.node.id != failed["id"]):
            # The folder was deleted elsewhere and a folder of its name made there again
            # (``rm -rf a; mkdir a``): what was made in it here goes into that one, where
            # the other machine's user looks for it, not to a conflict name at the top.
            del before[place]
            inv = Invalidation()
            ours = failed["id"]
            self._fold_folder(ours, conflict.node, inv)
            op = {k: (conflict.node.id if k in NODE_REFS and v == ours else v) for k, v in op.items()}
            self.notify(inv)
            log.warning("%s was made again on another machine after it was deleted there: what was made in it "
                        "here goes into the new one", failed["name"])
        else:
            del before[place]  # already back (exists), or not restorable: go without
        op["before"] = before
        self.queue.replace(item, op)

    def _merge_folders(self, item: Item, op: dict[str, Any], theirs: Any, inv: Invalidation) -> None:
        """The folder *item* makes, never sent, is folder *theirs*: one folder holds both machines' files."""
        with self.replica.tx():
            self._fold_folder(op["id"], theirs, inv)
            self.queue.replace(item, None)
            self.replica.forget_deferred_entry(op["parent"], op["name"])

    def _fold_folder(self, ours: str, theirs: Any, inv: Invalidation) -> None:
        """Make folder *ours* the server's folder *theirs*: their files and ours in one, ours renamed on a clash."""
        with self.replica.tx():
            self._fold_children(ours, theirs.id, inv)
            if self.replica.entries_of(theirs.id):
                # The journal has put their folder elsewhere since (moved on the other machine):
                # the one folder is where the server has it, not at a second place here.
                for parent, name in self.replica.entries_of(ours):
                    self.replica.remove_entry(parent, name)
                    self._entry_changed(parent, name, inv)
            if self.replica.by_id(theirs.id) is not None:
                # Known here through the journal (at our name, or where it went since): ours takes its place.
                self.replica.drop_node(theirs.id)
            self.replica.remap(ours, theirs.id, seq=theirs.seq)
            self.queue.remap(ours, theirs.id)
        ino = self._ino(theirs.id)
        if ino is not None:
            inv.inodes.append(ino)
            # Their files are in this folder now: names the kernel may hold as missing.
            inv.entries.extend((ino, name) for name, _ in self.replica.children(theirs.id))

    def _already_made(self, item: Item, op: dict[str, Any], node: Node) -> None:
        """Our own create was applied before (its answer was lost): send only what it adds."""
        log.info("%s was made before: its create is not sent again", op["name"])
        with self.replica.tx():
            if op["op"] == OP_CREATE and (list(node.blocks), node.size) != (list(op.get("blocks", [])), op.get("size", 0)):
                self.replica.set_seqs([(node.seq, node.id)])  # the base of the update that follows
                self.queue.replace(item, Update(id=node.id, size=op.get("size", 0),
                                                blocks=tuple(op.get("blocks", [])), mtime_ns=op.get("mtime_ns", 0)))
            else:
                self.queue.replace(item, None)

    def _made_alike(self, item: Item, op: dict[str, Any], node: Node, inv: Invalidation) -> None:
        """Another machine made the same file at the same name (one archive unpacked on both): one file.

        A conflict copy of the very same bytes only had the user compare two
        files; this machine's file becomes the server's node, as Syncthing and
        Dropbox make it.
        """
        log.info("%s was made alike on another machine: one file, no copy", op["name"])
        with self.replica.tx():
            if self.replica.by_id(node.id) is not None:
                # The journal brought the other machine's node already, with no name here (its
                # entry waits while ours holds the name): no inode of it was ever given out.
                self.replica.drop_node(node.id)
            self.replica.remap(op["id"], node.id)
            self.queue.remap(op["id"], node.id, since=item.n)  # later changes of it are the node's
            row, _ = self.replica.apply_node(node)
            self.queue.replace(item, None)
        if row is not None:
            inv.inodes.append(row.ino)

    def _create_conflict(self, item: Item, op: dict[str, Any], reason: str, inv: Invalidation) -> None:
        parent = op["parent"]
        if reason == CONFLICT_MISSING:
            # The folder was deleted elsewhere while something was made in it here:
            # the folder comes back, holding what was made here.
            restore = self._restore_op(parent)
            if restore is not None and restore not in op.get("before", []):
                op["before"] = [restore, *op.get("before", [])]
                self.queue.replace(item, op)
                return
        with self.replica.tx():
            if reason != CONFLICT_EXISTS:
                # The folder is gone on the server and cannot come back: keep ours at the top.
                new_parent = NodeId(ROOT_ID)
            else:
                new_parent = parent
            new_name = self._free_name(new_parent, op["name"])
            here = self.replica.lookup(parent, op["name"])
            if here is not None and here.id == op["id"]:
                self.replica.remove_entry(parent, op["name"])
                self.replica.set_entry(new_parent, new_name, op["id"])
                self._entry_changed(parent, op["name"], inv)
                self._entry_changed(new_parent, new_name, inv)
            # Otherwise it has moved on here (a queued rename takes it from the conflict
            # name) and the name holds something else now, which stays.
            self.queue.replace(item, dict(op, parent=new_parent, name=new_name))
            self.queue.remap_entry(parent, op["name"], new_parent, new_name, op["id"])

    def _restore(self, op: dict[str, Any], conflict: Conflict, inv: Invalidation) -> None:
        node = conflict.node
        assert node is not None
        self.replica.apply_node(node)
        self.replica.set_orphan(node.id, False)
        if self.replica.entries_of(node.id):
            # Back at a place here already (the journal put it there, or this machine did):
            # a second name would show a folder twice, or inside itself.
            log.warning("%s was changed on another machine after it was deleted here: kept", op["name"])
            return
        name = op["name"]
        here = self.replica.lookup(op["parent"], name)
        made = self._unsent_making(here.id) if here is not None and node.kind == here.kind == KIND_DIR else None
        if made is not None:
            # ``rm -rf a; mkdir a`` here while another machine added to ``a``: the folder made
            # here never reached the server, so it is the one folder, as when two machines
            # make it (a conflict name would have taken the folder's name from everyone).
            self._merge_folders(made, dict(made.op), node, inv)
            log.warning("%s was changed on another machine after it was deleted here: one folder with the "
                        "one made here since", name)
            return
        if here is not None:
            # Something new here took its name.  The server keeps the node at that name, so
            # it moves there too: a name of this machine's own would leave the two apart (and
            # the journal's next move of it would give it a second name here).
            name = self._free_name(op["parent"], name)
            self.queue.enqueue(Rename(id=node.id, parent=op["parent"], name=op["name"],
                                      new_parent=op["parent"], new_name=name))
        self.replica.set_entry(op["parent"], name, node.id, node.seq)
        self._entry_changed(op["parent"], name, inv)
        log.warning("%s was changed on another machine after it was deleted here: restored", name)

    def _fold_children(self, ours: str, theirs: str, inv: Invalidation) -> None:
        """Before folder *ours* becomes *theirs*: each of our entries whose name theirs has too.

        One archive unpacked on two machines makes the same folders and files
        on both: a folder of ours never sent is one with theirs, a file of ours
        never sent with their bytes and mode is their file (`_made_alike`),
        all the way down.  Anything else of that name is ours under a conflict name,
        a file of ours with a second name too (a hard link is not their two files).
        """
        for name in self.replica.names(ours):
            row, other = self.replica.lookup(ours, name), self.replica.lookup(theirs, name)
            if row is None or other is None:
                continue
            making = self._unsent_making(row.id)
            alike = making is not None and self.replica.entries_of(other.id) == [(theirs, name)] and (
                self.replica.entries_of(row.id) == [(ours, name)]) and (
                row.kind == other.kind == KIND_DIR
                or (row.kind == other.kind == KIND_FILE and (row.size, row.blocks, row.mode & 0o7777)
                    == (other.size, other.blocks, other.mode & 0o7777)))
            if making is None or not alike:
                # Free in both: renamed within ours, it must not replace a conflict copy already there.
                free = free_conflict_name(self.replica, theirs, name, self.device, also=ours)
                self._move_entry(ours, name, free, row.id, inv)
                self.queue.remap_entry(ours, name, ours, free, row.id)
                continue
            if row.kind == KIND_DIR:
                self._fold_children(row.id, other.id, inv)
            # Ours takes their id (and keeps the inode the kernel may hold); their row goes.
            self.replica.remove_entry(theirs, name)
            self.replica.drop_node(other.id)
            self.replica.remap(row.id, other.id, seq=other.seq)
            self.queue.replace(making, None)
            self.queue.remap(row.id, other.id)

    def _unsent_making(self, node: str) -> Item | None:
        """The queued making of *node* (a folder or file the server has not had), if it is its first item."""
        items = self.queue.items(node, limit=1)
        return items[0] if items and items[0].op["op"] in (OP_MKDIR, OP_CREATE) else None

    def _move_entry(self, parent: str, old: str, new: str, node: str, inv: Invalidation) -> None:
        here = self.replica.lookup(parent, old)
        if here is None or here.id != node:
            return  # moved on here since: the name holds something else now, which stays
        self.replica.remove_entry(parent, old)
        self.replica.set_entry(parent, new, node)
        self._entry_changed(parent, old, inv)
        self._entry_changed(parent, new, inv)

    def _entry_changed(self, parent: str, name: str, inv: Invalidation) -> None:
        ino = self._ino(parent)
        if ino is not None:
            inv.entries.append((ino, name))
            inv.attrs.append(ino)

    def _make_room(self, parent: str, name: str, node: str, inv: Invalidation) -> None:
        """Before *node* takes ``parent/name`` here: what holds that name with changes not yet sent stays, renamed.

        Set over it, a file edited here and replaced elsewhere lost its last
        name, and its queued edit was then dropped as deleted here too.  Under
        a conflict name the edit goes up as a file of its own.
        """
        here = self.replica.lookup(parent, name)
        if here is None or here.id == node or len(self.replica.entries_of(here.id)) > 1:
            return
        if not self.queue.items(here.id, limit=1):
            return
        free = self._free_name(parent, name)
        self._move_entry(parent, name, free, here.id, inv)
        self.queue.remap_entry(parent, name, parent, free, here.id)
        log.warning("%s was replaced on another machine while changed here: this machine's version is now %r",
                    name, free)

    async def _take_server_placement(self, item: Item, op: dict[str, Any], inv: Invalidation) -> None:
        node = op["id"]
        try:
            state = await self.remote.node_state(NodeId(node))
        except NotFound:
            state = None
        row = self.replica.by_id(node)
        if state is not None and state.node.deleted and row is not None and row.kind != KIND_DIR:
            # Deleted elsewhere while moved here: the move says the file is wanted, so it
            # comes back (content and history) at the place it was moved to.
            self.queue.replace(item, Restore(id=NodeId(node), parent=op["new_parent"], name=op["new_name"]))
            log.warning("%s was deleted on another machine while moved here: restored", op["new_name"])
            return
        with self.replica.tx():
            for parent, name in self.replica.entries_of(node):
                self.replica.remove_entry(parent, name)
                self._entry_changed(parent, name, inv)
            if state is None or state.node.deleted:
                self.replica.set_orphan(node)
            else:
                kind = row.kind if row else KIND_DIR
                for entry in state.entries:
                    self._make_room(entry.parent, entry.name, node, inv)
                    self.replica.set_entry(entry.parent, entry.name, node, entry.seq)
                    self._entry_changed(entry.parent, entry.name, inv)
                log.info("kept the server's placement of %s (%s)", node, kind)
            self.queue.replace(item, None)


def _as_create(update: dict[str, Any], node: NodeId, parent: NodeId, name: str, row: NodeRow) -> Create:
    """The content of queued *update* as a new file *node* at ``parent/name``, with *row*'s mode and owner."""
    return Create(id=node, parent=parent, name=name, mode=row.mode, mtime_ns=update["mtime_ns"], size=update["size"],
                  blocks=tuple(update["blocks"]), uid=row.uid, gid=row.gid)
