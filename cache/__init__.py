"""The local content cache: file blocks by SHA-256, LRU-evicted under a size limit.

`BlockCache` keeps blocks of file content (up to 4 MiB each) on local disk,
named by the lower-case hex SHA-256 of their bytes, on top of diskcache.  Blocks
the owner protects -- dirty data waiting for upload, pinned data -- are never
evicted.  It is thread-safe and may be shared by several processes; see
`cache._blocks` for the entry state machine and what a crash leaves behind, and
`cache._store` for the on-disk layout.
"""

from __future__ import annotations

from ._blocks import BlockCache, zeros
from ._exceptions import CacheError, CacheFull, CacheUnavailable, CorruptBlock, InvalidBlockHash
from ._filewriter import FileWriter
from ._stats import CacheStats
from ._store import INLINE_MAX, WalCheckpointer, sync_wal

__all__ = [
    "BlockCache",
    "CacheError",
    "CacheFull",
    "CacheStats",
    "CacheUnavailable",
    "CorruptBlock",
    "FileWriter",
    "INLINE_MAX",
    "InvalidBlockHash",
    "WalCheckpointer",
    "sync_wal",
    "zeros",
]
