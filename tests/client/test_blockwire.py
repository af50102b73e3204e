"""Block downloads over the lean HTTP/1.1 wire: against a real server, a cuttable proxy and odd answers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os

import httpx
import outcome
import pytest
import trio

from tests.proxy import Proxy
from tests.servers import ServerProcess
from websync_fs import blockwire
from websync_fs.errors import NotFound, Offline, Unauthorized
from websync_fs.remote import Remote, login
from websync_server.protocol import API, BlockHash

BLOCK = 4 * 1024 * 1024


async def _remote(url: str, server: ServerProcess, account: tuple[str, str]) -> Remote:
    user, password = account
    answer = await login(server.url, user, password, "wire-test")
    return Remote(url, answer["token"], answer["store"])


async def _upload(remote: Remote, data: bytes) -> BlockHash:
    h = BlockHash(hashlib.sha256(data).hexdigest())
    await remote.put_block(h, data)
    return h


async def test_whole_blocks_and_ranges_come_over_the_wire(server: ServerProcess, account: tuple[str, str]) -> None:
    remote = await _remote(server.url, server, account)
    try:
        assert remote._wire is not None  # a plain http:// server: the lean path is in use
        data = os.urandom(BLOCK)
        h = await _upload(remote, data)
        for _ in range(3):  # the same kept-alive connection, again and again
            assert await remote.get_block(h) == data
        assert await remote.get_block_range(h, 12_345, 4096) == (data[12_345:16_441], False)
        assert await remote.get_block_range(h, BLOCK - 10, 4096) == (data[-10:], False)
        with pytest.raises(NotFound):
            await remote.get_block(BlockHash("0" * 64))
        assert remote._wire is not None  # errors are answers, not reasons to leave the wire
    finally:
        await remote.aclose()


async def test_a_wrong_token_is_unauthorized_over_the_wire(server: ServerProcess, account: tuple[str, str]) -> None:
    good = await _remote(server.url, server, account)
    h = await _upload(good, b"x" * 1000)
    await good.aclose()
    bad = Remote(server.url, "not-a-token", "store")
    try:
        with pytest.raises(Unauthorized):
            await bad.get_block(h)
    finally:
        await bad.aclose()


async def test_a_kept_connection_the_server_dropped_is_replaced_without_an_error(
    server: ServerProcess, account: tuple[str, str], proxy: Proxy
) -> None:
    remote = await _remote(proxy.url, server, account)
    try:
        data = os.urandom(300_000)
        h = await _upload(remote, data)
        assert await remote.get_block(h) == data
        proxy.online = False  # every kept connection is closed under the client...
        proxy.online = True  # ...and the network is back before the next read
        assert await remote.get_block(h) == data
    finally:
        await remote.aclose()


async def test_an_unreachable_server_and_a_cut_answer_are_offline(
    server: ServerProcess, account: tuple[str, str], proxy: Proxy
) -> None:
    remote = await _remote(proxy.url, server, account)
    try:
        h = await _upload(remote, os.urandom(BLOCK))
        proxy.online = False
        with pytest.raises(Offline):
            await remote.get_block(h)
        proxy.online = True
        proxy.cut_rate = 1.0  # every answer ends in its middle
        with pytest.raises(Offline):
            await remote.get_block(h)
        assert proxy.cuts > 0
    finally:
        await remote.aclose()


async def _request_head(stream: trio.SocketStream) -> bytes | None:
    """The head of the next request on *stream*, or None at its end."""
    request = b""
    while b"\r\n\r\n" not in request:
        piece = await stream.receive_some(65536)
        if not piece:
            return None
        request += piece
    return request


async def _serve_once(nursery: trio.Nursery, answer: bytes) -> str:
    """A one-answer HTTP server on loopback that says *answer* to every request."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            if await _request_head(stream) is not None:
                await stream.send_all(answer)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_an_answer_the_wire_does_not_read_goes_to_httpx_from_then_on() -> None:
    body = b"abc" * 1000
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        url = await _serve_once(nursery, chunked)
        remote = Remote(url, "token", "store")
        try:
            assert await remote.get_block(BlockHash("a" * 64)) == body  # through httpx
            assert remote._wire is None
        finally:
            await remote.aclose()
        nursery.cancel_scope.cancel()


async def test_a_block_answer_from_someone_else_names_the_request_in_its_error() -> None:
    # The answer's request is made only when an error names it (making it costs a URL parse).
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/\r\nContent-Length: 0\r\n\r\n"
    async with trio.open_nursery() as nursery:
        url = await _serve_once(nursery, redirect)
        remote = Remote(url, "token", "store")
        try:
            assert remote._wire is not None
            with pytest.raises(Offline, match=f"GET {API}/blocks/{'a' * 64} .*captive portal"):
                await remote.get_block(BlockHash("a" * 64))
        finally:
            await remote.aclose()
        nursery.cancel_scope.cancel()


