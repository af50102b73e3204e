"""rclone for the comparison: ``rclone serve webdav`` of a local directory, ``rclone mount`` of it.

Every rclone is a subprocess of ours, stopped by its own pid; a mount point is
unmounted (lazily if it is busy) before its process is ended, also when the
benchmark fails half-way.  No rclone config file is read or written: the
WebDAV remote is given on the command line (``:webdav:`` with ``--webdav-url``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import end_process as _stop

__all__ = ["DEFAULT_FLAGS", "MOUNT_FLAGS", "RcloneMount", "RcloneServe", "ensure_rclone", "rclone_version"]

#: What a user who wants rclone to behave like a synced folder would set, and
#: what every rclone row of the benchmark uses:
#: - ``--vfs-cache-mode full``: reads and writes through a local disk cache
#:   (the issue's choice, and the only mode that supports every workload);
#: - ``--dir-cache-time 1s``: the other machine's changes become visible within
#:   about a second (the default, 5 minutes, would make propagation rows
#:   meaningless; WebDAV has no change notification for ``--poll-interval``);
#: - ``--vfs-write-back 0s``: upload right after close (default 5 s), again so
#:   propagation is rclone's best.
MOUNT_FLAGS = ("--vfs-cache-mode", "full", "--dir-cache-time", "1s", "--vfs-write-back", "0s")

#: rclone as most people run it: the same disk cache, everything else at
#: rclone's defaults (upload 5 s after the last close, directory listings
#: cached 5 minutes, attributes 1 s).
DEFAULT_FLAGS = ("--vfs-cache-mode", "full")


class RcloneError(RuntimeError):
    pass


def ensure_rclone() -> str:
    """The path of ``rclone``; installs Debian's package when missing and we are root."""
    found = shutil.which("rclone")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RcloneError(
            "rclone is not installed: install it (Debian: 'apt-get install rclone') or run as root so the "
            "benchmark can, or leave rclone out with '--targets local,websync'"
        )
    print("bench: rclone is missing; installing Debian's package (apt-get install -y rclone)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "rclone"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "rclone"], env=env, capture_output=True, text=True,
                              check=False)
    found = shutil.which("rclone")
    if done.returncode != 0 or not found:
        raise RcloneError(f"apt-get install -y rclone failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return found


def rclone_version() -> str:
    try:
        out = subprocess.run(["rclone", "version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def free_port() -> int:
    # rclone needs a port number up front; the tiny race with another process
    # binding the same port in between is acceptable for a benchmark.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RcloneServe:
    """``rclone serve webdav DIR`` on 127.0.0.1."""

    def __init__(self, served: Path, log: Path, config: Path) -> None:
        served.mkdir(parents=True, exist_ok=True)
        config.touch()
        self.served = served
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["rclone", "serve", "webdav", str(served), "--addr", f"127.0.0.1:{self.port}",
                 "--config", str(config), "--log-level", "NOTICE"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.log = log
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RcloneError(f"rclone serve webdav exited: {log.read_text(errors='replace')[-500:]}")
            try:
                httpx.request("PROPFIND", self.url + "/", headers={"Depth": "0"}, timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RcloneError("rclone serve webdav did not answer within 30 s") from None
                time.sleep(0.1)

    def close(self) -> None:
        _stop(self.process)


class RcloneMount:
    """``rclone mount`` of a WebDAV URL with its own cache directory and remote-control port."""

    def __init__(self, url: str, mnt: Path, cache_dir: Path, log: Path, config: Path,
                 flags: tuple[str, ...] = MOUNT_FLAGS) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        self.rc_port = free_port()
        args = [
            "rclone", "mount", ":webdav:", str(mnt), "--webdav-url", url, "--config", str(config),
            *flags, "--cache-dir", str(cache_dir),
            "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth",
            "--log-level", "NOTICE",
        ]
        if os.geteuid() == 0:
            args.append("--allow-other")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.process.poll() is not None:
                raise RcloneError(f"rclone mount exited: {log.read_text(errors='replace')[-500:]}")
            if time.monotonic() > deadline:
                self.close()
                raise RcloneError("rclone mount did not mount within 30 s")
            time.sleep(0.1)

    def rc(self, command: str, **params: Any) -> dict[str, Any]:
        resp = httpx.post(f"http://127.0.0.1:{self.rc_port}/{command}", json=params, timeout=60)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def uploads_pending(self) -> int:
        """Uploads queued or running (vfs/stats alone misses a running one: it says 0 mid-transfer)."""
        cache = self.rc("vfs/stats").get("diskCache", {})
        running = self.rc("core/stats").get("transferring") or []
        return int(cache.get("uploadsInProgress", 0)) + int(cache.get("uploadsQueued", 0)) + len(running)

    def bytes_transferred(self) -> int:
        """Bytes rclone moved so far (this mount only uploads in the write workloads)."""
        return int(self.rc("core/stats").get("bytes", 0))

    def close(self) -> None:
        if os.path.ismount(self.mnt):
            done = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, check=False)
        _stop(self.process)
