"""Device names: unique among a user's devices, and a new login counts in the running mount."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually

pytestmark = pytest.mark.mount


def relogin(m: Machine, account: tuple[str, str], device: str) -> str:
    return m.cli("login", m.server_url, "--user", account[0], "--device", device, "--password-stdin",
                 input=account[1] + "\n").stdout


def device_of(m: Machine) -> str:
    return str(json.loads(m.cli("status", "--json").stdout)["device"])


def newest_device(m: Machine, path: str) -> str:
    versions = json.loads(m.cli("history", path, "--json").stdout)["versions"]
    return str(versions[-1]["device"])


def test_two_machines_asking_for_one_name_are_told_apart(
    new_machine: Callable[..., Machine], account: tuple[str, str]
) -> None:
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    relogin(a, account, "vm")
    out = relogin(b, account, "vm")
    assert "this one is vm-2" in out
    assert (device_of(a), device_of(b)) == ("vm", "vm-2")
    relogin(a, account, "vm")  # the same machine again keeps its name
    assert device_of(a) == "vm"

    a.mount()
    b.mount()
    a.path("shared.txt").write_text("from a\n")
    eventually(lambda: b.path("shared.txt").read_text() == "from a\n", what="on B")
    assert newest_device(a, "shared.txt") == "vm"
    b.path("shared.txt").write_text("from b\n")
    eventually(lambda: newest_device(a, "shared.txt") == "vm-2", what="B's version, by its own name")


def test_a_new_login_takes_effect_in_the_running_mount(a: Machine, account: tuple[str, str]) -> None:
    a.path("notes.txt").write_text("one\n")
    eventually(lambda: newest_device(a, "notes.txt") == "A", what="the first version")
    relogin(a, account, "laptop")
    assert device_of(a) == "laptop"
    eventually(lambda: json.loads((a.home / "state" / "status.json").read_text())["device"] == "laptop",
               what="the mount using the new login")
    a.path("notes.txt").write_text("two\n")
    eventually(lambda: newest_device(a, "notes.txt") == "laptop", what="a version written as laptop")