async def test_a_server_that_says_nothing_fails_in_bounded_time() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        wire = blockwire.BlockWire(url, {})
        with trio.fail_after(5):
            with pytest.raises(httpx.ReadTimeout):
                await wire.get(f"{API}/blocks/{'a' * 64}", timeout=0.3)
        await wire.aclose()
        nursery.cancel_scope.cancel()


def test_the_wire_serves_plain_http_without_a_proxy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert blockwire.usable_for("http://127.0.0.1:8080")
    assert not blockwire.usable_for("https://box.example")
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert not blockwire.usable_for("http://box.example:8080")
    monkeypatch.setenv("no_proxy", "box.example")
    assert blockwire.usable_for("http://box.example:8080")


async def test_the_request_names_the_host_as_http_wants_it() -> None:
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        async with stream:
            seen.append(await stream.receive_some(65536))
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, record, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        wire = blockwire.BlockWire(f"http://127.0.0.1:{port}/base/", {"Authorization": "Bearer t"})
        answer, body = await wire.get("/v1/blocks/x", headers={"Range": "bytes=0-1"}, timeout=5)
        assert (answer.status_code, body) == (200, b"ok")
        await wire.aclose()
        nursery.cancel_scope.cancel()
    head = seen[0].decode()
    assert head.startswith("GET /base/v1/blocks/x HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
    assert "\r\nAuthorization: Bearer t\r\n" in head and "\r\nRange: bytes=0-1\r\n" in head
    # An IPv6 literal is bracketed in the Host header (RFC 9110, 7.2); nothing is sent here.
    assert "Host: [::1]:8080\r\n" in blockwire.BlockWire("http://[::1]:8080", {})._fixed


async def _answer_of(answer: bytes) -> tuple[httpx.Response, bytearray]:
    """What the wire makes of *answer*, given by a server on loopback."""
    async with trio.open_nursery() as nursery:
        url = await _serve_once(nursery, answer)
        wire = blockwire.BlockWire(url, {})
        try:
            got = await outcome.acapture(wire.get, "/v1/blocks/x", timeout=5)
        finally:
            await wire.aclose()
            nursery.cancel_scope.cancel()
    return got.unwrap()  # outside the nursery: the error itself, not a group of it


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n",  # no block is 10 GB
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",  # a digit to str.isdigit only
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 2\r\n\r\nok",
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
])
async def test_a_malformed_or_hostile_answer_is_an_http_error(answer: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _answer_of(answer)


async def test_header_bytes_beyond_ascii_are_kept_not_fatal() -> None:
    answer, body = await _answer_of(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
    assert body == b"ok" and answer.headers["x-name"] == "caf\xe9"


async def test_stray_bytes_after_an_answer_never_pass_for_the_next_one() -> None:
    served = 0

    async def sloppy(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a connection closed with bytes unread
            await answer_all(stream)

    async def answer_all(stream: trio.SocketStream) -> None:
        nonlocal served
        async with stream:
            while await _request_head(stream) is not None:
                served += 1
                # The announced body; the first two times, bytes nobody asked for after
                # it: once in the same piece, once a moment later.
                stray = b"HTTP/1.1 404 Not Found\r\n\r\n"
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + (stray if served == 1 else b""))
                if served == 2:
                    await trio.sleep(0.02)
                    await stream.send_all(stray)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, sloppy, 0, host="127.0.0.1"))
        wire = blockwire.BlockWire(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", {})
        first, _ = await wire.get("/a", timeout=5)
        await trio.sleep(0.1)  # the stray bytes arrive
        second, _ = await wire.get("/b", timeout=5)
        await trio.sleep(0.1)
        third, _ = await wire.get("/c", timeout=5)
        fourth, _ = await wire.get("/d", timeout=5)  # on the kept connection: nothing stray came
        assert [r.status_code for r in (first, second, third, fourth)] == [200] * 4 and served == 4
        assert str(second.request.url).endswith("/b")
        await wire.aclose()
        nursery.cancel_scope.cancel()


async def test_a_trickling_server_is_given_up_on_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async def trickle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while True:  # a byte now and then, always within the per-byte timeout
                await stream.send_all(b"x")
                await trio.sleep(0.05)

    monkeypatch.setattr(blockwire, "TOTAL_S", 0.5)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, trickle, 0, host="127.0.0.1"))
        wire = blockwire.BlockWire(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", {})
        with trio.fail_after(5), pytest.raises(httpx.ReadTimeout):
            await wire.get("/slow", timeout=1)
        await wire.aclose()
        nursery.cancel_scope.cancel()
