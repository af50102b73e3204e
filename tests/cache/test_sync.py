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
import time
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


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise: Linux and the BSDs only")
def test_after_each_checkpoint_the_log_is_read_ahead_for_the_commits_that_write_it_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit after a checkpoint writes the log over from its start, a frame across two file pages:
    a page the kernel dropped would be read inside the commit.  The checkpoint thread asks for them
    first (`os.posix_fadvise`, watched, not replaced)."""
    asked: list[tuple[str, int]] = []
    real = os.posix_fadvise

    def watched(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append((os.readlink(f"/proc/self/fd/{fd}"), advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(cache._store.os, "posix_fadvise", watched)
    store = BlockCache(tmp_path, limit=64 * 1024 * 1024)
    try:
        for data in (os.urandom(3000) for _ in range(450)):  # past two checkpoints (one every 200 commits)
            store.put(hashlib.sha256(data).hexdigest(), data)
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:  # the thread runs beside this one
            time.sleep(0.01)
    finally:
        store.close()
    assert (str(tmp_path / "cache.db-wal"), os.POSIX_FADV_WILLNEED) in asked
