"""Whether a home is mounted is decided by the lock the running mount holds, never by a pid."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

import pytest

from tests.clients import Machine

pytestmark = pytest.mark.mount


def status(m: Machine) -> dict[str, object]:
    return dict(json.loads(m.cli("status", "--json").stdout))


def test_a_stale_pid_file_naming_a_live_process_does_not_block_mounting(new_machine: Callable[..., Machine]) -> None:
    a = new_machine("A", mount=False)
    (a.home / "state").mkdir(parents=True, exist_ok=True)
    (a.home / "state" / "mount.pid").write_text("1")  # left by a crash; pid 1 is alive
    assert status(a)["mounted"] is False
    a.mount()
    assert a.pid() not in (None, 1) and status(a)["pid"] == a.pid()
    a.path("after-crash.txt").write_text("works\n")
    a.unmount()
    assert status(a)["mounted"] is False


def test_a_mount_killed_a_moment_ago_does_not_block_the_next(a: Machine) -> None:
    a.path("before.txt").write_text("kept\n")
    killed = a.pid()
    a.kill(signal.SIGKILL)
    a.mount()  # at once: no "already mounted by process ..." while the killed one ends
    assert a.pid() != killed
    assert a.path("before.txt").read_text() == "kept\n"


def test_a_second_mount_of_one_home_is_refused_and_names_the_first(a: Machine) -> None:
    other = a.mnt.with_name("mnt2")
    other.mkdir()
    result = a.cli("mount", str(other), check=False)
    assert result.returncode == 2, result.stderr
    assert f"already mounted by process {a.pid()}" in result.stderr
    assert not os.path.ismount(other)
