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
import math
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._exceptions import (
    InvalidRequest,
    NotFound,
    ProtocolMismatch,
    QuotaExceeded,
    RangeNotSatisfiable,
    ReadOnly,
    RequestTimeout,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)
from .accounts import Identity, Login
from .bodies import parse_json_object, require_json_type
from .hostcheck import HostCheck
from .journal import DEFAULT_LIMIT
from .logins import guarded_check, guarded_login, login_gate
from .ops import block_hashes, parse_ops
from .protocol import (
    API, BLOCK_SIZE, FORMAT_COMPACT, FORMAT_OBJECTS, FORMATS, WAIT_MAX, BlockHash, ChangeRows, Changes, is_block_hash,
)
from .services import Services
from .shares import Access
from .web import install as install_web_page

__all__ = ["PROTOCOL_VERSION", "create_app"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Largest JSON request body (a commit of many thousand ops fits easily).
JSON_BODY_MAX = 16 * 1024 * 1024
#: Seconds a request body may go without a byte arriving.
BODY_TIMEOUT_S = 30.0
#: Largest login body: read before anyone is known, so small.
LOGIN_BODY_MAX = 4 * 1024
#: Stores one ``changes/wait`` call may wait on (a user's own, and shared folders).
WAIT_STORES_MAX = 512
#: JSON bodies up to this size are parsed on the event loop (well under a millisecond).
_PARSE_ON_LOOP_MAX = 64 * 1024

# ASCII digits only (\d also matches "²" and other digits int() refuses), and
# few enough that int() stays cheap: every seq, cursor and offset fits in 19.
_DIGITS_MAX = 19
_DECIMAL_RE = re.compile(rf"^[0-9]{{1,{_DIGITS_MAX}}}$")
# A device id is a database integer: 18 digits always fit in 64 bits (19 may not).
_DEVICE_ID_RE = re.compile(r"^[0-9]{1,18}$")
_RANGE_RE = re.compile(rf"^bytes=([0-9]{{0,{_DIGITS_MAX}}})-([0-9]{{0,{_DIGITS_MAX}}})$")
# Set in a request's scope once its body is read whole.
_BODY_READ = "websync.body_read"
# Blocks never change, so a client or proxy may keep them as long as it likes.
_BLOCK_CACHE_CONTROL = "private, max-age=31536000, immutable"


class _OtherApi(Convertor[str]):
    """A path segment naming another protocol version than this server's (``v2``, not ``v1``)."""

    regex = rf"v(?!{PROTOCOL_VERSION}/)[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("other_api", _OtherApi())


def create_app(
    data_dir: Path,
    *,
    database_url: str | None = None,
    blocks_dir: Path | str | None = None,
    hasher: PasswordHasher | None = None,
    body_timeout: float = BODY_TIMEOUT_S,
    allowed_hosts: Sequence[str] = ("*",),
    device_idle_s: float = 0.0,
) -> Starlette:
    """The WebSync server app on the state in *data_dir* (created on first use).

    The components are on ``app.state.services``; the app closes them when its
    lifespan ends.  A request whose ``Host`` is not in *allowed_hosts* gets 400:
    a web page that rebinds its own name to this server's address cannot reach it.
    A device unseen for *device_idle_s* (0: no limit) is logged out.
    """
    services = Services.open(data_dir, database_url=database_url, blocks_dir=blocks_dir, hasher=hasher,
                             device_idle_s=device_idle_s)
    api = _Api(services, body_timeout)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.notifier.bind(asyncio.get_running_loop())
        try:
            services.listen_for_other_processes()
            yield
        finally:
            services.close()

    routes = [
        Route(f"{API}/health", api.health, methods=["GET"]),
        Route(f"{API}/login", api.login, methods=["POST"]),
        Route(f"{API}/whoami", api.whoami, methods=["GET"]),
        Route(f"{API}/password", api.password, methods=["POST"]),
        Route(f"{API}/logout", api.logout, methods=["POST"]),
        Route(f"{API}/devices", api.devices, methods=["GET"]),
        Route(f"{API}/usage", api.usage, methods=["GET"]),
        Route(f"{API}/devices/{{device}}/revoke", api.revoke_device, methods=["POST"]),
        Route(f"{API}/shares", api.shares, methods=["GET"]),
        Route(f"{API}/shares", api.share, methods=["POST"]),
        Route(f"{API}/shares/{{store}}/members/{{user}}/remove", api.unshare, methods=["POST"]),
        Route(f"{API}/stores/{{store}}/changes", api.changes, methods=["GET"]),
        Route(f"{API}/changes/wait", api.wait_any, methods=["POST"]),
        Route(f"{API}/stores/{{store}}/nodes/{{node}}", api.node, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/nodes/{{node}}/versions", api.versions, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/trash", api.trash, methods=["GET"]),
        Route(f"{API}/stores/{{store}}/commit", api.commit, methods=["POST"]),
        Route(f"{API}/blocks/missing", api.missing_blocks, methods=["POST"]),
        Route(f"{API}/blocks", api.put_blocks, methods=["POST"]),
        Route(f"{API}/blocks/{{block}}", api.put_block, methods=["PUT"]),
        Route(f"{API}/blocks/{{block}}", api.get_block, methods=["GET"]),
        # Last: any other path, so a client of another protocol version learns why.
        Route("/{prefix:other_api}/{rest:path}", api.elsewhere, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(HostCheck, allowed=tuple(allowed_hosts))],
        exception_handlers={
            ServerError: _server_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.services = services
    install_web_page(app, services)
    return app


class _Api:
    """The route handlers, sharing one `Services`."""

    def __init__(self, services: Services, body_timeout: float) -> None:
        self._s = services
        self._body_timeout = body_timeout
        self._rechecks: set[asyncio.Task[None]] = set()  # referenced until done

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "version": PROTOCOL_VERSION})

    async def elsewhere(self, request: Request) -> Response:
        prefix = request.path_params["prefix"]
        raise ProtocolMismatch(
            f"this server speaks WebSync protocol version {PROTOCOL_VERSION} ({API}/...), the client "
            f"{prefix[1:]} (/{prefix}/...): use a client and server of the same release"
        )

    async def login(self, request: Request) -> Response:
        address = _address(request)
        async with login_gate(self._s, address):
            # Before anyone is known: a small body, parsed on the loop (4 KiB parse in microseconds).
            body = parse_json_object(await _read_json_body(request, LOGIN_BODY_MAX, self._body_timeout))
            user = body.get("user")
            if not isinstance(user, str) or not isinstance(body.get("password"), str):
                raise InvalidRequest("user and password must be strings")
            replaces = body.get("replaces")  # this machine's token so far: it keeps its device name
            known = await self._known_device(request, user, replaces)

            def check(user: str, password: str, device: object) -> Login:
                return self._s.accounts.login(user, password, device, replaces)

            login = await guarded_login(self._s, check, user, body["password"], body.get("device"),
                                        address=address, known_device=known)
        return JSONResponse({"token": login.token, **_identity_wire(login.identity)})

    async def _known_device(self, request: Request, user: str, replaces: object) -> bool:
        """Whether the login carries a live token of *user*'s (header or *replaces*): its owner, on a device it knows."""
        try:
            if "authorization" in request.headers:
                return (await self._identity(request)).user == user
            if isinstance(replaces, str) and replaces:
                return (await self._token_identity(replaces)).user == user
        except Unauthorized:
            pass
        return False

    async def whoami(self, request: Request) -> Response:
        identity = await self._identity(request)
        return JSONResponse(_identity_wire(identity))

    async def usage(self, request: Request) -> Response:
        """The caller's stored bytes and bounds (what the web page and `websync status` show)."""
        identity = await self._identity(request)

        def read() -> dict[str, int | None]:
            limits = self._s.quotas.limits(identity.user)
            return {"stored_bytes": self._s.quotas.stored_bytes(identity.user),
                    "quota_bytes": limits.bytes, "quota_nodes": limits.nodes}

        return JSONResponse(await self._s.admission.run(identity.user, read))

    async def password(self, request: Request) -> Response:
        """Change the caller's password: the current one is checked under the login limits."""
        identity = await self._identity(request)
        body = await self._json_object(request, identity)
        old, new = body.get("password"), body.get("new_password")
        if not isinstance(old, str) or not isinstance(new, str):
            raise InvalidRequest("password and new_password must be strings")
        address = _address(request)
        async with login_gate(self._s, address):
            await guarded_check(self._s, self._s.accounts.change_password, identity.user, old, new, identity.device,
                                address=address, known_device=True)
        return JSONResponse({"ok": True})

    async def logout(self, request: Request) -> Response:
        identity = await self._identity(request)
        await self._s.admission.run(identity.user, self._revoke, identity, identity.device_id, "logged out")
        return JSONResponse({"ok": True})

    async def devices(self, request: Request) -> Response:
        identity = await self._identity(request)
        found = await self._s.admission.run(identity.user, self._s.accounts.devices, identity.user_id)
        listed = [{**d.to_wire(), "current": d.id == identity.device_id} for d in found]
        return JSONResponse({"devices": listed})

    async def revoke_device(self, request: Request) -> Response:
        identity = await self._identity(request)
        raw = request.path_params["device"]
        if not _DEVICE_ID_RE.match(raw):
            raise InvalidRequest("a device is named by its number (see GET /v1/devices)")
        why = f"revoked by device {identity.device!r}"
        name = await self._s.admission.run(identity.user, self._revoke, identity, int(raw), why)
        return JSONResponse({"id": int(raw), "name": name})

    def _revoke(self, identity: Identity, device_id: int, why: str) -> str:
        return self._s.accounts.revoke_device(identity, device_id, why=why)

    async def shares(self, request: Request) -> Response:
        """The shared folders the caller owns or is a member of."""
        identity = await self._identity(request)
        found = await self._s.admission.run(identity.user, self._s.shares.listed, identity.user_id)
        return JSONResponse({"shares": [s.to_wire() for s in found]})

    async def share(self, request: Request) -> Response:
        """Share the caller's folder ``name`` with ``user`` (made on first use), or change the member's mode."""
        identity = await self._identity(request)
        body = await self._json_object(request, identity)
        info = await self._s.admission.run(identity.user, self._s.shares.share, identity.user_id, identity.user,
                                           body.get("name"), body.get("user"), body.get("read_only", False))
        return JSONResponse(info.to_wire())

    async def unshare(self, request: Request) -> Response:
        """Remove a member: the owner removes anyone, a member leaves."""
        identity = await self._identity(request)
        store, member = request.path_params["store"], request.path_params["user"]
        # Shares.unshare wakes the long polls it concerns, in every server process.
        await self._s.admission.run(identity.user, self._s.shares.unshare, identity.user_id, identity.user,
                                    store, member)
        return JSONResponse({"ok": True})

    async def changes(self, request: Request) -> Response:
        identity, store, _ = await self._store_access(request)
        cursor = _int_param(request, "cursor", 0)
        limit = _int_param(request, "limit", DEFAULT_LIMIT)
        # The caller's shares stamp: news too when it is not the current one (own store only).
        known = _int_param(request, "shares", -1)
        own = store == identity.store
        wait = min(_float_param(request, "wait", 0.0), WAIT_MAX)
        form = request.query_params.get("format", FORMAT_OBJECTS)
        if form not in FORMATS:
            raise InvalidRequest(f"format must be one of {', '.join(sorted(FORMATS))}")
        read: Callable[[str, int, int], Changes | ChangeRows] = (
            self._s.store.change_rows if form == FORMAT_COMPACT else self._s.store.changes
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait

        def read_page() -> tuple[Changes | ChangeRows, int | None]:
            page = read(store, cursor, limit)
            return page, self._s.shares.stamp(identity.user_id) if own else None

        reread = False
        while True:
            woken = self._s.notifier.wakes(store)  # before the stamp is read: notifier.py
            changes, stamp = await self._s.admission.run(identity.user, read_page)
            news = changes.nodes or changes.entries or changes.reset or changes.more or changes.cursor != cursor
            news = news or reread or (known >= 0 and stamp != known)
            remaining = deadline - loop.time()
            # Read first, wait second: see notifier.py for why no commit is missed.
            if news or remaining <= 0 or not await self._s.notifier.wait(store, changes.cursor, remaining, woken):
                if not news and self._s.notifier.wakes(store) != woken:
                    reread = True  # shares changed: answered with what is read now, the new stamp
                    continue
                # A listing can be megabytes of JSON: encode it off the event loop.
                body = await self._s.admission.run(identity.user, _encode_changes, changes, stamp)
                return Response(body, media_type="application/json")

    async def wait_any(self, request: Request) -> Response:
        """One long poll over several stores: which of them have news past the caller's cursors."""
        identity = await self._identity(request)
        body = await self._json_object(request, identity)
        cursors, wait = body.get("cursors"), body.get("wait", 0)
        if not isinstance(cursors, dict) or not 0 < len(cursors) <= WAIT_STORES_MAX or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**63 for c in cursors.values()
        ):
            raise InvalidRequest(f"cursors must map 1 to {WAIT_STORES_MAX} store ids to journal cursors")
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait < math.inf:
            raise InvalidRequest("wait must be a non-negative number of seconds")
        await self._s.admission.run(identity.user, self._s.shares.check_reachable, identity.user_id, list(cursors))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(wait), WAIT_MAX)
        while True:
            where = await self._s.admission.run(identity.user, self._s.store.positions, list(cursors))
            # A commit past the cursor, or a cursor the journal answers with a reset.
            ready = sorted(s for s, (seq, horizon) in where.items() if seq != cursors[s] or horizon > cursors[s])
            remaining = deadline - loop.time()
            # Read first, wait second, as for one store (notifier.py).
            seqs = {s: seq for s, (seq, _) in where.items()}
            if ready or remaining <= 0 or not await self._s.notifier.wait_any(seqs, remaining):
                return JSONResponse({"ready": ready})

    async def node(self, request: Request) -> Response:
        identity, store, _ = await self._store_access(request)
        state = await self._s.admission.run(identity.user, self._s.store.node_state, store, request.path_params["node"])
        return JSONResponse(state.to_wire())

    async def versions(self, request: Request) -> Response:
        identity, store, _ = await self._store_access(request)
        listed = await self._s.admission.run(identity.user, self._s.store.versions, store, request.path_params["node"])
        return JSONResponse({"versions": [v.to_wire() for v in listed]})

    async def trash(self, request: Request) -> Response:
        identity, store, _ = await self._store_access(request)
        items = await self._s.admission.run(identity.user, self._s.store.trash, store)
        return JSONResponse({"items": [i.to_wire() for i in items]})

    async def commit(self, request: Request) -> Response:
        identity, store, access = await self._store_access(request)
        if access.read_only:
            raise ReadOnly(f"the shared folder {access.folder!r} of {access.owner} is read-only for user {identity.user}")
        body = await self._json_object(request, identity)
        # The store announces the commit itself (MetadataStore.on_commit), from its thread.
        seq = await self._s.admission.write(identity.user, self._commit, identity, store, access, body)
        log.debug("store %s: commit %s by %s is seq %d", store, body.get("batch"), identity.device, seq)
        return JSONResponse({"seq": seq})

    def _commit(self, identity: Identity, store: str, access: Access, body: dict[str, Any]) -> int:
        if access.member:  # only blocks of the folder or sent for it (shares.py)
            self._s.shares.check_usable(store, block_hashes(parse_ops(body.get("ops"))))
        # A shared folder's nodes count against its owner's bound.
        self._s.quotas.check_commit(access.owner, store, body.get("batch"), body.get("ops"))
        return self._s.store.commit(store, identity.device, body.get("batch"), body.get("ops"))

    async def missing_blocks(self, request: Request) -> Response:
        identity = await self._identity(request)
        space, shared = await self._block_space(request, identity, write=False)
        hashes = (await self._json_object(request, identity)).get("hashes")
        if not isinstance(hashes, list) or not all(is_block_hash(h) for h in hashes):
            raise InvalidRequest("hashes must be a list of 64 lower-case hex digit SHA-256 hashes")

        def missing() -> list[BlockHash]:
            found = self._s.blocks.missing(space, hashes)
            if shared is None:
                return found
            # Nothing else of the owner's is told (shares.py).
            lacking, usable = set(found), self._s.shares.usable(shared, hashes)
            return [h for h in hashes if h in lacking or h not in usable]

        return JSONResponse({"missing": await self._s.admission.run(identity.user, missing)})

    async def put_block(self, request: Request) -> Response:
        identity = await self._identity(request)
        block = _block_param(request)
        # The pieces as received: joining 4 MiB into one buffer costs a copy and a
        # fresh allocation's page faults; the store hashes and writes them in turn.
        space, shared = await self._block_space(request, identity, write=True)
        pieces = await _read_pieces(request, BLOCK_SIZE, self._body_timeout)
        # Hashing 4 MiB and fsyncing take milliseconds: off the event loop.
        created = await self._s.admission.run(identity.user, self._put_blocks, space, shared, [(block, pieces)])
        size = sum(len(piece) for piece in pieces)
        return JSONResponse({"hash": block, "size": size}, status_code=201 if created else 200)

    def _put_blocks(self, space: str, shared: str | None, blocks: list[tuple[BlockHash, Any]]) -> int:
        """Store *blocks* in *space*'s folder; how many were new (all, for a member: shares.py)."""
        if len(blocks) == 1:  # a PUT: its pieces as received, hashed and written in turn
            created = int(self._s.quotas.put_block(space, *blocks[0]))
        else:  # a batch: checked whole, then flushed to disk together
            created = self._s.quotas.put_blocks(space, blocks)
        if shared is None:
            return created
        self._s.shares.record_upload(shared, [block for block, _ in blocks])
        return len(blocks)

    async def put_blocks(self, request: Request) -> Response:
        """Many small blocks in one request: a folder of small files costs one round trip."""
        identity = await self._identity(request)
        space, shared = await self._block_space(request, identity, write=True)
        body = await _read_body(request, BLOCKS_BODY_MAX, self._body_timeout)
        frames = _split_frames(body)
        # Every frame is checked before any is stored; the lot is flushed to disk together.
        created = await self._s.admission.run(identity.user, self._put_blocks, space, shared, frames)
        return JSONResponse({"blocks": len(frames), "created": created}, status_code=200)

    async def get_block(self, request: Request) -> Response:
        identity = await self._identity(request)
        block = _block_param(request)
        first, last, ranged = _parse_range(request.headers.get("range"))
        space, shared = await self._block_space(request, identity, write=False)
        if shared is not None and not await self._s.admission.run(identity.user, self._s.shares.readable, shared,
                                                                  [block]):
            raise NotFound(f"block {block} is not in this shared folder")
        extent = self._s.blocks.read_small(space, block, first, last)
        if extent is None:
            extent = await self._s.admission.run(identity.user, self._s.blocks.read, space, block, first, last)
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{block}"', "Cache-Control": _BLOCK_CACHE_CONTROL}
        if not ranged or extent.whole:
            return Response(extent.data, headers=headers, media_type="application/octet-stream")
        end = extent.start + len(extent.data) - 1
        headers["Content-Range"] = f"bytes {extent.start}-{end}/{extent.size}"
        return Response(extent.data, status_code=206, headers=headers, media_type="application/octet-stream")

    async def _json_object(self, request: Request, identity: Identity) -> dict[str, Any]:
        """An authenticated call's JSON body; a big one is parsed off the event loop."""
        body = await _read_json_body(request, JSON_BODY_MAX, self._body_timeout)
        if len(body) <= _PARSE_ON_LOOP_MAX:
            return parse_json_object(body)
        return await self._s.admission.run(identity.user, parse_json_object, body)

    async def _identity(self, request: Request) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("this call needs an 'Authorization: Bearer TOKEN' header")
        return await self._token_identity(token)

    async def _token_identity(self, token: str) -> Identity:
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
        return await self._s.admission.anonymous(accounts.authenticate, token)

    async def _recheck(self, token: str) -> None:
        try:
            await self._s.admission.anonymous(self._s.accounts.recheck, token)
        except Unauthorized:
            log.info("a token was refused on its recheck (revoked): its next request is refused")
        except Exception:  # noqa: BLE001 - forgotten: the next request asks the database itself
            log.warning("could not recheck a token; its next request asks the database", exc_info=True)

    async def _store_access(self, request: Request) -> tuple[Identity, str, Access]:
        """The caller's identity, the store of the URL and how the caller may use it (owner or member)."""
        identity = await self._identity(request)
        store = request.path_params["store"]
        if store == identity.store:
            return identity, store, Access(identity.user_id, identity.user, member=False, read_only=False)
        access = await self._s.admission.run(identity.user, self._s.shares.access, identity.user_id, store)
        return identity, store, access

    async def _block_space(self, request: Request, identity: Identity, *, write: bool) -> tuple[str, str | None]:
        """Whose block folder a block call uses, and the shared folder it goes through (None: the caller's own).

        ``?store=`` names a shared folder the caller is a member of: its blocks
        lie in the owner's folder, reached only as shares.py allows.
        """
        store = request.query_params.get("store")
        if store is None or store == identity.store:
            return identity.user, None
        access = await self._s.admission.run(identity.user, self._s.shares.access, identity.user_id, store)
        if not access.member:
            return identity.user, None
        if write and access.read_only:
            raise ReadOnly(f"the shared folder {access.folder!r} of {access.owner} is read-only for user {identity.user}")
        return access.owner, store


