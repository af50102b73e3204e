"""Open file handles: what each ``fh`` refers to and how it was opened."""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass

from websync_server.protocol import BlockHash

from .errors import FsError


@dataclass
class Handle:
    fh: int
    ino: int
    readable: bool
    writable: bool
    append: bool
    #: Content at open time for a handle without a working copy: a reader keeps
    #: seeing one whole version (close-to-open), never a mix of two.
    size: int
    blocks: tuple[BlockHash, ...]
    #: Where the last read ended (-1: none yet): reads that go on from it are sequential.
    read_end: int = -1


class HandleTable:
    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next = itertools.count(1)

    def open(
        self, ino: int, *, readable: bool, writable: bool, append: bool, size: int, blocks: tuple[BlockHash, ...]
    ) -> Handle:
        handle = Handle(next(self._next), ino, readable, writable, append, size, blocks)
        self._handles[handle.fh] = handle
        return handle

    def get(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def close(self, fh: int) -> Handle:
        handle = self.get(fh)
        del self._handles[fh]
        return handle

    def open_on(self, ino: int) -> bool:
        return any(h.ino == ino for h in self._handles.values())

    def __len__(self) -> int:
        return len(self._handles)
