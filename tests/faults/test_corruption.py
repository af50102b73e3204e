"""Corruption: damaged bytes are caught by their SHA-256 wherever they are, and never served.

A cached block whose file was damaged on the client's disk is dropped on read
and fetched again; a block upload whose body does not hash to its name is
refused by the server (400) and nothing is stored; a block damaged on the
server's disk is refused by the client (EIO) rather than shown as file content.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.clients import Machine, cached_block, eventually, read_bytes
from tests.faults import serverstate
from tests.faults.conftest import Site, drained, status
from tests.proxy import Proxy
from tests.servers import login

pytestmark = pytest.mark.mount

BLOCK = 4 * 1024 * 1024


def cached_files(machine: Machine, h: str) -> list[Path]:
    return list((machine.home / "cache" / "blocks").rglob(f"{h}.*"))


def damage_row(machine: Machine, h: str) -> None:
    """Flip bytes of a small block kept in the cache's index row."""
    with sqlite3.connect(machine.home / "cache" / "blocks" / "cache.db") as conn:
        (value,) = conn.execute("SELECT value FROM Cache WHERE key = ? AND filename IS NULL", (h,)).fetchone()
        rotten = bytes(value[:100]) + bytes(b ^ 0xFF for b in value[100:116]) + bytes(value[116:])
        conn.execute("UPDATE Cache SET value = ? WHERE key = ?", (rotten, h))


def damage(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size (bit rot, a bad sector)."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(16)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_corrupt_cached_block_is_detected_and_fetched_again(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    a = make_machine("A", site)
    b = make_machine("B", site, allow=(r"corrupt cache block",))
    data = os.urandom(2 * BLOCK + 12345)
    hashes = [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    a.path("photo.raw").write_bytes(data)
    drained(a)
    assert eventually(lambda: read_bytes(b.path("photo.raw")) == data, what="photo.raw on B")
    b.unmount()  # nothing in memory or in the page cache any more: the next read goes to the disk
    damaged = [p for h in hashes for p in cached_files(b, h)]
    assert len(damaged) == len(hashes) - 1  # the short last block lives in its index row
    for path in damaged:
        damage(path)
    damage_row(b, hashes[-1])
    b.mount()
    assert read_bytes(b.path("photo.raw")) == data
    assert b.log().count("dropping corrupt cache block") >= len(hashes)
    # The cache holds good bytes again (written in the background once each read was answered).
    def good_again(h: str) -> bool:
        stored = cached_block(b, h)
        return stored is not None and hashlib.sha256(stored).hexdigest() == h

    for h in hashes:
        eventually(lambda: good_again(h), what=f"block {h[:12]} cached again with good bytes")


def test_server_refuses_a_block_whose_body_does_not_match_its_hash(site: Site) -> None:
    token = login(site.url, site.user, site.password)["token"]
    good = os.urandom(100_000)
    h = hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[5000] ^= 1
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        refused = http.put(f"/v1/blocks/{h}", content=bytes(bad))
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid"
        short = http.put(f"/v1/blocks/{h}", content=good[:-1])  # a body cut short
        assert short.status_code == 400
        assert http.get(f"/v1/blocks/{h}").status_code == 404
        assert http.post("/v1/blocks/missing", json={"hashes": [h]}).json()["missing"] == [h]
        assert not serverstate.block_path(site.data_dir, site.user, h).exists()
        assert http.put(f"/v1/blocks/{h}", content=good).status_code == 201
        assert http.get(f"/v1/blocks/{h}").content == good


def test_block_damaged_on_the_server_is_never_shown_as_content(
    site: Site, make_machine: Callable[..., Machine]
) -> None:
    a = make_machine("A", site)
    data = os.urandom(BLOCK + 1000)
    a.path("report.pdf").write_bytes(data)
    drained(a)
    h = hashlib.sha256(data[:BLOCK]).hexdigest()
    damage(serverstate.block_path(site.data_dir, site.user, h))
    b = make_machine("B", site, allow=(r"cannot fetch block .* wrong content",))
    with pytest.raises(OSError) as failure:
        read_bytes(b.path("report.pdf"))
    assert failure.value.errno == errno.EIO
    assert "wrong content" in b.log()
    # The second block is fine and reads; the client never cached the damaged one.
    with open(b.path("report.pdf"), "rb") as f:
        f.seek(BLOCK)
        assert f.read() == data[BLOCK:]
    assert not cached_files(b, h)


def test_block_damaged_while_waiting_for_upload_holds_back_nothing_else(
    site: Site, make_machine: Callable[..., Machine], seed: int
) -> None:
    """Bytes that exist only in this cache and rot there are lost; every other change must still go."""
    proxy = Proxy(site.port, seed=seed)
    try:
        a = make_machine("A", site, url=proxy.url,
                         allow=(r"cannot go: block .* missing or damaged", r"corrupt cache block"))
        proxy.online = False
        rotten = os.urandom(100_000)
        a.path("rotten.bin").write_bytes(rotten)
        good = {f"good{i}.txt": f"good {i}\n".encode() * (i + 1) for i in range(20)}
        for name, data in good.items():
            a.path(name).write_bytes(data)
        for path in cached_files(a, hashlib.sha256(rotten).hexdigest()):
            damage(path)
        proxy.online = True

        def arrived() -> bool:
            tree = serverstate.tree(site.data_dir, site.user)
            return all(tree.get(name) == data for name, data in good.items())

        eventually(arrived, timeout=60, what="the good files on the server")
        eventually(lambda: "missing or damaged in the local cache" in a.log(), what="the error in the log")
        info = status(a)
        # The connection is fine; the one change that cannot go says why.
        assert info["pending"] == 1 and "damaged" in info["held"], info
    finally:
        proxy.close()
