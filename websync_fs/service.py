"""Starting with the session: a mount (or a synced folder) run at login, by each system's own service manager.

* Linux: a systemd user unit (`unit_text`).
* macOS: a launchd agent (`launchd_plist`), in ~/Library/LaunchAgents.
* Windows: a Task Scheduler task started at logon (`task_xml`).

`service_file` picks by platform, given as an argument so each writer is
tested on any system.  Every one runs ``websync ... KIND --foreground PLACE``
and restarts it when it fails.

The unit runs the command in the foreground (``mount --foreground`` or
``sync --foreground``), so systemd sees the process that holds the mount:
it is restarted when it fails, started once the network is up, and stopped
with SIGTERM, on which the client unmounts and gives pending uploads a short
chance to go out (what is left stays queued for the next start), within
`STOP_SECONDS`.
"""

from __future__ import annotations

import plistlib
import re
import shlex
import subprocess
import sys
from pathlib import Path, PureWindowsPath
from xml.sax.saxutils import escape

#: How long systemd waits for a clean stop: the client drains for at most 15 s.
STOP_SECONDS = 30


def unit_name(kind: str, place: Path) -> str:
    """A unit name for *kind* ("mount" or "sync") at *place*: readable, and one per place."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(place)).strip("-") or "root"
    return f"websync-{kind}-{slug}.service"


def command_line(kind: str, place: Path | str, home: str | None, executable: str | None = None) -> list[str]:
    """``python -m websync_fs.cli [--home HOME] KIND --foreground PLACE``."""
    command = [executable or sys.executable, "-m", "websync_fs.cli"]
    if home:
        command += ["--home", str(Path(home).expanduser().absolute())]
    return command + [kind, "--foreground", str(place)]


def unit_text(kind: str, place: Path, home: str | None, executable: str | None = None) -> str:
    """The unit's text: run ``websync [--home HOME] KIND --foreground PLACE`` for this user."""
    command = command_line(kind, place, home, executable)
    stop = ""
    if kind == "mount":
        # A mount point left behind by a crash must be cleared before the next start.
        stop = f"ExecStopPost=-/usr/bin/fusermount3 -u -z {shlex.quote(str(place))}\n"
    return f"""[Unit]
Description=WebSync {'mount' if kind == 'mount' else 'synced folder'} at {place}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStartPre=/usr/bin/mkdir -p {shlex.quote(str(place))}
ExecStart={shlex.join(command)}
{stop}KillSignal=SIGTERM
TimeoutStopSec={STOP_SECONDS}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=default.target
"""


def unit_dir(config_home: Path | None = None) -> Path:
    """Where user units live: $XDG_CONFIG_HOME/systemd/user."""
    import os

    base = config_home or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "systemd" / "user"


def service_file(platform: str, kind: str, place: Path | str, home: str | None, executable: str | None = None,
                 user_home: Path | None = None) -> tuple[Path, bytes]:
    """Where the service definition for *platform* (``sys.platform``) goes, and its bytes."""
    if platform == "darwin":
        label = agent_label(kind, place)
        agents = (user_home or Path.home()) / "Library" / "LaunchAgents"
        logs = (user_home or Path.home()) / "Library" / "Logs" / "WebSync"
        return agents / f"{label}.plist", launchd_plist(kind, place, home, executable, logs)
    if platform == "win32":
        folder = (user_home or Path.home()) / "AppData" / "Local" / "WebSync" / "tasks"
        leaf = task_name(kind, place).rsplit("\\", 1)[-1]
        return folder / f"{leaf}.xml", task_xml(kind, place, home, executable)
    return unit_dir() / unit_name(kind, Path(place)), unit_text(kind, Path(place), home, executable).encode()


# -- macOS: a launchd agent ---------------------------------------------------------------------

def agent_label(kind: str, place: Path | str) -> str:
    """The agent's launchd label: reverse-DNS, one per place."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(place)).strip("-") or "root"
    return f"org.websync.{kind}.{slug}"


def launchd_plist(kind: str, place: Path | str, home: str | None, executable: str | None = None,
                  logs: Path | None = None) -> bytes:
    """A LaunchAgent that runs the mount or synced folder at login and again when it fails.

    KeepAlive/SuccessfulExit=false restarts only a failed run (an unmount is a
    clean exit and stays down); launchd has no "network is up" condition, and
    the client needs none: it starts offline and catches up.  launchd sends
    SIGTERM on stop and waits ExitTimeOut seconds, as systemd does.
    """
    label = agent_label(kind, place)
    agent: dict[str, object] = {
        "Label": label,
        "ProgramArguments": command_line(kind, place, home, executable),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": STOP_SECONDS,
        "ProcessType": "Interactive",  # the user's files: not throttled like a background job
    }
    if logs is not None:
        agent["StandardOutPath"] = str(logs / f"{label}.log")
        agent["StandardErrorPath"] = str(logs / f"{label}.log")
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML)


# -- Windows: a Task Scheduler task at logon ---------------------------------------------------

def task_name(kind: str, place: Path | str) -> str:
    """The task's path in Task Scheduler: a WebSync folder, one task per place."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(place)).strip("-") or "root"
    return f"\\WebSync\\{kind}-{slug}"


def task_xml(kind: str, place: Path | str, home: str | None, executable: str | None = None,
             user: str | None = None) -> bytes:
    """Task Scheduler's XML (UTF-16, as schtasks /Create /XML reads it): run at this user's logon.

    pythonw.exe runs it without a console window.  The task restarts a failed
    run every minute; it has no time limit and ignores batteries.  Ending the
    task stops the process at once: pending changes stay queued on disk and go
    out at the next start.
    """
    command = command_line(kind, place, home, executable)
    program = PureWindowsPath(command[0])
    if program.name.lower() == "python.exe":
        program = program.with_name("pythonw.exe")
    arguments = subprocess.list2cmdline(command[1:])
    who = f"<UserId>{escape(user)}</UserId>" if user else ""
    text = f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>WebSync {'drive' if kind == 'mount' else 'synced folder'} at {escape(str(place))}</Description>
    <URI>{escape(task_name(kind, place))}</URI>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>{who}
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">{who}
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(str(program))}</Command>
      <Arguments>{escape(arguments)}</Arguments>
    </Exec>
  </Actions>
</Task>
"""
    return text.encode("utf-16")

