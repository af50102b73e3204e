"""``python -m tests.bench.webpage``: the web page's figures, and its screenshots for the docs.

Starts a real server on 127.0.0.1 and drives Debian's Chromium with
Playwright.  It measures the time until a folder of 10,000 files is listed in
the page, and the upload and download throughput of one big file in the page
against ``curl`` on the same API; then it writes screenshots of the page at
desktop and phone size into ``docs/``.  The figures are printed as a Markdown
table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, ViewportSize, sync_playwright

from tests.servers import ServerProcess, add_user, login
from tests.web.conftest import CHROMIUM, DESKTOP, PHONE, log_in
from websync_server.ops import OPS_MAX
from websync_server.protocol import BLOCK_SIZE, ROOT_ID, new_node_id

DOCS = Path(__file__).resolve().parents[2] / "docs"
MiB = 1024 * 1024


class Store:
    """The API as a machine speaks it, for setting the scene."""

    def __init__(self, url: str, user: str, password: str) -> None:
        answer = login(url, user, password, device="laptop")
        self.store = answer["store"]
        self.token = answer["token"]
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    def commit(self, ops: list[dict[str, Any]]) -> None:
        self.http.post(f"/v1/stores/{self.store}/commit", json={"batch": new_node_id(), "ops": ops}).raise_for_status()

    def find(self, parent: str, name: str) -> str:
        """The node named *name* in folder *parent*, from the journal's listing."""
        cursor, more = 0, True
        while more:
            page = self.http.get(f"/v1/stores/{self.store}/changes", params={"cursor": cursor}).json()
            for entry in page["entries"]:
                if (entry["parent"], entry["name"]) == (parent, name) and entry["node"]:
                    return str(entry["node"])
            cursor, more = page["cursor"], page["more"]
        raise LookupError(f"{name} is not in folder {parent}")

    def mkdir(self, name: str, parent: str = ROOT_ID) -> str:
        node = new_node_id()
        self.commit([{"op": "mkdir", "id": node, "parent": parent, "name": name, "mode": 0o755,
                      "mtime_ns": time.time_ns()}])  # fmt: skip
        return node

    def put(self, name: str, data: bytes, parent: str = ROOT_ID) -> str:
        blocks = []
        for at in range(0, len(data), BLOCK_SIZE):
            chunk = data[at : at + BLOCK_SIZE]
            blocks.append(hashlib.sha256(chunk).hexdigest())
            self.http.put(f"/v1/blocks/{blocks[-1]}", content=chunk).raise_for_status()
        node = new_node_id()
        self.commit([{"op": "create", "id": node, "parent": parent, "name": name, "mode": 0o644,
                      "mtime_ns": time.time_ns(), "size": len(data), "blocks": blocks}])  # fmt: skip
        return node


def open_page(browser: Any, url: str, user: str, password: str, viewport: ViewportSize = DESKTOP) -> Page:
    page = browser.new_context(viewport=viewport, bypass_csp=True).new_page()  # wait_for_function evaluates
    page.goto(url + "/")
    log_in(page, user, password)
    page.wait_for_selector("#app:not([hidden])")
    return page


def list_folder_seconds(page: Page, url: str, store: Store, files: int) -> float:
    """Seconds from loading the page at a folder of *files* files until all its rows are shown."""
    folder = store.mkdir("many")
    for first in range(0, files, OPS_MAX):
        store.commit([{"op": "create", "id": new_node_id(), "parent": folder, "name": f"file-{i:05d}.txt",
                       "mode": 0o644, "mtime_ns": time.time_ns(), "size": 0, "blocks": []}
                      for i in range(first, min(files, first + OPS_MAX))])  # fmt: skip
    page.goto(url + "/#/many")
    page.reload()  # a fresh load: the session is in the cookie, the tree is listed anew
    page.wait_for_function(f"document.querySelectorAll('#listing tbody tr').length === {files}", timeout=120_000)
    return float(page.evaluate("performance.now()")) / 1000


def upload_seconds(page: Page, path: Path) -> float:
    """Seconds the page takes to upload the file at *path* (hash, send the blocks, commit)."""
    page.goto(page.url.split("#")[0] + "#/")
    start = time.perf_counter()
    page.set_input_files("#pick-files", str(path))
    page.wait_for_selector(f'#listing tr[data-name="{path.name}"]', timeout=600_000)
    return time.perf_counter() - start


