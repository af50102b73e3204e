"""A journal reset never makes a machine lose work: a restored server, a compacted journal.

The machine's replica is ahead of the restored server: the commits made after
the backup are gone there.  The server's journal answers the machine's cursor
with a reset; the machine lists the tree again and sends what only it has
(files made, versions written since the backup) instead of deleting them to
match.  A machine mounted fresh afterwards sees all of it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.faults.conftest import Site, drained
from tests.proxy import Proxy
from tests.servers import server_command

pytestmark = pytest.mark.mount


@pytest.fixture
def proxy_to() -> Iterator[Callable[[Site], Proxy]]:
    """A cuttable connection to a test's own server."""
    made: list[Proxy] = []

    def make(site: Site) -> Proxy:
        made.append(Proxy(site.port))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.mark.timeout(300)
def test_a_machine_ahead_of_a_restored_server_sends_its_newer_work_again(
    make_machine: Callable[..., Machine], own_site: Site
) -> None:
    a = make_machine("A", own_site)
    a.path("doc.txt").write_bytes(b"version 1, in the backup")
    a.path("kept.txt").write_bytes(b"in the backup")
    drained(a)
    backup = own_site.data_dir.parent / "backup"
    subprocess.run(server_command("backup", "--data", str(own_site.data_dir), str(backup)),
                   check=True, capture_output=True, timeout=120)
    a.path("doc.txt").write_bytes(b"version 2, after the backup")
    a.path("later.txt").write_bytes(b"made after the backup")
    a.path("later-dir").mkdir()
    a.path("later-dir", "inner.txt").write_bytes(b"inner, after the backup")
    drained(a)
    own_site.stop()
    restored = own_site.data_dir.parent / "restored"
    subprocess.run(server_command("restore", "--data", str(restored), str(backup)),
                   check=True, capture_output=True, timeout=120)
    own_site.data_dir = restored
    own_site.start()
    b = make_machine("B", own_site)
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("later-dir", "inner.txt")) == b"inner, after the backup",
                   timeout=60, what=f"A's newer folder on {m.name}")
        eventually(lambda m=m: read_bytes(m.path("doc.txt")) == b"version 2, after the backup",
                   timeout=60, what=f"A's newer version on {m.name}")
        assert read_bytes(m.path("later.txt")) == b"made after the backup"
        assert read_bytes(m.path("kept.txt")) == b"in the backup"
    assert sorted(p.name for p in b.mnt.iterdir()) == ["doc.txt", "kept.txt", "later-dir", "later.txt"]


@pytest.mark.timeout(300)
def test_a_machine_offline_across_a_journal_compaction_keeps_its_pending_edits(
    make_machine: Callable[..., Machine], own_site: Site, proxy_to: Callable[[Site], Proxy]
) -> None:
    proxy = proxy_to(own_site)
    a = make_machine("A", own_site, url=proxy.url, allow=(r"cannot reach",))
    b = make_machine("B", own_site)
    for name in ("edited-offline.txt", "deleted-elsewhere.txt", "stays.txt"):
        b.path(name).write_bytes(b"before " + name.encode())
    for name in ("edited-offline.txt", "deleted-elsewhere.txt", "stays.txt"):
        eventually(lambda name=name: read_bytes(a.path(name)) == b"before " + name.encode(), what=f"{name} on A")
    proxy.online = False
    a.path("edited-offline.txt").write_bytes(b"edited on A while offline")
    a.path("new-offline.txt").write_bytes(b"made on A while offline")
    b.path("deleted-elsewhere.txt").unlink()
    b.path("made-elsewhere.txt").write_bytes(b"made on B")
    drained(b)
    data = str(own_site.data_dir)
    subprocess.run(server_command("retention", "--data", data, "--journal-days", "0"), check=True,
                   capture_output=True, timeout=60)
    subprocess.run(server_command("gc", "--data", data, "--grace-hours", "0"), check=True, capture_output=True,
                   timeout=120)
    proxy.online = True
    drained(a)
    want = ["edited-offline.txt", "made-elsewhere.txt", "new-offline.txt", "stays.txt"]
    for m in (a, b):
        eventually(lambda m=m: sorted(p.name for p in m.mnt.iterdir()) == want, timeout=60,
                   what=f"one tree on {m.name}")
        eventually(lambda m=m: read_bytes(m.path("edited-offline.txt")) == b"edited on A while offline",
                   what=f"A's offline edit on {m.name}")
    assert "reset" in a.log()
