"""The WinFsp front end's fixture: its operations on a real engine, with an in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from websync_server.protocol import ROOT_ID

from tests.client.engine import EngineMachine, Server
from tests.winfsp.drive import Drive

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"


@dataclass
class Setup:
    drive: Drive
    machine: EngineMachine
    server: Server
    #: Every name a commit sent to the server, in order.
    sent_names: list[str]

    async def settle(self) -> None:
        await self.machine.settle()

    def versions(self, path: str) -> int:
        return len(self.server.store.versions(self.server.store_id, self.node_id(path)))

    def node_id(self, path: str) -> Any:
        listing = self.server.store.changes(self.server.store_id, 0, 10**9)
        entries = {(e.parent, e.name): e.node for e in listing.entries if e.node is not None}
        parent = ROOT_ID
        for part in path.split("/"):
            parent = entries[(parent, part)]
        return parent


@pytest.fixture
async def setup(tmp_path: Path, winfspy: None) -> AsyncIterator[Setup]:
    from websync_fs.winfsp.ops import WinFspOperations
    from websync_fs.winfsp.security import security_sddl
    from winfspy.plumbing import SecurityDescriptor

    server = Server(tmp_path / "server")
    machine = EngineMachine("A", tmp_path / "a", server)
    sent: list[str] = []
    commit = machine.remote.commit

    async def recording(batch: str, ops: list[dict[str, Any]]) -> int:
        sent.extend(name for op in ops for name in (op.get("name"), op.get("new_name")) if name)
        return await commit(batch, ops)

    machine.remote.commit = recording  # type: ignore[method-assign]
    ops = WinFspOperations(machine.vfs, trio.lowlevel.current_trio_token(),
                           SecurityDescriptor.from_string(security_sddl(SID)), space=lambda: (10 << 30, 4 << 30))
    try:
        yield Setup(Drive(ops), machine, server, sent)
    finally:
        machine.close()
        server.close()
