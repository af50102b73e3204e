"""Fixtures shared by every layer's tests: a real server and real mounted machines.

One server process serves the whole session; every test gets a user of its
own (so its own store), and machines (client homes, mounted through the
kernel) that are unmounted and ended by pid when the test ends, pass or fail.
A test fails if a machine's log shows an unexpected error.
"""

from __future__ import annotations

import compileall
import itertools
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import Machine
from tests.postgres import PostgresCluster
from tests.proxy import Proxy
from tests.seaweed import SeaweedS3
from tests.servers import ServerProcess, add_user

_users = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run the soak and long-poll stress tests at full length (bounded otherwise)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the project's modules once, so the many CLI, mount and server processes load them compiled.

    Where PYTHONDONTWRITEBYTECODE is set, as on some CI machines, each of
    those processes would otherwise compile every module it imports anew
    (about 0.3-0.5 s a process).
    """
    root = Path(__file__).resolve().parent.parent
    for package in ("websync_fs", "websync_server", "cache", "tests"):
        compileall.compile_dir(root / package, quiet=1)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: mount tests need FUSE (see platform/setup-debian.sh)")
    proc = ServerProcess.start(tmp_path_factory.mktemp("server") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the session's own (initdb on a temporary folder, a free loopback port)."""
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    """An S3 endpoint of the session's own (SeaweedFS on loopback), named in the standard AWS variables.

    The variables are set in this process's environment for the session, so
    in-process block stores and every server or CLI subprocess reach it the
    way a real deployment would; they are restored afterwards.
    """
    endpoint = SeaweedS3.start()
    saved = {name: os.environ.get(name) for name in endpoint.environment}
    os.environ.update(endpoint.environment)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        endpoint.stop()


@pytest.fixture
def account(server: ServerProcess) -> tuple[str, str]:
    name = f"user{next(_users)}"
    password = f"pw-{name}"
    add_user(server.data_dir, name, password)
    return name, password


#: Settings written into each test machine's config before it mounts.
MACHINE_SETTINGS = {"quiet_period": 0.2}


@pytest.fixture
def new_machine(
    tmp_path: Path, server: ServerProcess, account: tuple[str, str]
) -> Iterator[Callable[..., Machine]]:
    made: list[Machine] = []

    def make(name: str, mount: bool = True, url: str | None = None, options: tuple[str, ...] = (),
             **settings: object) -> Machine:
        machine = Machine(name, tmp_path, url or server.url)
        made.append(machine)
        machine.login(*account)
        config = machine.home / "config.json"
        data = json.loads(config.read_text())
        data.update(MACHINE_SETTINGS, **settings)
        config.write_text(json.dumps(data))
        if mount:
            machine.mount(*options)
        return machine

    yield make
    for machine in made:
        machine.cleanup()
    for machine in made:
        unexpected = [
            line for line in machine.log().splitlines()
            if " ERROR " in line or "Traceback" in line or "unexpected error" in line
        ]
        assert not unexpected, f"machine {machine.name} logged errors:\n" + "\n".join(unexpected[:20])


@pytest.fixture
def a(new_machine: Callable[..., Machine]) -> Machine:
    return new_machine("A")


@pytest.fixture
def b(new_machine: Callable[..., Machine], a: Machine) -> Machine:
    return new_machine("B")


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[Proxy]:
    """A cuttable connection to the server (``proxy.online = False``)."""
    p = Proxy(server.port)
    yield p
    p.close()


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """``tmpfs(DIR, "64m")`` mounts a tmpfs of that size on DIR (made if missing)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def winfspy() -> Iterator[None]:
    """winfspy's names from tests/winfsp_stub.py (the real one exists on Windows only) while the test runs."""
    from tests.winfsp_stub import installed

    with installed():
        yield
