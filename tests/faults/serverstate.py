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
    """Every way the server state of *user* is inconsistent; [] when it is whole.

    The product's own checker (``websync-server check``, websync_server/check.py)
    decides: the database's integrity, every block a file or version names
    present and whole, the tree's entries and folders, no half-applied batch,
    and (with *rehash*) no torn block file.  Problems of the database as a
    whole count for every user.
    """
    from websync_server.check import check

    report = check(data_dir, rehash=rehash)
    return [p.message for p in report.problems if p.user in (user, "")]


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
