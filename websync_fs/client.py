"""The platform-neutral client: the one place that builds and runs the sync engine.

A front end (the FUSE mount in `fuse/`, a synced folder, a drive letter)
makes a `Client` for a home, plugs in with two callbacks -- `front_notify`,
told what changed behind its back, and whatever it asks of `states` -- and
runs it: `first_sync`, then `start` in its nursery, then its own loop, then
`drain` and `close`.  Nothing here knows which front end it serves.

Order of start-up: the lock of the home, state database, cache (with every
queued block protected again), remote, core, the engine's components, first
catch-up with the journal; then the background tasks (block source, follower,
uploader, self-check, early uploads, pins, status writer, login watcher,
control channel).  Shutdown runs in reverse; pending uploads stay in the queue
for the next start.

A shared folder's place (home.py) runs the same engine on the folder's store.
Read-only for this user, its core refuses every change (``Vfs.read_only``:
EROFS, nothing queued).  Refused by the server (403: the folder is no longer
shared with this user), the engine ends its front end, skips the drain and, on
close, once the member's unsent files are written out (kept.py), deletes the
place's replica, queue, working copies and cached blocks, keeping only a status
that says why.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from cache import BlockCache

from .backoff import Backoff
from .blocksource import BlockSource
from .cachectl import CacheControl
from .control import CacheLock, ControlServer
from .earlyupload import EarlyUploads
from .errors import ConfigError, Offline
from .filestate import FileStates
from .follower import Applier, Follower
from .home import Home
from .invalidation import Invalidation
from .kept import keep_unsent, revoked_sentence
from .mountlock import MountLock, holder
from .names import NamePolicy
from .owners import Owners
from .pins import Pinner, PinTable
from .reconcile import Reconciler
from .remote import Remote
from .replica import Replica
from .statedb import StateDb
from .uploader import Uploader
from .vfs import Vfs
from .writeback import WriteBackQueue, clock

log = logging.getLogger(__name__)

#: How long a stop waits for pending uploads while the server answers.
DRAIN_ON_STOP = 15.0
#: How long a new mount waits for the lock of one that is ending (killed a moment ago).
LOCK_WAIT = 5.0
#: Seconds between looks at the token file for a new login.
LOGIN_CHECK = 1.0


class Engine:
    """The sync engine of one home, the same for every front end: state, cache, remote, core, follower,
    uploader and self-check, wired to each other.  Front ends subclass it (`Client`, the synced folder's
    `FolderClient`) after taking the home's locks, and answer `notify`, `end` and `_on_state`.
    """

    home: Home

    def _take_home(self, home: Home, busy: str) -> tuple[Any, str]:
        """The home's settings and token, with its locks held: one engine per home, a mount or a folder.

        "Is this home in use" is the lock the running engine holds (mountlock.py);
        *busy* is the refusal when another process holds it (``{pid}``: that process).
        """
        settings, token = home.logged_in()
        home.ensure()
        lock = MountLock.acquire(home.pid_file, wait=LOCK_WAIT)
        if lock is None:
            raise ConfigError(busy.format(pid=holder(home.pid_file)))
        self.mount_lock = lock
        try:
            # Only one process uses the cache with protection at a time (control.py).
            self.cache_lock = CacheLock.acquire(home.state_dir)
        except BaseException:
            self.mount_lock.release()
            raise
        return settings, token

    def _build_engine(self, home: Home, settings: Any, token: str, names: NamePolicy) -> None:
        self.db = StateDb(home.replica_db)
        self.replica = Replica(self.db)
        self.cache = BlockCache(home.blocks_dir, settings.cache_limit)
        self.queue = WriteBackQueue(
            self.db, quiet=settings.quiet_period, first_quiet=settings.first_quiet_period,
            protect=self.cache.protect, unprotect=self.cache.unprotect,
        )
        # Protection lives in memory: rebuild it from what is durable.
        self.cache.protect(self.queue.all_blocks())
        self.cache.protect(self.replica.local_blocks())
        self.remote = Remote(settings.server, token, settings.store, ca_file=settings.ca_file, shared=bool(home.store))
        # One back-off for the machine: an answer to any request ends every wait (backoff.py).
        self.retry = Backoff()
        self.remote.on_answer = self.retry.answered
        self.source = BlockSource(self.cache, self.remote)

        def store_block(data: bytes) -> str:
            return self.cache.add(data, protect=True)  # held until the queue item protects it

        self.early = EarlyUploads(self.remote)
        self.vfs = Vfs(
            self.db, self.replica, self.queue, self.source, store_block,
            self.cache.unprotect, home.work_dir, hold_blocks=self.cache.protect, sync_blocks=self.cache.sync,
            names=names, temporary_quiet=settings.temporary_quiet_period,
            replace_quiet=settings.replace_quiet_period, early_upload=self.early.offer,
            owners=Owners.of_this_process(_numbers(settings.uid_map), _numbers(settings.gid_map)),
        )
        self.applier = Applier(self.replica, self.queue, self.vfs.busy, self.notify)
        self.follower = Follower(self.remote, self.applier, self._on_state, self.retry)
        self.uploader = Uploader(
            self.queue, self.replica, self.remote, self.cache.peek, self.applier, self.notify,
            settings.device, self._on_state, settle=self.early.settle,
        )
        self.reconciler = Reconciler(
            self.replica, self.queue, self.remote, self.notify, settings.device,
            writing=self.vfs.writing, has_blocks=lambda hs: len(self.cache.present(hs)) == len(set(hs)),
            busy=self.vfs.busy,
        )
        self.follower.on_reset = self.reconciler.resync
        self.uploader.on_conflict = self.reconciler.due
        self.applier.on_deferred = self.reconciler.due
        self.vfs.on_settled = self.applier.settle
        self.queue.on_drop(self.applier.settle)
        self.queue.on_enqueue(self.uploader.wake)
        self.vfs.read_only = bool(home.share().get("read_only"))
        #: Why the server refuses this place's store ("": it does not): the folder is no longer shared.
        self.revoked = ""
        self.follower.on_forbidden = self.refused

    def notify(self, inv: Invalidation) -> None:
        """The engine changed the replica behind the front end's back."""
        raise NotImplementedError

    def end(self) -> None:
        """End the front end at once, open files or not (FUSE: a lazy unmount); nothing more is sent."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Give pending uploads a short chance to go out before the engine ends (the front end's shutdown)."""
        if self.revoked:
            return  # the server takes nothing more for this folder
        # Said before the wait: if these never go, the log tells which and why.
        for item in self.queue.items(limit=5):
            error = self.queue.first_error(item.node)
            log.info("waiting to go before the end: %s of %s (%s, due in %.1f s)%s", item.op["op"], item.node,
                     item.state, item.ready_at - clock(), f": {error}" if error else "")
        with trio.move_on_after(DRAIN_ON_STOP):
            while len(self.queue) and self.uploader.failures == 0:
                await trio.sleep(0.1)

    def refused(self, why: str) -> None:
        """The server refuses this place's store: a shared folder no longer shared with this user."""
        if self.revoked:
            return
        if not self.home.store:
            log.error("the server refuses this machine's own store: %s", why)
            return
        self.revoked = revoked_sentence(self.home, 0, None)
        log.warning("%s (%s)", self.revoked, why)
        self.end()

    async def _keep_unsent(self) -> bool:
        """Copy out the files this machine changed in a folder no longer shared with it that never went up.

        The folder's place is deleted next; until now a member's unsent work
        went with it (a file saved a moment before the owner's unshare, one
        held back by the owner's full quota, one still open for writing).
        Each such file is written, at its path in the folder, under the own
        home's ``kept`` folder, and the status says where.  False if one could
        not be written (a full disk): then the place stays, and the next look at
        the list of shared folders tries again (`kept.forget_unshared`).
        """
        await self.vfs.seal_all()
        # Also what a seal that failed (a full disk) left in fsync records: those bytes are here only.
        kept, failed, dest = await trio.to_thread.run_sync(
            keep_unsent, self.home, self.replica, self.queue, self.vfs.fsynced, self.cache)
        if kept:
            self.revoked = revoked_sentence(self.home, kept, dest)
        return not failed

    def _forget_place(self) -> None:
        """Delete everything this machine held of a folder no longer shared with it; keep the status saying so."""
        self.home.forget()
        log.info("deleted the replica and cache of %s", self.home.store)

    def _on_state(self, online: bool, error: str) -> None:
        raise NotImplementedError


