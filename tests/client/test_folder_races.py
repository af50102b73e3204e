"""The synced folder's merger over an in-process engine, with a program acting in the windows between its steps.

Through the kernel these interleavings need a loaded machine and luck; here
the program's action is made to happen at the exact moment (see engine.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.client.engine import EngineMachine, Server
from websync_fs.folder import merger as merger_module
from websync_fs.folder.corepaths import CorePaths
from websync_fs.folder.ignore import IgnoreRules
from websync_fs.folder.known import KnownTree
from websync_fs.folder.merger import Merger
from websync_fs.names import NamePolicy


@pytest.mark.timeout(60)
def test_a_write_right_after_a_download_lands_is_sent_up_not_taken_for_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program writes the file in the instant after the download was renamed into place.

    The last synced state must hold what the download wrote; had it been read
    off the disk after the rename, the program's bytes would count as synced
    and never go up: the machines would differ for good.
    """
    folder = tmp_path / "folder"
    folder.mkdir()
    real_replace = os.replace

    def replace_then_write(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if Path(dst).name == "doc.txt":
            Path(dst).write_bytes(b"written here at once")

    async def body() -> None:
        server = Server(tmp_path / "server")
        a, b = EngineMachine("A", tmp_path / "A", server), EngineMachine("B", tmp_path / "B", server)
        known = KnownTree(tmp_path / "known.db")
        try:
            merger = Merger(folder, CorePaths(b.vfs), b.replica, known,
                            IgnoreRules(folder, NamePolicy((), ())), "B")
            await a.files.write("doc.txt", b"from A")
            await a.settle()
            await b.settle()
            monkeypatch.setattr(merger_module.os, "replace", replace_then_write)
            await merger.settle(set(), remote=True)
            monkeypatch.setattr(merger_module.os, "replace", real_replace)
            assert (folder / "doc.txt").read_bytes() == b"written here at once"
            await merger.settle({"doc.txt"})  # the watcher's event for the program's write
            await b.settle()
            await a.settle()
            assert await a.files.read("doc.txt") == b"written here at once"
        finally:
            known.close()
            a.close()
            b.close()
            server.close()

    trio.run(body)
