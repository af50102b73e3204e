"""An ASGI middleware that refuses requests naming a host the server does not answer to.

DNS rebinding: a web page on ``evil.example`` points its own name at the
server's address (often 127.0.0.1 or a LAN address), and the visitor's browser,
believing it talks to ``evil.example``, sends the page's requests to WebSync.
Those requests carry ``Host: evil.example``; refusing every host name the
operator did not list stops them.  Starlette's TrustedHostMiddleware does the
same but cuts ``[::1]:8080`` at the first colon, so IPv6 hosts never match.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HostCheck"]

log = logging.getLogger(__name__)


class HostCheck:
    """Answers 400 to an HTTP request whose ``Host`` is not allowed (``*``: any)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self._app = app
        self._any = "*" in allowed
        self._allowed = frozenset(name.lower().strip("[]") for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._any or scope["type"] != "http" or _host(scope) in self._allowed:
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": "invalid", "message": "this server does not answer to that host name"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _host(scope: Scope) -> str:
    """The host name of the request's ``Host`` header, without port or IPv6 brackets."""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1").lower()
            if host.startswith("["):
                return host[1 : host.find("]")]
            return host.rpartition(":")[0] if ":" in host else host
    return ""
