"""The control channel's two transports: a Unix socket, or loopback TCP with a token.

Which one runs is `portable.control_transport()`: the Unix socket on Linux and
macOS, TCP on Windows (CPython there has no Unix sockets), and either anywhere
with ``WEBSYNC_CONTROL=unix|tcp`` (the tests run the real client with both).

* **Unix socket**: ``STATE/control.sock``, made with mode 0600 inside the 0700
  state directory: only this user can connect, so a connection is trusted.
* **Loopback TCP**: the client listens on 127.0.0.1 on a port the system picks
  and writes the port and a fresh random token to ``STATE/control.tcp``, a file
  only this user can read (mode 0600 on POSIX; on Windows the state directory
  in the user's profile has an ACL for the user, SYSTEM and Administrators).
  Any local user can connect to a loopback port, so the first line of every
  request is the token, compared in constant time; a connection without it is
  refused before its request is read.  A new start makes a new token; a file
  left by a killed client names a port nobody listens on (or another
  program's, which then learns a dead token).

The protocol above the transport is control.py's: lines of JSON.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Protocol

import trio

from .errors import WebSyncError
from .home import write_private
from .portable import OPEN_FLAGS, control_transport

__all__ = ["SOCKET_NAME", "TCP_NAME", "TcpChannel", "Transport", "UnixChannel", "transport"]

SOCKET_NAME = "control.sock"
TCP_NAME = "control.tcp"
#: Unix socket paths longer than this do not fit in sockaddr_un (108 bytes on
#: Linux, 104 on macOS); longer ones are reached through /proc/self/fd.
_MAX_PATH = 100


class Transport(Protocol):
    """How requests reach the running client: listening there, connecting from a command."""

    #: Lines a connection sends before its request (the token's).
    preamble_lines: int

    async def listen(self) -> trio.SocketListener:
        """Bind, and publish where commands find us."""
        ...

    def unpublish(self) -> None:
        """Take away what `listen` published (on stop)."""
        ...

    def admits(self, preamble: list[bytes]) -> bool:
        """Whether the lines a connection sent first prove it comes from this user."""
        ...

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket with the preamble sent; FileNotFoundError or ConnectionRefusedError if none listens."""
        ...


def transport(state_dir: Path) -> Transport:
    """The control channel's transport on this system (portable.control_transport)."""
    return TcpChannel(state_dir) if control_transport() == "tcp" else UnixChannel(state_dir)


class UnixChannel:
    """``STATE/control.sock``, reachable by this user only (the file's mode and the directory's)."""

    preamble_lines = 0

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SOCKET_NAME

    async def listen(self) -> trio.SocketListener:
        if sys.platform == "win32":
            raise WebSyncError("CPython on Windows has no Unix sockets; the control channel there is TCP")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
        try:
            address = _address(self.path, dir_fd)
            self.unpublish()  # left by a client that was killed
            old_umask = os.umask(0o177)
            try:
                await sock.bind(address)
            finally:
                os.umask(old_umask)
        finally:
            os.close(dir_fd)
        sock.listen(16)
        return trio.SocketListener(sock)

    def unpublish(self) -> None:
        self.path.unlink(missing_ok=True)

    def admits(self, preamble: list[bytes]) -> bool:
        return True

    def connect(self, timeout: float) -> socket.socket:
        if sys.platform == "win32":
            raise WebSyncError("CPython on Windows has no Unix sockets; the control channel there is TCP")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
            try:
                sock.connect(_address(self.path, dir_fd))
            finally:
                os.close(dir_fd)
        except BaseException:
            sock.close()
            raise
        return sock


class TcpChannel:
    """127.0.0.1 on a port the system picks; the port and a token in ``STATE/control.tcp``."""

    preamble_lines = 1

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TCP_NAME
        self._token = ""

    async def listen(self) -> trio.SocketListener:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        self._token = secrets.token_hex(32)
        write_private(self.path, json.dumps({"port": port, "token": self._token}) + "\n")
        return trio.SocketListener(sock)

    def unpublish(self) -> None:
        self.path.unlink(missing_ok=True)

    def admits(self, preamble: list[bytes]) -> bool:
        given = preamble[0].strip() if preamble else b""
        return bool(self._token) and hmac.compare_digest(given, self._token.encode())

    def connect(self, timeout: float) -> socket.socket:
        try:
            published = json.loads(self.path.read_text())
            port, token = int(published["port"]), str(published["token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectionRefusedError(f"{self.path} is not the control channel's: {exc}") from exc
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            sock.sendall(token.encode() + b"\n")
        except BaseException:
            sock.close()
            raise
        return sock


def _address(path: Path, dir_fd: int) -> str:
    """The address to bind or connect: the path, or a short alias of it on Linux."""
    text = os.fspath(path)
    if len(text.encode()) <= _MAX_PATH:
        return text
    alias = f"/proc/self/fd/{dir_fd}/{path.name}"
    if not os.path.isdir(f"/proc/self/fd/{dir_fd}"):
        raise WebSyncError(f"the path of the control socket is too long for this system: {text}")
    return alias
