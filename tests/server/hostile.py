"""Attacks on a real server, as a logged-in user or a stranger would make them.

Shared by the hostile-client tests (``test_hostile.py``) and the load test
(``tests/bench/household.py``); every attack is bounded in count and time.
"""

from __future__ import annotations

from typing import Any

import httpx

from websync_server.commit import DEPTH_MAX, WALK_MAX
from websync_server.protocol import ROOT_ID, new_node_id

__all__ = ["deep_chain", "mkdir", "worst_batch"]


def mkdir(parent: str, name: str, node: str | None = None) -> dict[str, Any]:
    return {"op": "mkdir", "id": node or new_node_id(), "parent": parent, "name": name, "mode": 0o755, "mtime_ns": 0}


def deep_chain(http: httpx.Client, store: str, top: str = "d0") -> tuple[str, str]:
    """Folders as deep as the server allows, the first named *top*, with one folder ``x`` at the bottom: (bottom, x)."""
    ops = []
    parent = ROOT_ID
    for level in range(DEPTH_MAX - 1):
        op = mkdir(parent, f"d{level}" if level else top)
        ops.append(op)
        parent = op["id"]
    leaf = mkdir(parent, "x")
    ops.append(leaf)
    answer = http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": ops})
    answer.raise_for_status()
    return parent, leaf["id"]


def worst_batch(bottom: str, leaf: str) -> list[dict[str, Any]]:
    """The costliest batch the limits allow: folder moves at the bottom of the deepest chain.

    Each move of a folder makes the next one walk the whole chain up again
    (its cycle check), as many times as the batch's walk budget allows.
    """
    ops = []
    names = ("x", "y")
    for index in range(2 * (WALK_MAX // (2 * (DEPTH_MAX + 1)))):  # even: it ends where it began
        old, new = names[index % 2], names[(index + 1) % 2]
        ops.append({"op": "rename", "id": leaf, "parent": bottom, "name": old, "new_parent": bottom, "new_name": new})
    return ops
