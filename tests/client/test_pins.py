"""Pins, file states, store paths, sizes and the control channel, on real parts without a mount.

The replica and the queue are real (a state database in tmp_path), the cache is
a real `BlockCache`; only the server is a function that hands out blocks.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cache import BlockCache
from websync_fs import pins as pins_module
from websync_fs.cachectl import CacheControl, local_control
from websync_fs.commands.cache import BadSize, parse_size
from websync_fs.control import (
    CacheLock,
    ControlServer,
    NotRunning,
    RequestFailed,
    request,
)
from websync_fs.errors import NotFound, Offline
from websync_fs.filestate import FileState, FileStates
from websync_fs.home import Home
from websync_fs.pins import Pinner, PinTable, block_sizes, files_under
from websync_fs.replica import Replica
from websync_fs.statedb import StateDb
from websync_fs.storepaths import BadPath, path_of, resolve, store_path
from websync_fs.writeback import WriteBackQueue
from websync_server.protocol import (
    BLOCK_SIZE,
    ROOT_ID,
    BlockHash,
    Create,
    NodeId,
    Update,
)

KiB = 1024


def block(tag: str, size: int = 16 * KiB) -> tuple[str, bytes]:
    data = (tag.encode() * (size // len(tag) + 1))[:size]
    return hashlib.sha256(data).hexdigest(), data


class Server:
    """Hands out blocks like the real server's GET /v1/blocks/{hash}; can be switched off."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.online = True
        self.requests = 0

    def add(self, tag: str, size: int = 16 * KiB) -> str:
        h, data = block(tag, size)
        self.blocks[h] = data
        return h

    async def get_block(self, h: BlockHash) -> bytes:
        self.requests += 1
        await trio.sleep(0)
        if not self.online:
            raise Offline("connection refused")
        if h not in self.blocks:
            raise NotFound(f"no block {h}")
        return self.blocks[h]


class World:
    """A state database with a small tree, a cache and a pinner on them."""

    def __init__(self, root: Path, limit: int = 1 << 30) -> None:
        self.db = StateDb(root / "state.db")
        self.replica = Replica(self.db)
        self.queue = WriteBackQueue(self.db)
        self.cache = BlockCache(root / "blocks", limit)
        self.server = Server()
        self.table = PinTable(self.db)
        self.pinner = Pinner(self.table, self.replica, self.cache, self.server.get_block, workers=2)
        self.states = FileStates(self.replica, self.cache.present, self.queue, self.pinner.is_pinned)
        self._n = 0

    def node(self) -> NodeId:
        self._n += 1
        return NodeId(f"{self._n:032x}")

    def mkdir(self, parent: str, name: str) -> NodeId:
        node = self.node()
        with self.db.tx():
            self.replica.add_node(node, "dir", 0o755)
            self.replica.set_entry(parent, name, node)
        return node

    def _blocks(self, tags: tuple[str, ...], last: int) -> tuple[tuple[BlockHash, ...], int]:
        """Blocks as a real file has them: whole ones, then a shorter last one of *last* bytes."""
        sizes = [BLOCK_SIZE] * (len(tags) - 1) + [last]
        blocks = tuple(BlockHash(self.server.add(tag, n)) for tag, n in zip(tags, sizes))
        return blocks, sum(sizes)

    def file(self, parent: str, name: str, *tags: str, last: int = 16 * KiB) -> NodeId:
        node = self.node()
        blocks, size = self._blocks(tags, last)
        with self.db.tx():
            self.replica.add_node(node, "file", 0o644, size=size, blocks=blocks)
            self.replica.set_entry(parent, name, node)
        return node

    def change(self, node: str, *tags: str, last: int = 16 * KiB) -> None:
        blocks, size = self._blocks(tags, last)
        with self.db.tx():
            self.replica.update_node(node, blocks=blocks, size=size)

    def close(self) -> None:
        self.cache.close()
        self.db.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


