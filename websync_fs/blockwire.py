"""Block downloads spoken straight over HTTP/1.1: the body lands in its buffer once.

httpx spent ~10 ms of CPU on each 4 MiB block here (h11 parsing every 64 KiB
piece, copying it into its buffers, joining the pieces), three times what
receiving it costs; on 2 cores that, not the network, bounded cold reads
(docs/benchmarks.md, profile 10).  A block GET is the plainest exchange HTTP
has -- a request without a body, an answer with a Content-Length -- so this
module speaks it itself over trio sockets and receives the body with
``recv_into`` straight into a buffer of the announced size.

It serves ``http://`` servers reached without a proxy only.  An answer it does
not fully understand (no Content-Length, a chunked body, a head over 64 KiB)
is `Unsupported`, and the caller asks httpx instead, from then on.  Every
answer is handed back as an `httpx.Response`, so remote.py reads statuses and
translates errors the one way it does for every call.

Connections are kept alive and reused.  A kept connection the server closed
meanwhile (uvicorn drops idle ones after 5 s) fails before any byte of the
answer arrives; such a request is sent once more on a new connection, as
httpx does.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

import httpx
import trio

__all__ = ["BlockWire", "Unsupported", "usable_for"]

_HEAD_MAX = 64 * 1024
_KEEP = 8  # idle connections kept
_RECV = 1024 * 1024  # the most one recv_into asks for


class Unsupported(Exception):
    """The answer is not one this module reads; ask httpx."""


class _Broken(Exception):
    """The connection failed; *answered* tells whether any byte of the answer had arrived."""

    def __init__(self, why: str, *, answered: bool) -> None:
        super().__init__(why)
        self.answered = answered


def usable_for(url: str) -> bool:
    """True if *url* is a plain http:// server that no proxy from the environment stands before."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    proxies = urllib.request.getproxies_environment()
    if not ({"http", "all"} & set(proxies)):
        return True
    # In the standard library since 3.x, though not in its type stubs.
    return bool(urllib.request.proxy_bypass_environment(parsed.host, proxies))  # type: ignore[attr-defined]


class BlockWire:
    """GETs of one server's block URLs over kept-alive connections; not for anything with a body."""

    def __init__(self, url: str, headers: Mapping[str, str], *, connect_timeout: float = 5.0) -> None:
        parsed = httpx.URL(url)
        self._url = parsed
        self._host = parsed.host
        self._port = parsed.port or 80
        self._base = parsed.raw_path.rstrip(b"/").decode("ascii")
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 literal
        host = host if parsed.port is None else f"{host}:{self._port}"
        lines = [f"Host: {host}"] + [f"{k}: {v}" for k, v in headers.items()]
        self._fixed = "".join(line + "\r\n" for line in lines)
        self._connect_timeout = connect_timeout
        self._idle: list[trio.SocketStream] = []

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream in idle:
            await stream.aclose()

    async def get(self, path: str, *, headers: Mapping[str, str] | None = None, timeout: float) -> httpx.Response:
        """GET *path* (below the server URL); *timeout* bounds each wait for a byte.

        Raises `OSError`-like failures as `httpx.TransportError` (the caller
        treats them as any other unreachable server) and `Unsupported`.
        """
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = f"GET {self._base}{path} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")
        reused = bool(self._idle)
        try:
            return await self._exchange(request, path, timeout)
        except _Broken as exc:
            if reused and not exc.answered:
                try:
                    return await self._exchange(request, path, timeout, fresh=True)
                except _Broken as again:
                    exc = again
            raise httpx.ReadError(f"GET {path}: {exc}") from None

    async def _exchange(self, request: bytes, path: str, timeout: float, *, fresh: bool = False) -> httpx.Response:
        stream = None if fresh or not self._idle else self._idle.pop()
        if stream is None:
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await trio.open_tcp_stream(self._host, self._port)
            except (OSError, trio.TooSlowError) as exc:
                raise httpx.ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        keep = False
        try:
            response, keep = await self._answer(stream, request, path, timeout)
            return response
        finally:
            if keep and len(self._idle) < _KEEP:
                self._idle.append(stream)
            else:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _answer(
        self, stream: trio.SocketStream, request: bytes, path: str, timeout: float
    ) -> tuple[httpx.Response, bool]:
        sock = stream.socket
        head = bytearray()
        try:
            with trio.fail_after(timeout):
                await stream.send_all(request)
            while (end := head.find(b"\r\n\r\n")) < 0:
                if len(head) > _HEAD_MAX:
                    raise Unsupported("the answer's head is over 64 KiB")
                with trio.fail_after(timeout):
                    piece = await stream.receive_some(65536)
                if not piece:
                    raise _Broken("the server closed the connection", answered=bool(head))
                head += piece
            status, fields, close = _parse_head(bytes(head[:end]))
            length = fields.get("content-length")
            if length is None or "transfer-encoding" in fields or not length.isdigit():
                raise Unsupported("the answer has no plain Content-Length")
            size = int(length)
            body = bytearray(size)
            view = memoryview(body)
            got = len(head) - end - 4
            if got > size:
                raise Unsupported("the answer carries more bytes than it announced")
            view[:got] = head[end + 4 :]
            while got < size:
                with trio.fail_after(timeout):
                    n = await sock.recv_into(view[got:], min(size - got, _RECV))
                if n == 0:
                    raise _Broken(f"the server closed the connection after {got} of {size} bytes", answered=True)
                got += n
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Broken(str(exc) or exc.__class__.__name__, answered=bool(head)) from None
        except trio.TooSlowError:
            raise httpx.ReadTimeout(f"GET {path}: no byte for {timeout:g} s") from None
        response = httpx.Response(
            status,
            headers=list(fields.items()),
            content=bytes(body),
            request=httpx.Request("GET", self._url.join(path)),
        )
        return response, not close


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers (lower-case names) and whether the server closes the connection."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise Unsupported(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise Unsupported(f"a header line without a colon: {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    connection = fields.get("connection", "").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    return int(code), fields, close
