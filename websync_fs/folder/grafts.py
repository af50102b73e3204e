"""Shared folders inside a synced folder: each a subfolder at the top, synced by an engine of its own.

A user's synced folder (``websync sync DIR``) shows every folder shared with
them, and every folder they share, at ``DIR/NAME`` -- ``DIR/NAME (OWNER)``
where the mount would show that name (`sharedfolders.top_names`; the own
tree's names here are the replica's and what is on disk).  Each is the
folder's place on this machine (home.py) synced by a `FolderClient` of its
own -- replica, queue, last synced state, watcher on its subfolder -- inside
the own folder's process.  Which folders are shown, and when one starts or
stops, is sharedfolders.py's to say, as for the mount.

The own folder leaves each subfolder alone entirely (`IgnoreRules.grafted`,
set before the subfolder is made; its marker after a restart): nothing in it
is sent to the own store, deleted by it, or looked at by the own engine.  A
file moved between the two is deleted on one side and new on the other.

A subfolder's name is chosen the first time it is made and kept while it is
there (its last synced state is of that subfolder): an entry of the same name
the own store gets later stays on the server, not brought here.

Read-only for this user: synced down; what is changed there is refused by the
core (EROFS, nothing queued), stays on this machine and is named in that
folder's status as not synced (``websync --shared NAME status``); it is tried
again every `REFUSED_RETRY` seconds, not every moment, and goes up once the
owner makes the folder writable.

No longer shared: the subfolder ends as a ``--shared`` synced folder does
(`FolderClient._clear_revoked`): what came from it goes, what was changed here
stays with its marker (so the own folder still leaves it alone), the place is
deleted; the own folder and the other shared folders go on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websync_server.protocol import ROOT_ID

from ..client import Engine
from ..errors import ConfigError
from ..home import Home
from ..sharedfolders import SharedFolders, top_names
from .guards import MARKER, Marker
from .ignore import IgnoreRules

if TYPE_CHECKING:
    from ..remote import Remote
    from ..replica import Replica
    from .client import FolderClient

log = logging.getLogger(__name__)


class FolderGrafts:
    """The synced folder's side of the shared folders (sharedfolders.py): each a `FolderClient` on a subfolder."""

    def __init__(self, home: Home, folder: Path, replica: Replica, rules: IgnoreRules, remote: Remote,
                 make: Callable[[Home, Path], FolderClient]) -> None:
        self.home = home
        self.make = make
        self.folder = folder
        self.replica = replica
        self.rules = rules
        self.folders = SharedFolders(home, remote, self._serve)
        #: The name each running shared folder has here, by store.
        self.names: dict[str, str] = {}

    def _own_has(self, name: str) -> bool:
        """The own tree has *name* at the top: on the server, or here and not a synced folder of its own."""
        row = self.replica.lookup(ROOT_ID, name)
        if row is not None and not row.local:
            return True
        path = self.folder / name
        return os.path.lexists(path) and not os.path.lexists(path / MARKER)

    def name_for(self, share: dict[str, Any], place: Home) -> str:
        """Where *share* goes at the top: where it was, else as every front end names it (unless that is taken)."""
        store = str(share["store"])
        try:
            before = Path(json.loads(place.status_file.read_text()).get("folder") or "")
        except (OSError, ValueError, AttributeError):
            before = Path()
        if before.parent == self.folder and Marker(before).store() == store:
            return before.name  # its last synced state is of that subfolder
        shares = {str(p.store): p.share() for p in self.home.places() if not p.revoked()}
        shares[store] = share
        named = top_names(shares, lambda s: shares[s], self._own_has)
        name = next(n for n, s in named.items() if s == store)
        taken = set(self.names.values()) - {self.names.get(store)}
        if name in taken or Marker(self.folder / name).store() not in ("", store):  # another's, or left by one unshared
            return f"{share['name']} ({share['owner']})"
        return name

    async def _serve(self, share: dict[str, Any], place: Home, shown: Callable[[Engine], None]) -> None:
        """Sync one shared folder in its subfolder until it is unshared or the own folder stops."""
        store = str(share["store"])
        name = self.name_for(share, place)
        self.names[store] = name
        self.rules.grafted = self.rules.grafted | {name}  # before the subfolder is made
        try:
            try:
                client = self.make(place, self.folder / name)
            except OSError as exc:  # a name this disk refuses, no room: that folder, not the whole sync
                raise ConfigError(f"cannot make {self.folder / name}: {exc.strerror or exc}") from exc
            try:
                shown(client)
                log.info("syncing shared folder %s of %s in %s", share["name"], share["owner"], client.folder)
                await client.run(lambda: None)
            finally:
                await client.close()
        finally:
            del self.names[store]
            if not os.path.lexists(self.folder / name / MARKER):  # gone, or never made: the own folder's again
                self.rules.grafted = self.rules.grafted - {name}

