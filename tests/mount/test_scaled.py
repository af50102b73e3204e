"""Two mounted machines through HAProxy in front of two server processes on PostgreSQL and S3.

The load balancer may send any request to either process; one process is
killed with SIGKILL while a machine uploads, and both machines still converge
on every byte through the one that is left.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.conftest import MACHINE_SETTINGS
from tests.faults.conftest import drained, status
from tests.haproxy import HAProxy
from tests.postgres import PostgresCluster
from tests.seaweed import SeaweedS3
from tests.servers import ServerProcess, add_user

pytestmark = pytest.mark.mount

MiB = 1024 * 1024


@pytest.fixture
def balanced(tmp_path: Path, postgres: PostgresCluster, s3: SeaweedS3) -> Iterator[tuple[HAProxy, list[ServerProcess]]]:
    """HAProxy over two server processes sharing one PostgreSQL database and one bucket, with user alice."""
    storage = ("--database", postgres.new_database(), "--blocks", s3.new_url())
    add_user(tmp_path / "one", "alice", "alice-password", storage)
    servers: list[ServerProcess] = []
    proxy: HAProxy | None = None
    try:
        for name in ("one", "two"):
            servers.append(ServerProcess.start(tmp_path / name, storage=storage))
        proxy = HAProxy.start([server.port for server in servers])
        yield proxy, servers
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            server.stop()


def machine(name: str, root: Path, url: str, made: list[Machine]) -> Machine:
    m = Machine(name, root, url)
    made.append(m)
    m.login("alice", "alice-password")
    config = m.home / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **MACHINE_SETTINGS}))
    m.mount()
    return m


def test_machines_converge_through_the_balancer_when_a_server_process_dies_mid_upload(
    tmp_path: Path, balanced: tuple[HAProxy, list[ServerProcess]]
) -> None:
    proxy, servers = balanced
    made: list[Machine] = []
    try:
        a = machine("A", tmp_path / "machines", proxy.url, made)
        b = machine("B", tmp_path / "machines", proxy.url, made)
        contents = {f"big-{i}.bin": os.urandom(6 * MiB + i) for i in range(5)}
        contents.update({f"small-{i}.txt": f"small file {i}\n".encode() for i in range(20)})

        def write_all() -> None:
            for name, data in contents.items():
                a.path(name).write_bytes(data)

        writer = threading.Thread(target=write_all)
        writer.start()
        # Kill a process once uploads are under way: some of them are in flight on it.
        eventually(lambda: status(a)["pending"] > 0, timeout=60, what="A to queue its uploads")
        servers[0].kill()
        writer.join(120)
        drained(a, timeout=180)
        for name, data in contents.items():
            eventually(lambda: b.path(name).exists() and read_bytes(b.path(name)) == data, timeout=60,
                       what=f"B to see {name}")  # fmt: skip
        assert sorted(os.listdir(b.mnt)) == sorted(contents)
    finally:
        for m in made:
            m.cleanup()
    for m in made:
        unexpected = [line for line in m.log().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not unexpected, f"machine {m.name} logged errors:\n" + "\n".join(unexpected[:20])