async def settle(pinner: Pinner, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pinner.progress().done:
            await trio.sleep(0.01)


# -- store paths ---------------------------------------------------------------


def test_store_path_takes_paths_under_the_mount_point_and_store_paths(tmp_path: Path) -> None:
    mnt = str(tmp_path / "mnt")
    assert store_path(f"{mnt}/Photos/2023", mnt) == "Photos/2023"
    assert store_path(mnt, mnt) == ""
    assert store_path("2023/x.jpg", mnt, cwd=f"{mnt}/Photos") == "Photos/2023/x.jpg"
    assert store_path("../Docs", mnt, cwd=f"{mnt}/Photos") == "Docs"
    assert store_path("Photos/2023/", None, cwd="/somewhere") == "Photos/2023"
    with pytest.raises(BadPath, match="not inside the WebSync folder"):
        store_path("/etc/passwd", mnt)
    with pytest.raises(BadPath):
        store_path("../outside", None, cwd="/")


def test_resolve_and_path_of_walk_the_replica(world: World) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    f = world.file(docs, "a.txt", "a")
    assert resolve(world.replica, "Docs/a.txt").id == f
    assert resolve(world.replica, "").id == ROOT_ID
    assert path_of(world.replica, f) == "Docs/a.txt"
    with pytest.raises(BadPath, match="does not exist"):
        resolve(world.replica, "Docs/b.txt")
    with pytest.raises(BadPath, match="not a folder"):
        resolve(world.replica, "Docs/a.txt/deeper")


def test_files_under_walks_folders_in_name_order(world: World) -> None:
    top = world.mkdir(ROOT_ID, "top")
    sub = world.mkdir(top, "b-sub")
    world.file(top, "c.txt", "c")
    world.file(top, "a.txt", "a")
    world.file(sub, "x.txt", "x")
    row = resolve(world.replica, "top")
    names = [path_of(world.replica, f.id) for f in files_under(world.replica, row)]
    assert names == ["top/a.txt", "top/c.txt", "top/b-sub/x.txt"]


def test_block_sizes_end_with_the_short_last_block() -> None:
    assert block_sizes(0, 0) == []
    assert block_sizes(BLOCK_SIZE + 5, 2) == [BLOCK_SIZE, 5]


@pytest.mark.parametrize(("text", "expected"), [
    ("500M", 500_000_000), ("10G", 10_000_000_000), ("10GB", 10_000_000_000), ("2GiB", 2 * 1024**3),
    ("50MiB", 50 * 1024**2), ("1", 1), ("1.5K", 1500), (" 7 kib ", 7 * 1024),
])
def test_sizes_parse_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-5", "5X", "10 G B"])
def test_bad_sizes_are_refused_with_one_sentence(text: str) -> None:
    with pytest.raises(BadSize, match="is not a size; give one like 500M"):
        parse_size(text)


# -- pins ---------------------------------------------------------------------


def test_pins_are_durable_and_survive_reopening(tmp_path: Path) -> None:
    db = StateDb(tmp_path / "state.db")
    table = PinTable(db)
    assert table.add("n1", "Docs")
    assert not table.add("n1", "Docs")
    db.close()
    db = StateDb(tmp_path / "state.db")
    assert [(p.node, p.path) for p in PinTable(db).all()] == [("n1", "Docs")]
    assert PinTable(db).remove("n1")
    assert PinTable(db).all() == []
    db.close()


async def test_pinning_fetches_everything_and_protects_it_under_a_tiny_limit(tmp_path: Path) -> None:
    w = World(tmp_path, limit=1)
    try:
        docs = w.mkdir(ROOT_ID, "Docs")
        sub = w.mkdir(docs, "sub")
        files = [w.file(docs, f"f{i}", f"d{i}a", f"d{i}b") for i in range(5)] + [w.file(sub, "deep", "deep")]
        outside = w.file(ROOT_ID, "outside", "out")
        w.pinner.pin(docs, "Docs")
        assert w.pinner.progress().files == 6
        async with trio.open_nursery() as nursery:
            await nursery.start(w.pinner.run)
            await settle(w.pinner)
            nursery.cancel_scope.cancel()
        progress = w.pinner.progress()
        assert (progress.files_local, progress.bytes_local) == (6, 5 * (BLOCK_SIZE + 16 * KiB) + 16 * KiB)
        pinned = {h for f in files for h in w.replica.by_id(f).blocks}  # type: ignore[union-attr]
        assert set(w.cache.present(pinned)) == pinned
        # A limit of one byte evicts everything else, never pinned data.
        h, data = block("unrelated")
        w.cache.put(h, data)
        w.cache.evict(0)
        assert set(w.cache.present(pinned)) == pinned
        assert w.cache.stats().protected_bytes == progress.bytes_local
        assert w.states.of_path("Docs/f0").state == "pinned"
        assert w.states.of_row(w.replica.by_id(outside)).state == "online-only"  # type: ignore[arg-type]
        # Unpinning makes them evictable at once (the limit is one byte).
        w.pinner.unpin(docs)
        assert w.cache.present(pinned) == {}
    finally:
        w.close()


async def test_a_changed_pinned_file_swaps_its_protected_blocks(world: World) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    f = world.file(docs, "f", "v1")
    old = world.replica.by_id(f).blocks  # type: ignore[union-attr]
    world.pinner.pin(docs, "Docs")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.pinner.run)
        await settle(world.pinner)
        world.change(f, "v2a", "v2b")
        world.pinner.changed([f])
        await trio.sleep(0.05)
        await settle(world.pinner)
        nursery.cancel_scope.cancel()
    new = world.replica.by_id(f).blocks  # type: ignore[union-attr]
    assert set(world.cache.present(new)) == set(new)
    assert world.pinner.pinned_blocks == set(new)
    world.cache.evict(0)
    assert world.cache.present(old) == {}  # the old version is no longer held
    assert set(world.cache.present(new)) == set(new)


