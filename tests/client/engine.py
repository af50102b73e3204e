"""Several machines' engines in one process, against one in-process server, stepped by a seed.

Each `EngineMachine` is the client's own engine -- core, replica, queue,
uploader, applier, self-check -- over its own state database and cache; the
server is a real `MetadataStore` and `BlockStore` answered without HTTP.
Nothing runs by itself: the test decides, step by step, which machine does a
file operation, sends one batch, or applies one journal page.  So the
interleavings that need a loaded machine to happen through the kernel happen
here on purpose, a seed replays a case exactly, and thousands of cases run in
a minute.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from argon2 import PasswordHasher

from cache import BlockCache
from tests.contract.targets import CoreTarget
from websync_fs.blocksource import BlockSource
from websync_fs.errors import CommitConflict, NotFound, Offline
from websync_fs.follower import Applier
from websync_fs.reconcile import Reconciler
from websync_fs.replica import Replica
from websync_fs.statedb import StateDb
from websync_fs.uploader import Uploader
from websync_fs.vfs import Vfs
from websync_fs.writeback import WriteBackQueue
from websync_server import _exceptions as server_errors
from websync_server.accounts import Accounts
from websync_server.blocks import BlockStore
from websync_server.database import Database
from websync_server.protocol import ROOT_ID, BlockHash, Changes, NodeId, NodeState
from websync_server.store import MetadataStore

USER = "u"


class Server:
    """One user's store and blocks, in this process."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.db = Database.open_in(root)
        self.blocks = BlockStore(root / "blocks")
        self.blocks.open()
        hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        self.store_id = Accounts(self.db, hasher).add_user(USER, "password-1")
        self.store = MetadataStore(self.db, self.blocks)

    def close(self) -> None:
        self.db.close()

    def tree(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """path -> (kind, blocks) of the live tree."""
        listing = self.store.changes(self.store_id, 0, 10**9)
        return _tree({n.id: n for n in listing.nodes if not n.deleted},
                     {(e.parent, e.name): e.node for e in listing.entries if e.node is not None})


class Remote:
    """What the engine asks of the server, answered by `Server` directly (the same errors as over HTTP)."""

    def __init__(self, server: Server, device: str) -> None:
        self.server = server
        self.device = device
        self.store = server.store_id
        #: Run while a request is on its way (before the server acts, and before the answer is
        #: back): what the machine does meanwhile, as the front end and the journal do in a mount.
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def _meanwhile(self) -> None:
        if self.meanwhile is not None:
            await self.meanwhile()

    async def missing(self, hashes: list[BlockHash]) -> list[BlockHash]:
        return self.server.blocks.missing(USER, hashes)

    async def put_block(self, h: BlockHash, data: bytes) -> None:
        self.server.blocks.put(USER, h, data)

    async def put_blocks(self, frames: list[tuple[BlockHash, bytes]]) -> None:
        for h, data in frames:
            self.server.blocks.put(USER, h, data)

    async def commit(self, batch: str, ops: list[dict[str, Any]]) -> int:
        await self._meanwhile()
        try:
            seq = self.server.store.commit(self.store, self.device, batch, ops)
        except server_errors.CommitConflict as exc:
            await self._meanwhile()
            raise CommitConflict(exc.conflict) from exc
        await self._meanwhile()
        return seq

    async def changes(self, cursor: int, wait: float = 0, limit: int = 10000) -> Changes:
        return self.server.store.changes(self.store, cursor, limit)

    async def node_state(self, node: NodeId) -> NodeState:
        await self._meanwhile()
        try:
            return self.server.store.node_state(self.store, node)
        except server_errors.NotFound as exc:
            raise NotFound(str(exc)) from exc

    async def versions(self, node: NodeId) -> list[dict[str, Any]]:
        return [v.to_wire() for v in self.server.store.versions(self.store, node)]

    async def get_block(self, h: BlockHash) -> bytes:
        try:
            return self.server.blocks.read(USER, h).data
        except server_errors.NotFound as exc:
            raise Offline(str(exc)) from exc

    async def get_block_range(self, h: BlockHash, offset: int, length: int) -> tuple[bytes, bool]:
        data = await self.get_block(h)
        return data[offset:offset + length], False


class EngineMachine:
    """One machine's engine, stepped by the test."""

    def __init__(self, name: str, root: Path, server: Server) -> None:
        self.name = name
        (root / "work").mkdir(parents=True, exist_ok=True)  # exists when a test starts a machine again
        self.db = StateDb(root / "state.db")
        self.cache = BlockCache(root / "blocks", 1 << 30)
        self.replica = Replica(self.db)
        self.queue = WriteBackQueue(self.db, quiet=0, protect=self.cache.protect, unprotect=self.cache.unprotect)
        self.remote = Remote(server, name)

        def store_block(data: bytes) -> str:
            return self.cache.add(data, protect=True)

        self.vfs = Vfs(self.db, self.replica, self.queue, BlockSource(self.cache, self.remote),  # type: ignore[arg-type]
                       store_block, self.cache.unprotect, root / "work", hold_blocks=self.cache.protect,
                       sync_blocks=self.cache.sync, temporary_quiet=0, replace_quiet=0)
        self.applier = Applier(self.replica, self.queue, self.vfs.busy, lambda inv: None)
        self.uploader = Uploader(self.queue, self.replica, self.remote, self.cache.get,  # type: ignore[arg-type]
                                 self.applier, lambda inv: None, name, lambda online, error: None)
        self.reconciler = Reconciler(
            self.replica, self.queue, self.remote, lambda inv: None, name,  # type: ignore[arg-type]
            writing=self.vfs.writing, has_blocks=lambda hs: len(self.cache.present(hs)) == len(set(hs)),
            busy=self.vfs.busy,
        )
        self.uploader.on_conflict = self.reconciler.due
        self.vfs.on_settled = self.applier.settle
        self.queue.on_drop(self.applier.settle)
        self.files = CoreTarget(self.vfs)

    def close(self) -> None:
        self.cache.close()
        self.db.close()

    async def send_one(self) -> bool:
        """Send one batch if one is ready; True if something went (or was settled)."""
        batch = self.queue.inflight() or self.queue.take()
        if not batch:
            return False
        await self.uploader.send(batch)
        return True

    async def apply_one(self) -> bool:
        """Apply one journal page; True if it held anything."""
        changes = await self.remote.changes(self.replica.cursor, limit=50)
        if changes.reset:
            await self.reconciler.resync()
            return True
        self.applier.apply(changes.nodes, changes.entries, changes.cursor)
        return bool(changes.nodes or changes.entries)

    async def settle(self) -> None:
        """Send and apply until nothing is left, then run the self-check and settle again."""
        for _ in range(3):
            for _ in range(10_000):
                sent = await self.send_one()
                applied = await self.apply_one()
                if not sent and not applied and len(self.queue) == 0:
                    break
            await self.reconciler.check(repair=True, wait=True)

    def tree(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        nodes = {row.id: row for row in self.replica.all_nodes().values() if not row.local}
        return _tree(nodes, self.replica.all_entries())


def _tree(nodes: dict[str, Any], entries: dict[tuple[str, str], str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    children: dict[str, list[tuple[str, str]]] = {}
    for (parent, name), node in entries.items():
        children.setdefault(parent, []).append((name, node))
    out: dict[str, tuple[str, tuple[str, ...]]] = {}

    def walk(parent: str, prefix: str, depth: int) -> None:
        for name, node_id in sorted(children.get(parent, [])):
            node = nodes.get(node_id)
            if node is None or depth > 64:
                continue
            out[prefix + name] = (node.kind, tuple(node.blocks))
            if node.kind == "dir":
                walk(node_id, f"{prefix}{name}/", depth + 1)

    walk(ROOT_ID, "", 0)
    return out


def new_batch() -> str:
    return uuid.uuid4().hex


def two_machines(tmp_path: Path, body: Callable[[Server, EngineMachine, EngineMachine], Awaitable[None]]) -> None:
    """Run *body* with a server and engines A and B on it; all three are closed whatever happens."""
    async def run() -> None:
        server = Server(tmp_path / "server")
        a, b = EngineMachine("A", tmp_path / "A", server), EngineMachine("B", tmp_path / "B", server)
        try:
            await body(server, a, b)
        finally:
            a.close()
            b.close()
            server.close()

    trio.run(run)