class Client(Engine):
    """Every component of the engine for one home, shown to the user at *place* by a front end."""

    def __init__(self, home: Home, place: Path) -> None:
        self.home = home
        self.place = place
        #: Where the user sees it now: a shared folder's name in the own mount can change (fuse/grafts.py).
        self.shown_place: Callable[[], Path] = lambda: self.place
        settings, token = self._take_home(
            home, "this home is already mounted by process {pid}; run 'websync unmount' first")
        self.settings = settings
        self._build_engine(home, settings, token, NamePolicy(settings.local_only, settings.temporary))
        self.pins = Pinner(PinTable(self.db), self.replica, self.cache, self.remote.get_block)
        self.pins.reconcile()  # pinned blocks are protected again before the first put
        #: The front end's answer to changes made behind its back (FUSE: drop the kernel's caches).
        self.front_notify: Callable[[Invalidation], None] = lambda inv: None
        #: The front end's way to end itself when `websync unmount` asks (FUSE: unmount; WinFsp: stop).
        self.stop: Callable[[], Awaitable[None]] = self._cannot_stop
        #: The front end's way to end at once, open files or not (FUSE: terminate, then a lazy unmount).
        self.front_end_now: Callable[[], None] = lambda: None
        self.reconciler.on_notice = lambda: self._status_dirty.set()
        self.vfs.notify = self.notify
        self.applier.on_content = self.pins.changed
        self.queue.on_enqueue(self.pins.poke)
        self.states = FileStates(self.replica, self.cache.present, self.queue, self.pins.is_pinned, self.vfs.busy)
        self.cachectl = CacheControl(
            cache=self.cache, replica=self.replica, queue=self.queue, pinner=self.pins, states=self.states,
            download=self.remote.get_block, mountpoint=str(place),
        )
        self.control = ControlServer(home.state_dir, self._request)
        self.online = False
        self.error = ""
        self.closed = False
        self._status_dirty = trio.Event()

    def notify(self, inv: Invalidation) -> None:
        """Tell the front end what changed behind its back."""
        self.front_notify(inv)

    def end(self) -> None:
        self.front_end_now()

    async def _cannot_stop(self) -> None:
        raise ConfigError("this mount cannot be stopped by a command; end its process")

    async def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A CLI request: the self-check and stopping here, everything else to the cache control."""
        if op == "stop":
            place = str(args.get("place", ""))
            if Path(place) != self.place:
                raise ConfigError(f"{place} is not mounted (this home is mounted at {self.place})")
            await self.stop()  # returns once the front end is going: uploads drain after the answer
            return {"pid": os.getpid()}
        if op == "check":
            differences = await self.reconciler.check(repair=bool(args.get("repair")))
            if differences:
                self.reconciler.due()  # repaired at the next quiet moment
            return {"differences": differences or [], "pending": len(self.queue), "writing": self.vfs.writing()}
        return await self.cachectl.handle(op, args)

    def _on_state(self, online: bool, error: str) -> None:
        if online and not self.online:
            self.uploader.reconnected()  # uploads waiting out a backoff go now
            self.source.reconnected()
            self.pins.reconnected()
        if (online, error) != (self.online, self.error):
            self.online, self.error = online, error
            self._status_dirty.set()

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "mountpoint": str(self.shown_place()),
            "server": self.settings.server,
            "user": self.settings.user,
            "device": self.settings.device,
            "online": self.online,
            "error": self.error,
            "last_contact": self.follower.last_contact,
            "pending": len(self.queue),
            "pending_bytes": self.queue.pending_bytes(),
            "cursor": self.replica.cursor,
            "held": self.uploader.held,
            "notices": self.reconciler.notices(),
            "last_check": self.reconciler.last_check,
            "read_only": self.vfs.read_only,
            "revoked": self.revoked,
            "updated": time.time(),
        }

    def write_status(self) -> None:
        tmp = self.home.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, self.home.status_file)

    async def _status_writer(self) -> None:
        while True:
            try:
                self.write_status()
            except OSError as exc:  # a full disk must not end the mount; the next write may fit
                log.warning("cannot write %s: %s", self.home.status_file, exc)
            self._status_dirty = trio.Event()
            with trio.move_on_after(2.0):
                await self._status_dirty.wait()

    def _login_stamp(self) -> tuple[int, int]:
        """What changes when `websync login` runs again: the token file's inode and mtime."""
        try:
            st = self.home.token_file.stat()
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    async def _follow_login(self) -> None:
        """A new `websync login` takes effect here within a second: its token and device name.

        The server writes the device name a token belongs to into every version
        this machine commits, and conflict copies carry it: a mount going on
        with the old token would write under the old name until remounted.
        """
        seen = self._login_stamp()
        while True:
            await trio.sleep(LOGIN_CHECK)
            stamp = self._login_stamp()
            if stamp == seen:
                continue
            seen = stamp
            try:
                settings, token = self.home.logged_in()
            except ConfigError as exc:
                log.warning("the new login cannot be read (%s); going on with the old one", exc)
                continue
            if (settings.server, settings.store) != (self.settings.server, self.settings.store):
                log.warning("logged in to %s, store %s: that takes effect at the next mount",
                            settings.server, settings.store)
                continue
            self.remote.set_token(token)
            self.uploader.device = settings.device
            self.settings = settings
            self._status_dirty.set()
            log.info("logged in again: device %s from now on", settings.device)

    async def first_sync(self, progress: Callable[[int], None]) -> None:
        """Bring the replica up to date before the front end shows the tree.

        A machine that has the whole tree from before mounts from its replica
        when the server is slow or away.  One that never had it all (a first
        mount, or one cut short) waits for every page, however long a big
        store takes, telling *progress* the records received: a program must
        never see a folder as complete before it is.
        """
        notify, self.applier.notify = self.applier.notify, lambda inv: None  # nothing shown yet to tell
        whole = self.replica.meta("listed") == "1" or (self.replica.cursor > 0 and not self.replica.meta("listing"))
        try:
            if whole:
                with trio.fail_after(30):
                    await self.follower.catch_up()
            else:
                with self.replica.tx():
                    self.replica.set_meta("listing", "1")
                await self.follower.catch_up(progress=progress)
            with self.replica.tx():
                self.replica.set_meta("listed", "1")
                self.replica.set_meta("listing", "")
        except (Offline, trio.TooSlowError) as exc:
            if not whole:
                raise ConfigError(
                    f"cannot reach {self.settings.server} and this machine does not have the whole tree yet: {exc}"
                ) from exc
            log.warning("server unreachable (%s): mounting offline from the local replica", exc)
            self._on_state(False, str(exc))
        finally:
            self.applier.notify = notify

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the engine's background tasks in *nursery* (the front end's); the control channel answers then."""
        self.source.start(nursery)
        self.vfs.start(nursery)
        nursery.start_soon(self.follower.run)
        nursery.start_soon(self.uploader.run)
        nursery.start_soon(self.reconciler.run)
        await nursery.start(self.early.run)
        nursery.start_soon(self._status_writer)
        nursery.start_soon(self._follow_login)
        nursery.start_soon(self.pins.run)
        await nursery.start(self.control.serve)

    def write_status_final(self) -> None:
        status = self.status()
        status["pid"] = None
        status["online"] = False
        status["mountpoint"] = ""
        self.home.status_file.write_text(json.dumps(status))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        all_kept = True
        if self.revoked:
            try:
                all_kept = await self._keep_unsent()
                self.write_status_final()  # with where the unsent files are
            except Exception:  # the close must go on: the locks are released below
                log.exception("could not keep the unsent files of %s", self.home.store)
                all_kept = False
        await self.remote.aclose()
        self.cache.close()
        self.db.close()
        if self.revoked and all_kept:
            self._forget_place()
        self.cache_lock.release()
        self.mount_lock.release()


def _numbers(mapping: dict[str, int]) -> dict[int, int]:
    """A uid or gid map from config.json (string keys) as numbers; a bad entry is a config error."""
    try:
        numbers = {int(store): int(here) for store, here in mapping.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"uid_map and gid_map map numbers to numbers, e.g. {{\"1001\": 1000}}; got {mapping!r}") from None
    if len(set(numbers.values())) != len(numbers) or any(n < 0 for pair in numbers.items() for n in pair):
        raise ConfigError(f"uid_map and gid_map need distinct numbers of 0 or more on each side; got {mapping!r}")
    return numbers
