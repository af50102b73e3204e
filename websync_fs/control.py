"""The control channel: how ``websync`` commands reach the running mount.

Cache protection lives in the memory of the process that owns the cache (see
cache._blocks), so a command that evicts, changes the limit, verifies or pins
must run inside the mount when one runs.  The mount serves requests on a Unix
socket, ``STATE/control.sock``, created with mode 0600 inside the 0700 state
directory: only this user can connect.

Protocol: one request per connection.  The client sends one line of JSON,
``{"op": NAME, "args": {...}}``, and reads one line back: ``{"ok": true,
"result": {...}}`` or ``{"ok": false, "error": SENTENCE, "exit_code": N}``.
Requests run on the mount's event loop, concurrently with file system calls.

Owning the cache
----------------
Whoever uses the cache with protection holds an exclusive ``flock`` on
``STATE/cache.lock``: the mount for its whole life, or a command when no mount
runs.  So a command never evicts under a mount that is starting (which could
not yet have protected its fresh blocks), and a mount never starts under a
command.  The lock goes away with its process, also on kill -9.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .errors import WebSyncError
from . import portable
from .portable import OPEN_FLAGS

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
LOCK_NAME = "cache.lock"
MAX_MESSAGE = 1 << 20
#: Unix socket paths longer than this do not fit in sockaddr_un (108 bytes on
#: Linux, 104 on macOS); longer ones are reached through /proc/self/fd.
_MAX_PATH = 100

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class NotRunning(WebSyncError):
    """No mount process answers on the control socket."""


class RequestFailed(WebSyncError):
    """The mount refused a request; carries its sentence and exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- owning the cache ----------------------------------------------------------


class CacheLock:
    """The exclusive right to use a home's cache with protection (a file lock, portable.py)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> CacheLock:
        """Take the lock, waiting for a command that holds it to finish."""
        lock = cls.try_acquire(state_dir)
        if lock is None:
            log.info("waiting for a websync command to finish with the cache")
            fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, 0o600)
            try:
                portable.lock(fd)
            except BaseException:
                os.close(fd)
                raise
            lock = cls(fd)
        return lock

    @classmethod
    def try_acquire(cls, state_dir: Path) -> CacheLock | None:
        """Take the lock, or return None at once if another process holds it."""
        fd = portable.lock_file(state_dir / LOCK_NAME)
        return None if fd is None else cls(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the lock


# -- server ----------------------------------------------------------------------


class ControlServer:
    """Answers requests on ``STATE/control.sock`` with *handler*; run by the mount."""

    def __init__(self, state_dir: Path, handler: Handler) -> None:
        self.path = state_dir / SOCKET_NAME
        self._handler = handler

    async def serve(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the caller must own the cache lock (so the socket is ours)."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            address = _address(self.path, dir_fd)
            try:
                os.unlink(self.path)  # left by a mount that was killed
            except FileNotFoundError:
                pass
            old_umask = os.umask(0o177)
            try:
                await sock.bind(address)
            finally:
                os.umask(old_umask)
        finally:
            os.close(dir_fd)
        sock.listen(16)
        try:
            listener = trio.SocketListener(sock)
            async with listener:
                await trio.serve_listeners(self._serve_one, [listener], task_status=task_status)
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(30):
                    line = await _receive_line(stream)
                request = json.loads(line)
                op = str(request["op"])
                args = request.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("args must be an object")
            except (trio.TooSlowError, ValueError, KeyError, TypeError) as exc:
                await _send(stream, {"ok": False, "error": f"bad control request: {exc}", "exit_code": 1})
                return
            except trio.BrokenResourceError:
                return
            try:
                answer = {"ok": True, "result": await self._handler(op, args)}
            except WebSyncError as exc:
                answer = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            except Exception:
                log.exception("control request %r failed", op)
                answer = {"ok": False, "error": f"the mount could not do {op!r}; see its log", "exit_code": 1}
            try:
                await _send(stream, answer)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("control client left before the answer to %r", op)


async def _receive_line(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("request too large")
    return bytes(data)


async def _send(stream: trio.SocketStream, answer: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(answer).encode() + b"\n")


# -- client ------------------------------------------------------------------------


def request(state_dir: Path, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = 60.0) -> Any:
    """Send one request to the mount of *state_dir* and return its result.

    Raises `NotRunning` if no mount answers, `RequestFailed` if it refused.
    """
    path = state_dir / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotRunning("no mount is running for this home") from None
        try:
            sock.connect(_address(path, dir_fd))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning("no mount is running for this home") from exc
        finally:
            os.close(dir_fd)
        sock.settimeout(timeout)
        sock.sendall(json.dumps({"op": op, "args": args or {}}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError as exc:
        raise RequestFailed(f"the mount did not answer {op!r} in time") from exc
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise RequestFailed(f"the mount closed the connection during {op!r}; see its log") from exc
        raise
    finally:
        sock.close()
    if not data:
        raise RequestFailed(f"the mount ended the connection without answering {op!r}; see its log")
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RequestFailed(str(answer.get("error")), int(answer.get("exit_code") or 1))
    return answer["result"]


def wait_until_answering(state_dir: Path, timeout: float) -> bool:
    """True once a mount answers ``hello`` (within *timeout* seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request(state_dir, "hello", timeout=5.0)
            return True
        except NotRunning:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _address(path: Path, dir_fd: int) -> str:
    """The address to bind or connect: the path, or a short alias of it on Linux."""
    text = os.fspath(path)
    if len(text.encode()) <= _MAX_PATH:
        return text
    alias = f"/proc/self/fd/{dir_fd}/{path.name}"
    if not os.path.isdir(f"/proc/self/fd/{dir_fd}"):
        raise WebSyncError(f"the path of the control socket is too long for this system: {text}")
    return alias