async def test_a_file_moved_into_a_pinned_folder_is_fetched_when_the_cursor_moves(world: World) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    world.pinner.pin(docs, "Docs")
    f = world.file(ROOT_ID, "loose", "loose")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.pinner.run)
        with world.db.tx():
            world.replica.remove_entry(ROOT_ID, "loose")
            world.replica.set_entry(docs, "loose", f)
            world.replica.cursor = world.replica.cursor + 1  # what the follower does with each batch
        with trio.fail_after(5):
            while not world.cache.present(world.replica.by_id(f).blocks):  # type: ignore[union-attr]
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert world.pinner.is_pinned(f)


def test_a_file_that_leaves_its_pin_stays_protected_for_a_grace_period(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    f = world.file(docs, "f", "kept")
    (h,) = world.replica.by_id(f).blocks  # type: ignore[union-attr]
    world.cache.put(h, world.server.blocks[h])
    world.pinner.pin(docs, "Docs")
    # What a journal reset looks like for a moment, and what a move out of the folder is.
    with world.db.tx():
        world.replica.remove_entry(docs, "f")
        world.replica.set_entry(ROOT_ID, "f", f)
    world.pinner.reconcile()
    world.cache.evict(0)
    assert world.cache.contains(h)
    assert world.pinner.progress().files == 0 and not world.pinner.is_pinned(f)
    monkeypatch.setattr(pins_module, "GRACE", 0.0)
    world.pinner.reconcile()
    world.cache.evict(0)
    assert not world.cache.contains(h)


async def test_an_unreachable_server_is_retried_and_reported(world: World) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    world.file(docs, "f", "x")
    world.server.online = False
    world.pinner.pin(docs, "Docs")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.pinner.run)
        with trio.fail_after(5):
            while world.pinner.progress().failures < 3:
                await trio.sleep(0.01)
        progress = world.pinner.progress()
        assert not progress.done and "connection refused" in progress.error
        world.server.online = True
        world.pinner.pin(docs, "Docs")  # pinning again retries at once
        await settle(world.pinner)
        nursery.cancel_scope.cancel()
    assert world.pinner.progress().failures == 0


