"""Mounting the store through WinFsp: a `Client` behind the WinFsp operations, until stopped.

The client builds and runs the engine; this module adds only what WinFsp
needs: the operations object (`ops.py`) with the user's security descriptor,
the volume's parameters, WinFsp's dispatcher (its own threads, which call into
this trio loop), and stopping on Ctrl+C, Ctrl+Break, a console close, or
when `websync unmount` asks over the control channel.  On
stop, pending uploads get a short chance to go out (`Client.drain`); what is
left stays queued for the next start.

*place* is a drive letter (``X:``) or a folder that does not exist yet
(WinFsp makes it, as a directory junction, and removes it on stop).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ..client import Client
from ..home import Home
from ..portable import STOP_SIGNALS
from ._winfspy import FileSystem, SecurityDescriptor
from .ops import WinFspOperations, filetime
from .security import current_user_sid, security_sddl

log = logging.getLogger(__name__)

DRIVE = re.compile(r"[A-Za-z]:")


def volume_params(place: str) -> dict[str, object]:
    """WinFsp's volume parameters for this store (FSP_FSCTL_VOLUME_PARAMS, as winfspy names them)."""
    return {
        "sector_size": 512,
        "sectors_per_allocation_unit": 8,  # 4 KiB, the allocation unit ops.py reports
        "volume_creation_time": filetime(time.time_ns()),
        "volume_serial_number": 0,
        "file_info_timeout": 1000,  # ms; remote changes are seen by the next open or listing after it
        "case_sensitive_search": 0,  # names are found whatever their case (ops.py)
        "case_preserved_names": 1,
        "unicode_on_disk": 1,
        "persistent_acls": 1,
        "post_cleanup_when_modified_only": 1,
        "um_file_context_is_user_context2": 1,
        "file_system_name": "WebSync",
        "prefix": "",
        # A folder mount point is served only after the first transaction, as WinFsp's memfs does.
        "reject_irp_prior_to_transact0": 0 if DRIVE.fullmatch(place) else 1,
    }


class WinFspMount:
    """One home's client, served by WinFsp at *place*."""

    def __init__(self, home: Home, place: str) -> None:
        self.place = place
        self.client = Client(home, Path(place))

    async def run(self, ready: Callable[[], None], progress: Callable[[int], None] = lambda records: None) -> None:
        client = self.client
        await client.first_sync(progress)
        security = SecurityDescriptor.from_string(security_sddl(current_user_sid()))
        ops = WinFspOperations(client.vfs, trio.lowlevel.current_trio_token(), security)
        fs = FileSystem(self.place, ops, debug=False, **volume_params(self.place))
        try:
            async with trio.open_nursery() as nursery:
                await client.start(nursery)
                # start() waits for WinFsp's dispatcher, whose threads call back into this loop.
                await trio.to_thread.run_sync(fs.start)
                log.info("mounted %s at %s", client.settings.server, self.place)
                ready()
                stop = trio.Event()

                async def stop_asked() -> None:
                    stop.set()

                client.stop = stop_asked
                client.front_end_now = stop.set  # a shared folder no longer shared: stop at once
                nursery.start_soon(_stop_signal, stop)
                await stop.wait()
                await trio.to_thread.run_sync(fs.stop)
                await client.drain()
                nursery.cancel_scope.cancel()
        finally:
            client.write_status_final()
            await client.close()


async def _stop_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            stop.set()
            return


async def run_mount(home: Home, place: str, ready: Callable[[], None],
                    progress: Callable[[int], None] = lambda records: None) -> None:
    """Serve *home*'s store at drive letter or folder *place* until stopped."""
    mount = WinFspMount(home, place)
    try:
        await mount.run(ready, progress)
    finally:
        await mount.client.close()
