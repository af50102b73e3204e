"""BlockCache.sync: what a writer's fsync() needs from the cache before it returns.

Power loss cannot be caused here; what can be checked is its precondition:
after `sync`, each block's file and the SQLite log holding its index row
(WAL with synchronous=NORMAL: committed, not yet synced) have been fsync'd,
and the folder holding the log once; `os.fsync` is watched, not replaced.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

import cache._store
from cache import BlockCache


def test_sync_fsyncs_the_block_files_and_the_index_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def watched(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(cache._store.os, "fsync", watched)
    store = BlockCache(tmp_path, limit=64 * 1024 * 1024)
    try:
        blocks = {hashlib.sha256(data).hexdigest(): data for data in (os.urandom(5000), os.urandom(70_000))}
        for h, data in blocks.items():
            store.put(h, data)
        absent = hashlib.sha256(b"never stored").hexdigest()
        store.sync([*blocks, absent])  # an absent block is skipped, not an error
        assert str(tmp_path / "cache.db-wal") in synced
        assert synced.count(str(tmp_path)) == 2  # the block folders' parent, and the log's name the first time
        assert any(p.endswith(".val") for p in synced)  # the 70,000-byte block lives in a file
        synced.clear()
        store.sync(list(blocks))
        assert synced.count(str(tmp_path)) == 1  # the same log: its name is durable already
        for h, data in blocks.items():
            assert store.get(h) == data
    finally:
        store.close()


def test_sync_of_nothing_is_harmless(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, limit=1024 * 1024)
    try:
        cache.sync([])
        assert cache.stats().count == 0
    finally:
        cache.close()


def test_the_index_log_is_copied_by_a_thread_of_its_own_and_every_block_is_kept(tmp_path: Path) -> None:
    """600 small blocks (each a row, each a commit): the index's log is copied into the database by a
    `cache-checkpoint` thread, which closing ends; reopened, every block is there."""
    def checkpointers() -> int:
        return sum(t.name == "cache-checkpoint" for t in threading.enumerate())

    before = checkpointers()
    store = BlockCache(tmp_path, limit=64 * 1024 * 1024)
    blocks = {hashlib.sha256(data).hexdigest(): data for data in (os.urandom(3000) for _ in range(600))}
    try:
        for h, data in blocks.items():
            store.put(h, data)
        assert checkpointers() == before + 1
    finally:
        store.close()
    assert checkpointers() == before
    again = BlockCache(tmp_path, limit=64 * 1024 * 1024)
    try:
        assert all(again.get(h) == data for h, data in blocks.items())
    finally:
        again.close()
