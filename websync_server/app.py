"""The HTTP API of docs/protocol.md as a Starlette app; build it with `create_app`.

Handlers are thin: they authenticate, decode the request, call one component
method and encode the answer.  Blocking work (SQL, argon2, hashing, disk I/O)
runs in worker threads so the event loop only shuffles bytes and long polls.
Every `ServerError` becomes its JSON answer in `_server_error`, the one place
where errors cross the HTTP boundary; anything else is a bug and answers 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._exceptions import (
    Forbidden,
    InvalidRequest,
    NotFound,
    RangeNotSatisfiable,
    ServerError,
    TooLarge,
    Unauthorized,
)
from .accounts import Identity
from .journal import DEFAULT_LIMIT
from .protocol import API, BLOCK_SIZE, WAIT_MAX, BlockHash, Changes, is_block_hash
from .services import Services

__all__ = ["PROTOCOL_VERSION", "create_app"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Largest JSON request body (a commit of many thousand ops fits easily).
JSON_BODY_MAX = 16 * 1024 * 1024

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Blocks never change, so a client or proxy may keep them as long as it likes.
_BLOCK_CACHE_CONTROL = "private, max-age=31536000, immutable"


def create_app(
    data_dir: Path,
    *,
    database_url: str | None = None,
    hasher: PasswordHasher | None = None,
) -> Starlette:
    """The WebSync server app on the state in *data_dir* (created on first use).

    The components are on ``app.state.services``; the app closes them when its
    lifespan ends.
    """
    services = Services.open(data_dir, database_url=database_url, hasher=hasher)
    api = _Api(services)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.notifier.bind(asyncio.get_running_loop())
        try:
            yield
        finally:
            services.close()

    routes = [
        Route(f"{API}/health", api.health, methods=["GET"]),
        Route(f"{API}/login", api.login, methods=["POST"]),
        Route(f"{API}/whoami", api.whoami, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/changes", api.changes, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/nodes/{{node}}", api.node, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/nodes/{{node}}/versions", api.versions, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/trash", api.trash, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/commit", api.commit, methods=["POST"]),
        Route(f"{API}/blocks/missing", api.missing_blocks, methods=["POST"]),
        Route(f"{API}/blocks", api.put_blocks, methods=["POST"]),
        Route(f"{API}/blocks/{{block}}", api.put_block, methods=["PUT"]),
        Route(f"{API}/blocks/{{block}}", api.get_block, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ServerError: _server_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.services = services
    return app


class _Api:
    """The route handlers, sharing one `Services`."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._rechecks: set[asyncio.Task[None]] = set()  # referenced until done

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "version": PROTOCOL_VERSION})

    async def login(self, request: Request) -> Response:
        body = await _json_object(request)
        login = await run_in_threadpool(
            self._s.accounts.login, body.get("user"), body.get("password"), body.get("device"), body.get("replaces")
        )
        log.info("user %s logged in as device %r", login.identity.user, login.identity.device)
        return JSONResponse({"token": login.token, **_identity_wire(login.identity)})

    async def whoami(self, request: Request) -> Response:
        identity = await self._identity(request)
        return JSONResponse(_identity_wire(identity))

    async def changes(self, request: Request) -> Response:
        _, store = await self._store_access(request)
        cursor = _int_param(request, "cursor", 0)
        limit = _int_param(request, "limit", DEFAULT_LIMIT)
        wait = min(_float_param(request, "wait", 0.0), WAIT_MAX)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changes = await run_in_threadpool(self._s.store.changes, store, cursor, limit)
            news = changes.nodes or changes.entries or changes.reset or changes.more or changes.cursor != cursor
            remaining = deadline - loop.time()
            # Read first, wait second: see notifier.py for why no commit is missed.
            if news or remaining <= 0 or not await self._s.notifier.wait(store, changes.cursor, remaining):
                # A listing can be megabytes of JSON: encode it off the event loop.
                body = await run_in_threadpool(_encode_changes, changes)
                return Response(body, media_type="application/json")

    async def node(self, request: Request) -> Response:
        _, store = await self._store_access(request)
        state = await run_in_threadpool(self._s.store.node_state, store, request.path_params["node"])
        return JSONResponse(state.to_wire())

    async def versions(self, request: Request) -> Response:
        _, store = await self._store_access(request)
        listed = await run_in_threadpool(self._s.store.versions, store, request.path_params["node"])
        return JSONResponse({"versions": [v.to_wire() for v in listed]})

    async def trash(self, request: Request) -> Response:
        _, store = await self._store_access(request)
        items = await run_in_threadpool(self._s.store.trash, store)
        return JSONResponse({"items": [i.to_wire() for i in items]})

    async def commit(self, request: Request) -> Response:
        identity, store = await self._store_access(request)
        body = await _json_object(request)
        # The store announces the commit itself (MetadataStore.on_commit), from its thread.
        seq = await run_in_threadpool(self._s.store.commit, store, identity.device, body.get("batch"), body.get("ops"))
        log.debug("store %s: commit %s by %s is seq %d", store, body.get("batch"), identity.device, seq)
        return JSONResponse({"seq": seq})

    async def missing_blocks(self, request: Request) -> Response:
        identity = await self._identity(request)
        hashes = (await _json_object(request)).get("hashes")
        if not isinstance(hashes, list) or not all(is_block_hash(h) for h in hashes):
            raise InvalidRequest("hashes must be a list of 64 lower-case hex digit SHA-256 hashes")
        missing = await run_in_threadpool(self._s.blocks.missing, identity.user, hashes)
        return JSONResponse({"missing": missing})

    async def put_block(self, request: Request) -> Response:
        identity = await self._identity(request)
        block = _block_param(request)
        # The pieces as received: joining 4 MiB into one buffer costs a copy and a
        # fresh allocation's page faults; the store hashes and writes them in turn.
        pieces = await _read_pieces(request, BLOCK_SIZE)
        # Hashing 4 MiB and fsyncing take milliseconds: off the event loop.
        created = await run_in_threadpool(self._s.blocks.put, identity.user, block, pieces)
        size = sum(len(piece) for piece in pieces)
        return JSONResponse({"hash": block, "size": size}, status_code=201 if created else 200)

    async def put_blocks(self, request: Request) -> Response:
        """Many small blocks in one request: a folder of small files costs one round trip."""
        identity = await self._identity(request)
        body = await _read_body(request, BLOCKS_BODY_MAX)
        frames = _split_frames(body)
        created = await run_in_threadpool(
            lambda: sum(self._s.blocks.put(identity.user, h, data) for h, data in frames)
        )
        return JSONResponse({"blocks": len(frames), "created": created}, status_code=200)

    async def get_block(self, request: Request) -> Response:
        identity = await self._identity(request)
        block = _block_param(request)
        first, last, ranged = _parse_range(request.headers.get("range"))
        extent = self._s.blocks.read_small(identity.user, block, first, last)
        if extent is None:
            extent = await run_in_threadpool(self._s.blocks.read, identity.user, block, first, last)
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{block}"', "Cache-Control": _BLOCK_CACHE_CONTROL}
        if not ranged or extent.whole:
            return Response(extent.data, headers=headers, media_type="application/octet-stream")
        end = extent.start + len(extent.data) - 1
        headers["Content-Range"] = f"bytes {extent.start}-{end}/{extent.size}"
        return Response(extent.data, status_code=206, headers=headers, media_type="application/octet-stream")

    async def _identity(self, request: Request) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("this call needs an 'Authorization: Bearer TOKEN' header")
        accounts = self._s.accounts
        trusted = accounts.trusted(token)
        if trusted is not None:
            return trusted
        remembered = accounts.recheck_due(token)
        if remembered is not None:
            task = asyncio.get_running_loop().create_task(self._recheck(token))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)
            return remembered
        return await run_in_threadpool(accounts.authenticate, token)

    async def _recheck(self, token: str) -> None:
        try:
            await run_in_threadpool(self._s.accounts.recheck, token)
        except Unauthorized:
            log.info("a token was refused on its recheck (revoked): its next request is refused")
        except Exception:  # noqa: BLE001 - forgotten: the next request asks the database itself
            log.warning("could not recheck a token; its next request asks the database", exc_info=True)

    async def _store_access(self, request: Request) -> tuple[Identity, str]:
        """The caller's identity and the store of the URL, which the caller must own."""
        identity = await self._identity(request)
        store = request.path_params["store"]
        if store != identity.store:
            owner = await run_in_threadpool(self._s.store.owner, store)
            if owner is None:
                raise NotFound(f"there is no store {store}")
            if owner != identity.user_id:
                raise Forbidden(f"store {store} belongs to another user")
        return identity, store


