"""What is written under kept/ when a folder is no longer shared: names, and bytes only the server had."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client.engine import EngineMachine, Server, two_machines
from websync_fs.kept import Content, write_kept


@pytest.mark.timeout(60)
def test_a_kept_file_says_what_was_only_on_the_server_and_one_that_cannot_have_its_name_keeps_its_id(
    tmp_path: Path,
) -> None:
    """A block that is nowhere on this machine (a big file appended to here: the rest is on the server)
    is written as zeros, and the name says "(incomplete)"; a path that cannot be made under kept/ (here a
    file in the way of its folder) is written under the node's id. Neither counts as failed: trying
    again would not help."""
    async def body(server: Server, a: EngineMachine, b: EngineMachine) -> None:
        await a.files.mkdir("trip")
        await a.files.write("trip/doc.txt", b"x")
        await a.files.write("big.bin", b"y")
        doc = a.replica.get(await a.files._ino("trip/doc.txt"))
        big = a.replica.get(await a.files._ino("big.bin"))
        assert doc is not None and big is not None
        dest = tmp_path / "kept" / "Family 2026-12-08 101010"
        dest.mkdir(parents=True)
        (dest / "trip").write_bytes(b"in the way")
        files = {
            doc.id: Content([(5, lambda: b"hello")], 1_600_000_000_000_000_000),
            big.id: Content([(4, lambda: b"head"), (3, lambda: None)], 1_600_000_000_000_000_000),
        }
        assert write_kept(a.replica, files, dest) == (2, 0)
        assert (dest / doc.id).read_bytes() == b"hello"
        assert (dest / doc.id).stat().st_mtime_ns == 1_600_000_000_000_000_000
        assert (dest / "big (incomplete).bin").read_bytes() == b"head\0\0\0"
        assert not (dest / "big.bin").exists()

    two_machines(tmp_path, body)
