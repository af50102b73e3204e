"""Early uploads: blocks of files still being written go up in the background, or not at all."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import trio
import trio.testing

from websync_fs.earlyupload import EarlyUploads
from websync_fs.remote import Remote


class Server:
    """Answers `missing` and block PUTs like the real server; can be made unreachable."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.down = False
        self.gate = trio.Event()
        self.gate.set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/blocks/missing"):
            hashes = json.loads(request.content)["hashes"]
            return httpx.Response(200, json={"missing": [h for h in hashes if h not in self.blocks]})
        await self.gate.wait()
        h = request.url.path.rsplit("/", 1)[1]
        body = await request.aread()
        assert hashlib.sha256(body).hexdigest() == h
        self.blocks[h] = body
        self.puts.append(h)
        return httpx.Response(201, json={"hash": h, "size": len(body)})


def block() -> tuple[str, bytes]:
    data = os.urandom(1000)
    return hashlib.sha256(data).hexdigest(), data


def remote(server: Server) -> Remote:
    return Remote("http://server", "token", "store", transport=httpx.MockTransport(server.handle))


async def test_offered_blocks_go_up_and_settle_waits_for_them() -> None:
    server = Server()
    early = EarlyUploads(remote(server), backlog=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(early.run)
        offered = [block() for _ in range(3)]
        assert all(early.offer(h, data) for h, data in offered)
        await early.settle([h for h, _ in offered])
        assert sorted(server.puts) == sorted(h for h, _ in offered)
        nursery.cancel_scope.cancel()


async def test_a_block_the_server_has_is_not_sent_again() -> None:
    server = Server()
    h, data = block()
    server.blocks[h] = data
    early = EarlyUploads(remote(server))
    async with trio.open_nursery() as nursery:
        await nursery.start(early.run)
        assert early.offer(h, data)
        await early.settle([h])
        assert server.puts == []
        nursery.cancel_scope.cancel()


async def test_offers_beyond_the_backlog_are_dropped_without_waiting() -> None:
    server = Server()
    server.gate = trio.Event()  # uploads hang until the gate opens
    early = EarlyUploads(remote(server), workers=1, backlog=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(early.run)
        first, second, third = block(), block(), block()
        assert early.offer(*first)
        await trio.testing.wait_all_tasks_blocked()  # the worker holds the first
        assert early.offer(*second)  # waits in the backlog
        assert not early.offer(*third)  # dropped: the queue's upload sends it later
        server.gate.set()
        await early.settle([first[0], second[0]])
        assert sorted(server.puts) == sorted([first[0], second[0]])
        nursery.cancel_scope.cancel()


async def test_an_unreachable_server_stops_the_offers_for_a_while() -> None:
    server = Server()
    server.down = True
    early = EarlyUploads(remote(server))
    async with trio.open_nursery() as nursery:
        await nursery.start(early.run)
        h, data = block()
        assert early.offer(h, data)
        await early.settle([h])  # given up, not raised
        server.down = False
        assert not early.offer(*block())
        assert server.puts == []
        nursery.cancel_scope.cancel()
