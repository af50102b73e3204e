"""The browser session of the web page over HTTP: cookie, CSRF, expiry, logout, file downloads."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import httpx
import pytest

from tests.server.conftest import USERS, Components, Session
from tests.server.ops import create
from tests.servers import ServerProcess
from websync_server.protocol import BLOCK_SIZE, ROOT_ID, new_node_id
from websync_server._exceptions import Unauthorized
from websync_server.sessions import BrowserSessions
from websync_server.web import COOKIE, CSRF_HEADER, device_name


@pytest.fixture
def browser(server: ServerProcess) -> httpx.Client:
    """An HTTP client logged in through ``/web/login``, holding the session cookie."""
    http = httpx.Client(base_url=server.url, timeout=30, headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/128.0"})
    answer = http.post("/web/login", json={"user": "alice", "password": USERS["alice"]})
    assert answer.status_code == 200, answer.text
    http.headers["Origin"] = server.url
    http.headers[CSRF_HEADER] = answer.json()["csrf"]
    return http


def test_login_sets_an_httponly_strict_cookie_for_a_browser_device(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/web/login", json={"user": "alice", "password": USERS["alice"]},
                        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36"})
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert answer.json()["device"] == "browser (Chrome on Linux)"
    assert "token" not in answer.json()  # the token lives in the cookie only


def test_the_cookie_is_secure_behind_a_tls_proxy(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/web/login", json={"user": "alice", "password": USERS["alice"]},
                        headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in answer.headers["set-cookie"]


def test_a_wrong_password_sets_no_cookie(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/web/login", json={"user": "alice", "password": "wrong"})
    assert answer.status_code == 401 and "set-cookie" not in answer.headers


@pytest.mark.parametrize("body", [b"", b"[1]", b"{", b'{"user": 1, "password": []}'])
def test_a_malformed_login_is_a_400(server: ServerProcess, body: bytes) -> None:
    answer = httpx.post(f"{server.url}/web/login", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_a_login_that_a_form_could_send_is_refused(server: ServerProcess, content_type: str) -> None:
    """An old browser sends no Origin: a form post from another site (a body of
    ``text/plain``, say) must still not log its visitor in as someone else."""
    body = json.dumps({"user": "alice", "password": USERS["alice"]})
    answer = httpx.post(f"{server.url}/web/login", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 415 and "set-cookie" not in answer.headers


def test_a_login_from_another_site_is_refused(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/web/login", json={"user": "alice", "password": USERS["alice"]},
                        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_the_cookie_reads_but_changes_nothing_without_the_csrf_header(browser: httpx.Client) -> None:
    store = browser.get("/web/session").json()["store"]
    assert browser.get(f"/v1/stores/{store}/changes", params={"cursor": 0}).status_code == 200
    op = {"op": "mkdir", "id": new_node_id(), "parent": ROOT_ID, "name": "x", "mode": 0o755, "mtime_ns": 0}
    without = browser.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]},
                           headers={CSRF_HEADER: ""})
    assert without.status_code == 403 and without.json()["error"] == "forbidden"
    wrong = browser.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]},
                         headers={CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403
    other_origin = browser.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]},
                                headers={"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"})
    assert other_origin.status_code == 403
    assert browser.post(f"/v1/stores/{store}/commit", json={"batch": new_node_id(), "ops": [op]}).status_code == 200


def test_logout_revokes_the_session_at_once(browser: httpx.Client, server: ServerProcess) -> None:
    cookie = browser.cookies[COOKIE]
    assert browser.post("/web/logout").status_code == 200
    again = httpx.get(f"{server.url}/web/session", cookies={COOKIE: cookie})
    assert again.status_code == 401
    # The token itself is revoked too, not only the cookie forgotten.
    assert httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401


def test_a_session_ends_its_max_age_after_login(components: Components) -> None:
    sessions = BrowserSessions(components.db, components.accounts, max_age_s=3600)
    login = sessions.login("alice", "pw", "browser (test)")
    assert 3590 < sessions.ends_at(login.token) - time.time() <= 3600
    # Read back from the database (another process, or a restart), from the device's login time.
    older = BrowserSessions(components.db, components.accounts, max_age_s=0)
    assert older.ends_at(login.token) <= time.time()
    assert older.ends_at("no such token") == 0


def test_an_ended_session_is_refused_from_its_own_record(components: Components) -> None:
    sessions = BrowserSessions(components.db, components.accounts)
    login = sessions.login("alice", "pw", "browser (test)")
    sessions.end(login.token)
    assert BrowserSessions(components.db, components.accounts).ends_at(login.token) == 0
    with pytest.raises(Unauthorized):
        components.accounts.authenticate(login.token)


def test_a_file_streams_whole_and_in_ranges(
    browser: httpx.Client, session: Callable[..., Session], server: ServerProcess
) -> None:
    alice = session("alice")
    data = os.urandom(BLOCK_SIZE * 2 + 12345)
    blocks = []
    for at in range(0, len(data), BLOCK_SIZE):
        chunk = data[at : at + BLOCK_SIZE]
        digest = hashlib.sha256(chunk).hexdigest()
        assert alice.http.put(f"/v1/blocks/{digest}", content=chunk).status_code in (200, 201)
        blocks.append(digest)
    node = new_node_id()
    assert alice.commit(create("big.bin", id=node, size=len(data), blocks=blocks)).status_code == 200
    whole = browser.get(f"/web/files/{node}", params={"download": "1"})
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-disposition"] == "attachment; filename*=UTF-8''big.bin"
    assert whole.headers["content-security-policy"] == "sandbox"
    across = browser.get(f"/web/files/{node}", headers={"Range": f"bytes={BLOCK_SIZE - 10}-{BLOCK_SIZE + 9}"})
    assert across.status_code == 206 and across.content == data[BLOCK_SIZE - 10 : BLOCK_SIZE + 10]
    assert across.headers["content-range"] == f"bytes {BLOCK_SIZE - 10}-{BLOCK_SIZE + 9}/{len(data)}"
    tail = browser.get(f"/web/files/{node}", headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    beyond = browser.get(f"/web/files/{node}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert browser.get("/web/files/not-an-id").status_code == 400
    assert httpx.get(f"{server.url}/web/files/{node}").status_code == 401  # no session


def test_the_page_is_served_with_a_strict_content_policy(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>WebSync</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{server.url}/static/app.js").status_code == 200


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        ("Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36", "browser (Chrome on Android)"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1", "browser (Safari on iPhone)"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0", "browser (Edge on Windows)"),
        ("curl/8.0", "browser (web)"),
    ],
)
def test_a_browser_device_is_named_after_its_agent(agent: str, name: str) -> None:
    assert device_name(agent) == name


def test_the_web_login_is_under_the_same_guess_limits_as_the_api(server: ServerProcess) -> None:
    codes = [httpx.post(f"{server.url}/web/login", json={"user": "web-guessed", "password": f"guess-{i}"},
                        timeout=30).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
