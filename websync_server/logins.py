"""One way in by password, under every login limit, for the API and the web page alike.

A password change checks the current password the same way (`guarded_check`):
a stolen token is no way around the limits on guessing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ._exceptions import TooManyRequests, Unauthorized
from .accounts import Login
from .services import Services

log = logging.getLogger(__name__)

#: Seconds a login refused for too many guesses is held before the answer.
_REFUSAL_DELAY_S = 2.0
T = TypeVar("T")


async def guarded_login(
    services: Services, check: Callable[[str, str, Any], Login], user: str, password: str, device: Any, *,
    address: str, known_device: bool,
) -> Login:
    """A password check under every login limit: guesses slowed, checks bounded, failures logged.

    Both the API's login and the web page's go through here, so a browser is
    no way around the limits (docs/operations.md).
    """
    login = await guarded_check(services, check, user, password, device, address=address, known_device=known_device)
    log.info("user %s logged in as device %r from %s", login.identity.user, login.identity.device, address)
    return login


async def guarded_check(
    services: Services, check: Callable[..., T], user: str, *args: Any, address: str, known_device: bool,
) -> T:
    """``check(user, *args)``, which checks *user*'s password, under every login limit."""
    known = services.guesses.known(user, address, known_device=known_device)
    try:
        services.guesses.check(user, address, known_device=known)
    except TooManyRequests as exc:
        # A refusal costs us microseconds and a guesser nothing, so a flood
        # of them took the event loop from everyone (3.6 s commits): each
        # one is held back a while, costing us a sleeping coroutine and
        # the guesser a connection per try (a quarter of its wait: the
        # answer still says to wait).
        await asyncio.sleep(min(exc.retry_after / 4, _REFUSAL_DELAY_S))
        raise
    try:
        result = await services.admission.password(check, user, *args)
    except Unauthorized:
        services.guesses.failed(user, address)
        log.warning("failed login as user %r from %s", user, address)
        raise
    services.guesses.succeeded(user, address, known=known)
    return result
