"""Block downloads spoken straight over HTTP/1.1: the body lands in its buffer once.

httpx spent ~10 ms of CPU on each 4 MiB block here (h11 parsing every 64 KiB
piece, copying it into its buffers, joining the pieces), three times what
receiving it costs; on 2 cores that, not the network, bounded cold reads
(docs/benchmarks.md, profile 10).  A block GET is the plainest exchange HTTP
has -- a request without a body, an answer with a Content-Length -- so this
module speaks it itself over trio sockets and receives the body with
``recv_into`` straight into a buffer of the announced size, which its callers
keep as the block (no copy after the kernel's).

It serves ``http://`` servers reached without a proxy only.  An answer it does
not fully understand (no Content-Length, a chunked body, a head over 64 KiB)
is `Unsupported`, and the caller asks httpx instead, from then on.  Every
answer is handed back as an `httpx.Response` beside its body, so remote.py
reads statuses and translates errors the one way it does for every call.

Connections are kept alive and reused.  A kept connection with anything
waiting on it (the server's FIN: uvicorn drops idle ones after 5 s; stray
bytes) is closed, not reused.  One the server closes as the request goes out
fails before any byte of the answer arrives; such a request is sent once
more on a new connection, as httpx does.  An answer that is not HTTP/1.x,
claims more than a block, or takes over `TOTAL_S` in all is an error.
"""

from __future__ import annotations

import select
import urllib.request
from collections.abc import Mapping

import httpx
import trio

from websync_server.protocol import BLOCK_SIZE

__all__ = ["BlockWire", "Unsupported", "usable_for"]

_HEAD_MAX = 64 * 1024
_BODY_MAX = BLOCK_SIZE + 64 * 1024  # a block, or an error's JSON
_KEEP = 8  # idle connections kept
_RECV = 1024 * 1024  # the most one recv_into asks for
#: Seconds one exchange may take in all: a server trickling a byte now and then
#: never holds a read for good (4 MiB at ~35 KiB/s still arrives).
TOTAL_S = 120.0


class Unsupported(Exception):
    """The answer is not one this module reads; ask httpx."""


class _Broken(Exception):
    """The connection failed: whether any byte of the answer had arrived, and on a kept connection."""

    def __init__(self, why: str, *, answered: bool) -> None:
        super().__init__(why)
        self.answered = answered
        self.reused = False


