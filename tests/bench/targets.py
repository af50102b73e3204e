"""What the benchmark runs against: a local directory, WebSync (machines A and B), rclone mount.

Every target has a side that writes (``a``) and a side that reads what was
written (``b``).  For WebSync and rclone those are two independent clients
with their own caches, so a read on ``b`` of a file written on ``a`` is a
cold read; for the local directory both are the same folder.  A target also
says when a write has reached its server (`wait_uploaded`), when the reader
can see it (`wait_visible`) and how many bytes went up (`uploaded`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.clients import Machine, ended
from tests.servers import ServerProcess, add_user, login

from .rclone import DEFAULT_FLAGS, MOUNT_FLAGS, RcloneMount, RcloneServe
from .server_api import ServerWatch, block_dir_usage

__all__ = [
    "CeilingTarget", "LocalTarget", "RcloneDefaultsTarget", "RcloneTarget", "Target", "Upload", "WebSyncTarget",
    "drop_caches",
]

MiB = 1 << 20


def drop_caches(enabled: bool = True) -> bool:
    """Write back dirty pages and drop the kernel's page, dentry and inode caches (root only)."""
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Upload:
    """Bytes (and for WebSync, blocks) that have reached a target's server so far."""

    bytes: int
    blocks: int | None = None


class Target:
    key = ""
    label = ""
    two_machines = True
    has_server = True  # somewhere further than the mount for a write to reach (for "until on the server")

    def __init__(self, a: Path, b: Path) -> None:
        self.a = a
        self.b = b

    def version(self, rel: str) -> int:
        """A marker of the server's state of *rel* (or of all uploads), for `wait_uploaded`."""
        return 0

    def wait_uploaded(self, rel: str, size: int, since: int = 0, timeout: float = 1800.0) -> None:
        raise NotImplementedError

    def wait_tree_uploaded(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        """Wait until every file of *files* (path under *rel*: size) is on the server."""
        raise NotImplementedError

    def wait_visible(self, rel: str, size: int, timeout: float = 600.0) -> None:
        """Wait until the reading side sees *rel* with *size* bytes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.stat(self.b / rel).st_size == size:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{rel} did not appear with {size} bytes on the reading side within {timeout} s")
            time.sleep(0.02)

    def uploaded(self) -> Upload | None:
        return None

    def pids(self) -> dict[str, int]:
        """Processes worth profiling, by name."""
        return {}

    def keeper_pid(self) -> int | None:
        """The process that makes A's files durable (a mount's); None: the program's own calls (a local disk)."""
        return None

    def close(self) -> None:
        pass


