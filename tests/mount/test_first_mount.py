"""A new machine joining a store shows its tree whole from the first moment, never half of it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import pytest

from tests.bench.server_api import fill_store
from tests.clients import Machine

pytestmark = pytest.mark.mount


@pytest.mark.timeout(300)
def test_the_first_mount_of_a_store_shows_every_entry_at_once(new_machine: Callable[..., Machine]) -> None:
    maker = new_machine("maker", mount=False)
    config = json.loads((maker.home / "config.json").read_text())
    token = (maker.home / "token").read_text().strip()
    with httpx.Client(base_url=maker.server_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        folders = fill_store(c, config["store"], 25_000, per_dir=500)
    joiner = new_machine("joiner")
    seen = sum(len(dirs) + len(files) for _, dirs, files in os.walk(joiner.mnt))
    assert seen == 25_000 + folders
    status = json.loads(joiner.cli("status", "--json").stdout)
    assert status["pending"] == 0
