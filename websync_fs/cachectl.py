"""The requests behind ``websync pin``, ``unpin``, ``pins``, ``cache`` and ``status PATH``.

`CacheControl` answers them from one machine's components: inside the mount
process (the mount wires it and serves it on the control socket, control.py),
or, when no mount runs, inside the command itself (`local_control`, which
holds the cache lock meanwhile).  Either way the blocks of queued changes and
of pinned files are protected before anything is evicted, so no command loses
data waiting for upload or unpins anything by accident.

Every answer is a JSON-able dict; the CLI prints it as text or as ``--json``.
Paths in requests are store paths (storepaths.py).
"""

from __future__ import annotations

import inspect
import shutil
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from websync_server.protocol import ROOT_ID, BlockHash

from cache import BlockCache, CacheError

from .blocksource import Content
from .errors import RemoteError, WebSyncError
from .filestate import FileStates
from .home import Home
from .pins import Pinner, PinTable, files_under
from .replica import Replica
from .statedb import StateDb
from .storepaths import BadPath, path_of, resolve
from .writeback import WriteBackQueue

#: `clean --dry-run` names at most this many files.
LISTED_FILES = 1000


class CacheControl:
    """One machine's cache, pins and file states, as requests with JSON answers."""

    def __init__(
        self, *, cache: BlockCache, replica: Replica, queue: WriteBackQueue, pinner: Pinner, states: FileStates,
        download: Callable[[BlockHash], Awaitable[Content]] | None = None, mountpoint: str | None = None,
    ) -> None:
        self.cache = cache
        self.replica = replica
        self.queue = queue
        self.pinner = pinner
        self.states = states
        self._download = download
        self.mountpoint = mountpoint
        self._ops: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
            "hello": self.hello, "pin": self.pin, "unpin": self.unpin, "pins": self.pins,
            "progress": self.progress, "cache": self.stats, "limit": self.limit, "clean": self.clean,
            "verify": self.verify, "state": self.state,
        }

    @property
    def fetching(self) -> bool:
        """True in the mount, where pinned files are fetched in the background."""
        return self._download is not None

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run request *op* with *args*; `WebSyncError` for a refused request."""
        method = self._ops.get(op)
        if method is None:
            raise WebSyncError(f"unknown request {op!r} (is the mount older than this command?)")
        try:
            inspect.signature(method).bind(**args)
        except TypeError as exc:
            raise WebSyncError(f"bad arguments for {op!r}: {exc}") from exc
        return await method(**args)

    # -- requests --------------------------------------------------------------
    async def hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "mountpoint": self.mountpoint, "fetching": self.fetching}

    async def pin(self, paths: list[str]) -> dict[str, Any]:
        rows = [(path, resolve(self.replica, path)) for path in paths]  # all or nothing
        for path, row in rows:
            if row.kind not in ("file", "dir"):
                raise BadPath(f"{path or '/'} is a symbolic link; pin the folder or file it points to")
        pinned = []
        for path, row in rows:
            new = self.pinner.pin(row.id, path)
            inside = [pin.path for pin in self.pinner.pinned_by(row.id) if pin.node != row.id]
            pinned.append({"path": path, "node": row.id, "new": new, "inside": inside})
        return {"pins": pinned, "fetching": self.fetching}

    async def unpin(self, paths: list[str]) -> dict[str, Any]:
        by_path = {pin.path: pin for pin in self.pinner.table.all()}
        pinned = {pin.node for pin in by_path.values()}
        targets: list[tuple[str, str]] = []
        for path in paths:
            try:
                node: str = resolve(self.replica, path).id
            except BadPath:
                if path in by_path:  # the pinned folder is gone; its pin is named by its old path
                    targets.append((path, by_path[path].node))
                    continue
                raise
            if node in pinned:
                targets.append((path, node))
                continue
            covering = self.pinner.pinned_by(node)
            if covering:
                raise BadPath(
                    f"{path} is not pinned itself but is inside the pinned folder {covering[0].path or '/'}; "
                    "unpin that folder instead"
                )
            raise BadPath(f"{path or '/'} is not pinned")
        for _path, node in targets:
            self.pinner.unpin(node)
        return {"unpinned": [{"path": path, "node": node} for path, node in targets]}

    async def pins(self) -> dict[str, Any]:
        listed = []
        for pin in self.pinner.table.all():
            row = self.replica.by_id(pin.node)
            current = None if row is None or row.orphan else path_of(self.replica, pin.node)
            progress = self.pinner.progress([pin.node])
            listed.append({
                "path": pin.path if current is None else current, "node": pin.node, "since": pin.since,
                "exists": current is not None, "kind": row.kind if row else None, **progress.to_json(),
            })
        return {"pins": listed, "fetching": self.fetching}

    async def progress(self, nodes: list[str]) -> dict[str, Any]:
        return self.pinner.progress(nodes).to_json()

    async def stats(self) -> dict[str, Any]:
        # The replica and the queue are read here, on the event loop; the cache in a thread.
        pinned_blocks = self.pinner.pinned_blocks
        queued_blocks = self.queue.all_blocks()
        pins = len(self.pinner.table.all())
        changes = len(self.queue)

        def measure() -> dict[str, Any]:
            stats = self.cache.stats()
            pinned = self.cache.present(pinned_blocks)
            waiting = self.cache.present(queued_blocks)
            disk = shutil.disk_usage(self.cache.directory)
            return {
                "directory": str(self.cache.directory),
                "used": stats.used,
                "limit": stats.limit,
                "blocks": stats.count,
                "pinned": sum(pinned.values()),
                "pins": pins,
                "waiting_for_upload": sum(waiting.values()),
                "changes_waiting": changes,
                "protected": stats.protected_bytes,
                "reclaimable": stats.reclaimable,
                "over_limit": stats.over_limit,
                "protected_over_limit": stats.protected_bytes > stats.limit,
                "free_disk": disk.free,
                "hits": stats.hits,
                "misses": stats.misses,
                "hit_rate": stats.hit_rate,
                "mounted": self.fetching,
            }

        return await trio.to_thread.run_sync(measure)

    async def limit(self, limit: int) -> dict[str, Any]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise WebSyncError(f"a cache limit must be a whole number of bytes, not {limit!r}")
        await trio.to_thread.run_sync(self.cache.set_limit, limit)
        return await self.stats()

    async def clean(self, dry_run: bool = False) -> dict[str, Any]:
        if dry_run:
            before = await trio.to_thread.run_sync(self.cache.stats)
            files, more = self._evictable_files()
            return {
                "dry_run": True, "freed": before.reclaimable, "blocks": before.reclaimable_count,
                "kept": before.protected_bytes, "files": files, "more_files": more,
            }
        freed = await trio.to_thread.run_sync(self.cache.evict, 0)
        after = await trio.to_thread.run_sync(self.cache.stats)
        return {"dry_run": False, "freed": freed, "kept": after.used, "blocks": after.count}

    def _evictable_files(self) -> tuple[list[str], int]:
        """Files that have cached blocks a clean would remove (pinned and queued ones keep theirs)."""
        root = self.replica.by_id(ROOT_ID)
        assert root is not None
        kept = self.pinner.pinned_blocks | set(self.queue.all_blocks())
        candidates = [f for f in files_under(self.replica, root) if any(h not in kept for h in f.blocks)]
        present = self.cache.present(h for f in candidates for h in f.blocks if h not in kept)
        names: list[str] = []
        more = 0
        for f in candidates:
            if any(h in present for h in f.blocks):
                if len(names) < LISTED_FILES:
                    names.append(path_of(self.replica, f.id) or f"(node {f.id})")
                else:
                    more += 1
        return names, more

    async def verify(self) -> dict[str, Any]:
        started = time.monotonic()
        checked = (await trio.to_thread.run_sync(self.cache.stats)).count
        corrupt = await trio.to_thread.run_sync(self.cache.verify)
        refetched: list[str] = []
        failed: list[dict[str, str]] = []
        for h in corrupt:
            if self._download is None:
                failed.append({"hash": h, "error": "not mounted: fetched again when next read"})
                continue
            try:
                data = await self._download(BlockHash(h))
                await trio.to_thread.run_sync(self.cache.put, h, data)
                refetched.append(h)
            except (RemoteError, CacheError) as exc:
                failed.append({"hash": h, "error": str(exc)})
        # Pinned blocks that could not come back now are fetched in the background.
        self.pinner.refetch(f["hash"] for f in failed)
        queued = set(self.queue.all_blocks())
        lost = [f["hash"] for f in failed if f["hash"] in queued]
        return {
            "checked": checked, "corrupt": corrupt, "refetched": refetched, "failed": failed, "lost": lost,
            "seconds": round(time.monotonic() - started, 3),
        }

    async def state(self, paths: list[str]) -> dict[str, Any]:
        return {"files": [self.states.of_path(path).to_json() for path in paths]}


@contextmanager
def local_control(home: Home) -> Iterator[CacheControl]:
    """A `CacheControl` on *home* for a command to use while no mount runs.

    The caller holds the cache lock (control.CacheLock).  Nothing is fetched
    here: pinned files come down when the store is next mounted.
    """
    settings = home.load_settings()
    home.ensure()
    db = StateDb(home.replica_db)
    try:
        replica = Replica(db)
        queue = WriteBackQueue(db)
        cache = BlockCache(home.blocks_dir, settings.cache_limit)
        try:
            # The same protection a mount builds at start-up, before anything evicts.
            cache.protect(queue.all_blocks())
            cache.protect(replica.local_blocks())
            pinner = Pinner(PinTable(db), replica, cache)
            pinner.reconcile()
            states = FileStates(replica, cache.present, queue, pinner.is_pinned)
            yield CacheControl(cache=cache, replica=replica, queue=queue, pinner=pinner, states=states)
        finally:
            cache.close()
    finally:
        db.close()
