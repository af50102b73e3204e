"""The client on systems without Linux's calls: the portable lock, and imports without fcntl.

The lock tests run twice: with flock (Linux, macOS) and with the Windows branch
driven by `tests/msvcrt_stub.py`, a POSIX byte-range lock in place of
``msvcrt.locking``.  Windows' own lock has not run: only Windows itself is
played here, the code above it is the client's.  The holder is a second real
process, ended with SIGKILL where the test says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import msvcrt_stub
from websync_fs import portable
from websync_fs.control import CacheLock
from websync_fs.mountlock import MountLock, holder

ROOT = Path(__file__).resolve().parents[2]

_HOLD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
if {windows!r}:
    from tests import msvcrt_stub
    from websync_fs import portable
    portable.fcntl, portable.msvcrt = None, msvcrt_stub
from websync_fs.control import CacheLock
from websync_fs.mountlock import MountLock
state = Path(sys.argv[1])
lock = MountLock.acquire(state / "mount.pid")
cache = CacheLock.try_acquire(state)
print("held" if lock and cache else "refused", flush=True)
sys.stdin.read()
"""


@pytest.fixture(params=["flock", "msvcrt stand-in"])
def branch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "flock":
        monkeypatch.setattr(portable, "fcntl", None)
        monkeypatch.setattr(portable, "msvcrt", msvcrt_stub)
        msvcrt_stub.calls.clear()
    return str(request.param)


@pytest.fixture
def other_process(tmp_path: Path, branch: str) -> Iterator[subprocess.Popen[str]]:
    """A second process holding the home's mount lock and cache lock until killed."""
    code = _HOLD.format(root=str(ROOT), windows=branch != "flock")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_lock_held_by_another_process_refuses_and_names_it_until_that_process_is_killed(
    tmp_path: Path, other_process: subprocess.Popen[str], branch: str
) -> None:
    pid_file = tmp_path / "mount.pid"
    assert holder(pid_file) == other_process.pid  # the pid is readable while the lock is held
    assert MountLock.acquire(pid_file) is None
    assert CacheLock.try_acquire(tmp_path) is None
    other_process.send_signal(signal.SIGKILL)
    other_process.wait(timeout=30)
    assert holder(pid_file) is None
    lock = MountLock.acquire(pid_file)
    cache = CacheLock.try_acquire(tmp_path)
    assert lock is not None and cache is not None
    if branch == "flock":
        assert holder(pid_file) == os.getpid()
    else:
        # (POSIX byte-range locks do not conflict inside one process, Windows' do: no probe from here.)
        # Windows' locks are mandatory: the byte locked lies far past the pid written at 0.
        offsets = {(offset, length) for mode, offset, length in msvcrt_stub.calls}
        assert offsets == {(portable.LOCK_OFFSET, 1)}
    cache.release()
    lock.release()
    assert holder(pid_file) is None


def test_a_waiting_lock_is_taken_once_its_holder_ends(tmp_path: Path, other_process: subprocess.Popen[str]) -> None:
    fd = os.open(tmp_path / "cache.lock", os.O_RDWR)
    try:
        assert not portable.lock(fd, wait=False)
        other_process.kill()
        assert portable.lock(fd, wait=True)
    finally:
        os.close(fd)


def test_shared_probes_do_not_stand_in_each_others_way(tmp_path: Path) -> None:
    first = portable.lock_file(tmp_path / "probe", shared=True)
    second = portable.lock_file(tmp_path / "probe", shared=True)
    assert first is not None and second is not None
    os.close(first)
    os.close(second)


def test_positional_writes_and_reads_without_pwrite_use_their_offsets(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        portable.pwrite(fd, b"hello world", 0)
        os.lseek(fd, 3, os.SEEK_SET)
        # What Windows uses, having neither pwrite nor pread.
        assert portable.seek_pwrite(fd, b"WORLD", 6) == 5
        assert portable.seek_pread(fd, 5, 6) == b"WORLD"
        assert portable.seek_pread(fd, 100, 0) == b"hello WORLD"
    finally:
        os.close(fd)


def test_directory_fsync_is_skipped_where_directories_cannot_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    portable.fsync_dir(tmp_path)
    monkeypatch.delattr(os, "O_DIRECTORY")
    portable.fsync_dir(tmp_path / "not even there")  # a no-op, as on Windows


_WITHOUT_FCNTL = """
import socket, sys
sys.modules["fcntl"] = None  # as on Windows: "import fcntl" raises ImportError
import trio  # (trio copies the socket module's names as it is imported, before they are taken away)
del socket.AF_UNIX
import websync_fs.cli, websync_fs.client, websync_fs.control, websync_fs.folder.client, websync_fs.cachectl
from websync_fs.commands import cache, folder, service, session
from websync_fs import portable
assert portable.fcntl is None and portable.control_transport() == "tcp", portable.control_transport()
print("imported")
"""


def test_the_client_and_the_synced_folder_import_without_fcntl_or_unix_sockets() -> None:
    env = {**os.environ, "WEBSYNC_CONTROL": "tcp"}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_FCNTL], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr


@pytest.mark.timeout(300)
def test_every_module_windows_runs_type_checks_for_windows() -> None:
    """mypy with Windows' standard library: a call Windows lacks (os.fchmod, AF_UNIX, fcntl) outside
    a branch chosen only elsewhere fails here.  The FUSE front end never runs on Windows."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--platform", "win32", "websync_fs", "cache"],
                          capture_output=True, text=True, cwd=ROOT, timeout=280)
    assert "Success:" in done.stdout or "Found " in done.stdout, done.stdout + done.stderr  # mypy ran
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith("websync_fs/fuse/") for line in errors), done.stdout
