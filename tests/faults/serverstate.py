"""Read a server's data directory directly: its consistency, and a store's tree with its bytes.

Fault tests judge the server by what is on its disk, not by what it answers:
after a kill -9 the SQLite database and the block directory must agree on
their own.  `problems` lists every broken invariant (an empty list is a
consistent store); `tree` rebuilds a user's files from the database rows and
the block files, so a test can compare them byte for byte with what it wrote.

Layout (websync_server/services.py): ``DATA/websync.db`` and
``DATA/blocks/USER/ab/cd/HASH``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

ROOT = "root"
BLOCK_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Link:
    target: str


#: A tree: store path ("a/b.txt") -> file bytes, ``DIR`` for a folder, or a `Link`.
DIR = None
Tree = dict[str, "bytes | Link | None"]


def _connect(data_dir: Path) -> sqlite3.Connection:
    """A connection reading one snapshot: `BEGIN` at once, so every SELECT sees the same commits.

    Without it each statement would see the database as it is then, and a commit of the
    running server between two of them would look like an inconsistency.  A normal
    (read-write) connection: opening the database after a crash replays its WAL,
    exactly as the restarted server would.
    """
    conn = sqlite3.connect(str(data_dir / "websync.db"), timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("BEGIN")
    return conn


def block_path(data_dir: Path, user: str, h: str) -> Path:
    return data_dir / "blocks" / user / h[:2] / h[2:4] / h


def store_of(data_dir: Path, user: str) -> str:
    conn = _connect(data_dir)
    try:
        row = conn.execute(
            "SELECT stores.id FROM stores JOIN users ON stores.owner = users.id WHERE users.name = ?", (user,)
        ).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no store for user {user}"
    return str(row[0])


def problems(data_dir: Path, user: str, *, rehash: bool = True) -> list[str]:
    """Every way the store of *user* is inconsistent; [] when it is whole.

    - the database passes SQLite's own integrity and foreign key checks;
    - no live node names a block that is missing, short, or whose bytes do
      not hash to its name, and every file's blocks add up to its size;
    - no old version names a missing block;
    - every live entry names a live node in a live folder, every live node
      but the root has an entry, every folder is reachable from the root;
    - no batch is half-applied: every row's seq belongs to a recorded batch
      (or is the store's creation, seq 1), no row is newer than the store's
      seq, and no two batches share a seq;
    - no block file anywhere under the user's block directory is torn
      (its bytes hash to its name), with *rehash*.
    """
    out: list[str] = []
    store = store_of(data_dir, user)
    conn = _connect(data_dir)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            out.append(f"sqlite integrity_check: {check}")
        for row in conn.execute("PRAGMA foreign_key_check"):
            out.append(f"foreign key broken: {tuple(row)}")
        store_seq = conn.execute("SELECT seq FROM stores WHERE id = ?", (store,)).fetchone()[0]
        nodes = {r["id"]: r for r in conn.execute("SELECT * FROM nodes WHERE store = ?", (store,))}
        entries = list(conn.execute("SELECT * FROM entries WHERE store = ?", (store,)))
        batches = list(conn.execute("SELECT batch, seq FROM batches WHERE store = ?", (store,)))
        versions = list(conn.execute("SELECT node, blocks, size FROM versions WHERE store = ?", (store,)))
    finally:
        conn.close()

    sizes: dict[str, int | None] = {}

    def size_of(h: str) -> int | None:
        if h not in sizes:
            path = block_path(data_dir, user, h)
            sizes[h] = path.stat().st_size if path.exists() else None
        return sizes[h]

    for node in nodes.values():
        if node["deleted"] or node["kind"] != "file":
            continue
        blocks = json.loads(node["blocks"])
        total = 0
        for h in blocks:
            size = size_of(h)
            if size is None:
                out.append(f"node {node['id']} names block {h}, which is not on disk")
            else:
                total += size
        if all(size_of(h) is not None for h in blocks) and total != node["size"]:
            out.append(f"node {node['id']} has size {node['size']} but its blocks hold {total} bytes")
    for version in versions:
        for h in json.loads(version["blocks"]):
            if size_of(h) is None:
                out.append(f"a version of node {version['node']} names block {h}, which is not on disk")

    live = [e for e in entries if e["node"] is not None]
    named: dict[str, list[str]] = {}
    for e in live:
        node = nodes.get(e["node"])
        parent = nodes.get(e["parent"])
        if node is None or node["deleted"]:
            out.append(f"entry {e['parent']}/{e['name']} names node {e['node']}, which is not live")
        if parent is None or parent["deleted"] or parent["kind"] != "dir":
            out.append(f"entry {e['parent']}/{e['name']} is in {e['parent']}, which is not a live folder")
        named.setdefault(e["node"], []).append(e["parent"])
    for node_id, node in nodes.items():
        if node_id != ROOT and not node["deleted"] and node_id not in named:
            out.append(f"live node {node_id} has no entry")
        if node["deleted"] and node_id in named:
            out.append(f"deleted node {node_id} still has an entry")
    # Every folder leads up to the root.
    for node_id, node in nodes.items():
        if node["deleted"] or node["kind"] != "dir":
            continue
        seen, current = set(), node_id
        while current != ROOT:
            if current in seen or current not in named:
                out.append(f"folder {node_id} is not reachable from the root")
                break
            seen.add(current)
            current = named[current][0]

    known = {seq for _, seq in batches} | {1}
    if len({seq for _, seq in batches}) != len(batches):
        out.append("two batches share a seq")
    for kind, rows in (("node", nodes.values()), ("entry", entries)):
        for r in rows:
            if r["seq"] > store_seq:
                out.append(f"{kind} row with seq {r['seq']} is newer than the store's seq {store_seq}")
            elif r["seq"] not in known:
                out.append(f"{kind} row with seq {r['seq']} belongs to no recorded batch (half-applied)")

    if rehash:
        for path in (data_dir / "blocks" / user).rglob("*"):
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
                out.append(f"block file {path} is torn: its bytes do not hash to its name")
    return out


def tree(data_dir: Path, user: str) -> Tree:
    """The live tree of *user*'s store, with each file's bytes read from the block files."""
    store = store_of(data_dir, user)
    conn = _connect(data_dir)
    try:
        nodes = {r["id"]: r for r in conn.execute("SELECT * FROM nodes WHERE store = ? AND NOT deleted", (store,))}
        children: dict[str, list[tuple[str, str]]] = {}
        for e in conn.execute("SELECT parent, name, node FROM entries WHERE store = ? AND node IS NOT NULL", (store,)):
            children.setdefault(e["parent"], []).append((e["name"], e["node"]))
    finally:
        conn.close()
    out: Tree = {}

    def walk(folder: str, prefix: str) -> None:
        for name, node_id in children.get(folder, []):
            node = nodes[node_id]
            path = prefix + name
            if node["kind"] == "dir":
                out[path] = DIR
                walk(node_id, path + "/")
            elif node["kind"] == "symlink":
                out[path] = Link(node["target"])
            else:
                out[path] = b"".join(
                    block_path(data_dir, user, h).read_bytes() for h in json.loads(node["blocks"])
                )

    walk(ROOT, "")
    return out


def read_tree(root: Path) -> Tree:
    """The same shape of tree, read from a directory (a mount point)."""
    out: Tree = {}

    def walk(folder: Path, prefix: str) -> None:
        for child in sorted(folder.iterdir()):
            path = prefix + child.name
            if child.is_symlink():
                out[path] = Link(str(child.readlink()))
            elif child.is_dir():
                out[path] = DIR
                walk(child, path + "/")
            else:
                out[path] = child.read_bytes()

    walk(root, "")
    return out


def diff(expected: Tree, actual: Tree, limit: int = 15) -> str:
    """A short human-readable difference of two trees ("" when equal)."""
    lines = []
    for path in sorted(set(expected) | set(actual)):
        want, got = expected.get(path, "<absent>"), actual.get(path, "<absent>")
        if want != got:
            lines.append(f"  {path}: expected {_show(want)}, got {_show(got)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return "\n".join(lines)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes sha256={hashlib.sha256(value).hexdigest()[:12]}"
    if value is None:
        return "a folder"
    return repr(value)
