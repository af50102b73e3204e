"""Running the app under uvicorn: the listening socket, the announcement, clean shutdown.

`serve` binds the socket itself, so a taken port is an ordinary `OSError` the
CLI can report in one sentence (uvicorn would log it and exit), and so port 0
works: the announcement names the port the kernel picked.

Shutdown on SIGTERM or SIGINT: uvicorn stops accepting, waits for requests in
flight (at most `GRACEFUL_SHUTDOWN_S`), then runs the app's lifespan exit.  Long
polls would hold that wait for up to a minute, so the signal also releases them
at once: they answer "no changes" and the clients poll again elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

_HTTP: Any  # uvicorn's protocol class, or "auto"
try:
    from .connection import DeadlineProtocol
except ImportError:  # no httptools here: uvicorn's h11 protocol, without header deadlines
    _HTTP = "auto"
else:
    _HTTP = DeadlineProtocol
try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["GRACEFUL_SHUTDOWN_S", "Limits", "Tls", "listen", "serve", "url_of"]

GRACEFUL_SHUTDOWN_S = 10
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 20.0
CONNECTIONS_MAX = 4000
# Files kept free for the database, blocks being written and the log.
_FILES_RESERVED = 256
_SWITCH_INTERVAL_S = 0.0005


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port* (0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on
        # accepted sockets whose proto says TCP (base_events._set_nodelay), and
        # without it every response after the first on a kept-alive connection
        # waited ~40 ms (Nagle against the client's delayed ACK; measured).
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"can't listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        if os.name != "nt":
            # Restart at once while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"can't listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def url_of(host: str, sock: socket.socket, *, tls: bool = False) -> str:
    """The http:// (https:// with *tls*) URL of a listening socket, as clients on *host* reach it."""
    port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class Limits:
    """What a connection may take; docs/operations.md lists them."""

    #: Seconds from connecting (or a request's first byte) to its complete headers.
    header_timeout: float = HEADER_TIMEOUT_S
    #: Seconds an idle kept-alive connection stays open.
    keep_alive: float = KEEP_ALIVE_S
    #: Open connections beyond which requests are answered 503 (long polls count).
    connections: int = CONNECTIONS_MAX


@dataclass(frozen=True)
class Tls:
    """The certificate chain and private key the server serves TLS with (PEM files)."""

    cert: Path
    key: Path


def serve(
    app: Starlette,
    sock: socket.socket,
    *,
    on_listening: Callable[[], None],
    on_exit_signal: Callable[[], None],
    limits: Limits = Limits(),
    tls: Tls | None = None,
    access_log: bool = False,
) -> bool:
    """Serve *app* on *sock* until SIGTERM or SIGINT; False if it never started.

    *access_log*: a line in the log for every request.  Off by default: it
    cost about 80 of a ranged block GET's ~290 microseconds of server CPU (two
    stats, two formats and a write per line), and its lines -- thousands a
    second while a file is read at random -- would rotate the server's own
    records (logins, revocations, shares) out of the log within minutes.
    """
    connections = min(limits.connections, _raise_file_limit() - _FILES_RESERVED)
    if _HTTP != "auto":
        _HTTP.header_timeout = limits.header_timeout
    config = uvicorn.Config(
        app,
        # uvloop and httptools where installed (they are dependencies; "auto" falls
        # back to asyncio and h11 where a platform lacks them): block GETs went
        # from ~150 to ~300 MiB/s and a ranged 4 KiB GET from ~5.7 to ~1.9 ms
        # (docs/benchmarks.md, profile 10).
        loop="auto",
        http=_HTTP,
        timeout_keep_alive=int(limits.keep_alive),
        limit_concurrency=connections,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        lifespan="on",
        access_log=access_log,
        log_config=None,  # the CLI's handlers (server.log, -v) get uvicorn's records too
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config, on_listening=on_listening, on_exit_signal=on_exit_signal)
    # A worker thread busy in Python (a big commit) holds the GIL for the whole
    # switch interval (5 ms) each time the event loop asks for it, and a request
    # asks several times: other users' requests took 3-4x as long.  Asking
    # sooner costs the busy thread little.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    # uvicorn restores the previous handlers after its graceful shutdown and
    # re-raises the signal; with these no-ops the process then ends with status
    # 0 instead of dying by SIGTERM or printing a KeyboardInterrupt traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    server.run(sockets=[sock])
    return server.started


def _ignore(_sig: int, _frame: Any) -> None:
    pass


def _raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit now in force."""
    if resource is None:
        return CONNECTIONS_MAX + _FILES_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, CONNECTIONS_MAX + _FILES_RESERVED)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the soft limit stays; connections are bounded below it
    return soft


class _Server(uvicorn.Server):
    """uvicorn's server, announcing when it listens and releasing long polls on a signal."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_listening: Callable[[], None],
        on_exit_signal: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_listening = on_listening
        self._on_exit_signal = on_exit_signal

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_listening()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._on_exit_signal()
