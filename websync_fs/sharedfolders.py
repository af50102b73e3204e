"""Which shared folders a front end of the user's own store shows beside their files, and their engines.

Every folder shared with the user (and every folder they share) appears in
their own tree on every machine, as Dropbox and Nextcloud show them.  Each is
the folder's place on this machine (home.py) run by an engine of its own
inside the front end's process; the front end says how one is shown
(`Serve`: the mount grafts it into its tree, fuse/grafts.py), this module
decides which are shown and when one starts or stops:

- at start, the folders this machine showed before, from their places'
  records, before the front end says it is ready (offline work goes on in
  them);
- then the server's list (`Remote.shares`), again whenever the own store's
  long poll says it changed (`Follower.on_shares`) and every `RECHECK`
  seconds;
- a folder no longer listed stops as one whose store the server refuses
  (`Engine.refused`: its place is deleted, the status says why); a place
  not listed and not running is deleted the same way;
- a changed mode (read-only or not) takes effect on the running engine from
  its next request;
- a folder mounted or synced on its own (``--shared NAME``) holds its
  place's lock: that front end shows it, and it is tried again later.

Every front end names them alike (`top_names`): as the folder is named, or
``NAME (OWNER)`` (as `websync shares` lists it) when the own tree has an entry
of that name or two folders share it, numbered (``NAME (OWNER 2)``) when even
that is taken: no folder is ever hidden behind another.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .errors import WebSyncError
from .home import Home
from .kept import forget_unshared
from .mountlock import holder

if TYPE_CHECKING:
    from .client import Engine
    from .remote import Remote

log = logging.getLogger(__name__)

#: Seconds between looks at the server's list when nothing says it changed (an older server).
RECHECK = 60.0
#: At most this long the front end waits at start for the folders it showed before (a slow server).
START_WAIT = 10.0

#: How a front end shows one folder: build its engine on the place, run it, tell `shown` once the folder
#: is there to see, go on until cancelled (or the engine ends).
Serve = Callable[[dict[str, Any], Home, Callable[["Engine"], None]], Awaitable[None]]

Shown = TypeVar("Shown")


def top_names(shown: Iterable[Shown], share: Callable[[Shown], Mapping[str, Any]],
              own_has: Callable[[str], bool]) -> dict[str, Shown]:
    """The folders *shown* by the name each has at the top of the own tree (*own_has*: the tree has that name)."""
    by_name: dict[str, list[Shown]] = {}
    for folder in shown:
        by_name.setdefault(str(share(folder)["name"]), []).append(folder)
    names: dict[str, Shown] = {}
    decorated: list[tuple[str, Shown]] = []
    for name, folders in sorted(by_name.items()):
        if len(folders) > 1 or own_has(name):
            for folder in sorted(folders, key=lambda f: str(share(f).get("store", ""))):
                decorated.append((f"{name} ({share(folder)['owner']}", folder))
        else:
            names[name] = folders[0]
    # A decorated name may meet a folder named just so ("Fam (alice)"), the own tree,
    # or another of one owner's: it takes a number then, and no folder is ever hidden.
    for stem, folder in decorated:
        n = 1
        while (name := f"{stem}{'' if n == 1 else f' {n}'})") in names or own_has(name):
            n += 1
        names[name] = folder
    return names


class SharedFolders:
    def __init__(self, home: Home, remote: Remote, serve: Serve) -> None:
        self.home = home
        self.remote = remote
        self.serve = serve
        #: The engines of the folders shown, or starting, by store id.
        self.running: dict[str, Engine] = {}
        self._starting: set[str] = set()
        self._due = trio.Event()
        self._nursery: trio.Nursery | None = None

    def changed(self, stamp: int = 0) -> None:
        """The server says the user's shared folders changed: look at its list now."""
        self._due.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Show the folders; started once those this machine showed before are shown (or `START_WAIT` passed)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            before = [p.share() for p in self.home.places() if p.share().get("store") and not p.revoked()]
            up = [self._start(share) for share in before]
            with trio.move_on_after(START_WAIT):
                for event in up:
                    await event.wait()
            task_status.started()
            while True:
                await self._refresh()
                with trio.move_on_after(RECHECK):
                    await self._due.wait()
                self._due = trio.Event()

    async def drain(self) -> None:
        """Give every shown folder's pending uploads their short chance, side by side (the front end ends)."""
        async with trio.open_nursery() as nursery:
            for engine in list(self.running.values()):
                nursery.start_soon(engine.drain)

    async def _refresh(self) -> None:
        try:
            listed = await self.remote.shares()
        except WebSyncError as exc:  # offline or refused: what is shown stays
            log.debug("cannot list shared folders: %s", exc)
            return
        stores = {str(s["store"]): {key: s[key] for key in ("store", "name", "owner", "read_only")} for s in listed}
        for store, engine in list(self.running.items()):
            if store not in stores:
                engine.refused("the server no longer lists this folder")
        for place in self.home.places():
            if (place.store not in stores and place.store not in self.running and place.store not in self._starting
                    and not place.forgotten() and holder(place.pid_file) is None):  # running on its own: it hears
                await trio.to_thread.run_sync(forget_unshared, place)  # keeps its unsent files first
        for store, share in stores.items():
            shown = self.running.get(store)
            if shown is None:
                self._start(share)
            elif shown.home.share() != share:
                writable = shown.vfs.read_only and not share["read_only"]
                shown.home.save_share(share)
                shown.vfs.read_only = bool(share["read_only"])  # from the next request on
                if writable:
                    shown.queue.retry_refused()  # held back as read-only, maybe for minutes: they go now

    def _start(self, share: dict[str, Any]) -> trio.Event:
        """Show *share*'s folder unless it is shown or starting; the event is set once it is (or will not be)."""
        up = trio.Event()
        store = str(share["store"])
        if store in self.running or store in self._starting or self._nursery is None:
            up.set()
            return up
        self._starting.add(store)
        self._nursery.start_soon(self._serve, share, up)
        return up

    async def _serve(self, share: dict[str, Any], up: trio.Event) -> None:
        store = str(share["store"])
        place = self.home.place(store)

        def shown(engine: Engine) -> None:
            self._starting.discard(store)
            self.running[store] = engine
            up.set()

        try:
            if place.revoked():
                place.status_file.unlink(missing_ok=True)  # shared again since
            place.save_share(share)
            await self.serve(share, place, shown)
        except WebSyncError as exc:  # held by its own mount, or offline with no tree of it yet
            log.info("shared folder %s not shown now: %s", share["name"], exc)
        finally:
            up.set()  # not shown after all: whoever waits for it waits no more
            self._starting.discard(store)
            engine = self.running.pop(store, None)
            if engine is not None and engine.revoked:
                log.info("%s", engine.revoked)
