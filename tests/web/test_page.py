"""The web page in a real browser (Chromium) against a real server process."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.clients import Machine, eventually
from tests.servers import ServerProcess, login
from tests.web.conftest import act, answer, log_in, row
from websync_server.protocol import BLOCK_SIZE, Changes

OpenPage = Callable[..., Page]


def tree(server: ServerProcess, account: tuple[str, str]) -> dict[str, dict]:
    """The store's live tree as the API lists it: path -> node."""
    session = login(server.url, *account, device="checker")
    headers = {"Authorization": f"Bearer {session['token']}"}
    cursor, nodes, entries = 0, {}, {}
    while True:
        page = Changes.from_wire(httpx.get(f"{server.url}/v1/stores/{session['store']}/changes",
                                           params={"cursor": cursor}, headers=headers, timeout=30).json())
        nodes.update({n.id: n for n in page.nodes})
        entries.update({(e.parent, e.name): e.node for e in page.entries})
        cursor = page.cursor
        if not page.more:
            break
    names = {node: (parent, name) for (parent, name), node in entries.items() if node}

    def path(node: str) -> str:
        parent, name = names[node]
        return name if parent == "root" else f"{path(parent)}/{name}"

    return {path(node): nodes[node] for node in names}


def content(server: ServerProcess, account: tuple[str, str], node: dict) -> bytes:
    session = login(server.url, *account, device="checker")
    headers = {"Authorization": f"Bearer {session['token']}"}
    return b"".join(httpx.get(f"{server.url}/v1/blocks/{h}", headers=headers, timeout=30).content for h in node.blocks)


def test_a_wrong_password_is_refused(open_page: OpenPage, browser: Browser, server: ServerProcess,
                                     account: tuple[str, str]) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/")
    log_in(page, account[0], "not the password")
    page.wait_for_selector("#login-error:has-text('Wrong user name or password')")
    assert page.is_hidden("#app")
    assert not [c for c in context.cookies() if c["name"] == "websync_session"]
    context.close()


def test_upload_browse_and_download_give_back_the_same_bytes(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str], tmp_path: Path
) -> None:
    page = open_page(*account)
    # GET /v1/usage answered.  A selector, not wait_for_function: the page's CSP forbids the
    # eval that the function's polling needs when its first look finds the text not there yet.
    page.wait_for_selector("#usage:has-text('stored')")
    big = os.urandom(2 * BLOCK_SIZE + 1000)  # three blocks, the last one short
    page.set_input_files("#pick-files", files=[
        {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": big},
        {"name": "note.txt", "mimeType": "text/plain", "buffer": b"hello from the browser\n"},
    ])  # fmt: skip
    page.wait_for_selector(row(page, "big.bin"))
    page.wait_for_selector(row(page, "note.txt"))
    assert page.inner_text(f"{row(page, 'big.bin')} td.size") == "8.4 MB"
    assert "browser (" in page.inner_text(f"{row(page, 'big.bin')} td.device")
    stored = tree(server, account)
    assert content(server, account, stored["big.bin"]) == big
    assert stored["big.bin"].blocks == tuple(hashlib.sha256(big[i : i + BLOCK_SIZE]).hexdigest()
                                            for i in range(0, len(big), BLOCK_SIZE))
    with page.expect_download() as caught:
        act(page, "big.bin", "download")
    saved = tmp_path / "downloaded"
    caught.value.save_as(saved)
    assert saved.read_bytes() == big


def test_folders_rename_move_delete_and_restore_from_the_trash(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str]
) -> None:
    page = open_page(*account)
    page.click("#new-folder")
    answer(page, "Projects")
    page.set_input_files("#pick-files", files=[{"name": "draft.txt", "mimeType": "text/plain", "buffer": b"v1"}])
    page.wait_for_selector(row(page, "draft.txt"))
    act(page, "draft.txt", "rename")
    answer(page, "plan.txt")
    page.wait_for_selector(row(page, "plan.txt"))
    act(page, "plan.txt", "move")
    answer(page, "/Projects")
    page.wait_for_selector(row(page, "plan.txt"), state="detached")
    page.click(f"{row(page, 'Projects')} a")
    page.wait_for_selector(row(page, "plan.txt"))
    assert "Projects" in page.inner_text("#crumbs")
    assert set(tree(server, account)) == {"Projects", "Projects/plan.txt"}
    page.click("#crumbs a:first-child")
    act(page, "Projects", "delete")
    page.wait_for_selector(row(page, "Projects"), state="detached")
    assert tree(server, account) == {}
    page.click("#views a[href='#trash']")
    page.click("#trash tr:has-text('Projects/plan.txt') button")
    page.click("#views a[href='#/']")
    page.wait_for_selector(row(page, "plan.txt"))  # its folder is gone: it comes back at the top
    assert content(server, account, tree(server, account)["plan.txt"]) == b"v1"


def test_an_older_version_is_restored(open_page: OpenPage, server: ServerProcess, account: tuple[str, str]) -> None:
    page = open_page(*account)
    for text in (b"first", b"second"):
        page.set_input_files("#pick-files", files=[{"name": "doc.txt", "mimeType": "text/plain", "buffer": text}])
        page.wait_for_selector("#progress", state="hidden")
        eventually(lambda: content(server, account, tree(server, account)["doc.txt"]) == text, what="the upload")
    act(page, "doc.txt", "versions")
    page.click("#versions tr:has(td:text-is('1')) button")
    eventually(lambda: content(server, account, tree(server, account)["doc.txt"]) == b"first", what="the restore")


