"""What a front end must forget: the one word lower layers say upward about changed nodes.

The follower, the uploader and the self-check change the replica behind the
front end's back (a remote change, a settled conflict, a repair).  They
describe what changed as an `Invalidation` and hand it to a `Notify` callback
the client wires to its front end: the FUSE front end drops the kernel's
caches of those inodes and entries; a front end without such caches ignores it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Invalidation:
    """Caches to drop: inodes whose data/attributes changed, entries renamed/removed."""

    inodes: list[int] = field(default_factory=list)
    attrs: list[int] = field(default_factory=list)
    entries: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inodes or self.attrs or self.entries)


Notify = Callable[[Invalidation], None]
