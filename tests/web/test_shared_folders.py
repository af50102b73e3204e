"""Shared folders in the web page (Chromium), against a real server process."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page

from tests.servers import ServerProcess, add_user, login
from tests.web.conftest import act, row
from websync_server.protocol import new_node_id

OpenPage = Callable[..., Page]


def _api(server: ServerProcess, user: str, password: str) -> tuple[httpx.Client, str]:
    answer = login(server.url, user, password, device="script")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=30)
    return http, answer["store"]


def _put_file(http: httpx.Client, store: str, name: str, data: bytes) -> None:
    block = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v1/blocks/{block}", content=data).status_code in (200, 201)
    op = {"op": "create", "id": new_node_id(), "parent": "root", "name": name, "mode": 0o644, "size": len(data),
          "blocks": [block], "mtime_ns": 1}  # fmt: skip
    assert http.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]}).status_code == 200


def _choose(page: Page, label: str) -> None:
    page.wait_for_selector("#place:not([hidden])")
    page.select_option("#place", label=label)


def test_a_member_browses_and_downloads_a_shared_folder_and_a_read_only_one_refuses_uploads(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str], tmp_path: Path
) -> None:
    owner = account[0]
    kin = (f"{owner}-kin", f"pw-{owner}-kin-long")
    add_user(server.data_dir, *kin)
    owner_api, _ = _api(server, *account)
    with owner_api:
        share = owner_api.post("/v1/shares", json={"name": "Family", "user": kin[0], "read_only": True}).json()
        photo = os.urandom(300_000)
        _put_file(owner_api, share["store"], "photo.jpg", photo)
        page = open_page(*kin)
        _choose(page, f"Family ({owner}) · read-only")
        page.wait_for_selector(row(page, "photo.jpg"))
        with page.expect_download() as caught:
            act(page, "photo.jpg", "download")
        saved = tmp_path / "downloaded"
        caught.value.save_as(saved)
        assert saved.read_bytes() == photo
        page.set_input_files("#pick-files", files=[{"name": "mine.txt", "mimeType": "text/plain", "buffer": b"x"}])
        page.wait_for_selector("#status.bad:has-text('read-only')")
        assert page.is_hidden(row(page, "mine.txt"))
        # The owner's page shows the folder under its name; what she uploads there reaches the member's page.
        own = open_page(*account)
        _choose(own, "Family")
        own.wait_for_selector(row(own, "photo.jpg"))
        own.set_input_files("#pick-files", files=[{"name": "note.txt", "mimeType": "text/plain", "buffer": b"hi\n"}])
        page.wait_for_selector(row(page, "note.txt"), timeout=20_000)
        _choose(page, "My files")
        page.wait_for_selector(row(page, "photo.jpg"), state="detached")
    outsider, _ = _api(server, *kin)
    with outsider:  # the page's file address checks membership like the API
        node = outsider.get(f"/v1/stores/{share['store']}/changes").json()["entries"][0]["node"]
        assert outsider.get(f"/web/files/{node}", params={"store": share["store"]}).status_code == 200
        assert outsider.get(f"/web/files/{node}").status_code == 404
        assert outsider.get(f"/web/files/{node}", params={"store": "0" * 32}).status_code == 404
