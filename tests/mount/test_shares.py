"""Shared folders through the ``websync`` command on real machines of two users (nothing mounted)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.clients import Machine
from tests.servers import ServerProcess, add_user

pytestmark = pytest.mark.mount


def _shares(machine: Machine) -> list[dict[str, Any]]:
    return json.loads(machine.cli("shares", "--json").stdout)  # type: ignore[no-any-return]


def _other_user(server: ServerProcess, owner: str) -> tuple[str, str]:
    name, password = f"{owner}-kin", f"pw-{owner}-kin-long"
    add_user(server.data_dir, name, password)
    return name, password


def test_share_shares_and_unshare_from_the_command_line(
    server: ServerProcess, account: tuple[str, str], new_machine: Callable[..., Machine]
) -> None:
    owner = account[0]
    a = new_machine("A", mount=False)
    b = new_machine("B", mount=False)
    kin = _other_user(server, owner)
    b.login(*kin)
    out = a.cli("share", "Family", kin[0], "--read-only").stdout
    assert out == f"shared Family with {kin[0]} (read-only); members: {kin[0]} (read-only)\n"
    [mine] = _shares(a)
    [theirs] = _shares(b)
    assert mine == theirs | {"read_only": False}
    assert (theirs["name"], theirs["owner"], theirs["read_only"]) == ("Family", owner, True)
    assert "read-only" in b.cli("shares").stdout and owner in b.cli("shares").stdout
    a.cli("share", "Family", kin[0])  # read-write now
    assert _shares(b)[0]["read_only"] is False
    # Only the owner removes others; a member may leave.
    refused = b.cli("unshare", "Family", owner, check=False)
    assert refused.returncode == 3 and "only the folder's owner removes other members" in refused.stderr
    assert a.cli("unshare", "Family", kin[0]).stdout == f"Family is no longer shared with {kin[0]}\n"
    assert _shares(b) == [] and b.cli("shares").stdout == "no shared folders\n"
    assert [s["members"] for s in _shares(a)] == [[]]
    log = server.log()
    assert f"folder 'Family' ({mine['store']}) of user {owner} shared with user {kin[0]}, read-only" in log
    assert f"no longer shared with user {kin[0]}: removed by user {owner}" in log


def test_bad_share_commands_say_why(account: tuple[str, str], new_machine: Callable[..., Machine]) -> None:
    a = new_machine("A", mount=False)
    deep = a.cli("share", "Photos/2023", "someone", check=False)
    assert deep.returncode == 2 and "a shared folder lies at the top of the tree" in deep.stderr
    nobody = a.cli("share", "Family", "nobody-here", check=False)
    assert nobody.returncode == 3 and "there is no user named 'nobody-here'" in nobody.stderr
    myself = a.cli("share", "Family", account[0], check=False)
    assert myself.returncode == 3 and "its owner has it already" in myself.stderr
    missing = a.cli("unshare", "Family", "nobody-here", check=False)
    assert missing.returncode == 2 and "no shared folder is named 'Family'" in missing.stderr
    assert "Traceback" not in deep.stderr + nobody.stderr + myself.stderr + missing.stderr