def test_a_change_on_a_mounted_machine_appears_in_the_open_page(
    open_page: OpenPage, a: Machine, account: tuple[str, str]
) -> None:
    page = open_page(*account)
    (a.mnt / "from-a.txt").write_bytes(b"made on machine A")
    page.wait_for_selector(row(page, "from-a.txt"), timeout=20_000)
    page.click("#new-folder")
    answer(page, "from-the-page")
    eventually(lambda: (a.mnt / "from-the-page").is_dir(), what="the page's folder on machine A")
    (a.mnt / "from-a.txt").unlink()
    page.wait_for_selector(row(page, "from-a.txt"), state="detached", timeout=20_000)


def _devices_view(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str], device: str
) -> tuple[dict[str, str], Page]:
    """Log *device* in, open the page as the same user and show its Devices view listing *device*."""
    machine = login(server.url, *account, device=device)
    page = open_page(*account)
    page.click("#views a[href='#devices']")
    page.wait_for_selector(f'#devices tr[data-name="{device}"]')
    return machine, page


def test_a_machine_is_listed_in_devices_and_logging_it_out_revokes_its_token(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str]
) -> None:
    machine, page = _devices_view(open_page, server, account, "laptop")
    this = page.locator("#devices tr[aria-current]")
    assert this.count() == 1
    assert this.inner_text().startswith("browser (")
    assert "this browser" in this.inner_text()
    assert "this browser" not in page.inner_text('#devices tr[data-name="laptop"]')
    headers = {"Authorization": f"Bearer {machine['token']}"}
    assert httpx.get(f"{server.url}/v1/devices", headers=headers, timeout=30).status_code == 200
    page.click('#devices tr[data-name="laptop"] button')  # the fixture accepts the confirmation
    page.wait_for_selector('#devices tr[data-name="laptop"]', state="detached")
    assert httpx.get(f"{server.url}/v1/devices", headers=headers, timeout=30).status_code == 401
    assert page.is_visible("#app")  # the page's own session goes on


def test_a_device_logged_out_elsewhere_leaves_the_devices_list_when_clicked(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str]
) -> None:
    phone, page = _devices_view(open_page, server, account, "phone")
    headers = {"Authorization": f"Bearer {phone['token']}"}
    assert httpx.post(f"{server.url}/v1/logout", headers=headers, timeout=30).status_code == 200
    page.click('#devices tr[data-name="phone"] button')
    page.wait_for_selector('#devices tr[data-name="phone"]', state="detached")
    assert "no logged-in device" in page.inner_text("#status")


def test_logging_out_this_browser_in_devices_logs_the_page_out(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str]
) -> None:
    page = open_page(*account)
    page.focus("#views a[href='#devices']")  # all from the keyboard
    page.keyboard.press("Enter")
    page.wait_for_selector("#devices tr[aria-current]")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('#devices tr[aria-current]') !== null"):
            break
    else:
        pytest.fail("Tab never reached this browser's button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#login-error:has-text('You are logged out')")
    assert page.evaluate("fetch('/web/session').then(r => r.status)") == 401
    session = login(server.url, *account, device="checker")
    names = [d["name"] for d in httpx.get(f"{server.url}/v1/devices", timeout=30,
                                          headers={"Authorization": f"Bearer {session['token']}"}).json()["devices"]]
    assert not [n for n in names if n.startswith("browser (")]


@pytest.fixture
def other_site() -> Iterator[Callable[[str], str]]:
    """``other_site(html)``: serve one page from another origin (127.0.0.1, another port); its URL."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = pages.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()

    def publish(html: str) -> str:
        pages["/attack.html"] = html.encode()
        return f"http://127.0.0.1:{site.server_address[1]}/attack.html"

    yield publish
    site.shutdown()
    site.server_close()
    thread.join(10)


def test_a_cross_site_form_post_is_refused(
    open_page: OpenPage, server: ServerProcess, account: tuple[str, str], other_site: Callable[[str], str]
) -> None:
    page = open_page(*account)
    store = page.evaluate("fetch('/web/session').then(r => r.json())")["store"]
    # A form may post text/plain without a preflight; the body is made to parse as the JSON of a commit.
    attack = other_site(f"""<form method="post" enctype="text/plain"
        action="{server.url}/v1/stores/{store}/commit">
      <input name='{{"batch": "evil", "ops": [{{"op": "mkdir", "id": "{"e" * 32}", "parent": "root",
        "name": "pwned", "mode": 493, "mtime_ns": 0}}], "x": "' value='"}}'>
    </form><script>document.forms[0].submit()</script>""")
    with page.expect_response(lambda r: "/commit" in r.url) as caught:
        page.goto(attack)
    assert caught.value.status in (401, 403)
    assert "pwned" not in tree(server, account)
    # The same request from the page itself, with its CSRF value, goes through: the refusal was the origin's.
    page.goto(server.url + "/")
    page.wait_for_selector("#app:not([hidden])")
    page.click("#new-folder")
    answer(page, "made-here")
    eventually(lambda: "made-here" in tree(server, account), what="the page's own commit")