def usable_for(url: str) -> bool:
    """True if *url* is a plain http:// server that no proxy from the environment stands before."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    # As httpx finds them: the environment, and the system's settings on Windows and macOS.
    proxies = urllib.request.getproxies()
    if not ({"http", "all"} & set(proxies)):
        return True
    return bool(urllib.request.proxy_bypass(parsed.host))  # type: ignore[attr-defined]


class BlockWire:
    """GETs of one server's block URLs over kept-alive connections; not for anything with a body."""

    def __init__(self, url: str, headers: Mapping[str, str], *, connect_timeout: float = 5.0) -> None:
        parsed = httpx.URL(url)
        self._url = parsed
        self._host = parsed.host
        self._port = parsed.port or 80
        self._base = parsed.raw_path.rstrip(b"/").decode("ascii")
        host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as HTTP wants it
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self._hostname = host if parsed.port is None else f"{host}:{self._port}"
        self.set_headers(headers)
        self._connect_timeout = connect_timeout
        self._idle: list[trio.SocketStream] = []
        self._closed = False

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Send *headers* with every request from now on (kept connections stay)."""
        lines = [f"Host: {self._hostname}"] + [f"{k}: {v}" for k, v in headers.items()]
        self._fixed = "".join(line + "\r\n" for line in lines)

    async def aclose(self) -> None:
        """Close the kept connections; later answers close theirs instead of keeping them."""
        self._closed = True
        idle, self._idle = self._idle, []
        for stream in idle:
            stream.socket.close()  # at once, even if this task is cancelled

    async def get(
        self, path: str, *, headers: Mapping[str, str] | None = None, timeout: float
    ) -> tuple[httpx.Response, bytearray]:
        """GET *path* (below the server URL): the answer and its body; *timeout* bounds each wait for a byte.

        The body is the buffer it was received into, handed on without a copy;
        the answer's own content is empty unless it is an error (a JSON
        message, read the one way remote.py reads errors).  The whole exchange
        takes at most `TOTAL_S`.  Failures are raised as
        `httpx.HTTPError` (the caller treats them as any unreachable server)
        and answers this module does not read as `Unsupported`.
        """
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = f"GET {self._base}{path} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")
        try:
            with trio.fail_after(TOTAL_S):
                try:
                    return await self._exchange(request, path, timeout)
                except _Broken as exc:
                    if not (exc.reused and not exc.answered):
                        raise
                    # A kept connection the server had closed: once more, on a new one.
                    return await self._exchange(request, path, timeout, fresh=True)
        except _Broken as exc:
            raise httpx.ReadError(f"GET {path}: {exc}") from None
        except trio.TooSlowError:
            raise httpx.ReadTimeout(f"GET {path}: no whole answer within {TOTAL_S:g} s") from None

    def _kept(self) -> trio.SocketStream | None:
        """A kept connection with nothing waiting on it (no stray bytes, no EOF), or None."""
        while self._idle:
            stream = self._idle.pop()
            try:
                readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
            except (OSError, ValueError):
                readable = [True]
            if not readable:
                return stream
            # Bytes nobody asked for, or the server's FIN: never read as the next answer.
            stream.socket.close()
        return None

    async def _exchange(
        self, request: bytes, path: str, timeout: float, *, fresh: bool = False
    ) -> tuple[httpx.Response, bytearray]:
        # No await between taking a kept connection and using it: no other task can have it.
        stream = None if fresh else self._kept()
        reused = stream is not None
        if stream is None:
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await trio.open_tcp_stream(self._host, self._port)
            except (OSError, trio.TooSlowError) as exc:
                raise httpx.ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        keep = False
        try:
            response, body, keep = await self._answer(stream, request, path, timeout)
            return response, body
        except _Broken as exc:
            exc.reused = reused
            raise
        finally:
            if keep and not self._closed and len(self._idle) < _KEEP:
                self._idle.append(stream)
            else:
                stream.socket.close()

    async def _answer(
        self, stream: trio.SocketStream, request: bytes, path: str, timeout: float
    ) -> tuple[httpx.Response, bytearray, bool]:
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
            if length is None or "transfer-encoding" in fields:
                raise Unsupported("the answer has no plain Content-Length")
            size = int(length)
            if size > _BODY_MAX:
                raise httpx.RemoteProtocolError(f"GET {path}: an answer of {size} bytes is no block")
            body = bytearray(size)
            view = memoryview(body)
            got = len(head) - end - 4
            if got > size:
                close = True  # bytes beyond the answer: this connection is done with
                got = size
            view[:got] = head[end + 4 : end + 4 + got]
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
        except (ValueError, UnicodeError) as exc:
            raise httpx.RemoteProtocolError(f"GET {path}: a malformed answer: {exc}") from None
        # A block's 4 MiB stay in the buffer they arrived in: a copy into bytes cost a
        # memcpy and 4 MiB of fresh memory per block (docs/benchmarks.md).
        response = _Answer(
            status,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields.items()],
            content=b"" if 200 <= status < 300 else bytes(body),
        )
        response.asked = (self._url, f"{self._base}{path}")
        return response, body, not close


class _Answer(httpx.Response):
    """An answer whose request, named only in error messages, is made when first asked for.

    Making it parses the URL again (host, port, path): about 60 microseconds,
    a tenth of a ranged read's whole time on this machine.
    """

    asked: tuple[httpx.URL, str]  # the server's URL and the path asked for

    @property  # type: ignore[override]
    def request(self) -> httpx.Request:
        if self._request is None:
            url, path = self.asked
            self._request = httpx.Request("GET", str(url.copy_with(raw_path=path.encode("ascii"))))
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers (lower-case names) and whether the server closes the connection.

    Raises `ValueError` for a head that is not HTTP/1.x, and `Unsupported`
    for an interim (1xx) answer, which a block GET never asks for.
    """
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    if code.startswith("1"):
        raise Unsupported(f"an interim answer {code}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"a malformed header line: {line[:80]!r}")
        name, value = name.lower(), value.strip()
        if name == "content-length" and (not (value.isascii() and value.isdigit()) or fields.get(name, value) != value):
            raise ValueError(f"a Content-Length of {value!r}")
        fields[name] = value
    connection = fields.get("connection", "").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    return int(code), fields, close
