"""`websync service install/remove`: the systemd user unit that starts a mount or synced folder at login.

No user systemd runs in the test machine (no session bus), so the unit is
checked with `systemd-analyze verify` (systemd's own parser, with the
executables it names) and the command's fallback advice is checked; starting
it under a real user manager is left to a machine that has one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.clients import BIN, Machine


def _websync(machine: Machine, config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
    return subprocess.run([str(BIN / "websync"), "--home", str(machine.home), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_installed_unit_is_valid_and_runs_the_mount_in_the_foreground(
    new_machine: Callable[..., Machine], tmp_path: Path
) -> None:
    machine = new_machine("A", mount=False)
    place = tmp_path / "My WebSync"
    done = _websync(machine, tmp_path / "config", "service", "install", "--mount", str(place))
    assert done.returncode == 0, done.stderr
    units = list((tmp_path / "config" / "systemd" / "user").glob("websync-mount-*.service"))
    assert len(units) == 1
    text = units[0].read_text()
    assert f"--home {machine.home} mount --foreground '{place}'" in text
    assert "Restart=on-failure" in text and "After=network-online.target" in text and "TimeoutStopSec=30" in text
    assert text.split("ExecStart=")[1].startswith(sys.executable)
    verify = subprocess.run(["systemd-analyze", "verify", str(units[0])], capture_output=True, text=True, timeout=60)
    problems = [line for line in verify.stderr.splitlines() if units[0].name in line]
    assert verify.returncode == 0 and not problems, verify.stderr
    removed = _websync(machine, tmp_path / "config", "service", "remove", "--mount", str(place))
    assert removed.returncode == 0, removed.stderr
    assert not units[0].exists()


def test_install_needs_a_login_and_one_place(new_machine: Callable[..., Machine], tmp_path: Path) -> None:
    machine = new_machine("A", mount=False)
    both = _websync(machine, tmp_path, "service", "install", "--mount", str(tmp_path / "m"), "--folder",
                    str(tmp_path / "f"))
    assert both.returncode == 2 and "--mount DIR or --folder DIR" in both.stderr
    stranger = Machine("stranger", tmp_path, machine.server_url)
    unknown = _websync(stranger, tmp_path, "service", "install", "--mount", str(tmp_path / "m"))
    assert unknown.returncode == 2 and "login" in unknown.stderr