class LocalTarget(Target):
    key = "local"
    label = "local dir"
    two_machines = False

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, root)

    def wait_uploaded(self, rel: str, size: int, since: int = 0, timeout: float = 1800.0) -> None:
        # "On the server" for a local disk is "on the disk": fsync.
        fd = os.open(self.a / rel, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def wait_tree_uploaded(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        # syncfs(2) of the disk the tree is on: every file, and the folders' entries.
        subprocess.run(["sync", "--file-system", str(self.a / rel)], check=True, timeout=timeout)


class CeilingTarget(Target):
    """The in-memory pyfuse3 file system of `tests.bench.ceiling`: the stack's cost with no work done."""

    key = "ceiling"
    label = "ceiling"
    two_machines = False
    has_server = False

    def __init__(self, root: Path) -> None:
        mnt = root / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        super().__init__(mnt, mnt)  # before anything can fail: close() unmounts self.a
        with open(root / "ceiling.log", "ab") as out:
            # From the project's folder: `-m tests...` must resolve wherever the bench was started.
            self.process = subprocess.Popen([sys.executable, "-m", "tests.bench.ceiling", str(mnt)],
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the ceiling file system did not mount: {(root / 'ceiling.log').read_text()}")
            time.sleep(0.05)

    def wait_uploaded(self, rel: str, size: int, since: int = 0, timeout: float = 1800.0) -> None:
        pass  # in memory: nowhere further to go

    def wait_tree_uploaded(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        pass

    def pids(self) -> dict[str, int]:
        return {"ceiling": self.process.pid}

    def keeper_pid(self) -> int | None:
        return self.process.pid

    def close(self) -> None:
        stop_pid(self.process.pid)
        if os.path.ismount(self.a):
            subprocess.run(["fusermount3", "-u", "-z", str(self.a)], capture_output=True, check=False)


class WebSyncTarget(Target):
    key = "websync"
    label = "WebSync"
    USER = "bench"
    PASSWORD = "bench-password"

    def __init__(self, root: Path) -> None:
        self.server = ServerProcess.start(root / "server" / "data")
        self.machines: list[Machine] = []
        self.watch: ServerWatch | None = None
        try:
            add_user(self.server.data_dir, self.USER, self.PASSWORD)
            for name in ("A", "B"):
                machine = Machine(name, root / "machines", self.server.url)
                self.machines.append(machine)
                machine.login(self.USER, self.PASSWORD)
                machine.mount()
            answer = login(self.server.url, self.USER, self.PASSWORD, device="bench-watch")
            self.token, self.store = answer["token"], answer["store"]
            self.watch = ServerWatch(self.server.url, self.token, self.store)
        except BaseException:
            self.close()
            raise
        super().__init__(self.machines[0].mnt, self.machines[1].mnt)

    def version(self, rel: str) -> int:
        assert self.watch is not None
        self.watch.poll()
        node = self.watch.node(rel)
        return node.seq if node else 0

    def wait_uploaded(self, rel: str, size: int, since: int = 0, timeout: float = 1800.0) -> None:
        assert self.watch is not None
        self.watch.wait_file(rel, size, after_seq=since, timeout=timeout)

    def wait_tree_uploaded(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        assert self.watch is not None
        self.watch.wait_tree(rel, files, timeout=timeout)

    def blocks_of(self, rel: str) -> tuple[str, ...]:
        assert self.watch is not None
        self.watch.poll()
        node = self.watch.node(rel)
        if node is None:
            raise FileNotFoundError(rel)
        return node.blocks

    def uploaded(self) -> Upload:
        blocks, size = block_dir_usage(self.server.data_dir)
        return Upload(size, blocks)

    def add_user(self, name: str) -> tuple[str, str]:
        """A further account on the same server: (token, store)."""
        add_user(self.server.data_dir, name, self.PASSWORD)
        answer = login(self.server.url, name, self.PASSWORD, device="bench")
        return answer["token"], answer["store"]

    def keeper_pid(self) -> int | None:
        pid = self.machines[0].pid()
        if not pid:
            raise RuntimeError("machine A's mount has no pid to count its disk syncs")
        return pid

    def pids(self) -> dict[str, int]:
        found = {"websync-server": self.server.pid}
        for machine in self.machines:
            pid = machine.pid()
            if pid:
                found[f"websync-{machine.name}"] = pid
        return found

    def logged_errors(self) -> list[str]:
        """ERROR lines and tracebacks in the machines' logs."""
        lines = []
        for machine in self.machines:
            lines += [f"{machine.name}: {line}" for line in machine.log().splitlines()
                      if " ERROR " in line or "Traceback" in line]
        return lines

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        for machine in self.machines:
            try:
                machine.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                print(f"bench: cleanup of WebSync machine {machine.name} failed: {exc}", flush=True)
        self.server.stop()


class RcloneTarget(Target):
    key = "rclone"
    label = "rclone mount"
    flags: tuple[str, ...] = MOUNT_FLAGS

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config = root / "rclone.conf"
        self.serve = RcloneServe(root / "served", root / "serve.log", config)
        self.mounts: list[RcloneMount] = []
        try:
            for name in ("A", "B"):
                self.mounts.append(RcloneMount(
                    self.serve.url, root / name / "mnt", root / name / "cache", root / f"mount-{name}.log", config,
                    self.flags,
                ))
        except BaseException:
            self.close()
            raise
        super().__init__(self.mounts[0].mnt, self.mounts[1].mnt)

    def version(self, rel: str) -> int:
        return self.mounts[0].bytes_transferred()

    def wait_uploaded(self, rel: str, size: int, since: int = 0, timeout: float = 1800.0) -> None:
        """Wait until mount A has no upload left and the served file has *size* bytes.

        *since* is A's transferred-bytes counter before the change: the counter
        must move first (an edit keeps the size, and a new file may be served
        at full size while its upload is still running).
        """
        mount = self.mounts[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                served = os.stat(self.serve.served / rel).st_size
            except OSError:
                served = -1
            if served == size and mount.uploads_pending() == 0 and mount.bytes_transferred() > since:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"rclone did not upload {rel} within {timeout} s")
            time.sleep(0.02)

    def wait_tree_uploaded(self, rel: str, files: dict[str, int], timeout: float = 1800.0) -> None:
        """Wait until every file is served at its size and mount A has no upload queued or running."""
        deadline = time.monotonic() + timeout
        left = dict(files)
        while True:
            for path, size in list(left.items()):
                try:
                    if os.stat(self.serve.served / rel / path).st_size == size:
                        del left[path]
                except OSError:
                    pass
            if not left and self.mounts[0].uploads_pending() == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"rclone did not upload {len(left)} of {len(files)} files under {rel} "
                                   f"within {timeout} s")
            time.sleep(0.05)

    def uploaded(self) -> Upload:
        return Upload(self.mounts[0].bytes_transferred())

    def keeper_pid(self) -> int | None:
        return self.mounts[0].process.pid

    def pids(self) -> dict[str, int]:
        return {"rclone-serve": self.serve.process.pid, **{
            f"rclone-{name}": m.process.pid for name, m in zip("AB", self.mounts)}}

    def close(self) -> None:
        for mount in self.mounts:
            try:
                mount.close()
            except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                print(f"bench: rclone unmount of {mount.mnt} failed: {exc}", flush=True)
        self.serve.close()


class RcloneDefaultsTarget(RcloneTarget):
    """rclone mount with only ``--vfs-cache-mode full``: write-back after 5 s, listings cached 5 min."""

    key = "rclone-defaults"
    label = "rclone mount (defaults)"
    flags = DEFAULT_FLAGS


def mounted_under(root: Path) -> list[str]:
    """Mount points at or below *root* (to refuse deleting a directory that still has one)."""
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def remove_workdir(root: Path) -> None:
    still = mounted_under(root)
    for point in still:
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)
    if mounted_under(root):
        print(f"bench: {root} still has mounts; not removing it", flush=True)
        return
    shutil.rmtree(root, ignore_errors=True)


def stop_pid(pid: int, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if ended(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
