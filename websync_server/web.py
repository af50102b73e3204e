"""The web page at ``/``: its files, the browser's login and session, and file downloads.

The page (``static/``: plain HTML, CSS and JavaScript, nothing to build) speaks
the JSON API of docs/protocol.md like any machine; only the way it
authenticates differs.  `install` adds to the app:

- ``GET /`` and ``/static/...``: the page, under a Content-Security-Policy that
  allows this origin only (no CDN, no inline script).
- ``POST /web/login`` ``{"user", "password"}``: checks the password as
  ``/v1/login`` does, makes a device named ``browser (...)`` and puts its token
  in an HttpOnly, SameSite=Strict cookie (Secure under TLS); answers the
  identity and the session's CSRF value.  ``GET /web/session`` answers the
  same for a page that is reloaded; ``POST /web/logout`` revokes the device.
- ``GET /web/files/{node}``: a file's bytes streamed block by block, with
  ``Range`` support, for opening and downloading big files.
- `SessionCookies`, a middleware: a request with the session cookie and no
  ``Authorization`` header is given the cookie's token as its bearer token, so
  every API handler serves the page unchanged.  A request that changes
  something (any method but GET, HEAD, OPTIONS) must carry the CSRF value in
  ``X-WebSync-CSRF`` and come from this origin (``Origin``,
  ``Sec-Fetch-Site``), else it is refused with 403: the cookie alone is never
  enough, and a cross-site form post changes nothing.
"""

from __future__ import annotations

import hmac
import mimetypes
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ._exceptions import Forbidden, InvalidRequest, NotFound, RangeNotSatisfiable, Unauthorized
from .accounts import Identity
from .bodies import parse_json_object, require_json_type
from .protocol import API, BLOCK_SIZE, KIND_FILE, BlockHash, is_node_id
from .logins import guarded_login, login_gate
from .services import Services
from .sessions import BrowserSessions, csrf_value

__all__ = ["COOKIE", "CSRF_HEADER", "SessionCookies", "install"]

COOKIE = "websync_session"
CSRF_HEADER = "x-websync-csrf"
STATIC_DIR = Path(__file__).with_name("static")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN_BODY_MAX = 64 * 1024
# At most 19 digits a position (as the block API's ranges): a longer one is past any file,
# and Python refuses to turn more than 4,300 digits into a number at all.
_RANGE_RE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
# The page and its scripts come from this origin only; nothing may frame it.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self'; object-src 'none';"
        " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# A user's file opened in the browser runs in a sandbox (an opaque origin):
# an uploaded HTML page can't script the session or call the API as the user.
_FILE_HEADERS = {
    "Content-Security-Policy": "sandbox",
    "X-Content-Type-Options": "nosniff",
    "Accept-Ranges": "bytes",
    "Cache-Control": "private, no-cache",
}


