"""Mounting the store through FUSE: a `Client` behind the pyfuse3 operations, until unmounted.

The client builds and runs the engine; this module adds only what FUSE needs:
the operations object (`ops.py`), the kernel mount with its options, the
pyfuse3 main loop, the kernel's read-ahead window, and unmounting on SIGTERM,
SIGINT or SIGHUP.  On unmount, pending uploads get a short chance to go out
(`Client.drain`); what is left stays queued for the next start.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from .. import taskdump
from ..client import Client
from ..errors import WebSyncError
from ..home import Home
from ..portable import STOP_SIGNALS, unmount_command
from . import readahead
from .grafts import GraftedOperations, Grafts
from .ops import FuseOperations

log = logging.getLogger(__name__)


class FuseMount:
    """One home's client, mounted at *mountpoint*."""

    def __init__(self, home: Home, mountpoint: Path, *, allow_other: bool = False) -> None:
        self.mountpoint = mountpoint
        self.allow_other = allow_other
        self.client = Client(home, mountpoint)
        self.ops = FuseOperations(self.client.vfs)
        self.client.front_notify = self.ops.notify
        self.client.stop = self._unmount
        self.client.front_end_now = self._terminate
        self.ops.file_state = self.client.states.xattr
        #: The folders shared with this user, shown at the top of their own store (none in a shared folder's mount).
        self.router = GraftedOperations(self.ops)
        self.grafts: Grafts | None = None
        if not home.store:
            self.grafts = Grafts(home, self.client, mountpoint, self.router)
            self.client.follower.on_shares = self.grafts.folders.changed
        self._terminated = False

    async def run(self, ready: Callable[[], None], progress: Callable[[int], None] = lambda records: None) -> None:
        client = self.client
        await client.first_sync(progress)
        options = set(pyfuse3.default_options)
        options |= {"fsname=websync", "subtype=websync"}
        if client.vfs.read_only:
            options.add("ro")  # the kernel answers EROFS first; the core refuses too (vfs.py)
        if self.allow_other:
            # Other users of this machine may enter; the kernel checks modes against
            # the owners the mount shows (default_permissions is in pyfuse3's defaults).
            options.add("allow_other")
        pyfuse3.init(self.router, str(self.mountpoint), options)
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.ops.invalidator)
                nursery.start_soon(self._widen_readahead)
                nursery.start_soon(self._signals)
                nursery.start_soon(taskdump.serve)
                await client.start(nursery)
                if self.grafts is not None:
                    await nursery.start(self.grafts.folders.run)  # the folders shown before are there at once
                log.info("mounted %s at %s", client.settings.server, self.mountpoint)
                ready()
                await pyfuse3.main()
                unmounted = True
                async with trio.open_nursery() as draining:
                    draining.start_soon(client.drain)
                    if self.grafts is not None:
                        draining.start_soon(self.grafts.folders.drain)
                nursery.cancel_scope.cancel()
        finally:
            # After terminate() the kernel still has the mount: libfuse takes it away (fusermount3 -u -z).
            pyfuse3.close(unmount=not unmounted or self._terminated)
            client.write_status_final()
            await client.close()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                self._terminate()
                return

    def _terminate(self) -> None:
        """End the main loop now; the kernel's mount is taken away lazily after it (files may be open)."""
        self._terminated = True
        pyfuse3.terminate()

    async def _unmount(self) -> None:
        """Unmount as ``websync unmount`` asks; pyfuse3's loop then ends as after any unmount."""
        command = unmount_command(self.mountpoint)
        done = await trio.to_thread.run_sync(
            functools.partial(subprocess.run, command, capture_output=True, text=True))
        if done.returncode != 0:
            reason = done.stderr.strip() or f"{command[0]} failed"
            raise WebSyncError(f"cannot unmount {self.mountpoint}: {reason} (close the files open there and try again)")

    async def _widen_readahead(self) -> None:
        # The kernel sets the window while it takes the answer to INIT, which goes out
        # after init() returns: by the time this task runs again it is set.
        await self.ops.initialized.wait()
        await trio.sleep(0)
        readahead.widen(self.mountpoint)


async def run_mount(home: Home, mountpoint: Path, ready: Callable[[], None],
                    progress: Callable[[int], None] = lambda records: None, allow_other: bool = False) -> None:
    """Mount *home*'s store at *mountpoint* and serve it until unmounted (to every user with *allow_other*)."""
    mount = FuseMount(home, mountpoint, allow_other=allow_other)
    try:
        await mount.run(ready, progress)
    finally:
        await mount.client.close()
