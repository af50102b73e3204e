"""uvicorn's HTTP/1.1 connection with a deadline for each request's headers.

uvicorn closes a kept-alive connection that stays idle, but not one that sends
half a request and then nothing: 250 such connections stayed open for good
(open files 25 -> 317), and about 1,000 would have used up a default file limit
and locked everyone out.  Here every connection must deliver the complete
headers of each request within `header_timeout` seconds of connecting or of
that request's first byte, or it is closed.  A body's pace is the app's to
bound (``app.py`` reads bodies with a deadline per piece).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["DeadlineProtocol"]

log = logging.getLogger(__name__)


class DeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose request headers take too long."""

    #: Set by `runner.serve` before the server starts (uvicorn builds protocols itself).
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # a kept-alive connection's next request
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.debug("closed a connection from %s: no complete request headers in %s s", self.client, self.header_timeout)
            self.transport.close()