async def test_a_block_the_server_lacks_fails_without_retrying_forever(world: World) -> None:
    docs = world.mkdir(ROOT_ID, "Docs")
    f = world.file(docs, "f", "gone")
    del world.server.blocks[world.replica.by_id(f).blocks[0]]  # type: ignore[union-attr]
    world.pinner.pin(docs, "Docs")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.pinner.run)
        await settle(world.pinner)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    progress = world.pinner.progress()
    assert (progress.failed, progress.files_local) == (1, 0)
    assert world.server.requests == 1


def test_pins_are_protected_again_when_a_new_process_opens_the_cache(tmp_path: Path) -> None:
    w = World(tmp_path, limit=1)
    docs = w.mkdir(ROOT_ID, "Docs")
    f = w.file(docs, "f", "keep")
    (h,) = w.replica.by_id(f).blocks  # type: ignore[union-attr]
    w.cache.put(h, w.server.blocks[h])
    w.table.add(docs, "Docs")
    w.close()
    # Another process: a new cache object has no protection until the pinner reconciles.
    w2 = World(tmp_path, limit=1)
    try:
        w2.pinner.reconcile()
        w2.cache.evict(0)
        assert w2.cache.contains(h)
    finally:
        w2.close()


# -- file states ---------------------------------------------------------------------


def test_file_states_name_where_the_content_is(world: World) -> None:
    big = world.file(ROOT_ID, "big", "b1", "b2", "b3")
    blocks = world.replica.by_id(big).blocks  # type: ignore[union-attr]
    assert world.states.of_path("big").state == "online-only"
    world.cache.put(blocks[0], world.server.blocks[blocks[0]])
    partly = world.states.of_path("big")
    assert (partly.state, partly.local_bytes) == ("partly-cached", BLOCK_SIZE)
    assert partly.describe() == "partly cached (49% local)"
    assert FileState("x", "file", 10, 4, True, False, False).describe() == "pinned (fetching, 40% local)"
    assert FileState("x", "file", 10, 0, False, False, True).describe() == "conflict copy, online only"
    for h in blocks[1:]:
        world.cache.put(h, world.server.blocks[h])
    assert world.states.of_path("big").state == "cached"
    conflict = world.file(ROOT_ID, "notes (conflict from B 2024-01-01 120000).txt", "c")
    assert world.states.of_path("notes (conflict from B 2024-01-01 120000).txt").state == "conflict"
    world.queue.enqueue(Update(id=conflict, size=1, blocks=(), mtime_ns=1))
    assert world.states.of_path("notes (conflict from B 2024-01-01 120000).txt").state == "waiting-for-upload"
    empty = world.mkdir(ROOT_ID, "empty")
    assert world.states.of_row(world.replica.by_id(empty)).state == "cached"  # type: ignore[arg-type]
    assert world.states.of_path("").state == "waiting-for-upload"  # something inside waits
    assert world.states.xattr(world.replica.by_id(big).ino) == "cached"  # type: ignore[union-attr]


# -- the control channel -----------------------------------------------------------


