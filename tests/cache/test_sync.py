"""BlockCache.sync: what a writer's fsync() needs from the cache before it returns.

Power loss cannot be caused here; what can be checked is its precondition:
after `sync`, the index row of each block is in the main database file
(not only in the WAL, which SQLite with synchronous=NORMAL syncs only at a
checkpoint), read without the WAL the way SQLite would after a power cut
that lost the log.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from cache import BlockCache


def _rows_without_wal(directory: Path) -> set[str]:
    # immutable=1: read the database file as it is, ignoring the -wal file.
    uri = f"file:{directory / 'cache.db'}?immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT key FROM Cache")}
    finally:
        conn.close()


def test_sync_puts_the_index_rows_into_the_database_file(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, limit=64 * 1024 * 1024)
    try:
        blocks = {hashlib.sha256(data).hexdigest(): data for data in (os.urandom(5000), os.urandom(70_000))}
        for h, data in blocks.items():
            cache.put(h, data)
        absent = hashlib.sha256(b"never stored").hexdigest()
        cache.sync([*blocks, absent])  # an absent block is skipped, not an error
        assert set(blocks) <= _rows_without_wal(tmp_path)
        for h, data in blocks.items():
            assert cache.get(h) == data
    finally:
        cache.close()


def test_sync_of_nothing_is_harmless(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, limit=1024 * 1024)
    try:
        cache.sync([])
        assert cache.stats().count == 0
    finally:
        cache.close()
