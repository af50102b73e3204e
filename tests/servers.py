"""Real ``websync-server`` processes for tests: start, create users, stop.

A test server runs the real CLI in a subprocess on 127.0.0.1 with port 0, so
the kernel picks a free port and there is no race between choosing a port and
binding it; the port is read from the "listening" line the server prints once
it accepts connections.  The server is stopped by its own pid (SIGTERM, then
SIGKILL), never by name.

    from tests.servers import ServerProcess, add_user

    with ServerProcess.start(tmp_path / "server") as server:
        add_user(server.data_dir, "alice", "secret")
        httpx.post(f"{server.url}/v1/login", json={...})
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["ServerProcess", "add_user", "end_process", "free_port", "login", "server_command"]

LISTENING_PREFIX = "websync-server listening on "


def server_command(*args: str) -> list[str]:
    """The argv that runs ``websync-server ARGS`` with this interpreter."""
    return [sys.executable, "-m", "websync_server.cli", *args]


def add_user(data_dir: Path, name: str, password: str, storage: tuple[str, ...] = ()) -> str:
    """Create a user through the CLI (``user add --password-stdin``); return its store id.

    *storage* are the server's ``--database``/``--blocks`` options, if any.
    """
    done = subprocess.run(
        server_command("user", "add", name, "--data", str(data_dir), *storage, "--password-stdin"),
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"user add {name} failed ({done.returncode}): {done.stderr.strip()}")
    # "created user NAME with store STORE"
    return done.stdout.split()[-1]


@dataclass
class ServerProcess:
    """A running ``websync-server serve`` subprocess; use `ServerProcess.start`."""

    data_dir: Path
    process: subprocess.Popen[str]
    url: str
    stderr_path: Path
    #: The ``--database``/``--blocks`` options it runs with (every CLI command on its state needs them too).
    storage: tuple[str, ...] = ()
    _stdout_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        storage: tuple[str, ...] = (),
    ) -> ServerProcess:
        """Start a server on *data_dir* (and *storage*: ``--database``, ``--blocks``) and return once it listens.

        Its stderr goes to ``DATA_DIR.stderr`` (beside the data directory, so
        the server's own files stay as they would be in production).
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = data_dir.with_name(data_dir.name + ".stderr")
        args = ["serve", "--data", str(data_dir), "--host", host, "--port", str(port)]
        if verbose:
            args.append("-v")
        args.extend(storage)
        args.extend(extra_args)
        with open(stderr_path, "ab") as stderr:
            process = subprocess.Popen(
                server_command(*args),
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, **(env or {})},
            )
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        server = cls(data_dir, process, "", stderr_path, storage)
        # A thread keeps draining stdout so the server can never block on a
        # full pipe, and hands the lines over for the "listening" check.
        threading.Thread(target=_drain, args=(process.stdout, lines, server._stdout_lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                server.kill()
                raise RuntimeError(f"the server did not listen within {timeout} s: {server.stderr()}") from None
            if line is None:
                process.wait()
                raise RuntimeError(f"the server exited with {process.returncode}: {server.stderr()}")
            if line.startswith(LISTENING_PREFIX):
                server.url = line[len(LISTENING_PREFIX) :].strip()
                return server

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the server, SIGKILL it if it lingers; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> int:
        """SIGKILL the server (a crash) and return its exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        """The server's log file (``DATA/server.log``)."""
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    """A free TCP port of 127.0.0.1, for programs that can't be told "port 0" (PostgreSQL, HAProxy).

    Another process could bind it before the program does; on loopback, among
    the test's own programs, that window is small enough.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a child process by its pid, SIGKILL it if it lingers past *timeout*, and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _drain(stream: IO[str], lines: queue.Queue[str | None], keep: list[str]) -> None:
    for line in stream:
        keep.append(line)
        lines.put(line)
    lines.put(None)


def login(url: str, user: str, password: str, device: str = "test-device") -> dict[str, str]:
    """Log in over HTTP; return the answer (``token``, ``user``, ``device``, ``store``)."""
    import httpx

    answer = httpx.post(f"{url}/v1/login", json={"user": user, "password": password, "device": device}, timeout=30)
    answer.raise_for_status()
    result: dict[str, str] = answer.json()
    return result
