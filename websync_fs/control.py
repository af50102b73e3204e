"""The control channel: how ``websync`` commands reach the running mount.

Cache protection lives in the memory of the process that owns the cache (see
cache._blocks), so a command that evicts, changes the limit, verifies or pins
must run inside the mount when one runs.  The mount serves requests on a
channel only this user can use (channel.py): a Unix socket,
``STATE/control.sock``, or on Windows a loopback TCP port whose every request
starts with a token only this user can read.

Protocol: one request per connection.  The client sends (after the token's
line, on TCP) one line of JSON,
``{"op": NAME, "args": {...}}``, and reads one line back: ``{"ok": true,
"result": {...}}`` or ``{"ok": false, "error": SENTENCE, "exit_code": N}``.
Requests run on the mount's event loop, concurrently with file system calls.

Owning the cache
----------------
Whoever uses the cache with protection holds an exclusive lock on
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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .errors import WebSyncError
from . import portable
from .channel import transport
from .portable import OPEN_FLAGS

log = logging.getLogger(__name__)

LOCK_NAME = "cache.lock"
MAX_MESSAGE = 1 << 20

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class NotRunning(WebSyncError):
    """No mount process answers on the control channel."""


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
    """Answers requests with *handler* on this system's transport (channel.py); run by the mount."""

    def __init__(self, state_dir: Path, handler: Handler) -> None:
        self.channel = transport(state_dir)
        self._handler = handler

    async def serve(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the caller must own the cache lock (so the channel is ours)."""
        listener = await self.channel.listen()
        try:
            async with listener:
                await trio.serve_listeners(self._serve_one, [listener], task_status=task_status)
        finally:
            self.channel.unpublish()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(30):
                    lines = await _receive_lines(stream, self.channel.preamble_lines + 1)
                if not self.channel.admits(lines[: self.channel.preamble_lines]):
                    log.warning("refused a control request without this client's token")
                    await _send(stream, {"ok": False, "error": "refused: the control token is wrong", "exit_code": 4})
                    return
                request = json.loads(lines[self.channel.preamble_lines])
                op = str(request["op"])
                args = request.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("args must be an object")
            except (trio.TooSlowError, ValueError, KeyError, TypeError, IndexError) as exc:
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
                # Shielded: after a "stop" the front end ends and cancels this task, but its answer is due.
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await _send(stream, answer)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("control client left before the answer to %r", op)


async def _receive_lines(stream: trio.SocketStream, count: int) -> list[bytes]:
    """The first *count* lines a connection sends (fewer if it ends sooner)."""
    data = bytearray()
    while data.count(b"\n") < count:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("request too large")
    return bytes(data).split(b"\n")[:count]


async def _send(stream: trio.SocketStream, answer: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(answer).encode() + b"\n")


# -- client ------------------------------------------------------------------------


def request(state_dir: Path, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = 60.0) -> Any:
    """Send one request to the mount of *state_dir* and return its result.

    Raises `NotRunning` if no mount answers, `RequestFailed` if it refused.
    """
    try:
        sock = transport(state_dir).connect(timeout=5.0)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning("no mount is running for this home") from exc
    try:
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
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            raise RequestFailed(f"the mount closed the connection during {op!r}; see its log") from exc
        raise
    finally:
        sock.close()
    if not data:
        raise RequestFailed(f"the mount ended the connection without answering {op!r}; see its log")
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise RequestFailed(f"the control channel answered {op!r} with something that is not WebSync's") from exc
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