def install(app: Starlette, services: Services) -> BrowserSessions:
    """Add the page, its session calls and the session middleware to *app*."""
    sessions = BrowserSessions(services.db, services.accounts)
    web = _Web(services, sessions)
    app.router.routes.extend([
        Route("/", web.page, methods=["GET"]),
        Route("/web/login", web.login, methods=["POST"]),
        Route("/web/session", web.session, methods=["GET"]),
        Route("/web/logout", web.logout, methods=["POST"]),
        Route("/web/files/{node}", web.file, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ])  # fmt: skip
    app.add_middleware(SessionCookies, sessions=sessions)
    return sessions


class _Web:
    """The handlers of the page's own calls."""

    def __init__(self, services: Services, sessions: BrowserSessions) -> None:
        self._s = services
        self._sessions = sessions

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        if not _same_origin(request.scope, request.headers):
            raise Forbidden("a login must come from this server's own page")
        address = request.client.host if request.client else "unknown"
        async with login_gate(self._s, address):
            body = await _json_object(request)
            user, password = body.get("user"), body.get("password")
            if not isinstance(user, str) or not isinstance(password, str):
                raise InvalidRequest("user and password must be strings")
            device = device_name(request.headers.get("user-agent", ""))
            login = await guarded_login(self._s, self._sessions.login, user, password, device,
                                        address=address, known_device=False)
        answer = JSONResponse(_session_wire(login.identity, login.token, time.time() + self._sessions.max_age_s))
        answer.set_cookie(
            COOKIE, login.token, max_age=int(self._sessions.max_age_s), path="/",
            secure=request.url.scheme == "https", httponly=True, samesite="strict",
        )  # fmt: skip
        return answer

    async def session(self, request: Request) -> Response:
        identity = await self._identity(request)
        token = request.cookies.get(COOKIE, "")
        return JSONResponse(_session_wire(identity, token, await run_in_threadpool(self._sessions.ends_at, token)))

    async def logout(self, request: Request) -> Response:
        await self._identity(request)  # the middleware checked the CSRF value
        await run_in_threadpool(self._sessions.end, request.cookies.get(COOKIE, ""))
        answer = JSONResponse({"ok": True})
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    async def file(self, request: Request) -> Response:
        """A file's bytes, whole or one range of them, read block by block as they are sent."""
        identity = await self._identity(request)
        node_id = request.path_params["node"]
        if not is_node_id(node_id):
            raise InvalidRequest(f"{node_id!r} is not a node id")
        store, space = identity.store, identity.user
        if request.query_params.get("store", store) != store:  # a shared folder: its blocks are its owner's
            store = request.query_params["store"]
            space = (await run_in_threadpool(self._s.shares.access, identity.user_id, store)).owner
        state = await run_in_threadpool(self._s.store.node_state, store, node_id)
        node = state.node
        if node.kind != KIND_FILE or node.deleted:
            raise NotFound(f"node {node_id} is not a live file")
        start, stop, ranged = _byte_range(request.headers.get("range"), node.size)
        name = request.query_params.get("name") or (state.entries[0].name if state.entries else node_id)
        headers = {**_FILE_HEADERS, "ETag": f'"{node.id}-{node.seq}"', "Content-Length": str(stop - start)}
        how = "attachment" if request.query_params.get("download") else "inline"
        headers["Content-Disposition"] = f"{how}; filename*=UTF-8''{quote(name, safe='')}"
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{node.size}"
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body = self._stream(space, node.blocks, start, stop)
        return StreamingResponse(body, status_code=206 if ranged else 200, headers=headers, media_type=media_type)

    async def _stream(self, user: str, blocks: tuple[BlockHash, ...], start: int, stop: int) -> AsyncIterator[bytes]:
        for index in range(start // BLOCK_SIZE, (stop + BLOCK_SIZE - 1) // BLOCK_SIZE):
            base = index * BLOCK_SIZE
            first, last = max(start - base, 0), min(stop - base, BLOCK_SIZE) - 1
            # An explicit range makes the store check the block against its hash
            # (once, then remembered); a damaged block ends the download short
            # rather than hand the browser wrong bytes.
            extent = await run_in_threadpool(self._s.blocks.read, user, blocks[index], first, last)
            if extent.whole:
                raise RuntimeError(f"block {blocks[index]} does not match its hash; the download stops")
            yield extent.data

    async def _identity(self, request: Request) -> Identity:
        """Who the request's bearer token (set from the cookie by `SessionCookies`) belongs to."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("not logged in")
        accounts = self._s.accounts
        trusted = accounts.trusted(token.strip())
        return trusted if trusted is not None else await run_in_threadpool(accounts.authenticate, token.strip())


class SessionCookies:
    """ASGI middleware: the session cookie becomes the bearer token, with the CSRF checks."""

    def __init__(self, app: ASGIApp, sessions: BrowserSessions) -> None:
        self._app = app
        self._sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith((API + "/", "/web/")):
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        token = _cookie(headers.get("cookie", ""))
        if "authorization" in headers or not token or scope["path"] == "/web/login":
            await self._app(scope, receive, send)  # a machine's call, or no session
            return
        refusal = await self._refusal(scope, headers, token)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope = {**scope, "headers": [*scope["headers"], (b"authorization", f"Bearer {token}".encode())]}
        await self._app(scope, receive, send)

    async def _refusal(self, scope: Scope, headers: Headers, token: str) -> Response | None:
        """The answer refusing this request, or None to let it through."""
        ends = await run_in_threadpool(self._sessions.ends_at, token)
        if ends <= time.time():
            answer = _error(Unauthorized("the session has ended; log in again"))
            answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return answer
        if scope["method"] in _SAFE_METHODS:
            return None
        if not _same_origin(scope, headers):
            return _error(Forbidden("a change must come from this server's own page"))
        if not hmac.compare_digest(headers.get(CSRF_HEADER, ""), csrf_value(token)):
            return _error(Forbidden(f"a change needs the session's {CSRF_HEADER} header"))
        return None


def device_name(user_agent: str) -> str:
    """``browser (Firefox on Linux)``: the device name of a browser session, from its User-Agent."""
    browser = next((name for key, name in _BROWSERS if key in user_agent), "web")
    system = next((name for key, name in _SYSTEMS if key in user_agent), "")
    return f"browser ({browser} on {system})" if system else f"browser ({browser})"


# The first match wins: Edge's and Chrome's agents name Safari too, Chrome's on Android names Linux.
_BROWSERS = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chromium/", "Chromium"), ("Chrome/", "Chrome"),
             ("Safari/", "Safari"))
_SYSTEMS = (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"), ("Windows", "Windows"),
            ("Mac OS", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def _same_origin(scope: Scope, headers: Headers) -> bool:
    """Whether the request comes from this server's own pages (as far as the browser says)."""
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    return origin is None or origin == f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


def _cookie(header: str) -> str:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip('"')
    return ""


def _session_wire(identity: Identity, token: str, ends: float) -> dict[str, Any]:
    return {
        "user": identity.user, "device": identity.device, "store": identity.store,
        "csrf": csrf_value(token), "expires": int(ends),
    }  # fmt: skip


def _byte_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """``(start, stop, ranged)`` of a single ``Range`` over *size* bytes; others get the whole file."""
    match = _RANGE_RE.match(header.strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return 0, size, False
    if match[1]:
        start = int(match[1])
        stop = min(int(match[2]) + 1, size) if match[2] else size
    else:
        start, stop = max(0, size - int(match[2])), size
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(f"the range starts at byte {start} of a {size} byte file", size)
    return start, stop, True


async def _json_object(request: Request) -> dict[str, Any]:
    require_json_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > _LOGIN_BODY_MAX:
        raise InvalidRequest(f"a login is a JSON object of at most {_LOGIN_BODY_MAX} bytes")
    try:
        body = await request.body()
    except ClientDisconnect:
        raise InvalidRequest("the connection closed before the whole body arrived") from None
    return parse_json_object(body)


def _error(exc: Unauthorized | Forbidden) -> JSONResponse:
    return JSONResponse(exc.to_wire(), status_code=exc.status)
