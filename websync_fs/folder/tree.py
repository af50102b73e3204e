"""The two sides a synced folder compares: the folder on disk and the replica's tree, by path."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from websync_server.protocol import BLOCK_SIZE, ROOT_ID

from ..namepolicy import Aliases
from ..replica import NodeRow, Replica
from .corepaths import join, kind_of
from .ignore import IgnoreRules
from .known import LocalSig

log = logging.getLogger(__name__)


def local_sig(root: Path, rel: str) -> LocalSig | None:
    """What *rel* holds on disk now (lstat: a symlink is itself), or None."""
    try:
        st = os.lstat(join(root, rel))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return sig_of(st)


def sig_of(st: os.stat_result) -> LocalSig:
    kind = kind_of(st.st_mode)
    if kind == "dir":
        return LocalSig(kind, 0, 0, st.st_ino, 0, st.st_uid, st.st_gid)
    mode = stat.S_IMODE(st.st_mode) if kind == "file" else 0
    return LocalSig(kind, st.st_size, st.st_mtime_ns, st.st_ino, mode, st.st_uid, st.st_gid)


def version(row: NodeRow) -> str:
    """What a node's synced state is, as one string: equal strings, nothing to do."""
    # An owner set by chown is part of it (a folder synced by root takes it); the
    # store owner's nodes, most of all, keep the strings of before.
    owner = "" if row.uid is None and row.gid is None else f":{row.uid}:{row.gid}"
    if row.kind == "dir":
        return "dir" + owner
    if row.kind == "symlink":
        return f"symlink:{row.target}{owner}"
    digest = hashlib.sha1(",".join(row.blocks).encode()).hexdigest()
    return f"{row.kind}:{row.mode & 0o7777:o}:{row.size}:{digest}{owner}"


def block_hashes(path: Path) -> tuple[LocalSig, list[str], LocalSig]:
    """The file's block hashes as the server names them, with its signature before and after reading."""
    with open(path, "rb") as f:
        before = sig_of(os.fstat(f.fileno()))
        hashes = []
        while block := f.read(BLOCK_SIZE):
            hashes.append(hashlib.sha256(block).hexdigest())
        after = sig_of(os.fstat(f.fileno()))
    return before, hashes, after


def local_paths(root: Path, rules: IgnoreRules, top: str = "") -> list[str]:
    """Every path under *top* in the folder that is synced (the start-up scan's walk)."""
    found: list[str] = []
    stack = [top]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(join(root, rel)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rules.ignored(sub, is_dir):
                continue
            found.append(sub)
            if is_dir:
                stack.append(sub)
    return found


def clear_leftovers(root: Path, prefix: str, elsewhere: Callable[[str], bool] = lambda rel: False) -> int:
    """Remove downloads a killed process left half-written (hidden names with *prefix*); return how many.

    Folders at the top that *elsewhere* names are another engine's (its downloads may be under way).
    """
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if not elsewhere(d)]
        for name in filenames + dirnames:
            if name.startswith(prefix):
                path = Path(dirpath) / name
                if os.path.islink(path) or path.is_file():
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed


def remote_tree(replica: Replica, rules: IgnoreRules, aliases: Aliases | None = None,
                previous: Callable[[str], str | None] = lambda node: None) -> dict[str, NodeRow]:
    """Every synced path of the replica with its node, keyed by local path (one query each for nodes and entries).

    With *aliases* each directory's names are mapped into it as they are met
    (*previous*: a node's local name when last synced, kept while it may).
    """
    nodes = replica.all_nodes()
    children: dict[str, list[tuple[str, str]]] = {}
    for (parent, name), node in replica.all_entries().items():
        children.setdefault(parent, []).append((name, node))
    tree: dict[str, NodeRow] = {}
    stack: list[tuple[str, str]] = [("", ROOT_ID)]
    seen: set[str] = set()
    while stack:
        rel, node = stack.pop()
        if node in seen:
            # A state settling a conflict can leave for a moment, and the walk must end.
            log.warning("the replica's tree holds folder %s twice (again at %r): shown once", node, rel)
            continue
        seen.add(node)
        kept: list[tuple[str, NodeRow]] = []
        for name, child in children.get(node, []):
            row = nodes.get(child)
            sub = f"{rel}/{name}" if rel else name
            if row is None or row.local or rules.ignored(sub, row.kind == "dir"):
                continue
            kept.append((name, row))
        if aliases is not None:
            ids = {name: row.id for name, row in kept}
            aliases.add_directory(rel, [(name, row.ino) for name, row in kept], lambda n: previous(ids[n]))
        for name, row in kept:
            sub = f"{rel}/{name}" if rel else name
            tree[aliases.local(sub) if aliases is not None else sub] = row
            if row.kind == "dir":
                stack.append((sub, row.id))
    return tree
