"""Several blocks in one request: each checked like a single PUT."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from tests.servers import ServerProcess, add_user, login


def frame(data: bytes, name: str | None = None) -> bytes:
    h = name or hashlib.sha256(data).hexdigest()
    return h.encode() + len(data).to_bytes(4, "big") + data


def test_batch_stores_every_block_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    with ServerProcess.start(tmp_path / "data") as server:
        add_user(server.data_dir, "bob", "bob-password")
        token = login(server.url, "bob", "bob-password")["token"]
        auth = {"Authorization": f"Bearer {token}"}
        blocks = [b"one", b"two" * 1000, b""]
        body = b"".join(frame(b) for b in blocks)
        answer = httpx.post(f"{server.url}/v1/blocks", content=body, headers=auth, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"blocks": 3, "created": 3}
        hashes = [hashlib.sha256(b).hexdigest() for b in blocks]
        missing = httpx.post(f"{server.url}/v1/blocks/missing", json={"hashes": hashes}, headers=auth, timeout=30)
        assert missing.json()["missing"] == []
        assert httpx.get(f"{server.url}/v1/blocks/{hashes[1]}", headers=auth, timeout=30).content == blocks[1]

        wrong = frame(b"evil", name=hashlib.sha256(b"good").hexdigest())
        refused = httpx.post(f"{server.url}/v1/blocks", content=wrong, headers=auth, timeout=30)
        assert refused.status_code == 400
        cut = httpx.post(f"{server.url}/v1/blocks", content=frame(b"x")[:-1], headers=auth, timeout=30)
        assert cut.status_code == 400
        assert httpx.post(f"{server.url}/v1/blocks", content=body, timeout=30).status_code == 401
