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


def test_blocks_of_an_answered_batch_survive_a_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    blocks = [f"small file {i}\n".encode() * 70 for i in range(300)]
    hashes = [hashlib.sha256(b).hexdigest() for b in blocks]
    with ServerProcess.start(tmp_path / "data") as server:
        add_user(server.data_dir, "bob", "bob-password")
        token = login(server.url, "bob", "bob-password")["token"]
        auth = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"{server.url}/v1/blocks", content=b"".join(frame(b) for b in blocks),
                            headers=auth, timeout=30)
        server.kill()
        assert answer.status_code == 200 and answer.json() == {"blocks": 300, "created": 300}
    with ServerProcess.start(tmp_path / "data") as server:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
            assert http.post("/v1/blocks/missing", json={"hashes": hashes}).json()["missing"] == []
            assert all(http.get(f"/v1/blocks/{h}").content == b for h, b in zip(hashes, blocks))
        assert list((server.data_dir / "blocks" / ".incoming").iterdir()) == []


def test_a_batch_with_one_wrong_frame_stores_none_of_it(tmp_path: Path) -> None:
    good = [b"alpha", b"beta", b"gamma"]
    with ServerProcess.start(tmp_path / "data") as server:
        add_user(server.data_dir, "bob", "bob-password")
        token = login(server.url, "bob", "bob-password")["token"]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            body = b"".join(frame(b) for b in good) + frame(b"evil", name=hashlib.sha256(b"good").hexdigest())
            refused = http.post("/v1/blocks", content=body)
            assert refused.status_code == 400
            hashes = [hashlib.sha256(b).hexdigest() for b in good]
            assert http.post("/v1/blocks/missing", json={"hashes": hashes}).json()["missing"] == hashes