def download_seconds(page: Page, node: str) -> float:
    """Seconds the page takes to read a file's bytes from the server (streamed, not kept)."""
    return float(page.evaluate("""async (url) => {
        const start = performance.now();
        const reader = (await fetch(url)).body.getReader();
        for (let r = await reader.read(); !r.done; r = await reader.read()) {}
        return (performance.now() - start) / 1000;
    }""", f"/web/files/{node}"))  # fmt: skip


def curl_seconds(store: Store, url: str, path: Path, node: str) -> tuple[float, float]:
    """Seconds curl takes to upload *path*'s blocks (one connection) and to download the file."""
    with tempfile.TemporaryDirectory() as scratch:
        args = ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {store.token}"]
        with path.open("rb") as f:
            for index, chunk in enumerate(iter(lambda: f.read(BLOCK_SIZE), b"")):
                part = Path(scratch) / str(index)
                part.write_bytes(chunk)
                # Blocks of another byte pattern: the server already has the page's.
                args += ["-T", str(part), f"{url}/v1/blocks/{hashlib.sha256(chunk).hexdigest()}", "-o", "/dev/null"]
        store.http.post("/v1/blocks/missing", json={"hashes": []})
        start = time.perf_counter()
        subprocess.run(args, check=True)
        up = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {store.token}", "-o", "/dev/null",
                    f"{url}/web/files/{node}"], check=True)  # fmt: skip
    return up, time.perf_counter() - start


def screenshots(browser: Any, url: str, user: str, password: str) -> None:
    """The main views at desktop and phone size, into docs/."""
    store = Store(url, user, password)
    photos = store.mkdir("Photos")
    store.put("beach.jpg", os.urandom(300_000), photos)
    docs = store.mkdir("Documents")
    store.put("budget.ods", os.urandom(50_000), docs)
    store.put("notes (conflict from laptop 2026-01-12 091500).md", b"# notes\n", docs)
    store.put("report.pdf", os.urandom(1_200_000), ROOT_ID)
    store.put("todo.txt", b"milk\n", ROOT_ID)
    login(url, user, password, device="phone")  # another device for the devices view
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = open_page(browser, url, user, password, viewport)
        page.wait_for_selector('#listing tr[data-name="todo.txt"]')
        page.screenshot(path=str(DOCS / f"web-{name}.png"))
        page.click('#listing tr[data-name="Documents"] a')
        page.wait_for_selector('#listing tr[data-name="budget.ods"]')
        page.click('#listing tr[data-name="budget.ods"] button[aria-haspopup]')
        page.screenshot(path=str(DOCS / f"web-{name}-menu.png"))
        if name == "desktop":
            page.keyboard.press("Escape")
            page.click("#views a[href='#devices']")
            page.wait_for_selector("#devices tr[aria-current]")
            page.screenshot(path=str(DOCS / "web-desktop-devices.png"))
        page.context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="files in the listed folder")
    parser.add_argument("--mib", type=int, default=1024, help="size of the big file in MiB")
    parser.add_argument("--no-screenshots", action="store_true")
    parser.add_argument("--screenshots-only", action="store_true", help="write the screenshots, measure nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        root = Path(scratch)
        with ServerProcess.start(root / "data") as server:
            add_user(server.data_dir, "bench", "bench-password")
            add_user(server.data_dir, "demo", "demo-password")
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                if args.screenshots_only:
                    screenshots(browser, server.url, "demo", "demo-password")
                    return 0
                store = Store(server.url, "bench", "bench-password")
                page = open_page(browser, server.url, "bench", "bench-password")
                listed = list_folder_seconds(page, server.url, store, args.files)
                big = root / "big.bin"
                with big.open("wb") as f:
                    for _ in range(args.mib):
                        f.write(os.urandom(MiB))
                up = upload_seconds(page, big)
                node = store.find(ROOT_ID, big.name)
                down = download_seconds(page, node)
                big.write_bytes(bytes(reversed(big.read_bytes())))  # new blocks for curl to send
                curl_up, curl_down = curl_seconds(store, server.url, big, node)
                if not args.no_screenshots:
                    screenshots(browser, server.url, "demo", "demo-password")
            finally:
                browser.close()
    rate = lambda seconds: f"{args.mib / seconds:.0f} MiB/s"  # noqa: E731
    print(f"| listing a folder of {args.files:,} files (page load to last row) | {listed:.2f} s | |")
    print(f"| upload of a {args.mib} MiB file | {rate(up)} (page) | {rate(curl_up)} (curl) |")
    print(f"| download of a {args.mib} MiB file | {rate(down)} (page) | {rate(curl_down)} (curl) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
