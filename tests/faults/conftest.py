"""Fixtures of the fault suite: servers a test may kill, machines that may log expected faults.

* `site` -- the session's server with a fresh account (nobody kills it);
* `own_site` -- a server of this test alone, in the test's temporary directory,
  that the test may SIGKILL, stop and start again on the same port and data;
* `make_machine` -- a mounted client on either; teardown unmounts and ends it by
  pid, then fails the test if its log shows an error the test did not allow;
* `tmpfs` -- mount a small tmpfs (a disk that fills up), unmounted in teardown;
* `seed` -- the random seed of this test, printed so a failure can be replayed
  with ``WEBSYNC_FAULT_SEED=N``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients import Machine, eventually
from tests.conftest import MACHINE_SETTINGS
from tests.faults.workload import Workload
from tests.servers import ServerProcess, add_user


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    value = int(os.environ.get("WEBSYNC_FAULT_SEED") or random.randrange(1, 10**9))
    print(f"\n{request.node.name}: WEBSYNC_FAULT_SEED={value}")
    return value


@dataclass
class Site:
    """A server and the account this test's machines log in with."""

    data_dir: Path
    user: str
    password: str
    process: ServerProcess
    #: True for `own_site`: the test may kill and restart it.
    owned: bool = False
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the server (a crash: power cut, OOM killer)."""
        assert self.owned, "only a test's own server may be killed"
        self.process.kill()

    def stop(self) -> None:
        """Stop the server the polite way (SIGTERM), as an operator or a reboot would."""
        assert self.owned, "only a test's own server may be stopped"
        self.process.stop()

    def start(self) -> None:
        """Start the server again on the same data directory and port."""
        assert self.owned
        deadline = time.monotonic() + 30
        while True:
            try:
                self.process = ServerProcess.start(self.data_dir, port=self.port)
                break
            except RuntimeError:
                # The port can stay busy a moment after a kill.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


_users = itertools.count(1)


@pytest.fixture
def site(server: ServerProcess) -> Site:
    name = f"fault{os.getpid()}x{next(_users)}"
    add_user(server.data_dir, name, "pw-" + name)
    return Site(server.data_dir, name, "pw-" + name, server, port=server.port)


@pytest.fixture
def own_site(tmp_path: Path) -> Iterator[Site]:
    data = tmp_path / "server" / "data"
    process = ServerProcess.start(data)
    site = Site(data, "alice", "pw-alice", process, owned=True, port=process.port)
    add_user(data, site.user, site.password)
    try:
        yield site
    finally:
        site.process.kill()


#: Log lines that mean a bug unless a test expects them.
_BAD = re.compile(r" ERROR | CRITICAL |Traceback|unexpected error")


@pytest.fixture
def make_machine(tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    made: list[tuple[Machine, list[str]]] = []

    def make(name: str, site: Site, *, url: str | None = None, mount: bool = True,
             allow: tuple[str, ...] = (), before_mount: Callable[[Machine], None] | None = None,
             **settings: object) -> Machine:
        """A machine logged in to *site* (through *url* if given, e.g. a proxy).

        *allow*: regular expressions of error log lines this test provokes on purpose.
        """
        machine = Machine(name, tmp_path, url or site.url)
        made.append((machine, list(allow)))
        machine.login(site.user, site.password)
        config = machine.home / "config.json"
        data = json.loads(config.read_text())
        data.update(MACHINE_SETTINGS, **settings)
        config.write_text(json.dumps(data))
        if before_mount is not None:
            before_mount(machine)
        if mount:
            machine.mount()
        return machine

    yield make
    for machine, _ in made:
        machine.cleanup()
    for machine, allow in made:
        bad = _unexpected(log_lines(machine), allow)
        assert not bad, f"machine {machine.name} logged errors:\n" + "\n".join(bad[:80])


def _unexpected(lines: list[str], allow: list[str]) -> list[str]:
    """The bad lines of a log, each with the traceback that follows it (its cause, for a rare one)."""
    bad: list[str] = []
    record: list[str] = []
    for line in [*lines, "0000-00-00 00:00:00 end"]:
        if _LOG_LINE.match(line):
            # A record is allowed by its first line (a traceback under an allowed error too).
            if any(_BAD.search(r) and not any(re.search(a, r) or re.search(a, record[0]) for a in allow)
                   for r in record):
                bad += record
            record = []
        record.append(line)
    return bad


#: The start of a log record (what is not one belongs to the record before it).
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def log_lines(machine: Machine) -> list[str]:
    """The machine's log, and what its mount process printed (a crash's traceback lands there)."""
    lines: list[str] = []
    state = machine.home / "state"
    for path in [*sorted(state.glob("websync.log*"), reverse=True), state / "mount.out"]:
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    return lines


def resize(path: Path, size: str) -> None:
    """Give a tmpfs more (or less) room: space returning to a full disk."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


# -- asking a machine ------------------------------------------------------------------
def status(machine: Machine) -> dict[str, Any]:
    return json.loads(machine.cli("status", "--json").stdout)  # type: ignore[no-any-return]


def dump_stacks(machine: Machine) -> None:
    """Have the machine's running process log its threads' stacks and its tasks (taskdump.py).

    For a failure's report: a process whose status has gone stale is stuck,
    and the log then says where.  Nothing if no process runs.
    """
    try:
        pid = status(machine).get("pid")
    except Exception:  # noqa: BLE001 - a report must not fail for want of a status
        return
    if not pid:
        return
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    time.sleep(1.0)  # the task dump needs the loop to come round


def drained(machine: Machine, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until nothing is waiting for upload; return the status then."""
    def probe() -> dict[str, Any] | None:
        info = status(machine)
        return info if info["pending"] == 0 and info["online"] else None

    return eventually(probe, timeout=timeout, what=f"{machine.name}'s queue to drain")


def timed_mount(machine: Machine) -> float:
    """Mount and return the seconds until the mount was usable."""
    start = time.monotonic()
    machine.mount()
    os.listdir(machine.mnt)
    return time.monotonic() - start


def run_until_killed(machine: Machine, workload: Workload, rng: random.Random, ops: int,
                     after: tuple[float, float]) -> None:
    """Run the workload in a thread and SIGKILL the mount after a random time in *after*."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            workload.run(ops)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(rng.uniform(*after))
    machine.kill()
    thread.join(30)
    assert not thread.is_alive(), "the workload hangs on the killed mount"
    if errors:
        raise errors[0]
