"""A server stopped for a while and started again: every machine notices within a few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually
from tests.faults.conftest import Site, drained, status
from websync_fs.backoff import CAP

pytestmark = pytest.mark.mount

#: Long enough for an unbounded doubling back-off (0.25 s, 0.5 s, ... 16 s) to be far past CAP.
DOWN = 5 * CAP


def test_machines_notice_a_restarted_server_within_their_bounded_backoff(
    own_site: Site, make_machine: Callable[..., Machine]
) -> None:
    a = make_machine("A", own_site)
    b = make_machine("B", own_site)
    a.path("before.txt").write_text("before\n")
    eventually(lambda: b.path("before.txt").exists(), what="before.txt on B")

    down = time.monotonic()
    own_site.stop()
    a.path("while-down.txt").write_text("written while the server was down\n")
    eventually(lambda: not status(a)["online"] and not status(b)["online"], what="both offline")
    time.sleep(max(0.0, DOWN - (time.monotonic() - down)))
    own_site.start()
    back = time.monotonic()
    outage = back - down

    eventually(lambda: b.path("while-down.txt").exists(), timeout=60, what="the change made offline on B")
    noticed = time.monotonic() - back
    # Within the bounded back-off of both machines (A's upload, then B's poll), however long the outage.
    assert noticed / outage < 0.4, f"noticed {noticed:.1f} s after an outage of {outage:.1f} s"
    assert drained(a)["online"] and status(b)["online"]
