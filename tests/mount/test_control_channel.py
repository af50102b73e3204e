"""The real client with the control channel Windows uses: loopback TCP with a token.

``WEBSYNC_CONTROL=tcp`` makes the mount (and the synced folder) listen on
127.0.0.1 and write the port and token to ``STATE/control.tcp``, as on
Windows; the CLI commands of these tests read it the same way.  Everything
else is real: the server process, the kernel mount, the synced folder.  What
has not run is Windows itself.  `websync unmount` asks the client to unmount
itself over this channel (on Linux too: every unmount in the suite goes that
way over the Unix socket).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import Machine, control_raw, eventually

pytestmark = pytest.mark.mount


@pytest.fixture(autouse=True)
def tcp_control(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSYNC_CONTROL", "tcp")


def cli_json(machine: Machine, *args: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(machine.cli(*args, "--json").stdout))


def _ask(port: int, token: str, op: str) -> dict[str, object]:
    """One request sent by hand, as another local user could: *token* is whatever they guessed."""
    return control_raw(port, token.encode() + b"\n" + json.dumps({"op": op, "args": {}}).encode() + b"\n")


def test_status_pin_cache_and_unmount_go_over_tcp_and_a_wrong_token_is_refused(a: Machine) -> None:
    state = a.home / "state"
    published = json.loads((state / "control.tcp").read_text())
    assert not (state / "control.sock").exists()
    assert (state / "control.tcp").stat().st_mode & 0o777 == 0o600
    a.path("docs").mkdir()
    a.path("docs", "x.txt").write_text("x")
    eventually(lambda: cli_json(a, "status")["pending"] == 0, what="the upload")
    assert cli_json(a, "pin", "docs")["pins"][0]["path"] == "docs"
    assert cli_json(a, "status", str(a.path("docs", "x.txt")))["files"][0]["state"] == "pinned"
    assert cli_json(a, "cache")["pins"] == 1
    assert cli_json(a, "status", "--check")["check"]["differences"] == []
    # Another local user can reach the port but not the token: refused, and the mount goes on.
    for guess in ("", "0" * 64, published["token"][:-1] + "x"):
        assert _ask(published["port"], guess, "stop") == {
            "ok": False, "error": "refused: the control token is wrong", "exit_code": 4}
    assert os.path.ismount(a.mnt) and a.path("docs", "x.txt").read_text() == "x"
    assert "refused a control request without this client's token" in a.log()
    assert _ask(published["port"], published["token"], "hello")["ok"] is True
    pid = a.pid()
    out = a.cli("unmount", str(a.mnt)).stdout
    assert f"unmounted {a.mnt}" in out
    a.mounted_pid = None
    assert not os.path.ismount(a.mnt)
    status = cli_json(a, "status")
    assert status["mounted"] is False and status["pid"] is None and pid is not None
    assert not (state / "control.tcp").exists()


def test_unmount_names_the_mount_point_it_was_not_given(a: Machine, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    refused = a.cli("unmount", str(other), check=False)
    assert refused.returncode == 2 and f"{other} is not mounted" in refused.stderr, refused.stderr
    assert os.path.ismount(a.mnt)


def test_a_synced_folder_stops_over_tcp(new_machine: Callable[..., Machine], tmp_path: Path) -> None:
    b = new_machine("B", mount=False)
    folder = tmp_path / "B" / "Sync"
    b.sync(folder)
    assert (b.home / "state" / "control.tcp").exists()
    (folder / "notes.txt").write_text("one")
    eventually(lambda: cli_json(b, "status")["pending"] == 0 and cli_json(b, "status", "--check"),
               what="the upload")
    refused = b.cli("unmount", str(folder), check=False)
    assert refused.returncode == 2 and "not mounted" in refused.stderr, refused.stderr
    out = b.cli("sync", "--stop", str(folder)).stdout
    assert f"stopped syncing {folder}" in out
    b.mounted_pid = None
    assert cli_json(b, "status")["pid"] is None
    assert not (b.home / "state" / "control.tcp").exists()


def test_sigterm_takes_the_mount_away_instead_of_leaving_a_dead_mount_point(a: Machine) -> None:
    """What launchd and Task Scheduler send to stop the client: no fusermount3 runs after it on a Mac."""
    a.path("kept.txt").write_text("kept\n")
    pid = a.pid()
    assert pid
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: a.pid() is None, what="the mount process to end")
    a.mounted_pid = None
    assert not os.path.ismount(a.mnt)  # a dead mount would still be one ("Transport endpoint is not connected")
    a.mount()
    assert a.path("kept.txt").read_text() == "kept\n"


def test_unmount_with_a_file_open_is_refused_and_the_mount_goes_on(a: Machine) -> None:
    a.path("open.txt").write_text("open\n")
    with open(a.path("open.txt")) as held:
        refused = a.cli("unmount", str(a.mnt), check=False)
        assert refused.returncode == 1 and "close the files open there" in refused.stderr, refused.stderr
        assert held.read() == "open\n"
    assert os.path.ismount(a.mnt) and a.path("open.txt").read_text() == "open\n"
    a.unmount()
    assert not os.path.ismount(a.mnt)
