"""The self-check: a machine whose tree drifted from the server's is told so, and repairs it.

The drift is made by hand in machine B's replica while it is unmounted (the
bugs that caused such drift are fixed; the check is the backstop for the next
one): an entry renamed behind the server's back, and a folder that only B has.
"""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from tests.clients import Machine, eventually, read_bytes

pytestmark = pytest.mark.mount


def _check(m: Machine) -> tuple[int, dict[str, object]]:
    done = m.cli("status", "--check", "--json", check=False)
    return done.returncode, json.loads(done.stdout)


def test_status_check_names_each_difference_and_the_mount_repairs_them(a: Machine, b: Machine) -> None:
    a.path("one.txt").write_bytes(b"one")
    a.path("folder").mkdir()
    eventually(lambda: read_bytes(b.path("one.txt")) == b"one" and b.path("folder").is_dir(), what="files on B")
    code, info = _check(b)
    assert code == 0 and info["check"]["differences"] == []  # type: ignore[index]
    b.unmount()
    db = sqlite3.connect(b.home / "state" / "replica.db")
    with db:
        db.execute("UPDATE entries SET name = 'stale.txt' WHERE name = 'one.txt'")
        mode, mtime = db.execute(
            "SELECT n.mode, n.mtime_ns FROM nodes n JOIN entries e ON e.node = n.id WHERE e.name = 'folder'"
        ).fetchone()
        node = uuid.uuid4().hex
        db.execute("INSERT INTO nodes (id, kind, mode, mtime_ns, ctime_ns) VALUES (?, 'dir', ?, ?, ?)",
                   (node, mode, mtime, mtime))
        db.execute("INSERT INTO entries (parent, name, node) VALUES ('root', 'only-on-B', ?)", (node,))
    db.close()
    b.mount()
    code, info = _check(b)
    found = "\n".join(info["check"]["differences"])  # type: ignore[index]
    assert code == 1
    assert "stale.txt: here, not on the server" in found
    assert "one.txt: on the server, not here" in found
    assert "only-on-B: here, not on the server" in found
    # The mount repairs at the next quiet moment: the server's name wins, B's own folder goes up.
    eventually(lambda: sorted(p.name for p in b.mnt.iterdir()) == ["folder", "one.txt", "only-on-B"],
               what="B repaired")
    eventually(lambda: a.path("only-on-B").is_dir(), what="B's folder on A")
    eventually(lambda: _check(b)[0] == 0, what="B in step with the server")
    assert read_bytes(b.path("one.txt")) == b"one"
    eventually(lambda: any("only-on-B" in n for n in json.loads(b.cli("status", "--json").stdout)["notices"]),
               what="the repair among the notices")
