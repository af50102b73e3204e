"""The synced folder beside Syncthing and rclone bisync, side by side in one run on 127.0.0.1.

Three systems, each with two sides ("a" gets the files, "b" should end up
with them) and a fresh directory for every row:

- websync: a server; machine B runs ``websync sync`` of folder a, machine C
  ``websync sync`` of folder b; machine A mounts the store for the
  folder-to-mount row.
- syncthing: two ``syncthing serve`` instances with their own ``--home``, GUI
  and REST API on loopback with an API key, no global or local discovery, no
  relays, no NAT; the devices are introduced by ID over the REST API with
  static addresses ``tcp://127.0.0.1:PORT``; one shared folder with the
  file-system watcher on and every other folder setting at Syncthing's
  default (rescan every hour, watcher delay 10 s unless ``--syncthing-delay``).
- rclone: a local directory is the "server"; each side runs ``rclone bisync
  FOLDER REMOTE`` in a loop (first run ``--resync``), one second between runs.
  A local remote because bisync refuses ``rclone serve webdav`` (rclone 1.60:
  "modification time support is missing on path2", also with
  ``--webdav-vendor rclone``); it favours rclone: no bytes over a socket.

Rows: first sync of N small files, first sync of one big file, propagation
of a new file (p50/p99), a restart over M unchanged files (until the process
is up and has scanned; for bisync, one run), and the disk used by the
receiving side's state and cache against the folder's content.  ``--profile
DIR`` records WebSync's server and the sync processes (B, and C where it runs) with py-spy.  Every
process is ours and is stopped by its own pid, also when a row fails.  Run::

    .venv/bin/python -m tests.bench.peers --files 500 --big-mib 20 --samples 10 --restart-files 5000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.bench.rclone import free_port
from tests.clients import Machine
from tests.servers import ServerProcess, add_user, end_process

SYSTEMS = ("websync", "syncthing", "rclone")
ROWS = ("small", "big", "propagation", "restart")
INSTALL = {
    "syncthing": "syncthing is not installed: install it with 'apt-get install -y syncthing' (Debian) to run its column",
    "rclone": "rclone is not installed: install it with 'apt-get install -y rclone' (Debian) to run its column",
}
PASSWORD = "bench-password"
FOLDER_ID = "bench"


@dataclass
class Params:
    files: int = 10_000
    folders: int = 100
    file_size: int = 1000
    big_mib: int = 1024
    samples: int = 50
    restart_files: int = 100_000
    timeout: float = 1800.0
    sample_timeout: float = 60.0
    syncthing_delay: int = 10
    bisync_every: float = 1.0


@dataclass
class Results:
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, row: str, system: str, value: Any) -> None:
        self.values.setdefault(row, {})[system] = value
        print(f"  {row} [{system}]: {value}", flush=True)


class Unavailable(RuntimeError):
    """A peer that is not installed: its column is left out, with how to install it."""


# -- files ------------------------------------------------------------------------
def _disk(path: Path) -> int:
    """Bytes on disk under *path* (allocated blocks), WebSync's own log left out (LevelDB's *.log is its data)."""
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink() and p.name != "websync.log":
                total += p.stat().st_blocks * 512
    return total


def _make_small(folder: Path, files: int, folders: int, size: int) -> None:
    for i in range(files):
        sub = folder / f"d{i % folders}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(os.urandom(size) if size else b"")


def _count_small(folder: Path, size: int) -> int:
    """Files named like `_make_small`'s that have their whole size (temporary names start with a dot)."""
    count = 0
    stack = [str(folder)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name.startswith("f") and entry.name.endswith(".txt"):
                    with contextlib.suppress(OSError):
                        if entry.stat().st_size == size:
                            count += 1
    return count


def _make_big(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _wait(probe: Callable[[], bool], timeout: float, what: str, every: float = 0.2,
          check: Callable[[], None] = lambda: None) -> float:
    """Seconds until *probe* is true; TimeoutError past *timeout*; *check* raises when waiting is pointless."""
    start = time.monotonic()
    while not probe():
        check()
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the systems ------------------------------------------------------------------
class System:
    """Two sides of one synced folder; `start` returns at once, the rows poll the folders."""

    name = ""
    #: Where side b keeps its state and cache (for the disk row).
    state_dirs: tuple[Path, ...] = ()
    #: The mount that the folder-to-mount row polls, when the system has one.
    mount: Path | None = None

    def start(self, a: Path, b: Path | None) -> None:
        raise NotImplementedError

    def started(self) -> None:
        """Wait for whatever `start` left running in the foreground (a CLI that returns when ready)."""

    def restart_a(self, a: Path) -> float:
        """Seconds until side a, stopped and started again over *a*, is up and has scanned."""
        raise NotImplementedError

    def idle_a(self, a: Path, files: int, timeout: float) -> None:
        """Wait until side a has taken in every file of *a* (before a restart is timed)."""

    def check(self) -> None:
        """Raise if the system has given up (the rows would otherwise wait for their whole bound)."""

    def diagnose(self) -> str:
        """What the system says of itself, for the note of a row that timed out."""
        return ""

    def close(self) -> None:
        raise NotImplementedError


#: Modules whose tasks a stuck synced folder is waiting in (see `WebSync.diagnose`).
_CONTENT_PATH = ("merger.py", "corepaths.py", "blocksource.py", "vfs.py", "_sync_loop")


class WebSync(System):
    name = "websync"

    def __init__(self, root: Path, mount: bool = False, profile: Path | None = None) -> None:
        self.profile = profile
        self.recorders: list[subprocess.Popen[bytes]] = []
        self.server = ServerProcess.start(root / "data")
        add_user(self.server.data_dir, "bench", PASSWORD)
        self.machines = {n: Machine(n, root, self.server.url) for n in ("B", "C")}
        self.clis: list[subprocess.Popen[bytes]] = []
        if mount:
            self.machines["A"] = Machine("A", root, self.server.url)
        for m in self.machines.values():
            m.login("bench", PASSWORD)
        if mount:
            self.machines["A"].mount()
            self.mount = self.machines["A"].mnt
        self.state_dirs = (self.machines["C"].home,)

    def _sync(self, machine: str, folder: Path) -> subprocess.Popen[bytes]:
        m = self.machines[machine]
        return subprocess.Popen([str(Path(sys.executable).parent / "websync"), "--home", str(m.home), "sync",
                                 str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self, a: Path, b: Path | None) -> None:
        self.clis = [self._sync("B", a)] + ([self._sync("C", b)] if b else [])
        if self.profile is not None:
            self._record("server", self.server.pid)
            for name in ("B", "C") if b else ("B",):
                pid_file = self.machines[name].home / "state" / "mount.pid"
                # The sync process is started by its CLI: attached to as soon as it has written its pid.
                _wait(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 30,
                      f"websync: {name}'s pid file", every=0.01)
                self._record(f"sync-{name}", int(pid_file.read_text()))

    def _record(self, name: str, pid: int) -> None:
        """py-spy on *pid* until `close` (``--nonblocking``: never stops the process it samples)."""
        assert self.profile is not None
        self.profile.mkdir(parents=True, exist_ok=True)
        with open(self.profile / f"{name}.py-spy.log", "wb") as errors:
            self.recorders.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--nonblocking",
                 "--format", "raw", "--rate", "50", "--output", str(self.profile / f"{name}.collapsed.txt")],
                stdout=subprocess.DEVNULL, stderr=errors))

    @staticmethod
    def _returned(cli: subprocess.Popen[bytes]) -> None:
        """Wait for a `websync sync` CLI to return; raise with what it said if it failed."""
        _, err = cli.communicate(timeout=3600)
        if cli.returncode:
            raise RuntimeError(f"websync sync exited {cli.returncode}: {err.decode(errors='replace')[-500:]}")

    def started(self) -> None:
        for cli in self.clis:
            self._returned(cli)
        self.clis = []

    def check(self) -> None:
        for cli in self.clis:
            if cli.poll():  # the CLI gave up: no side will start
                self._returned(cli)

    def diagnose(self) -> str:
        said = []
        for m in self.machines.values():  # each writes what its tasks await to its log (taskdump.py)
            pid = m.pid()
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
        time.sleep(1)
        for name, m in self.machines.items():
            status = m.cli("status", "--json", check=False, timeout=30)
            try:
                state = json.loads(status.stdout)
                brief = {k: state.get(k) for k in ("online", "error", "pending", "status_age", "problems")}
            except json.JSONDecodeError:
                brief = {"status": (status.stdout + status.stderr).strip()[-200:]}
            lines = m.log().splitlines()
            # The tasks on a download's path: where a batch that stopped short waits.
            tasks = [line.split(" WARNING websync_fs.taskdump: ", 1)[-1].strip() for line in lines
                     if "websync_fs.taskdump" in line and any(k in line for k in _CONTENT_PATH)]
            own = [line for line in lines if "websync_fs.taskdump" not in line]
            said.append(f"{name}: {brief}; log: {' | '.join(own[-4:])[-600:]}; waiting: {' | '.join(tasks)[-1500:]}")
        return "; ".join(said)

    def idle_a(self, a: Path, files: int, timeout: float) -> None:
        self.started()
        _wait(lambda: json.loads(self.machines["B"].cli("status", "--json").stdout)["pending"] == 0, timeout,
              "websync: B's uploads", every=0.5)

    def restart_a(self, a: Path) -> float:
        self.machines["B"].cli("sync", "--stop", str(a))
        start = time.monotonic()
        self.machines["B"].cli("sync", str(a), timeout=3600)
        return time.monotonic() - start

    def close(self) -> None:
        for recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(60)
            end_process(recorder)  # type: ignore[arg-type]
        for cli in self.clis:
            end_process(cli)  # type: ignore[arg-type]
        for m in self.machines.values():
            m.cleanup()
        self.server.stop()


