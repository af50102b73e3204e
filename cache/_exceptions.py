"""Errors the content cache raises.

Everything the package raises on purpose derives from `CacheError`::

    CacheError
    ├── InvalidBlockHash   (also ValueError)  a name that is not 64 lower-case hex digits
    ├── CorruptBlock       (also ValueError)  bytes that do not hash to the name given
    ├── CacheFull          (also OSError, errno ENOSPC)  the disk under the cache is full
    └── CacheUnavailable   (also OSError, errno kept)    the cache could not be used:
                                                         closed, database locked past
                                                         its timeout, I/O error

Errors from diskcache, sqlite3 and the file system are translated into this tree
once, in `_store`, with the original as ``__cause__``.  The two OSError
subclasses carry an errno so the VFS layer can pass it on to the kernel
unchanged.
"""

from __future__ import annotations

import errno


class CacheError(Exception):
    """Base class of every error the cache package raises on purpose."""


class InvalidBlockHash(CacheError, ValueError):
    """A block name that is not a lower-case hex SHA-256 digest."""

    def __init__(self, h: object) -> None:
        super().__init__(f"not a lower-case hex SHA-256 digest: {h!r}")
        self.hash = h


class CorruptBlock(CacheError, ValueError):
    """Bytes offered under a hash they do not have."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"block {expected} hashes to {actual}")
        self.expected = expected
        self.actual = actual


class CacheFull(CacheError, OSError):
    """The disk holding the cache has no room for a block; nothing was stored."""

    def __init__(self, message: str = "no space left for the cache") -> None:
        super().__init__(errno.ENOSPC, message)


class CacheUnavailable(CacheError, OSError):
    """The cache could not be read or written; ``errno`` says why when it is known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code if code is not None else errno.EIO, message)
