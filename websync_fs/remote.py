"""The client's view of the server: one method per HTTP call of docs/protocol.md.

This is the only module that knows httpx.  Transport failures become `Offline`,
HTTP error statuses become the matching `RemoteError`; nothing else escapes.
An answer that is not the server's (a redirect or a page from a captive portal
or a proxy, a body cut short) is `Offline` too: the server was not reached.
The transport is injectable so tests can route calls anywhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from websync_server.protocol import (
    API,
    FORMAT_COMPACT,
    BlockHash,
    ChangeRows,
    Changes,
    Conflict,
    NodeId,
    NodeState,
    Restore,
    Update,
)

from . import blockwire, tls
from .blockwire import BlockWire
from .errors import (
    BadRequest,
    CommitConflict,
    Forbidden,
    NotFound,
    Offline,
    OverQuota,
    ReadOnly,
    RemoteError,
    ServerFull,
    Unauthorized,
    WrongPassword,
)

log = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: Seconds without a byte of a block being read before the read fails (EIO/ENETUNREACH).
_BLOCK_READ_TIMEOUT = 10.0
T = TypeVar("T")
P = TypeVar("P", Changes, ChangeRows)


def _not_ours(resp: httpx.Response, why: object) -> Offline:
    return Offline(
        f"{resp.request.method} {resp.request.url.path} got an answer that is not the WebSync server's "
        f"({resp.status_code}: {why}); is a captive portal or a proxy in the way?"
    )


def _answer(resp: httpx.Response, parse: Callable[[Any], T]) -> T:
    """The parsed JSON body of a successful answer."""
    try:
        return parse(resp.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _not_ours(resp, f"{exc.__class__.__name__} {exc}") from exc


def _unreachable(server: str, exc: httpx.HTTPError) -> Offline:
    """`Offline` for a request that got no answer, saying why (a refused certificate by name)."""
    why = tls.certificate_problem(exc) or f"{exc.__class__.__name__} {exc}".strip()
    return Offline(f"cannot reach {server}: {why}")


def _raise_for(resp: httpx.Response) -> None:
    status = resp.status_code
    if 300 <= status < 400:
        raise _not_ours(resp, f"redirected to {resp.headers.get('location', '?')}")
    if status < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message") or resp.reason_phrase
    if status == 401:
        raise Unauthorized("the server refused this device's token; run 'websync login' again")
    if status == 409 and body.get("error") == "conflict":
        raise CommitConflict(_answer(resp, Conflict.from_wire))
    if status == 404:
        raise NotFound(message)
    if status == 429:
        raise RemoteError(f"the server asks to wait: {message}")
    if status == 507 and body.get("error") == "quota_exceeded":
        raise OverQuota(f"{message}; changes stay queued until there is room")
    if status == 507:
        raise ServerFull("the server's disk is full; changes stay queued")
    if status == 403 and body.get("error") == "read_only":
        raise ReadOnly(f"the server refused the request: {message}")
    if status == 403 and body.get("error") == "forbidden":
        raise Forbidden(f"the server refused the request: {message}")
    if status in (400, 403, 413):
        raise BadRequest(f"the server refused the request: {message}")
    if status >= 500:
        raise Offline(f"server error {status}: {message}")
    raise RemoteError(f"unexpected answer {status}: {message}")


async def login(
    server: str, user: str, password: str, device: str, transport: httpx.AsyncBaseTransport | None = None,
    ca_file: str = "", *, replaces: str | None = None,
) -> dict[str, Any]:
    """Trade a password for a device token (``POST /v1/login``); *replaces*: this machine's token so far."""
    body = {"user": user, "password": password, "device": device}
    if replaces:
        body["replaces"] = replaces
    verify = tls.verify(ca_file)
    async with httpx.AsyncClient(base_url=server, timeout=_TIMEOUT, transport=transport, verify=verify) as client:
        try:
            resp = await client.post(f"{API}/login", json=body)
        except httpx.HTTPError as exc:
            raise _unreachable(server, exc) from exc
    if resp.status_code == 401:
        raise WrongPassword("wrong user name or password")
    _raise_for(resp)
    return _answer(resp, dict)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Remote:
    """Authenticated calls to one store on one server.

    *shared*: the store is a shared folder, whose blocks lie with its owner:
    every block call names it (``?store=``, docs/protocol.md).
    """

    def __init__(
        self,
        server: str,
        token: str,
        store: str,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str = "",
        *,
        shared: bool = False,
    ) -> None:
        self.server = server
        self.store = store
        self._block_query = f"?store={store}" if shared else ""
        self._shared = shared
        #: The user's shares stamp the last changes answer carried (own store only; None: not yet, or an old server).
        self.shares_stamp: int | None = None
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
        auth = _auth(token)
        self._client = httpx.AsyncClient(
            base_url=server,
            headers=auth,
            timeout=_TIMEOUT,
            transport=transport,
            limits=limits,
            verify=tls.verify(ca_file),
        )
        # Block GETs carry almost every byte a machine reads: they skip httpx where they can.
        self._wire = BlockWire(server, auth) if transport is None and blockwire.usable_for(server) else None
        #: Called after every answer from the server, whatever its status: it is reachable.
        self.on_answer: Callable[[], None] = lambda: None

    def set_token(self, token: str) -> None:
        """Send *token* from the next request on (a new login while mounted)."""
        auth = _auth(token)
        self._client.headers.update(auth)
        if self._wire is not None:
            self._wire.set_headers(auth)

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._wire is not None:
            await self._wire.aclose()

    def _check(self, resp: httpx.Response) -> None:
        """Raise for an error answer; tell `on_answer` if the server itself answered.

        An answer that counts as ``Offline`` (a proxy's 502, a captive portal)
        does not: it must not end the back-off of a server that is still away.
        """
        try:
            _raise_for(resp)
        except Offline:
            raise
        except RemoteError:
            self.on_answer()
            raise
        self.on_answer()

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise _unreachable(self.server, exc) from exc
        self._check(resp)
        return resp

    async def whoami(self) -> dict[str, Any]:
        return _answer(await self._request("GET", f"{API}/whoami"), dict)

    async def change_password(self, old: str, new: str) -> None:
        """Replace this user's password; `Unauthorized` if *old* is wrong, `BadRequest` if *new* is weak."""
        try:
            await self._request("POST", f"{API}/password", json={"password": old, "new_password": new})
        except Unauthorized:
            raise Unauthorized("the current password is wrong (or this device was logged out)") from None

    async def logout(self) -> None:
        """End this device's token on the server."""
        await self._request("POST", f"{API}/logout", json={})

    async def devices(self) -> list[dict[str, Any]]:
        """The user's logged-in devices: id, name, created_ns, last_seen_ns, current."""
        return _answer(await self._request("GET", f"{API}/devices"), lambda body: list(body["devices"]))

    async def revoke_device(self, device_id: int) -> str:
        """Log one of the user's devices out; return its name."""
        resp = await self._request("POST", f"{API}/devices/{device_id}/revoke", json={})
        return _answer(resp, lambda body: str(body["name"]))

    async def shares(self) -> list[dict[str, Any]]:
        """The shared folders this user owns or is a member of: store, name, owner, read_only, members."""
        return _answer(await self._request("GET", f"{API}/shares"), lambda body: list(body["shares"]))

    async def share(self, name: str, user: str, read_only: bool) -> dict[str, Any]:
        """Share this user's folder *name* with *user* (made on first use); the share as listed."""
        body = {"name": name, "user": user, "read_only": read_only}
        return _answer(await self._request("POST", f"{API}/shares", json=body), dict)

    async def unshare(self, store: str, user: str) -> None:
        """Remove *user* from shared folder *store* (this user's own, or leave one)."""
        await self._request("POST", f"{API}/shares/{store}/members/{quote(user, safe='')}/remove", json={})

    async def changes(self, cursor: int, wait: float = 0, limit: int = 10000) -> Changes:
        return await self._changes(cursor, wait, limit, lambda body: ChangeRows.from_wire(body).to_changes())

    async def change_rows(self, cursor: int, wait: float = 0, limit: int = 10000) -> ChangeRows:
        """A page of changes as the compact arrays (a first listing loads them as they are)."""
        return await self._changes(cursor, wait, limit, ChangeRows.from_wire)

    async def _changes(self, cursor: int, wait: float, limit: int, parse: Callable[[Any], P]) -> P:
        """A page of changes; a long poll of the user's own store also ends when `shares_stamp` is not theirs now."""
        # A server that does not know format= answers with objects; ChangeRows reads both.
        params: dict[str, str | int | float] = {"cursor": cursor, "wait": wait, "limit": limit,
                                                "format": FORMAT_COMPACT}  # fmt: skip
        if self.shares_stamp is not None and not self._shared:
            params["shares"] = self.shares_stamp
        timeout = httpx.Timeout(wait + 30.0, connect=5.0)
        resp = await self._request("GET", f"{API}/stores/{self.store}/changes", params=params, timeout=timeout)
        page = _answer(resp, parse)
        if page.shares is not None and not self._shared:
            self.shares_stamp = page.shares
        return page

    async def node_state(self, node: NodeId) -> NodeState:
        resp = await self._request("GET", f"{API}/stores/{self.store}/nodes/{node}")
        return _answer(resp, NodeState.from_wire)

    async def missing(self, hashes: list[BlockHash]) -> list[BlockHash]:
        if not hashes:
            return []
        resp = await self._request("POST", f"{API}/blocks/missing{self._block_query}", json={"hashes": hashes})
        return _answer(resp, lambda body: [BlockHash(h) for h in body["missing"]])

    async def put_block(self, h: BlockHash, data: bytes) -> None:
        await self._request("PUT", f"{API}/blocks/{h}{self._block_query}", content=data)

    async def put_blocks(self, frames: list[tuple[BlockHash, bytes]]) -> None:
        """Upload several blocks in one request (``POST /v1/blocks``)."""
        body = b"".join(h.encode() + len(d).to_bytes(4, "big") + d for h, d in frames)
        await self._request("POST", f"{API}/blocks{self._block_query}", content=body)

    async def _get_block(
        self, h: BlockHash, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, bytes | bytearray]:
        """The answer to a block GET and its body."""
        # A program is waiting in read(): a server that stops sending for this long is
        # treated as gone (the bytes of a live one flow at once), not waited on for 30 s.
        url = f"{API}/blocks/{h}{self._block_query}"
        if self._wire is not None:
            try:
                resp, body = await self._wire.get(url, headers=headers, timeout=_BLOCK_READ_TIMEOUT)
            except blockwire.Unsupported as exc:
                log.info("block downloads go through httpx from now on: %s", exc)
                wire, self._wire = self._wire, None
                await wire.aclose()
            except httpx.HTTPError as exc:
                raise _unreachable(self.server, exc) from exc
            else:
                self._check(resp)
                return resp, body
        timeout = httpx.Timeout(_BLOCK_READ_TIMEOUT, connect=5.0)
        resp = await self._request("GET", url, timeout=timeout, headers=headers)
        return resp, resp.content

    async def get_block(self, h: BlockHash) -> bytes | bytearray:
        return (await self._get_block(h))[1]

    async def get_block_range(self, h: BlockHash, offset: int, length: int) -> tuple[bytes | bytearray, bool]:
        """Bytes *offset* to *offset* + *length* of block *h* (fewer at its end), and False.

        The server vouches for a range it serves (docs/protocol.md); one whose
        block does not match its hash comes whole instead, with True, for the
        caller to check.
        """
        resp, body = await self._get_block(h, {"Range": f"bytes={offset}-{offset + length - 1}"})
        if resp.status_code == 200:
            return body, True
        if resp.status_code != 206 or not resp.headers.get("content-range", "").startswith(f"bytes {offset}-"):
            raise _not_ours(resp, f"asked for bytes {offset}- and got {resp.headers.get('content-range')!r}")
        return body, False

    async def versions(self, node: NodeId) -> list[dict[str, Any]]:
        resp = await self._request("GET", f"{API}/stores/{self.store}/nodes/{node}/versions")
        return _answer(resp, lambda body: list(body["versions"]))

    async def trash(self) -> list[dict[str, Any]]:
        resp = await self._request("GET", f"{API}/stores/{self.store}/trash")
        return _answer(resp, lambda body: list(body["items"]))

    async def restore_version(self, node: NodeId, version: int) -> int:
        """Make *version* of *node* its newest version; return that version's number."""
        versions = await self.versions(node)
        chosen = [v for v in versions if v["version"] == version]
        if not chosen:
            raise NotFound(f"there is no version {version} (see 'websync history')")
        current = versions[-1]
        old = chosen[0]
        op = Update(id=node, base=current["seq"], size=old["size"], blocks=tuple(old["blocks"]),
                    mtime_ns=old["mtime_ns"])
        await self.commit(uuid.uuid4().hex, [op.to_wire()])
        return int(current["version"]) + 1

    async def undelete(self, node: NodeId, parent: NodeId, name: str) -> int:
        return await self.commit(uuid.uuid4().hex, [Restore(id=node, parent=parent, name=name).to_wire()])

    async def commit(self, batch: str, ops: list[dict[str, Any]]) -> int:
        resp = await self._request("POST", f"{API}/stores/{self.store}/commit", json={"batch": batch, "ops": ops})
        return _answer(resp, lambda body: int(body["seq"]))