class Syncthing(System):
    name = "syncthing"

    def __init__(self, root: Path, watch_delay: int) -> None:
        if not shutil.which("syncthing"):
            raise Unavailable(INSTALL["syncthing"])
        self.root = root
        self.watch_delay = watch_delay
        self.key = secrets.token_hex(16)
        self.sides: dict[str, dict[str, Any]] = {}
        try:
            for side in ("a", "b"):
                self._create(side)
            for side, other in (("a", "b"), ("b", "a")):
                o = self.sides[other]
                self._rest(side, "POST", "/rest/config/devices", json={
                    "deviceID": o["id"], "name": other, "addresses": [f"tcp://127.0.0.1:{o['listen']}"],
                })
            _wait(lambda: all(self._connected(s) for s in self.sides), 60, "syncthing: the two devices connect")
        except BaseException:
            self.close()
            raise
        self.state_dirs = (self.sides["b"]["home"],)

    def _create(self, side: str) -> None:
        home = self.root / f"st-{side}"
        subprocess.run(["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"],
                       check=True, capture_output=True, timeout=120)
        listen = free_port()
        # Loopback only, and nothing that reaches out: set in the file so nothing binds or calls home even once.
        config = home / "config.xml"
        tree = ET.parse(config)
        options = tree.getroot().find("options")
        assert options is not None
        for old in options.findall("listenAddress"):
            options.remove(old)
        ET.SubElement(options, "listenAddress").text = f"tcp://127.0.0.1:{listen}"
        for name, value in (("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
                            ("relaysEnabled", "false"), ("natEnabled", "false"), ("urAccepted", "-1"),
                            ("crashReportingEnabled", "false"), ("autoUpgradeIntervalH", "0"),
                            ("startBrowser", "false")):
            node = options.find(name)
            if node is None:
                node = ET.SubElement(options, name)
            node.text = value
        tree.write(config)
        self.sides[side] = {"home": home, "listen": listen, "gui": free_port(), "log": self.root / f"st-{side}.log"}
        self._serve(side)
        self.sides[side]["id"] = self._rest(side, "GET", "/rest/system/status")["myID"]

    def _serve(self, side: str) -> float:
        s = self.sides[side]
        env = {**os.environ, "STNOUPGRADE": "1", "STNORESTART": "1"}
        with open(s["log"], "ab") as out:
            s["process"] = subprocess.Popen(
                ["syncthing", "serve", f"--home={s['home']}", "--no-browser", "--no-restart", "--no-upgrade",
                 f"--gui-address=http://127.0.0.1:{s['gui']}", f"--gui-apikey={self.key}",
                 f"--logfile={s['log']}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        started = time.time()

        def up() -> bool:
            if s["process"].poll() is not None:
                raise RuntimeError(f"syncthing exited: {s['log'].read_text(errors='replace')[-500:]}")
            try:
                self._rest(side, "GET", "/rest/system/ping")
                return True
            except httpx.HTTPError:
                return False

        _wait(up, 60, "syncthing: the REST API answers", every=0.05)
        return started

    def _rest(self, side: str, method: str, path: str, **kw: Any) -> Any:
        resp = httpx.request(method, f"http://127.0.0.1:{self.sides[side]['gui']}{path}",
                             headers={"X-API-Key": self.key}, timeout=30, **kw)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def _connected(self, side: str) -> bool:
        conns = self._rest(side, "GET", "/rest/system/connections")["connections"]
        return any(c.get("connected") for c in conns.values())

    def _add_folder(self, side: str, path: Path) -> None:
        self._rest(side, "POST", "/rest/config/folders", json={
            "id": FOLDER_ID, "label": FOLDER_ID, "path": str(path), "type": "sendreceive",
            "devices": [{"deviceID": s["id"]} for s in self.sides.values()],
            "fsWatcherEnabled": True, "fsWatcherDelayS": self.watch_delay,
        })

    def start(self, a: Path, b: Path | None) -> None:
        self._add_folder("a", a)
        if b is not None:
            self._add_folder("b", b)

    def folder_config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._rest("a", "GET", f"/rest/config/folders/{FOLDER_ID}")
        return result

    def _idle_since(self, side: str, since: float, files: int | None = None) -> bool:
        try:
            st = self._rest(side, "GET", f"/rest/db/status?folder={FOLDER_ID}")
        except httpx.HTTPError:
            return False
        stamp = _rfc3339(st.get("stateChanged", ""))
        return st.get("state") == "idle" and stamp >= since and (files is None or st.get("localFiles") == files)

    def idle_a(self, a: Path, files: int, timeout: float) -> None:
        _wait(lambda: self._idle_since("a", 0, files), timeout, "syncthing: a's first scan", every=0.5)

    def restart_a(self, a: Path) -> float:
        end_process(self.sides["a"]["process"], timeout=60)
        start = time.monotonic()
        since = self._serve("a")
        _wait(lambda: self._idle_since("a", since), 3600, "syncthing: a's scan after the restart", every=0.05)
        return time.monotonic() - start

    def close(self) -> None:
        for s in self.sides.values():
            if "process" in s:
                end_process(s["process"], timeout=30)


def _rfc3339(text: str) -> float:
    """Seconds since the epoch of Syncthing's nanosecond RFC 3339 times (0 for its zero time)."""
    from datetime import datetime

    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text or "")
    if not m or text.startswith("0001"):
        return 0.0
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(f"{m[1]}.{(m[2] or '0')[:6]:0<6}{zone}").timestamp()


class RcloneBisync(System):
    name = "rclone"

    def __init__(self, root: Path, every: float) -> None:
        if not shutil.which("rclone"):
            raise Unavailable(INSTALL["rclone"])
        self.root = root
        self.every = every
        self.config = root / "rclone.conf"
        self.config.touch()
        self.remote = root / "remote"
        self.remote.mkdir()
        self.stop = threading.Event()
        self.loops: list[threading.Thread] = []
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.runs = 0
        self.successes: dict[str, int] = {}
        self.state_dirs = (root / "work-b",)

    def _bisync(self, side: str, folder: Path, resync: bool) -> tuple[int, str]:
        args = ["rclone", "bisync", str(folder), str(self.remote),
                "--config", str(self.config), "--workdir", str(self.root / f"work-{side}"),
                "--log-level", "NOTICE", *(["--resync"] if resync else [])]
        self.last_command = shlex.join(args)
        with self.lock:
            if self.stop.is_set() and side in self.running:
                return 0, ""
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.running[side] = proc
        out, _ = proc.communicate()
        with self.lock:
            self.running.pop(side, None)
            self.runs += 1
        return proc.returncode, out.decode(errors="replace")

    def check(self) -> None:
        if len(self.failures) >= 5:
            raise RuntimeError(f"rclone bisync failed {len(self.failures)} times: {self.failures[-1]}")

    def _loop(self, side: str, folder: Path) -> None:
        resync = True
        while not self.stop.is_set() and len(self.failures) < 5:
            rc, out = self._bisync(side, folder, resync)
            if rc == 0:
                resync = False
                self.successes[side] = self.successes.get(side, 0) + 1
            elif not self.stop.is_set():
                # bisync asks for --resync after an error it cannot recover from; a user would run it so.
                self.failures.append(f"{side}: exit {rc}: {out.strip()[-300:]}")
                resync = resync or "--resync" in out
            self.stop.wait(self.every)

    def start(self, a: Path, b: Path | None) -> None:
        self.stop.clear()
        for side, folder in (("a", a), ("b", b)):
            if folder is not None:
                t = threading.Thread(target=self._loop, args=(side, folder), daemon=True)
                t.start()
                self.loops.append(t)

    def idle_a(self, a: Path, files: int, timeout: float) -> None:
        _wait(lambda: self.successes.get("a", 0) > 0, timeout, "rclone: a's first bisync", check=self.check)
        self._halt()

    def restart_a(self, a: Path) -> float:
        self._halt()
        start = time.monotonic()
        rc, out = self._bisync("a", a, resync=False)
        if rc:
            raise RuntimeError(f"rclone bisync failed: {out[-500:]}")
        return time.monotonic() - start

    def _halt(self) -> None:
        self.stop.set()
        with self.lock:
            running = list(self.running.values())
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)  # a bisync cut short asks for --resync next time: let a run end
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for t in self.loops:
            t.join(150)
        self.loops = []

    def close(self) -> None:
        self._halt()
        with self.lock:
            for proc in self.running.values():
                end_process(proc)  # type: ignore[arg-type]


def make_system(name: str, root: Path, p: Params, mount: bool = False, profile: Path | None = None) -> System:
    if name == "websync":
        return WebSync(root, mount, profile)
    if name == "syncthing":
        return Syncthing(root, p.syncthing_delay)
    return RcloneBisync(root, p.bisync_every)


# -- the rows ---------------------------------------------------------------------
def row_small(system: System, root: Path, p: Params, r: Results) -> None:
    a, b = root / "a", root / "b"
    _make_small(a, p.files, p.folders, p.file_size)
    b.mkdir()
    start = time.monotonic()
    system.start(a, b)
    _wait(lambda: _count_small(b, p.file_size) == p.files, p.timeout,
                    f"{system.name}: {p.files} files reach the other side", every=0.25, check=system.check)
    r.set("small_s", system.name, round(time.monotonic() - start, 2))
    system.started()
    time.sleep(2)  # let the receiving side write down what it got
    r.set("content_bytes", system.name, p.files * p.file_size)
    r.set("folder_disk", system.name, _disk(b))
    r.set("state_disk", system.name, sum(_disk(d) for d in system.state_dirs))


def row_big(system: System, root: Path, p: Params, r: Results) -> None:
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    digest = _make_big(a / "big.bin", p.big_mib)
    size = p.big_mib << 20
    target = b / "big.bin"
    checked: dict[float, bool] = {}

    def whole() -> bool:
        try:
            st = target.stat()
        except OSError:
            return False
        if st.st_size != size:
            return False
        # Hash once per version seen (a system may write in place).
        if st.st_mtime not in checked:
            checked[st.st_mtime] = _sha256(target) == digest
        return checked[st.st_mtime]

    start = time.monotonic()
    system.start(a, b)
    _wait(whole, p.timeout, f"{system.name}: the big file reaches the other side", every=0.1, check=system.check)
    r.set("big_s", system.name, round(time.monotonic() - start, 2))
    system.started()


def row_propagation(system: System, root: Path, p: Params, r: Results) -> None:
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    system.start(a, b)
    system.started()
    targets: dict[str, Path] = {"folder": b} | ({"mount": system.mount} if system.mount else {})
    # A first file through, so every side is up and watching before the samples.
    (a / "warm.txt").write_bytes(b"warm")
    for place in targets.values():
        warm = place / "warm.txt"
        _wait(warm.exists, p.timeout, f"{system.name}: warm-up file", every=0.05, check=system.check)
    samples: dict[str, list[float]] = {k: [] for k in targets}
    missed = 0
    for i in range(p.samples):
        data = os.urandom(1000 + i)
        name = f"p{i:04d}.txt"
        with open(a / name, "wb") as f:
            f.write(data)
        start = time.perf_counter()
        pending = dict(targets)
        while pending:
            for key, place in list(pending.items()):
                with contextlib.suppress(OSError):
                    if (place / name).read_bytes() == data:
                        samples[key].append(time.perf_counter() - start)
                        del pending[key]
            if time.perf_counter() - start > p.sample_timeout:
                missed += len(pending)
                for key in pending:
                    samples[key].append(p.sample_timeout)
                break
            time.sleep(0.005)
        time.sleep(0.1)
    if missed:
        r.notes.append(f"{system.name}: {missed} propagation samples missed the {p.sample_timeout:.0f} s bound "
                       "(counted at the bound)")
    for key, values in samples.items():
        suffix = "" if key == "folder" else "_mount"
        r.set(f"prop_p50{suffix}", system.name, round(percentile(values, 50) * 1000))
        r.set(f"prop_p99{suffix}", system.name, round(percentile(values, 99) * 1000))


def row_restart(system: System, root: Path, p: Params, r: Results) -> None:
    a = root / "a"
    _make_small(a, p.restart_files, p.folders, 0)
    start = time.monotonic()
    system.start(a, None)
    system.idle_a(a, p.restart_files, p.timeout)
    r.set("restart_first_s", system.name, round(time.monotonic() - start, 2))
    r.set("restart_s", system.name, round(system.restart_a(a), 2))


ROW_FUNCS = {"small": row_small, "big": row_big, "propagation": row_propagation, "restart": row_restart}


@contextlib.contextmanager
def _fresh(workdir: Path, name: str, keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run(p: Params, systems: tuple[str, ...], rows: tuple[str, ...], workdir: Path, keep: bool = False,
        profile: Path | None = None) -> Results:
    """Every row for every system, a fresh directory and fresh processes each; a failed row is noted.

    With *profile*, WebSync's server and B's sync process are recorded with py-spy in each row, into
    PROFILE/ROW/.
    """
    r = Results()
    for row in rows:
        for name in systems:
            print(f"{row}: {name}", flush=True)
            with _fresh(workdir, f"{row}-{name}", keep) as root:
                try:
                    system = make_system(name, root, p, mount=(row == "propagation"),
                                         profile=profile / row if profile else None)
                except Unavailable as exc:
                    print(f"bench: {exc}", flush=True)
                    if str(exc) not in r.notes:
                        r.notes.append(str(exc))
                    continue
                try:
                    ROW_FUNCS[row](system, root, p, r)
                    if isinstance(system, Syncthing) and row == "propagation":
                        cfg = system.folder_config()
                        r.set("syncthing_folder", name, {k: cfg.get(k) for k in (
                            "fsWatcherEnabled", "fsWatcherDelayS", "rescanIntervalS")})
                    if isinstance(system, RcloneBisync):
                        if system.failures:
                            r.notes.append(f"rclone ({row}): {len(system.failures)} of {system.runs} bisync runs "
                                           f"failed, first: {system.failures[0]}")
                except Exception as exc:  # a row that fails leaves the others to run
                    said = system.diagnose() if isinstance(exc, TimeoutError) else ""
                    r.notes.append(f"{name} ({row}) failed: {type(exc).__name__}: {exc}" + (f" ({said})" if said else ""))
                    print(f"  failed: {exc}", flush=True)
                finally:
                    system.close()
    return r


LABELS = (
    ("small_s", "first sync of {files:,} files of {file_size:,} bytes in {folders} folders, until the other side has "
                "them all (s)"),
    ("big_s", "first sync of one {big_mib:,} MiB file, until the other side has it whole (s)"),
    ("prop_p50", "propagation folder to folder, p50 of {samples} (ms)"),
    ("prop_p99", "propagation folder to folder, p99 of {samples} (ms)"),
    ("prop_p50_mount", "propagation folder to mount, p50 of {samples} (ms)"),
    ("prop_p99_mount", "propagation folder to mount, p99 of {samples} (ms)"),
    ("restart_first_s", "(set-up) first scan/upload of {restart_files:,} empty files on one side (s)"),
    ("restart_s", "restart over {restart_files:,} unchanged files, until up and scanned (s)"),
    ("content_bytes", "content of the {files:,}-file folder (bytes)"),
    ("folder_disk", "that folder on the receiving side's disk (bytes)"),
    ("state_disk", "the receiving side's state and cache on disk (bytes)"),
)


def render(p: Params, r: Results, systems: tuple[str, ...], command: str) -> str:
    lines = [f"`{command}`", "", "| row | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for key, label in LABELS:
        if key not in r.values:
            continue
        cells = []
        for s in systems:
            v = r.values[key].get(s)
            cells.append("n/a" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
        lines.append(f"| {label.format(**asdict(p))} | " + " | ".join(cells) + " |")
    lines += [f"- {n}" for n in r.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Params()
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: %(default)s")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: %(default)s")
    parser.add_argument("--files", type=int, default=d.files)
    parser.add_argument("--folders", type=int, default=d.folders)
    parser.add_argument("--file-size", type=int, default=d.file_size)
    parser.add_argument("--big-mib", type=int, default=d.big_mib)
    parser.add_argument("--samples", type=int, default=d.samples)
    parser.add_argument("--restart-files", type=int, default=d.restart_files)
    parser.add_argument("--timeout", type=float, default=d.timeout, help="bound of one row on one system (s)")
    parser.add_argument("--syncthing-delay", type=int, default=d.syncthing_delay,
                        help="Syncthing's fsWatcherDelayS (its default: %(default)s)")
    parser.add_argument("--bisync-every", type=float, default=d.bisync_every,
                        help="pause between two rclone bisync runs (s)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep every row's directory")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy on WebSync's server and B's sync process, raw stacks into DIR/ROW/")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    p = Params(files=args.files, folders=args.folders, file_size=args.file_size, big_mib=args.big_mib,
               samples=args.samples, restart_files=args.restart_files, timeout=args.timeout,
               syncthing_delay=args.syncthing_delay, bisync_every=args.bisync_every)
    systems = tuple(s for s in args.systems.split(",") if s)
    rows = tuple(s for s in args.rows.split(",") if s)
    for bad in set(systems) - set(SYSTEMS) | set(rows) - set(ROWS):
        parser.error(f"unknown system or row {bad!r}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="websync-peers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "-m", "tests.bench.peers", *(argv if argv is not None else sys.argv[1:])])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(5):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    try:
        r = run(p, systems, rows, workdir, args.keep, args.profile)
    finally:
        done.set()
    load = (f"1-minute load average {min(loads, default=0):.1f} to {max(loads, default=0):.1f}, "
            f"median {percentile(loads, 50) if loads else 0:.1f}")
    print(f"\n{started}, {os.cpu_count()} cores, {load}")
    print(render(p, r, systems, command))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "started": started, "load": load,
                                         "loads": loads, "params": asdict(p), "values": r.values,
                                         "notes": r.notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
