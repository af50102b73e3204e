"""Errors of the WebSync client, one tree per layer.

::

    WebSyncError                 a user-facing problem: a title-free sentence for the CLI
    ├── ConfigError              no login yet, bad home directory, bad settings
    ├── RemoteError              talking to the server failed
    │   ├── Offline              no answer: connection refused, reset, timed out
    │   ├── Unauthorized         401: the device token is wrong or revoked
    │   │   └── WrongPassword    401 to a login: wrong user name or password
    │   ├── ServerFull           507: the server's disk is full
    │   │   └── OverQuota        507 quota_exceeded: the user's quota is used up; nothing was applied
    │   ├── NotFound             404
    │   ├── BadRequest           400: the server refused the request as invalid
    │   │   └── Forbidden        403: the store is not this user's (a shared folder no longer shared)
    │   │       └── ReadOnly     403 read_only: a change to a shared folder this user may only read
    │   └── CommitConflict       409: a commit precondition failed (carries the Conflict)
    └── FsError                  a filesystem operation fails with an errno

httpx exceptions become `RemoteError`s in `remote.py` only; `FsError` becomes
`FUSEError` in the FUSE adapter only; `WebSyncError` becomes a CLI message and exit
code in `cli.py` only.
"""

from __future__ import annotations

import errno
import os

from websync_server.protocol import Conflict


class WebSyncError(Exception):
    """Base of every error the client reports to a person."""

    exit_code = 1


class ConfigError(WebSyncError):
    exit_code = 2


class RemoteError(WebSyncError):
    exit_code = 3


class Offline(RemoteError):
    """The server did not answer; the request may be retried later."""


class Unauthorized(RemoteError):
    exit_code = 4


class WrongPassword(Unauthorized):
    """The server refused a login's user name or password (not a device's token)."""

    exit_code = 5


class ServerFull(RemoteError):
    pass


class OverQuota(ServerFull):
    """The user's quota is used up; the server applied nothing of the call (also of a commit sent again)."""


class NotFound(RemoteError):
    pass


class BadRequest(RemoteError):
    pass


class Forbidden(BadRequest):
    """403: the store is neither this user's nor shared with them (any more)."""


class ReadOnly(Forbidden):
    """403 read_only: a change to a shared folder this user may only read; nothing was stored."""


class CommitConflict(RemoteError):
    def __init__(self, conflict: Conflict) -> None:
        super().__init__(f"commit refused: op {conflict.index} {conflict.reason}: {conflict.message}")
        self.conflict = conflict


class FsError(WebSyncError):
    """A filesystem operation failed; ``errno`` is what a local disk would give."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


def enoent(what: str = "") -> FsError:
    return FsError(errno.ENOENT, what)
