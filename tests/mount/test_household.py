"""A household's accounts through real machines: quotas seen on the machine, devices, logout, passwords."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.servers import ServerProcess, server_command

pytestmark = pytest.mark.mount

MB = 1024 * 1024


def _set_quota(server: ServerProcess, user: str, size: str, option: str = "--quota") -> None:
    subprocess.run(server_command("user", "set", user, option, size, "--data", str(server.data_dir)),
                   check=True, capture_output=True, timeout=60)  # fmt: skip


def _status(machine: Machine, *paths: str) -> dict[str, Any]:
    return json.loads(machine.cli("status", "--json", *paths).stdout)  # type: ignore[no-any-return]


def test_a_change_over_quota_waits_with_the_reason_shown_and_goes_once_there_is_room(
    server: ServerProcess, account: tuple[str, str], a: Machine, b: Machine
) -> None:
    user = account[0]
    _set_quota(server, user, "3M")
    small, big = os.urandom(MB), os.urandom(4 * MB)
    a.path("small.bin").write_bytes(small)
    eventually(lambda: read_bytes(b.path("small.bin")) == small, what="small.bin on B")
    a.path("big.bin").write_bytes(big)

    def refused() -> dict[str, Any] | None:
        info = _status(a, str(a.path("big.bin")))
        return info if "over their quota" in info["error"] else None

    info = eventually(refused, timeout=30, what="A to hear it is over quota")
    assert info["online"] and info["pending"] >= 1
    assert "changes stay queued until there is room" in info["error"]
    [state] = info["files"]
    assert state["state"] == "waiting-for-upload" and "over their quota" in state["held"], state
    text = a.cli("status", str(a.path("big.bin"))).stdout
    assert "waiting for upload (held back: user" in text and "over their quota" in text
    assert not b.path("big.bin").exists()
    assert read_bytes(a.path("big.bin")) == big  # the mount still has every byte

    _set_quota(server, user, "20M")
    eventually(lambda: _status(a)["pending"] == 0, timeout=90, what="A's queue to drain once there is room")
    eventually(lambda: read_bytes(b.path("big.bin")) == big, what="big.bin on B")


def test_a_file_past_the_node_bound_waits_while_a_delete_that_makes_room_goes_ahead(
    server: ServerProcess, account: tuple[str, str], a: Machine, b: Machine
) -> None:
    _set_quota(server, account[0], "3", option="--max-nodes")
    for name in ("one", "two", "three"):
        a.path(name).write_text(name)
    eventually(lambda: b.path("three").exists() and _status(a)["pending"] == 0, what="three files on B")
    a.path("four").write_text("four")

    def refused() -> dict[str, Any] | None:
        info = _status(a, str(a.path("four")))
        return info if "bound of 3 files and folders" in info["files"][0]["held"] else None

    eventually(refused, timeout=30, what="A to hear it is at its bound of files")
    a.path("one").unlink()  # makes room: goes ahead of the waiting file
    eventually(lambda: b.path("four").exists() and not b.path("one").exists(), timeout=90, what="four on B")
    assert b.path("four").read_text() == "four"
    eventually(lambda: _status(a)["pending"] == 0, what="A's queue to drain")


def test_devices_are_listed_and_revoked_and_a_machine_logs_out(
    new_machine: Callable[..., Machine], account: tuple[str, str]
) -> None:
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    listed = json.loads(a.cli("devices", "--json").stdout)
    assert [(d["name"], d["current"]) for d in listed] == [("A", True), ("B", False)]
    table = a.cli("devices").stdout
    assert "LAST SEEN" in table and "(this machine)" in table
    assert "logged out device B" in a.cli("devices", "revoke", "B").stdout
    refused = b.cli("devices", check=False)
    assert refused.returncode == 4 and "run 'websync login' again" in refused.stderr
    assert "logged out of" in b.cli("logout").stdout  # revoked already: the token here is deleted
    missing = a.cli("devices", "revoke", "B", check=False)
    assert missing.returncode != 0 and "no device named 'B'" in missing.stderr
    assert "logged out of" in a.cli("logout").stdout
    after = a.cli("devices", check=False)
    assert after.returncode != 0 and "not logged in" in after.stderr


def test_logout_waits_for_the_mount_to_end(a: Machine) -> None:
    refused = a.cli("logout", check=False)
    assert refused.returncode != 0 and "unmount" in refused.stderr
    a.unmount()
    a.cli("logout")


def test_passwd_changes_the_password_with_the_current_one(
    new_machine: Callable[..., Machine], account: tuple[str, str]
) -> None:
    user, password = account
    a = new_machine("A", mount=False)
    wrong = a.cli("passwd", "--password-stdin", input="not the password\nnew household secret\n", check=False)
    assert wrong.returncode != 0 and "current password is wrong" in wrong.stderr
    weak = a.cli("passwd", "--password-stdin", input=f"{password}\nshort\n", check=False)
    assert weak.returncode != 0 and "at least 8 characters" in weak.stderr
    assert "changed your password" in a.cli("passwd", "--password-stdin",
                                            input=f"{password}\nnew household secret\n").stdout  # fmt: skip
    b = Machine("B", a.home.parent.parent, a.server_url)
    try:
        b.login(user, "new household secret")
        assert len(json.loads(b.cli("devices", "--json").stdout)) == 2
    finally:
        b.cleanup()
