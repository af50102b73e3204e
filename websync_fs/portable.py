"""What differs between the systems the client runs on, in one place.

Linux and macOS have ``flock``, ``pwrite``/``pread``, directories that can be
opened and fsynced, Unix sockets, ``fusermount3``/``umount``, SIGHUP and
descriptors a child inherits by number; Windows has none of them.  Everything else in the client calls these functions and never
asks which system it is on.

File locks
----------
On POSIX a lock is an ``flock`` on the whole file: it goes when the last
descriptor closes, whatever ended the process.  On Windows it is a one-byte
``msvcrt.locking`` lock at `LOCK_OFFSET`, far past any content: Windows locks
are mandatory, and a lock on the first byte would stop every other process --
and our own other handles -- from reading the pid or the folder id written
there.  Windows drops the lock when the handle closes or the process ends.
``msvcrt.locking`` has no shared mode, so a shared request takes the byte
exclusively: two probes at the same instant see each other as the holder, and
`mountlock.holder` looks twice before believing it.

The Windows branch has not run on Windows: it is tested on Linux with a
stand-in ``msvcrt`` whose ``locking`` is a POSIX byte-range lock at the same
offset (tests/client/test_portable.py).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "LOCK_OFFSET", "OPEN_FLAGS", "STOP_SIGNALS", "control_transport", "detached_child", "fchmod", "fsync_dir", "inherited",
    "lock", "lock_file", "pread",
    "pwrite", "seek_pread", "seek_pwrite", "unmount_command",
]

fcntl: ModuleType | None
msvcrt: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere else
    msvcrt = None

#: Where the Windows lock byte lies: past the end of any pid or marker file (msvcrt takes a 32-bit offset).
LOCK_OFFSET = 0x7FFF_0000
#: Flags for descriptors this client opens: not inherited by programs it starts; binary on Windows.
OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
#: Signals that ask a running client to stop cleanly: SIGHUP is POSIX only, SIGBREAK (Ctrl+Break) Windows only.
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)
#: How often a wait for a Windows lock tries again (msvcrt's own blocking mode gives up after 10 s).
_POLL = 0.05
#: Errors msvcrt.locking raises for "another handle holds it": EACCES, or EDEADLOCK after its retries.
_HELD = {errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}


# -- locks ---------------------------------------------------------------------------------


def lock_file(path: Path, shared: bool = False) -> int | None:
    """A descriptor of *path* (made if missing) holding its lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, 0o600)
    try:
        taken = lock(fd, shared=shared, wait=False)
    except BaseException:
        os.close(fd)
        raise
    if not taken:
        os.close(fd)
        return None
    return fd


def lock(fd: int, shared: bool = False, wait: bool = True) -> bool:
    """Lock the file of *fd*: False if another holds it and *wait* is off; closing *fd* unlocks."""
    if fcntl is not None:
        how = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, how if wait else how | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        while True:
            if _msvcrt_try(fd):
                return True
            if not wait:
                return False
            time.sleep(_POLL)
    raise OSError(errno.ENOSYS, "this system offers no file lock WebSync knows (flock or msvcrt.locking)")


def _msvcrt_try(fd: int) -> bool:
    assert msvcrt is not None
    with _position_lock:  # msvcrt locks from the descriptor's position
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in _HELD:
                return False
            raise
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
    return True


# -- positional I/O --------------------------------------------------------------------------

#: Where there is no pwrite/pread, a seek and a write must not interleave with another thread's.
_position_lock = threading.Lock()


def seek_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    """`pwrite` where the system has none: a seek and a write, one thread at a time."""
    try:
        with _position_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, data)
    finally:
        # A traceback kept by the caller must not keep a view of its buffer alive (spillfile.py resizes it).
        del data


def seek_pread(fd: int, length: int, offset: int) -> bytes:
    """`pread` where the system has none: a seek and a read, one thread at a time."""
    with _position_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)


#: Write at an offset without using the descriptor's position; may write less than asked.
pwrite: Callable[[int, bytes | memoryview, int], int] = getattr(os, "pwrite", seek_pwrite)
#: Read up to *length* bytes at an offset without using the descriptor's position.
pread: Callable[[int, int, int], bytes] = getattr(os, "pread", seek_pread)


# -- directories, modes, unmounting, the control channel ----------------------------------------


def fchmod(fd: int, mode: int) -> None:
    """Set an open file's mode bits; a no-op without fchmod (Windows, Python < 3.13), whose files keep their own."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)


def fsync_dir(path: str | Path) -> None:
    """Make the names in directory *path* durable; a no-op where directories cannot be opened (Windows).

    NTFS journals its metadata itself: a rename there is durable without it.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unmount_command(place: Path) -> list[str]:
    """The command that takes this user's FUSE mount at *place* away (refused while files are open there).

    fusermount3 on Linux; macFUSE has none, and its mounts go with ``umount``.
    """
    if sys.platform == "darwin":
        return ["umount", str(place)]
    return ["fusermount3", "-u", str(place)]


def detached_child(fd: int) -> tuple[dict[str, Any], str]:
    """How to start a detached child that inherits pipe end *fd*: Popen's arguments, and *fd*'s name for the child.

    POSIX passes the descriptor and starts a new session.  Windows passes the
    descriptor's handle, made inheritable and listed as the only one besides
    the standard ones, and detaches the child from the console (which would
    end it when closed); `inherited` turns the name back into a descriptor.
    Not run on Windows.
    """
    if sys.platform != "win32":
        return {"pass_fds": (fd,), "start_new_session": True}, str(fd)
    assert msvcrt is not None
    handle = msvcrt.get_osfhandle(fd)
    os.set_handle_inheritable(handle, True)
    info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [handle]})
    flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    return {"startupinfo": info, "creationflags": flags, "close_fds": True}, f"handle:{handle}"


def inherited(name: str) -> int:
    """The descriptor a parent passed by `detached_child` under *name*."""
    if name.startswith("handle:"):
        assert msvcrt is not None
        return int(msvcrt.open_osfhandle(int(name.removeprefix("handle:")), os.O_WRONLY))
    return int(name)


def control_transport() -> str:
    """``unix`` or ``tcp``: the control channel's transport here (``WEBSYNC_CONTROL`` overrides).

    CPython on Windows has no Unix sockets; there the channel is a loopback TCP
    socket with a token (control.py).
    """
    chosen = os.environ.get("WEBSYNC_CONTROL", "").strip().lower()
    if chosen in ("unix", "tcp"):
        return chosen
    return "tcp" if os.name == "nt" else "unix"