def _encode_changes(changes: Changes) -> bytes:
    """A `Changes` page as JSON, the way `JSONResponse` renders."""
    return json.dumps(changes.to_wire(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _identity_wire(identity: Identity) -> dict[str, Any]:
    return {"user": identity.user, "device": identity.device, "store": identity.store}


#: A batch of blocks carries at most this much (the frames included).
BLOCKS_BODY_MAX = 2 * BLOCK_SIZE + 64 * 1024  # 8 MiB + 64 KiB


def _split_frames(body: bytes) -> list[tuple[BlockHash, bytes]]:
    """Frames of ``POST /v1/blocks``: 64 hex digits of hash, 4-byte big-endian length, bytes."""
    frames: list[tuple[BlockHash, bytes]] = []
    at = 0
    while at < len(body):
        if len(body) - at < 68:
            raise InvalidRequest("a block frame is cut short")
        name = body[at : at + 64].decode("ascii", "replace")
        if not is_block_hash(name):
            raise InvalidRequest(f"{name!r} is not a block hash")
        size = int.from_bytes(body[at + 64 : at + 68], "big")
        if size > BLOCK_SIZE or at + 68 + size > len(body):
            raise InvalidRequest(f"the frame of block {name} is cut short or too long")
        frames.append((BlockHash(name), body[at + 68 : at + 68 + size]))
        at += 68 + size
    if not frames:
        raise InvalidRequest("no blocks in the request")
    return frames


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than *limit* bytes without reading them all."""
    return b"".join(await _read_pieces(request, limit))


async def _read_pieces(request: Request, limit: int) -> list[bytes]:
    """The request body in the pieces it arrived in, refusing (413) more than *limit* bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body has {declared} bytes, this call takes at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over {limit} bytes, this call takes at most {limit}")
        chunks.append(chunk)
    return chunks


async def _json_object(request: Request) -> dict[str, Any]:
    body = await _read_body(request, JSON_BODY_MAX)
    try:
        data = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(raw)


def _float_param(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan
        raise InvalidRequest(f"{name} must be a non-negative number of seconds")
    return value


def _block_param(request: Request) -> BlockHash:
    block = request.path_params["block"]
    if not is_block_hash(block):
        raise InvalidRequest(f"{block!r} is not a block hash (64 lower-case hex digits)")
    return BlockHash(block)


def _parse_range(header: str | None) -> tuple[int | None, int | None, bool]:
    """``(first, last, ranged)`` of a single-range ``Range`` header.

    A header this server does not serve (several ranges, another unit, bad
    syntax) is ignored and the whole block sent, as RFC 9110 section 14.2 allows.
    """
    match = _RANGE_RE.match(header.strip()) if header else None
    if match is None:
        return None, None, False
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is None and last is None:
        return None, None, False
    if first is not None and last is not None and last < first:
        return None, None, False
    return first, last, True


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="websync"'
    elif isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    level = logging.ERROR if exc.status >= 500 else logging.DEBUG
    log.log(level, "%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return JSONResponse(exc.to_wire(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in our JSON shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid")
    message = "no such call" if exc.status_code == 404 else str(exc.detail)
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log through the server ("Exception in ASGI
    # application"); the client gets no internals.
    return JSONResponse({"error": "internal", "message": "the server failed; its log says why"}, status_code=500)