def _encode_changes(changes: Changes | ChangeRows, shares: int | None) -> bytes:
    """A `Changes` page as JSON, the way `JSONResponse` renders, with the caller's *shares* stamp if given."""
    wire = replace(changes, shares=shares).to_wire()
    return json.dumps(wire, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


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


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refusing (413) more than *limit* bytes without reading them all."""
    return b"".join(await _read_pieces(request, limit, timeout))


async def _read_pieces(request: Request, limit: int, timeout: float) -> list[bytes]:
    """The request body in the pieces it arrived in.

    Refuses (413) more than *limit* bytes, before reading them if the length is
    declared, and (408) a body of which nothing arrives for *timeout* seconds:
    a connection that trickles a body must not hold its memory and file forever.
    """
    declared = request.headers.get("content-length", "")
    if _DECIMAL_RE.match(declared) is None and declared:
        raise InvalidRequest("Content-Length must be a number of bytes")
    if declared and int(declared) > limit:
        raise TooLarge(f"the body has {declared} bytes, this call takes at most {limit}")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestTimeout(f"nothing of the body arrived for {timeout:g} s") from None
        except ClientDisconnect:
            # The caller's doing, not a fault here: answered (to no one) and logged as a 400.
            raise InvalidRequest("the connection closed before the whole body arrived") from None
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over {limit} bytes, this call takes at most {limit}")
        chunks.append(chunk)
    request.scope[_BODY_READ] = True
    return chunks


async def _read_json_body(request: Request, limit: int, timeout: float) -> bytes:
    """A JSON call's body, refusing any that does not say it is JSON (`require_json_type`)."""
    require_json_type(request.headers.get("content-type", ""))
    return await _read_body(request, limit, timeout)


def _address(request: Request) -> str:
    """The caller's address (a reverse proxy's ``X-Forwarded-For`` where uvicorn trusts it)."""
    return request.client.host if request.client else "unknown"


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not _DECIMAL_RE.match(raw):
        raise InvalidRequest(f"{name} must be a non-negative integer of at most {_DIGITS_MAX} digits")
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
    elif isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if _body_unread(request):
        # Kept alive, the connection would go on reading (and discarding) the
        # rest: four senders of 16 MiB bodies kept half a core busy that way.
        headers["Connection"] = "close"
    # A full quota is the user's state, not the server's fault: worth a line, not an ERROR.
    level = logging.INFO if isinstance(exc, QuotaExceeded) else logging.ERROR if exc.status >= 500 else logging.DEBUG
    log.log(level, "%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return JSONResponse(exc.to_wire(), status_code=exc.status, headers=headers)


def _body_unread(request: Request) -> bool:
    """Whether the request has a body that was refused before all of it arrived."""
    if request.scope.get(_BODY_READ):
        return False
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


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
