"""What keeps a synced folder from harming what it syncs.

* A **marker** file, ``.websync-folder``, holds the folder's id.  It tells
  "my folder" from "an empty folder": a folder whose marker is gone while
  this machine remembers files in it (a removable disk pulled, the folder
  deleted, a network share gone) is never taken as "the user deleted
  everything" — syncing stops and nothing is deleted on the server.
* An exclusive lock on the marker while a sync runs (portable.py): a second sync
  process on the same folder (from any home) is refused.  The lock goes with
  its process, also on kill -9.
* No folder inside a WebSync mount and no mount inside the folder: the store
  would sync into itself.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import portable
from ..errors import ConfigError

MARKER = ".websync-folder"
#: The file system type of a WebSync mount in /proc/self/mountinfo (mount.py's fsname/subtype).
_MOUNT_TYPE = "fuse.websync"


class FolderGone(ConfigError):
    """The synced folder or its marker disappeared: syncing stops, nothing is deleted."""


@dataclass(frozen=True)
class Identity:
    """Which folder this is: the marker's id and the folder's device and inode."""

    folder_id: str
    dev: int
    ino: int


def websync_mounts() -> list[Path]:
    """Mount points of WebSync mounts on this machine (empty where /proc is not there)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if len(fields) > 4 and tail_fields and tail_fields[0] == _MOUNT_TYPE:
            found.append(Path(fields[4].replace("\\040", " ")))
    return found


def check_placement(folder: Path) -> None:
    """Refuse a folder inside a WebSync mount, or one holding a WebSync mount."""
    for mount in websync_mounts():
        if folder == mount or mount in folder.parents:
            raise ConfigError(f"{folder} is inside the WebSync mount {mount}; sync a folder on a local disk")
        if folder in mount.parents:
            raise ConfigError(f"the WebSync mount {mount} is inside {folder}; unmount it or choose another folder")


def synced_folder_above(path: Path) -> Path | None:
    """The synced folder *path* is inside (a marker in it or a parent), or None: no mount goes there."""
    for folder in (path, *path.parents):
        if (folder / MARKER).exists():
            return folder
    return None


class Marker:
    """The folder's marker file, held under an exclusive lock while a sync runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / MARKER
        self._fd: int | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, store: str) -> None:
        tmp = self.folder / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"id": uuid.uuid4().hex, "store": store}) + "\n")
        os.replace(tmp, self.path)

    def store(self) -> str:
        """The store this folder is synced with, by its marker ("": no marker; "?": one naming none)."""
        try:
            return str(json.loads(self.path.read_text()).get("store") or "?")
        except (OSError, ValueError, AttributeError):
            return ""

    def lock(self) -> Identity:
        """Take the folder for this process; ConfigError if another sync holds it."""
        fd = os.open(self.path, os.O_RDONLY | portable.OPEN_FLAGS)
        try:
            taken = portable.lock(fd, wait=False)
        except BaseException:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise ConfigError(f"{self.folder} is already being synced by another process")
        self._fd = fd
        return self.identity()

    def identity(self) -> Identity:
        try:
            data = json.loads(self.path.read_text())
            st = os.stat(self.folder)
        except (OSError, ValueError) as exc:
            raise FolderGone(f"the synced folder {self.folder} or its marker is gone: {exc}") from exc
        return Identity(str(data.get("id", "")), st.st_dev, st.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None
