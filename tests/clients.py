"""Client machines for tests: one home and one mount point each, driven by the CLI.

Two `Machine`s on one computer are two independent WebSync clients (their own
replica, queue and cache) mounted through the kernel.  Teardown unmounts what
was mounted and ends the mount process by its own pid, even after a failure.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

BIN = Path(sys.executable).parent
T = TypeVar("T")


class Machine:
    def __init__(self, name: str, root: Path, server_url: str) -> None:
        self.name = name
        self.home = root / name / "home"
        self.mnt = root / name / "mnt"
        self.server_url = server_url
        self.home.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.mounted_pid: int | None = None

    def cli(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "websync"), "--home", str(self.home), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def login(self, user: str, password: str) -> None:
        self.cli("login", self.server_url, "--user", user, "--device", self.name, "--password-stdin",
                 input=password + "\n")

    def mount(self, *options: str) -> None:
        self.cli("mount", *options, str(self.mnt))
        assert os.path.ismount(self.mnt), f"{self.mnt} is not mounted"
        self.mounted_pid = self.pid()

    def sync(self, folder: Path, *args: str) -> None:
        """Start syncing *folder* (``websync sync``); the process is ended by pid at cleanup like a mount."""
        self.cli("sync", *args, str(folder))
        self.mounted_pid = self.pid()

    def pid(self) -> int | None:
        try:
            return int((self.home / "state" / "mount.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def unmount(self) -> None:
        self.cli("unmount", str(self.mnt))
        self.mounted_pid = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the mount process abruptly, then clear the dead mount point."""
        pid = self.mounted_pid or self.pid()
        if pid:
            _kill(pid, sig)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        self.mounted_pid = None

    def cleanup(self) -> None:
        pid = self.mounted_pid or self.pid()
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if pid:
            _kill(pid, signal.SIGTERM, wait=10)
            _kill(pid, signal.SIGKILL)
        self.mounted_pid = None

    def path(self, *parts: str) -> Path:
        return self.mnt.joinpath(*parts)

    def log(self) -> str:
        try:
            return (self.home / "state" / "websync.log").read_text()
        except FileNotFoundError:
            return ""


def _kill(pid: int, sig: int, wait: float = 5) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child (the CLI's background mount is not).
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if ended(pid):
            return
        time.sleep(0.02)


def ended(pid: int) -> bool:
    """True once *pid* has exited, also while it waits to be reaped.

    The CLI's background mount is reaped by the system's first process, which
    here can take over a second; a zombie has let go of everything already.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return os.path.isdir("/proc")  # gone meanwhile; without /proc, alive as far as kill() tells
    except (OSError, IndexError):
        return False


def eventually(probe: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Wait until *probe* returns a truthy value (or stops raising) and return it.

    Used to wait for a change to arrive through the change notification: the
    bound is generous because CI machines are shared and slow; the typical wait
    is well under a second.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last error: {last!r}")
        time.sleep(0.02)


def control_raw(port: int, data: bytes) -> dict[str, object]:
    """What a loopback control channel answers *data* sent as it is: what any local user could send."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return dict(json.loads(answer))


def arrival(write: Path, seen: Path, data: bytes) -> float:
    """Seconds from writing *data* to *write* until *seen* reads it back (polled)."""
    start = time.monotonic()
    write.write_bytes(data)
    eventually(lambda: read_bytes(seen) == data, what=f"{seen} arrived")
    return time.monotonic() - start


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cached_block(machine: Machine, h: str) -> bytes | None:
    """The bytes *machine*'s disk cache holds for block *h* (file or row), or None."""
    import sqlite3

    root = machine.home / "cache" / "blocks"
    db = root / "cache.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT filename, value FROM Cache WHERE key = ?", (h,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    filename, value = row
    if filename is None:
        return bytes(value)
    try:
        return (root / filename).read_bytes()
    except FileNotFoundError:
        return None


def block_cached(machine: Machine, h: str) -> bool:
    """True if block *h* is in *machine*'s disk cache, as a file or in its index row."""
    return cached_block(machine, h) is not None


def run_as(uid: int, gid: int, groups: tuple[int, ...], cwd: Path, fn: Callable[[], T]) -> T:
    """*fn*'s result, computed in *cwd* by this thread as *uid*/*gid* with *groups*.

    The thread enters *cwd* while still root -- the tests' own folders are
    root's alone -- then takes the user's real and effective ids and groups
    with the raw system calls, which change the calling thread alone (glibc's
    wrappers change every thread of the process), calls *fn*, and takes back
    its own ids (the saved ones stay root's, which allows it) and folder.  A
    child forked per call did the same, but a fork costs what the forking
    process holds, and pytest holds a lot late in the suite (docs/benchmarks.md,
    "A fork per call, late in the suite").  FUSE sees the thread's file-system ids.
    """
    here, ruid, rgid, own_groups = os.getcwd(), os.getresuid(), os.getresgid(), os.getgroups()
    os.chdir(cwd)
    try:
        try:
            _thread_ids(groups, (gid, gid, 0), (uid, uid, 0))
            return fn()
        finally:
            _thread_ids(tuple(own_groups), rgid, ruid, back=True)
            # Any change of the effective uid made the process undumpable (no /proc/self
            # for others, no core); it is root's again.
            _LIBC.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    finally:
        os.chdir(here)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_DUMPABLE = 4
#: setgroups, setresuid, setresgid by architecture (asm/unistd.h).
_SYSCALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}


def _thread_ids(groups: tuple[int, ...], gids: tuple[int, int, int], uids: tuple[int, int, int],
                back: bool = False) -> None:
    """Set the calling thread's groups, gids and uids: the uids last, or first when taking root's *back*
    (setting groups and gids needs root's effective uid)."""
    setgroups, setresuid, setresgid = _SYSCALLS[platform.machine()]
    ids = (ctypes.c_uint * max(1, len(groups)))(*groups)
    calls = [(setgroups, (len(groups), ids)), (setresgid, gids), (setresuid, uids)]
    for number, args in reversed(calls) if back else calls:
        if number != setgroups and not all(0 <= i < 0xFFFFFFFF for i in args):
            raise ValueError(f"not ids: {args}")  # the kernel would take the low 32 bits
        if _LIBC.syscall(number, *args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"system call {number}{args[:1]}: {os.strerror(err)}")
