"""The errors the WebSync server raises on purpose, and the HTTP answer of each.

Every layer below the HTTP boundary (store, journal, blocks, accounts) raises one
of these; ``app.py`` turns them into ``{"error": CODE, "message": ...}`` answers in
exactly one place, and the CLI turns them into one sentence and an exit code.
Anything else that escapes a handler is a bug and answers 500.

::

    ServerError                      status, code, message
    ├── InvalidRequest               400 invalid
    │   └── ProtocolMismatch         400 protocol: a client of another protocol version
    ├── Unauthorized                 401 unauthorized
    ├── Forbidden                    403 forbidden
    │   └── ReadOnly                 403 read_only (a read-only member of a shared folder)
    ├── NotFound                     404 not_found
    ├── RequestTimeout               408 request_timeout
    ├── Conflict                     409 conflict
    │   ├── CommitConflict           carries a protocol.Conflict (index, reason, node)
    │   └── UserExists               ``user add`` of a name that is taken
    ├── TooLarge                     413 too_large
    ├── UnsupportedMediaType         415 unsupported_media_type
    ├── RangeNotSatisfiable          416 range_not_satisfiable
    ├── TooManyRequests              429 too_many_requests (carries retry_after seconds)
    ├── BlockStorageUnavailable      503 unavailable: the object store can't be reached
    ├── InsufficientStorage          507 insufficient_storage
    │   └── QuotaExceeded            507 quota_exceeded: the user's quota (bytes or nodes) is used up
    └── DatabaseError                500 internal: the database can't be used
"""

from __future__ import annotations

from typing import Any

from .protocol import Conflict as ConflictModel

__all__ = [
    "BlockStorageUnavailable",
    "CommitConflict",
    "Conflict",
    "DatabaseError",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "NotFound",
    "ProtocolMismatch",
    "QuotaExceeded",
    "ReadOnly",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "ServerError",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "UserExists",
]


class ServerError(Exception):
    """Base of every error the server raises on purpose; knows its HTTP answer."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of the HTTP answer."""
        return {"error": self.code, "message": self.message}


class InvalidRequest(ServerError):
    """Malformed JSON, a bad id, name, hash or field: the client has a bug."""

    status = 400
    code = "invalid"


class ProtocolMismatch(InvalidRequest):
    """A call under another protocol version's prefix (``/v2/...``): says which versions differ."""

    code = "protocol"


class Unauthorized(ServerError):
    """A missing, unknown or revoked token, or a wrong user or password."""

    status = 401
    code = "unauthorized"


class Forbidden(ServerError):
    """The caller is authenticated but the store belongs to someone else."""

    status = 403
    code = "forbidden"


class ReadOnly(Forbidden):
    """A change to a shared folder the caller may only read."""

    code = "read_only"


class NotFound(ServerError):
    """An unknown store, node or block."""

    status = 404
    code = "not_found"


class RequestTimeout(ServerError):
    """A request body that stopped arriving (nothing for the body timeout)."""

    status = 408
    code = "request_timeout"


class Conflict(ServerError):
    """The request contradicts the current state on the server."""

    status = 409
    code = "conflict"


class CommitConflict(Conflict):
    """A commit precondition failed; nothing of the batch was applied."""

    def __init__(self, conflict: ConflictModel) -> None:
        super().__init__(conflict.message or f"op {conflict.index}: {conflict.reason}")
        self.conflict = conflict

    def to_wire(self) -> dict[str, Any]:
        return self.conflict.to_wire()


class UserExists(Conflict):
    """A user of that name already exists."""


class TooLarge(ServerError):
    """A body over the size the endpoint takes (4 MiB for a block)."""

    status = 413
    code = "too_large"


class UnsupportedMediaType(ServerError):
    """A JSON call whose body does not say it is JSON (a browser's form post, say)."""

    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ServerError):
    """Too many tries (wrong passwords) or too much at once; try again after *retry_after* seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RangeNotSatisfiable(ServerError):
    """A ``Range`` header that starts beyond the end of the block."""

    status = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class BlockStorageUnavailable(ServerError):
    """The object store holding the blocks did not answer or refused; try again later."""

    status = 503
    code = "unavailable"


class InsufficientStorage(ServerError):
    """The server's disk is full; nothing was stored."""

    status = 507
    code = "insufficient_storage"


class QuotaExceeded(InsufficientStorage):
    """The change would take the user past their quota (``websync-server user set``); nothing was stored."""

    code = "quota_exceeded"


class DatabaseError(ServerError):
    """The metadata database can't be opened or has a schema this server doesn't know."""
