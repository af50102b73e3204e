"""Fixtures for the server tests: in-process components, and a real server process.

Both run on SQLite by default.  A module that must hold on both SQL engines
says so with ``engine = both_engines`` (see `both_engines`): its tests then run
once on SQLite and once on a fresh database of the session's PostgreSQL cluster.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from tests.postgres import PostgresCluster
from tests.servers import ServerProcess, add_user, login
from websync_server.accounts import Accounts
from websync_server.blocks import BlockStore
from websync_server.database import Database
from websync_server.protocol import BLOCK_SIZE, BlockHash, new_node_id
from websync_server.store import MetadataStore

USERS = {"alice": "alice-password", "bob": "bob-password"}

# Cheap argon2 parameters: unit tests check behaviour, not hash strength.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@dataclass
class Components:
    """Server components on a temporary data directory, with one user and store."""

    db: Database
    blocks: BlockStore
    store: MetadataStore
    accounts: Accounts
    user: str
    store_id: str

    def put_block(self, data: bytes) -> BlockHash:
        block = BlockHash(hashlib.sha256(data).hexdigest())
        self.blocks.put(self.user, block, data)
        return block

    def put_file(self, size: int, seed: int = 0) -> tuple[int, list[BlockHash]]:
        """Upload *size* bytes of content cut into blocks; return (size, block list)."""
        blocks = []
        for offset in range(0, size, BLOCK_SIZE):
            chunk_size = min(BLOCK_SIZE, size - offset)
            blocks.append(self.put_block(bytes([(seed + offset // BLOCK_SIZE) % 256]) * chunk_size))
        return size, blocks

    def commit(self, *ops: dict[str, Any], device: str = "laptop", batch: str | None = None) -> int:
        return self.store.commit(self.store_id, device, batch or os.urandom(8).hex(), list(ops))


ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def engine() -> str:
    """The SQL engine of the metadata: SQLite unless the module asks for both."""
    return "sqlite"


#: ``engine = both_engines`` in a test module runs its tests on each of `ENGINES`.
both_engines = pytest.fixture(scope="module", params=ENGINES)(lambda request: request.param)


def database_url(request: pytest.FixtureRequest, engine: str) -> str | None:
    """A new empty database of *engine*; None for the embedded SQLite database."""
    if engine == "sqlite":
        return None
    cluster: PostgresCluster = request.getfixturevalue("postgres")  # started only when a test needs it
    return cluster.new_database()


@pytest.fixture
def components(tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> Iterator[Components]:
    url = database_url(request, engine)
    db = Database.open(url) if url else Database.open_in(tmp_path)
    blocks = BlockStore(tmp_path / "blocks")
    blocks.open()
    accounts = Accounts(db, FAST_HASHER)
    store_id = accounts.add_user("alice", "pw")
    yield Components(db, blocks, MetadataStore(db, blocks), accounts, "alice", store_id)
    db.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, engine: str, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """One real server process for a test module, with the users in USERS."""
    data = tmp_path_factory.mktemp("server") / "data"
    url = database_url(request, engine)
    storage = ("--database", url) if url else ()
    for name, password in USERS.items():
        add_user(data, name, password, storage)
    with ServerProcess.start(data, storage=storage) as running:
        yield running


@dataclass
class Session:
    """An HTTP client logged in to the test server as one user's device."""

    http: httpx.Client
    store: str
    token: str
    #: The name the server gave the device (a taken one comes back suffixed: desk-2).
    device: str = ""

    def commit(self, *ops: dict[str, Any], batch: str | None = None) -> httpx.Response:
        return self.http.post(
            f"/v1/stores/{self.store}/commit", json={"batch": batch or new_node_id(), "ops": list(ops)}
        )


@pytest.fixture
def session(server: ServerProcess) -> Iterator[Callable[..., Session]]:
    """Log in as a user of USERS: ``session("alice")`` or ``session("bob", device="desk")``."""
    clients: list[httpx.Client] = []

    def open_session(user: str, device: str = "test-device") -> Session:
        answer = login(server.url, user, USERS[user], device)
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=30
        )
        clients.append(http)
        return Session(http, answer["store"], answer["token"], answer["device"])

    yield open_session
    for http in clients:
        http.close()
