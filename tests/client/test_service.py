"""`websync service install/remove`: what starts a mount or synced folder at login, on each system.

No user systemd runs in the test machine (no session bus), so the unit is
checked with `systemd-analyze verify` (systemd's own parser, with the
executables it names) and the command's fallback advice is checked; starting
it under a real user manager is left to a machine that has one.  The launchd
agent (macOS) and the Task Scheduler task (Windows) are written here by
passing the platform, and checked by parsing them (plistlib, ElementTree);
neither has been loaded by launchd or schtasks.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import BIN, Machine
from websync_fs.service import service_file, unit_text

ROOT = Path(__file__).resolve().parents[2]


def _websync(machine: Machine, config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
    return subprocess.run([str(BIN / "websync"), "--home", str(machine.home), *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
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


@pytest.mark.timeout(120)
def test_install_needs_a_login_and_one_place(new_machine: Callable[..., Machine], tmp_path: Path) -> None:
    machine = new_machine("A", mount=False)
    both = _websync(machine, tmp_path, "service", "install", "--mount", str(tmp_path / "m"), "--folder",
                    str(tmp_path / "f"))
    assert both.returncode == 2 and "--mount DIR or --folder DIR" in both.stderr
    stranger = Machine("stranger", tmp_path, machine.server_url)
    unknown = _websync(stranger, tmp_path, "service", "install", "--mount", str(tmp_path / "m"))
    assert unknown.returncode == 2 and "login" in unknown.stderr


@pytest.mark.timeout(30)
def test_on_macos_a_launch_agent_restarts_a_failed_run_and_gives_a_clean_stop_time(tmp_path: Path) -> None:
    path, content = service_file("darwin", "mount", "/Users/me/My WebSync", "/Users/me/.ws", "/opt/ws/bin/python",
                                 user_home=tmp_path)
    assert path == tmp_path / "Library/LaunchAgents/org.websync.mount.Users-me-My-WebSync.plist"
    agent = plistlib.loads(content)
    assert agent["Label"] == path.stem
    assert agent["ProgramArguments"] == ["/opt/ws/bin/python", "-m", "websync_fs.cli", "--home", "/Users/me/.ws",
                                         "mount", "--foreground", "/Users/me/My WebSync"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["ExitTimeOut"] == 30
    assert agent["StandardErrorPath"].startswith(str(tmp_path / "Library/Logs/WebSync"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["mount", "sync"])
def test_the_launchd_templates_in_platform_macos_are_the_agents_the_command_writes(kind: str) -> None:
    template = (ROOT / "platform/macos" / f"org.websync.{kind}.plist").read_bytes()
    agent = plistlib.loads(template.replace(b"@PYTHON@", b"/p").replace(b"@PLACE@", b"/w").replace(b"@HOME@", b"/h"))
    _, written = service_file("darwin", kind, "/w", None, "/p", user_home=Path("/h"))
    expected = plistlib.loads(written)
    # The templates name the agent by its kind alone; the command adds the place.
    assert agent.pop("Label") == f"org.websync.{kind}" and expected.pop("Label") == f"org.websync.{kind}.w"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert agent.pop(key) == f"/h/Library/Logs/WebSync/org.websync.{kind}.log"
        assert expected.pop(key) == f"/h/Library/Logs/WebSync/org.websync.{kind}.w.log"
    assert agent == expected


@pytest.mark.timeout(30)
def test_on_windows_a_logon_task_runs_the_drive_letter_without_a_console(tmp_path: Path) -> None:
    path, content = service_file("win32", "mount", "X:", None, r"C:\Users\me\ws\Scripts\python.exe",
                                 user_home=tmp_path)
    assert path == tmp_path / "AppData/Local/WebSync/tasks/mount-X.xml"
    assert content[:2] in (b"\xff\xfe", b"\xfe\xff")  # UTF-16 with its byte-order mark, as schtasks reads it
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    task = ET.fromstring(content.decode("utf-16").split("?>", 1)[1])
    assert task.find("t:Triggers/t:LogonTrigger/t:Enabled", ns).text == "true"  # type: ignore[union-attr]
    assert task.find("t:Actions/t:Exec/t:Command", ns).text == r"C:\Users\me\ws\Scripts\pythonw.exe"  # type: ignore[union-attr]
    assert task.find("t:Actions/t:Exec/t:Arguments", ns).text == "-m websync_fs.cli mount --foreground X:"  # type: ignore[union-attr]
    assert task.find("t:Settings/t:RestartOnFailure/t:Count", ns) is not None
    assert task.find("t:Settings/t:ExecutionTimeLimit", ns).text == "PT0S"  # type: ignore[union-attr]
    assert task.find("t:RegistrationInfo/t:URI", ns).text == r"\WebSync\mount-X"  # type: ignore[union-attr]


@pytest.mark.timeout(30)
def test_on_linux_the_service_file_is_the_systemd_unit() -> None:
    path, content = service_file("linux", "sync", Path("/home/me/Docs"), None, "/usr/bin/python3")
    assert path.name == "websync-sync-home-me-Docs.service"
    assert content.decode() == unit_text("sync", Path("/home/me/Docs"), None, "/usr/bin/python3")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_install_and_remove_choose_the_platforms_service_manager(
    platform: str, new_machine: Callable[..., Machine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command on macOS and Windows, run here with the platform set: launchctl and schtasks are
    missing, so it writes the file and says how to register it."""
    from click.testing import CliRunner

    from websync_fs.cli import main

    machine = new_machine("A", mount=False)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    place = "X:" if platform == "win32" else str(tmp_path / "WebSync")
    runner = CliRunner()
    done = runner.invoke(main, ["--home", str(machine.home), "service", "install", "--mount", place])
    assert done.exit_code == 0, done.output
    written = sorted(p for p in tmp_path.rglob("*") if p.suffix in (".plist", ".xml"))
    assert len(written) == 1, written
    if platform == "darwin":
        assert written[0].parent == tmp_path / "Library/LaunchAgents"
        assert plistlib.loads(written[0].read_bytes())["ProgramArguments"][-1] == place
        assert "launchctl bootstrap" in done.output
    else:
        assert written[0].name == "mount-X.xml" and "schtasks /Create" in done.output
        assert "--foreground X:" in written[0].read_bytes().decode("utf-16")
    removed = runner.invoke(main, ["--home", str(machine.home), "service", "remove", "--mount", place])
    assert removed.exit_code == 0, removed.output
    assert not written[0].exists()
