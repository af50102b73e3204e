"""The benchmark's own view of a WebSync server, straight over HTTP (no FUSE).

Three jobs that must not go through a mount:

- `ServerWatch` follows a store's change journal with a long poll, so the
  harness learns the moment a machine's upload is committed on the server
  (the mount's status file is only rewritten every few seconds);
- `fetch_blocks` is the "plain client" baseline for cold reads: the same
  blocks a cold read needs, fetched one after another over one keep-alive
  connection;
- `changes_call_cost` builds a store of many files through the commit API
  and times one changes call on it.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from websync_server.protocol import API, ROOT_ID, Changes, Node, new_node_id

__all__ = ["ServerWatch", "block_dir_usage", "changes_call_cost", "fetch_blocks"]

_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


class ServerWatch:
    """A store's tree as the server has committed it, kept current from the journal."""

    def __init__(self, url: str, token: str, store: str) -> None:
        self.store = store
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=_TIMEOUT)
        self.cursor = 0
        self.nodes: dict[str, Node] = {}
        self.children: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self.client.close()

    def poll(self, wait: float = 0.0) -> bool:
        """Apply one page of changes (long-polling up to *wait* s); True if anything came."""
        resp = self.client.get(
            f"{API}/stores/{self.store}/changes", params={"cursor": self.cursor, "wait": wait}
        )
        resp.raise_for_status()
        changes = Changes.from_wire(resp.json())
        if changes.reset:
            self.cursor = 0
            self.nodes.clear()
            self.children.clear()
            return True
        for node in changes.nodes:
            self.nodes[node.id] = node
        for entry in changes.entries:
            if entry.node is None:
                self.children.pop((entry.parent, entry.name), None)
            else:
                self.children[(entry.parent, entry.name)] = entry.node
        got = bool(changes.nodes or changes.entries)
        self.cursor = changes.cursor
        if changes.more:
            self.poll()
        return got

    def node(self, rel: str) -> Node | None:
        """The committed node at path *rel* (``a/b/c``), or None."""
        parent: str = ROOT_ID
        for name in rel.split("/"):
            child = self.children.get((parent, name))
            if child is None:
                return None
            parent = child
        return self.nodes.get(parent)

    def wait_file(self, rel: str, size: int, after_seq: int = 0, timeout: float = 600.0) -> Node:
        """Wait until *rel* is committed with *size* bytes by a commit newer than *after_seq*."""
        deadline = time.monotonic() + timeout
        self.poll()
        while True:
            node = self.node(rel)
            if node is not None and node.size == size and node.seq > after_seq:
                return node
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{rel} ({size} bytes) was not committed within {timeout} s; last seen {node}")
            self.poll(wait=min(5.0, left))

    def wait_tree(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        """Wait until every file of *files* (path under *rel*: size) is committed with its size."""
        deadline = time.monotonic() + timeout
        self.poll()
        left = dict(files)
        while True:
            for path, size in list(left.items()):
                node = self.node(f"{rel}/{path}")
                if node is not None and node.size == size:
                    del left[path]
            if not left:
                return
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError(f"{len(left)} of {len(files)} files under {rel} were not committed "
                                   f"within {timeout} s, e.g. {next(iter(left))}")
            self.poll(wait=min(5.0, wait))


def fetch_blocks(url: str, token: str, hashes: list[str] | tuple[str, ...]) -> float:
    """Fetch *hashes* one after another over one connection; return the seconds it took."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=_TIMEOUT) as client:
        client.get(f"{API}/health").raise_for_status()  # connect outside the timing
        start = time.perf_counter()
        for h in hashes:
            with client.stream("GET", f"{API}/blocks/{h}") as resp:
                resp.raise_for_status()
                for _ in resp.iter_bytes(1 << 20):
                    pass
        return time.perf_counter() - start


def block_dir_usage(data_dir: Path, user_hint: str | None = None) -> tuple[int, int]:
    """(number of blocks, bytes) in the server's block directory, temporary uploads excluded."""
    root = data_dir / "blocks"
    count = size = 0
    for path in root.rglob("*"):
        if ".incoming" in path.parts or not path.is_file():
            continue
        count += 1
        size += path.stat().st_size
    return count, size


@dataclass
class ChangesCost:
    files: int
    median_ms: float
    samples_ms: list[float] = field(default_factory=list)
    build_s: float = 0.0


def _commit(client: httpx.Client, store: str, ops: list[dict[str, Any]]) -> int:
    resp = client.post(f"{API}/stores/{store}/commit", json={"batch": uuid.uuid4().hex, "ops": ops})
    if resp.status_code != 200:
        raise RuntimeError(f"commit refused: {resp.status_code} {resp.text[:300]}")
    return int(resp.json()["seq"])


def fill_store(client: httpx.Client, store: str, files: int, *, per_dir: int = 1000, batch: int = 1000) -> int:
    """Make *files* empty files in folders of *per_dir* through the commit API; return the folders made."""
    now = time.time_ns()
    ops: list[dict[str, Any]] = []
    made = folder = 0
    while made < files:
        dir_id = new_node_id()
        ops.append({"op": "mkdir", "id": dir_id, "parent": ROOT_ID, "name": f"d{folder:04d}",
                    "mode": 0o755, "mtime_ns": now})
        folder += 1
        for _ in range(min(per_dir, files - made)):
            ops.append({"op": "create", "id": new_node_id(), "parent": dir_id, "name": f"f{made:07d}",
                        "mode": 0o644, "mtime_ns": now, "size": 0, "blocks": []})
            made += 1
            if len(ops) >= batch:
                _commit(client, store, ops)
                ops = []
    if ops:
        _commit(client, store, ops)
    return folder


def changes_call_cost(
    url: str, token: str, store: str, files: int, *, per_dir: int = 1000, batch: int = 1000, repeat: int = 30
) -> ChangesCost:
    """Fill *store* with *files* empty files, commit one more, time "changes since before it".

    The files go in through the commit API in batches (folders of *per_dir*
    files), not through a mount: this measures the journal, not the client.
    The timed call asks for the changes since the cursor just before the
    last commit, exactly what a following machine asks after one edit.
    """
    now = time.time_ns()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=_TIMEOUT) as client:
        start = time.perf_counter()
        fill_store(client, store, files, per_dir=per_dir, batch=batch)
        build = time.perf_counter() - start
        before = _commit(client, store, [{"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID,
                                          "name": "marker", "mode": 0o755, "mtime_ns": now}])
        _commit(client, store, [{"op": "create", "id": new_node_id(), "parent": ROOT_ID, "name": "one-change",
                                 "mode": 0o644, "mtime_ns": now, "size": 0, "blocks": []}])
        params = {"cursor": before, "wait": 0}
        path = f"{API}/stores/{store}/changes"
        client.get(path, params=params).raise_for_status()  # warm the connection and the server's caches
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            resp = client.get(path, params=params)
            samples.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
            body = resp.json()
            if len(body["nodes"]) != 1 or len(body["entries"]) != 1:
                raise RuntimeError(
                    f"expected one change, got {len(body['nodes'])} nodes, {len(body['entries'])} entries"
                )
        return ChangesCost(files, statistics.median(samples), samples, build)
