"""The CLI as people use it inside the mount: paths as they mean them, the trash, exit codes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually
from tests.proxy import Proxy

pytestmark = pytest.mark.mount


def in_trash(m: Machine, path: str) -> bool:
    return any(i["path"] == path for i in json.loads(m.cli("trash", "--json").stdout)["trash"])


def test_restore_inside_the_mount_takes_relative_and_store_paths(a: Machine) -> None:
    a.path("ed").mkdir()
    for name in ("rapid.txt", "slow.txt"):
        a.path("ed", name).write_text(f"{name}\n")
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="sent")
    a.path("ed", "rapid.txt").unlink()
    a.path("ed", "slow.txt").unlink()
    eventually(lambda: in_trash(a, "ed/rapid.txt") and in_trash(a, "ed/slow.txt"), what="both in the trash")

    inside = a.path("ed")
    a.cli("restore", "ed/rapid.txt", cwd=inside)  # a store path, typed in folder ed
    a.cli("restore", "slow.txt", cwd=inside)  # relative to folder ed
    assert a.path("ed", "rapid.txt").read_text() == "rapid.txt\n"
    assert a.path("ed", "slow.txt").read_text() == "slow.txt\n"

    missing = a.cli("restore", "ed/never.txt", cwd=inside, check=False)
    assert missing.returncode == 2
    assert "ed/ed/never.txt (from the current folder)" in missing.stderr
    assert "ed/never.txt (as a path in the store)" in missing.stderr
    assert len(json.loads(a.cli("history", "rapid.txt", "--json", cwd=inside).stdout)["versions"]) == 1


def test_a_trashed_file_whose_name_is_taken_comes_back_under_another_name(a: Machine) -> None:
    a.path("plan.txt").write_text("the old plan\n")
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="sent")
    a.path("plan.txt").unlink()
    eventually(lambda: in_trash(a, "plan.txt"), what="in the trash")
    a.path("plan.txt").write_text("a new plan\n")

    taken = a.cli("restore", "plan.txt", check=False)
    assert taken.returncode == 2 and "--as" in taken.stderr, taken.stderr
    out = a.cli("restore", "plan.txt", "--as", "plan (old).txt").stdout
    assert "as plan (old).txt" in out
    eventually(lambda: a.path("plan (old).txt").read_text() == "the old plan\n", what="restored beside")
    assert a.path("plan.txt").read_text() == "a new plan\n"


def test_unmount_while_offline_says_how_many_changes_stay_queued(
    new_machine: Callable[..., Machine], proxy: Proxy
) -> None:
    a = new_machine("A", url=proxy.url)
    proxy.online = False
    a.path("one.txt").write_text("1\n")
    a.path("two.txt").write_text("2\n")
    out = a.cli("unmount", str(a.mnt)).stdout
    assert re.search(r"\b2 change\(s\).*stay queued", out), out
    proxy.online = True
    a.mount()
    eventually(lambda: json.loads(a.cli("status", "--json").stdout)["pending"] == 0, what="sent after mounting")


def test_exit_codes_agree_with_the_guide(new_machine: Callable[..., Machine], account: tuple[str, str]) -> None:
    a = new_machine("A", mount=False)
    wrong = a.cli("login", a.server_url, "--user", account[0], "--password-stdin", input="wrong\n", check=False)
    assert wrong.returncode == 5 and "wrong user name or password" in wrong.stderr
    version = a.cli("--version")
    assert re.fullmatch(r"websync \d+\.\d+\.\d+\S*\n", version.stdout)
    assert a.cli("unmount", str(a.mnt), check=False).returncode == 2
