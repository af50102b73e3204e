"""The wiring of a synced folder: the engine's components and the folder front end, run together.

The engine is built as the mount builds it (state database, cache, queue,
remote, core, follower, uploader, self-check); the front end in front of it is
the folder: a watcher, the merger, and the guards.  Order of start-up: guards
(placement, marker, lock), engine, first catch-up with the journal, watcher,
start-up scan of the whole folder, then ``ready``.  Shutdown: pending uploads
get a short chance to go out; what is left stays queued for the next start.

The user's own folder also syncs every folder shared with them in a subfolder
of its own (grafts.py): each a `FolderClient` *part of* the own one, in the
same process, which the own one's signals and ``--stop`` end.

The engine's block cache would keep a second copy of every file that went
through it (uploads are read into it, downloads come down through it).  The
folder holds the content, so after each batch every block that is not
protected (waiting for upload) is evicted: a synced folder uses its content's
size plus the metadata and what waits for upload.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio


from .. import taskdump
from ..client import Engine
from ..control import ControlServer
from ..errors import ConfigError, Offline
from ..home import Home
from ..invalidation import Invalidation
from ..names import NamePolicy
from ..portable import STOP_SIGNALS
from .corepaths import CorePaths, join
from .grafts import FolderGrafts
from .guards import FolderGone, Identity, Marker, check_placement
from .ignore import IgnoreRules
from .known import KnownTree
from .merger import Merger
from .tree import local_sig
from .probe import probe
from .watcher import QUIET, DirtyPaths, Watcher

log = logging.getLogger(__name__)

#: A batch starts this long after the last local event (one operation's events come together) when
#: every file written to was closed since, else the watcher's QUIET after the last write ...
SETTLE = 0.02
#: ... or this long after the first of them, whatever keeps happening.
MAX_WAIT = 5.0
#: How often the folder and its marker are checked, and a full scan made anyway.
CHECK_EVERY = 1.0
RESCAN_EVERY = 600.0
#: How often changes a read-only shared folder refused are tried again (the owner may make it writable).
REFUSED_RETRY = 30.0
_REFUSED = os.strerror(errno.EROFS)  # the reason `Merger` names such a path with


def prepare(home: Home, folder: Path, store: str, only: tuple[str, ...],
            shown: bool = False) -> tuple[KnownTree, Marker]:
    """The guards before anything runs: placement, the marker, the lock, the folder this home syncs.

    *shown*: a shared folder shown in the user's synced folder, which goes where that one is; synced
    elsewhere before (on its own, or in a synced folder moved since), it starts here as a first sync.
    """
    check_placement(folder)
    known = KnownTree(home.known_db)
    try:
        synced = known.meta("folder")
        if synced and synced != str(folder) and len(known):
            if not shown:
                raise ConfigError(f"this machine syncs {synced}; stop it first or use another --home")
            log.info("%s was synced at %s before: a first sync here (nothing is deleted)", folder, synced)
            known.clear()
        marker = Marker(folder)
        if not folder.is_dir():
            if len(known):
                raise FolderGone(f"{folder} is gone (a disk unplugged? deleted?): nothing was deleted on the server; "
                                 f"bring it back, or start over with 'websync sync --reset {folder}'")
            folder.mkdir(parents=True)
        if not marker.exists():
            if len(known):
                raise FolderGone(f"{folder} has lost its marker file: it is not the folder this machine synced "
                                 f"(nothing was deleted on the server); start over with 'websync sync --reset {folder}'")
            marker.create(store)
        identity = marker.lock()
        if known.meta("folder_id") not in ("", identity.folder_id):
            if len(known):
                marker.release()
                raise ConfigError(f"{folder} holds another folder's marker; start over with 'websync sync --reset'")
        known.set_meta("folder", str(folder))
        known.set_meta("folder_id", identity.folder_id)
        if only:
            known.set_meta("only", json.dumps(list(only)))
    except BaseException:
        known.close()
        raise
    return known, marker


class FolderClient(Engine):
    """Every component of one synced folder."""

    def __init__(self, home: Home, folder: Path, only: tuple[str, ...] = (), part_of: Path | None = None) -> None:
        self.home = home
        self.folder = folder
        #: The synced folder this one is shown in (a shared folder's subfolder), which starts and stops it.
        self.part_of = part_of
        settings, token = self._take_home(home, "this home is in use by process {pid}; stop it first")
        self.settings = settings
        try:
            self.known, self.marker = prepare(home, folder, settings.store, only, shown=part_of is not None)
        except BaseException:
            self.cache_lock.release()
            self.mount_lock.release()
            raise
        self.identity: Identity = self.marker.identity()
        only = tuple(json.loads(self.known.meta("only", "[]")))
        names = NamePolicy(settings.local_only, settings.temporary)
        self._build_engine(home, settings, token, names)
        self.rules = IgnoreRules(folder, names, only)
        # Before the watcher starts: the probe's own files come and go unseen.
        self.local_names = probe(folder)
        self.dirty = DirtyPaths()
        self.merger = Merger(folder, CorePaths(self.vfs), self.replica, self.known, self.rules, settings.device,
                             check_folder=self.check_folder, prefetch=self._prefetch, names=self.local_names,
                             busy=self.dirty.busy, hurry=self.queue.hurry)
        self.merger.recover()  # before the watcher: its renames are not changes
        self.remote_due = False
        self.control = ControlServer(home.state_dir, self._request)
        self.online = False
        self.error = ""
        self.closed = False
        self.scanned = 0.0
        self.gone: FolderGone | None = None
        self._nursery: trio.Nursery
        self._front = trio.CancelScope()
        #: The folders shared with this user, each in a subfolder (none in a shared folder's own sync).
        self.grafts: FolderGrafts | None = None
        if not home.store:
            self.grafts = FolderGrafts(home, folder, self.replica, self.rules, self.remote, self._graft)
            self.follower.on_shares = self.grafts.folders.changed

    def _graft(self, place: Home, folder: Path) -> FolderClient:
        return FolderClient(place, folder, part_of=self.folder)

    # -- upward reports ------------------------------------------------------------
    def notify(self, inv: Invalidation) -> None:
        """The engine changed the replica (a remote change, a settled conflict): bring it to the folder."""
        self.remote_due = True
        self.dirty.changed.set()

    def _on_state(self, online: bool, error: str) -> None:
        if online and not self.online:
            self.uploader.reconnected()
            self.source.reconnected()
        self.online, self.error = online, error

    async def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "stop":  # `websync sync --stop`: as SIGTERM, which Windows cannot send
            if self.part_of is not None:
                raise ConfigError(f"this shared folder is part of the synced folder {self.part_of}; stop that")
            if args.get("mount") or Path(str(args.get("place", ""))) != self.folder:
                raise ConfigError(f"{args.get('place')} is not mounted or synced by this home (it syncs {self.folder})")
            self._front.cancel()
            return {"pid": os.getpid()}
        if op == "check":
            differences = await self.reconciler.check(repair=bool(args.get("repair")))
            if differences:
                self.reconciler.due()
            return {"differences": differences or [], "pending": len(self.queue), "writing": self.vfs.writing()}
        raise ConfigError(f"a synced folder does not answer {op!r}: its files are all on this disk")

    def _prefetch(self, hashes: list[str]) -> None:
        self.source.prefetch(self._nursery, hashes)  # type: ignore[arg-type]

    def check_folder(self) -> None:
        """Raise FolderGone unless the folder and its marker are still the ones this sync took."""
        if self.marker.identity() != self.identity:
            raise FolderGone(f"the synced folder {self.folder} was removed or replaced: syncing stopped, "
                             "nothing was deleted on the server")

    # -- status ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "mountpoint": "", "folder": str(self.folder),
            "server": self.settings.server, "user": self.settings.user, "device": self.settings.device,
            "online": self.online, "error": self.error, "last_contact": self.follower.last_contact,
            "pending": len(self.queue), "pending_bytes": self.queue.pending_bytes(), "cursor": self.replica.cursor,
            "held": self.uploader.held, "notices": self.reconciler.notices(),
            "problems": dict(sorted(self.merger.problems.items())[:50]), "conflicts": self.merger.conflicts,
            "last_scan": self.scanned, "updated": time.time(),
            "aliased": dict(sorted(self.merger.aliases.aliased().items())[:50]),
            "read_only": self.vfs.read_only, "revoked": self.revoked,
        }

    def write_status(self, final: bool = False) -> None:
        status = self.status()
        if final:
            status.update(pid=None, online=False)
        tmp = self.home.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.home.status_file)

    async def _status_writer(self) -> None:
        while True:
            try:
                self.write_status()
            except OSError as exc:
                log.warning("cannot write %s: %s", self.home.status_file, exc)
            await trio.sleep(1.0)

    # -- running -----------------------------------------------------------------------
    async def _first_sync(self) -> None:
        try:
            with trio.fail_after(30):
                await self.follower.catch_up()
        except (Offline, trio.TooSlowError) as exc:
            if self.replica.cursor == 0:
                raise ConfigError(
                    f"cannot reach {self.settings.server} and this machine has no copy of the tree yet: {exc}"
                ) from exc
            log.warning("server unreachable (%s): syncing offline from the local replica", exc)
            self._on_state(False, str(exc))

    async def _batch(self, everything: bool = False) -> None:
        paths, all_paths = self.dirty.take()
        remote, self.remote_due = self.remote_due, False
        respelled = self.dirty.take_respelled(lambda path: os.path.lexists(join(self.folder, path)))
        await self.merger.settle(paths, everything or all_paths, remote, respelled)
        if everything or all_paths:
            self.scanned = time.time()
        # The folder holds the content: the cache keeps only what waits for upload.
        await trio.to_thread.run_sync(self.cache.evict, 0)

    async def _sync_loop(self, ready: Callable[[], None]) -> None:
        await self._batch(everything=True)
        log.info("syncing %s with %s", self.folder, self.settings.server)
        ready()
        rescan_at = trio.current_time() + RESCAN_EVERY
        while True:
            refused = self._only_refused()
            retry_at = trio.current_time() + REFUSED_RETRY if refused else math.inf
            with trio.move_on_at(min(rescan_at, retry_at)) as idle:
                await self.dirty.changed.wait()
            if not idle.cancelled_caught:
                rescan_at = trio.current_time() + RESCAN_EVERY  # a scan after that long without a change
            elif trio.current_time() >= rescan_at:
                self.dirty.rescan()
                rescan_at = trio.current_time() + RESCAN_EVERY
            else:
                self.dirty.add()  # the refused changes again: the owner may have made the folder writable
            if self.dirty.paths or self.dirty.everything:
                await self._settled()
            await self._batch()
            if self.merger.again or (self.merger.problems and not self._only_refused()):
                # A file still being written or one that failed: after the next quiet moment.
                await trio.sleep(QUIET if self.merger.again else 2.0)
                self.dirty.add()

    def _only_refused(self) -> bool:
        """Every problem is a change a read-only shared folder refuses: tried again now and then, not every moment."""
        return bool(self.merger.problems) and all(r == _REFUSED for r in self.merger.problems.values())

    async def _settled(self) -> None:
        """Wait until every file written was closed and events paused, or a writer was quiet, or MAX_WAIT."""
        give_up = trio.current_time() + MAX_WAIT
        # One reading of the clock: read twice, the wait could come out below zero (trio refuses it).
        while (left := min(self.dirty.settled_at(SETTLE), give_up) - trio.current_time()) > 0:
            await trio.sleep(min(left, SETTLE))

    async def _watch_folder(self) -> None:
        while True:
            await trio.sleep(CHECK_EVERY)
            self.check_folder()

    async def _stopping_if_gone(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run *fn*; if the folder is gone, remember why and stop everything (nothing more is synced)."""
        try:
            await fn(*args)
        except FolderGone as exc:
            self.gone = exc
            self.error = str(exc)
            log.warning("%s", exc)
            self._nursery.cancel_scope.cancel()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                log.info("signal %d: stopping the sync of %s", signum, self.folder)
                scope.cancel()
                return

    def end(self) -> None:
        """Stop syncing: the shared folder is no longer shared with this user (its files are taken out at the end)."""
        self.error = self.revoked
        self._front.cancel()

    async def _drain_all(self) -> None:
        """Give this folder's pending uploads and every shared folder's in it their short chance, side by side."""
        async with trio.open_nursery() as draining:
            draining.start_soon(self.drain)
            if self.grafts is not None:
                draining.start_soon(self.grafts.folders.drain)

    async def run(self, ready: Callable[[], None]) -> None:
        await self._first_sync()
        try:
            async with trio.open_nursery() as nursery:
                self.source.start(nursery)
                self.vfs.start(nursery)
                nursery.start_soon(self.follower.run)
                nursery.start_soon(self.uploader.run)
                nursery.start_soon(self.reconciler.run)
                await nursery.start(self.early.run)
                await nursery.start(self.control.serve)
                nursery.start_soon(self._status_writer)
                await nursery.start(Watcher(self.folder, self.dirty, self.rules.elsewhere).run)
                self._nursery = nursery
                nursery.start_soon(self._stopping_if_gone, self._watch_folder)
                if self.grafts is not None:
                    nursery.start_soon(self.grafts.folders.run)
                with self._front as front:  # made at start: a stop asked before this point still counts
                    if self.part_of is None:  # trio gives a signal to the receiver opened last only
                        nursery.start_soon(self._signals, front)
                        nursery.start_soon(taskdump.serve)
                    await self._stopping_if_gone(self._sync_loop, ready)
                await self._drain_all()
                # Blocks uploaded since the last batch (or while draining) are in the folder too.
                await trio.to_thread.run_sync(self.cache.evict, 0)
                nursery.cancel_scope.cancel()
        finally:
            if self.revoked:
                try:
                    self._clear_revoked()
                except OSError as exc:
                    log.warning("could not clear %s of the folder no longer shared: %s", self.folder, exc)
            self.write_status_final()
        if self.gone is not None:
            raise self.gone

    def _clear_revoked(self) -> None:
        """Take out of the folder what came from a folder no longer shared, as a mount shows nothing of it.

        Only what is still as last synced goes: a file changed here, or never
        sent, is the user's own work the server will no longer take, and stays
        (the status says how many).  The folder itself goes once it is empty.
        """
        kept = 0
        for row in sorted(self.known.all().values(), key=lambda k: k.path.count("/"), reverse=True):
            now = local_sig(self.folder, row.path)
            if now is None:
                continue
            try:
                if not now.same(row.sig):
                    kept += 1
                elif now.kind == "dir":
                    os.rmdir(join(self.folder, row.path))
                else:
                    os.unlink(join(self.folder, row.path))
            except OSError:
                kept += 1  # a folder still holding what stays, a file that cannot go
        self.known.clear()
        left = [n for n in os.listdir(self.folder) if n != self.marker.path.name] if self.folder.is_dir() else []
        if not left:
            self.marker.release()
            self.marker.path.unlink(missing_ok=True)
            self.folder.rmdir()
        elif kept:
            self.revoked += f"; what was changed here stays in {self.folder}"
        log.info("cleared %s of the folder no longer shared (%d entries of the user's own kept)", self.folder, kept)

    def write_status_final(self) -> None:
        try:
            self.write_status(final=True)
        except OSError:
            pass

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.remote.aclose()
        self.cache.close()
        self.db.close()
        self.known.close()
        self.marker.release()
        if self.revoked:
            self._forget_place()
        self.cache_lock.release()
        self.mount_lock.release()


async def run_folder(home: Home, folder: Path, only: tuple[str, ...], ready: Callable[[], None]) -> None:
    client = FolderClient(home, folder, only)
    try:
        await client.run(ready)
    finally:
        await client.close()
