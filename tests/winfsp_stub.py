"""A stand-in for winfspy, which is Windows-only code that cannot run here.

winfspy loads WinFsp's DLL as it is imported, so the WinFsp front end cannot
be imported on Linux.  This module supplies the few names the front end takes
from it (`websync_fs/winfsp/_winfspy.py`), with winfspy's values where they
are numbers, and `installed()` puts it in place of ``winfspy`` and
``winfspy.plumbing`` while a test runs.  WinFsp itself -- the driver that
calls the operations -- is played by the tests, in the orders WinFsp uses.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple


class NTStatusError(Exception):
    """An operation's NTSTATUS, as winfspy's wrapper returns it to WinFsp."""

    @property
    def value(self) -> int:
        return int(self.args[0])


class FILE_ATTRIBUTE(enum.IntEnum):
    FILE_ATTRIBUTE_READONLY = 0x1
    FILE_ATTRIBUTE_HIDDEN = 0x2
    FILE_ATTRIBUTE_SYSTEM = 0x4
    FILE_ATTRIBUTE_DIRECTORY = 0x10
    FILE_ATTRIBUTE_ARCHIVE = 0x20
    FILE_ATTRIBUTE_NORMAL = 0x80
    INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF


class CREATE_FILE_CREATE_OPTIONS(enum.IntEnum):
    # ntioapi.h
    FILE_DIRECTORY_FILE = 0x00000001
    FILE_WRITE_THROUGH = 0x00000002
    FILE_NON_DIRECTORY_FILE = 0x00000040
    FILE_DELETE_ON_CLOSE = 0x00001000


class BaseFileSystemOperations:
    def __init__(self) -> None:
        pass


class SecurityDescriptor(NamedTuple):
    """winfspy's (handle, size); here the handle is the SDDL text it was made from."""

    handle: Any
    size: int

    @classmethod
    def from_string(cls, sddl: str) -> SecurityDescriptor:
        return cls(sddl, len(sddl))


class FileSystem:
    """Records what it was started with; nothing is mounted."""

    def __init__(self, mountpoint: str, operations: Any, debug: bool = False, **volume_params: Any) -> None:
        self.mountpoint = mountpoint
        self.operations = operations
        self.volume_params = volume_params
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False


@contextmanager
def installed() -> Iterator[None]:
    """This module as ``winfspy`` (and ``winfspy.plumbing``) until the block ends."""
    names = ("winfspy", "winfspy.plumbing")
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = sys.modules[__name__]
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        # The front end's modules hold the stand-in's names: import them afresh next time.
        for name in [m for m in sys.modules if m.startswith("websync_fs.winfsp")]:
            del sys.modules[name]