async def test_control_requests_round_trip_over_a_long_socket_path(tmp_path: Path) -> None:
    state = tmp_path / ("x" * 80) / "state"
    state.mkdir(parents=True)
    assert len(str(state / "control.sock")) > 108  # only reachable through /proc/self/fd

    async def handler(op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "boom":
            raise BadPath("Photos does not exist in the store")
        if op == "bug":
            raise RuntimeError("a bug")
        return {"op": op, "args": args}

    server = ControlServer(state, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        assert (state / "control.sock").stat().st_mode & 0o777 == 0o600
        answer = await trio.to_thread.run_sync(lambda: request(state, "echo", {"n": 1}))
        assert answer == {"op": "echo", "args": {"n": 1}}
        with pytest.raises(RequestFailed, match="Photos does not exist") as refused:
            await trio.to_thread.run_sync(lambda: request(state, "boom"))
        assert refused.value.exit_code == 2
        with pytest.raises(RequestFailed, match="see its log"):
            await trio.to_thread.run_sync(lambda: request(state, "bug"))
        nursery.cancel_scope.cancel()
    assert not (state / "control.sock").exists()
    with pytest.raises(NotRunning):
        request(state, "echo")


def test_the_cache_lock_admits_one_owner_at_a_time(tmp_path: Path) -> None:
    first = CacheLock.try_acquire(tmp_path)
    assert first is not None
    assert CacheLock.try_acquire(tmp_path) is None
    got: list[CacheLock] = []
    waiter = threading.Thread(target=lambda: got.append(CacheLock.acquire(tmp_path)))
    waiter.start()
    waiter.join(0.2)
    assert not got  # waits while the first owner holds it
    first.release()
    waiter.join(5)
    assert got
    got[0].release()


async def test_without_a_mount_commands_protect_queued_and_pinned_blocks(tmp_path: Path) -> None:
    home = Home.locate(tmp_path / "home")
    home.ensure()
    db = StateDb(home.replica_db)
    replica = Replica(db)
    queue = WriteBackQueue(db)
    cache = BlockCache(home.blocks_dir, 1 << 30)
    pinned_h, pinned_data = block("pinned")
    queued_h, queued_data = block("queued")
    loose_h, loose_data = block("loose")
    for h, data in ((pinned_h, pinned_data), (queued_h, queued_data), (loose_h, loose_data)):
        cache.put(h, data)
    with db.tx():
        replica.add_node(NodeId("a" * 32), "file", 0o644, size=len(pinned_data), blocks=(BlockHash(pinned_h),))
        replica.set_entry(ROOT_ID, "pinned.bin", "a" * 32)
    queue.enqueue(Create(id="b" * 32, parent=ROOT_ID, name="new.bin", mode=0o644, mtime_ns=1, size=len(queued_data), blocks=(queued_h,)))
    PinTable(db).add("a" * 32, "pinned.bin")
    cache.close()
    db.close()

    with local_control(home) as control:
        assert isinstance(control, CacheControl)
        dry = await control.handle("clean", {"dry_run": True})
        assert dry["freed"] == len(loose_data) and dry["blocks"] == 1
        done = await control.handle("clean", {})
        assert done["freed"] == len(loose_data)
        stats = await control.handle("limit", {"limit": 1})
        assert stats["protected_over_limit"] and stats["pinned"] == len(pinned_data)
        assert stats["waiting_for_upload"] == len(queued_data)
        states = await control.handle("state", {"paths": ["pinned.bin"]})
        assert states["files"][0]["state"] == "pinned"
        with pytest.raises(BadPath):
            await control.handle("unpin", {"paths": ["nope"]})
    cache = BlockCache(home.blocks_dir, 1)
    try:
        assert set(cache.present([pinned_h, queued_h, loose_h])) == {pinned_h, queued_h}
    finally:
        cache.close()


async def test_verify_drops_a_damaged_block_and_fetches_it_again(world: World) -> None:
    f = world.file(ROOT_ID, "f", "damaged", last=64 * KiB)  # a block file, not a row (cache.INLINE_MAX)
    (h,) = world.replica.by_id(f).blocks  # type: ignore[union-attr]
    world.cache.put(h, world.server.blocks[h])
    (path,) = [p for p in (world.cache.directory).rglob(f"{h}*.val")]
    path.write_bytes(b"rot" + path.read_bytes()[3:])
    control = CacheControl(
        cache=world.cache, replica=world.replica, queue=world.queue, pinner=world.pinner, states=world.states,
        download=world.server.get_block,
    )
    answer = await control.handle("verify", {})
    assert (answer["checked"], answer["corrupt"], answer["refetched"], answer["lost"]) == (1, [h], [h], [])
    assert world.cache.get(h) == world.server.blocks[h]
