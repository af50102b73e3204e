"""One way in by password, under every login limit, for the API and the web page alike.

A password change checks the current password the same way (`guarded_check`):
a stolen token is no way around the limits on guessing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from ._exceptions import TooManyRequests, Unauthorized
from .accounts import Login
from .guesses import FIRST_WAIT_S
from .services import Services

log = logging.getLogger(__name__)

#: Seconds a login refused for too many tries is held before the answer: a quarter of its wait, within these.
_REFUSAL_MIN_S = 1.0
_REFUSAL_DELAY_S = 2.0
T = TypeVar("T")


@asynccontextmanager
async def login_gate(services: Services, address: str) -> AsyncIterator[None]:
    """Where a login from *address* is answered: refused before its body is read if the address must wait.

    Every refusal for too many tries, here or in `guarded_check`, is held back
    a while: a refusal costs us microseconds and a guesser nothing, so a flood
    of them took the event loop from everyone (3.6 s commits).  Held back, it
    costs us a sleeping coroutine and the guesser a connection per try (a
    quarter of its wait, 1 to 2 s: the answer still says to wait).  The address's bound
    on logins at once (guesses.py) bounds the connections held so.
    """
    if not services.guesses.arrive(address):
        # Not held: holding is what this bound bounds.
        raise TooManyRequests("too many logins from this address at once; try again in a few seconds",
                              retry_after=FIRST_WAIT_S)  # fmt: skip
    try:
        services.guesses.check_address(address)
        yield
    except TooManyRequests as exc:
        await _hold(exc)
        raise
    finally:
        services.guesses.leave(address)


async def _hold(refusal: TooManyRequests) -> None:
    # At least a second: "busy" refusals ask to wait under a second, and 40
    # connections held an eighth of a second each asked 300 times a second.
    await asyncio.sleep(min(max(refusal.retry_after / 4, _REFUSAL_MIN_S), _REFUSAL_DELAY_S))


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
    """``check(user, *args)``, which checks *user*'s password, under every login limit.

    *known_device*: the call carries a live token of *user*'s (admission.py
    gives such checks a thread of their own).
    """
    known = services.guesses.known(user, address, known_device=known_device)
    services.guesses.check(user, address, known_device=known)
    try:
        result = await services.admission.password(check, user, *args, address=address, owner=known_device)
    except Unauthorized:
        services.guesses.failed(user, address)
        log.warning("failed login as user %r from %s", user, address)
        raise
    services.guesses.succeeded(user, address, known=known)
    return result
