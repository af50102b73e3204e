"""Lookup counts of the inodes the kernel knows.

Inode numbers are the replica's stable ``ino`` column, so this table only keeps
how many references the kernel holds to each (FUSE's lookup count): a node
with no entries left lives until the kernel forgets it and no handle is open.
"""

from __future__ import annotations

from collections import Counter


class InodeTable:
    def __init__(self) -> None:
        self._lookups: Counter[int] = Counter()

    def remember(self, ino: int) -> None:
        """The kernel took one more reference (lookup, create, mkdir, ...)."""
        self._lookups[ino] += 1

    def forget(self, ino: int, count: int) -> bool:
        """Drop *count* references; True when the kernel holds none any more."""
        left = self._lookups[ino] - count
        if left > 0:
            self._lookups[ino] = left
            return False
        self._lookups.pop(ino, None)
        return True

    def known(self, ino: int) -> bool:
        return ino in self._lookups
