"""Starting with the session: a systemd user unit that runs a mount (or a synced folder) at login.

The unit runs the command in the foreground (``mount --foreground`` or
``sync --foreground``), so systemd sees the process that holds the mount:
it is restarted when it fails, started once the network is up, and stopped
with SIGTERM, on which the client unmounts and gives pending uploads a short
chance to go out (what is left stays queued for the next start), within
`STOP_SECONDS`.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

#: How long systemd waits for a clean stop: the client drains for at most 15 s.
STOP_SECONDS = 30


def unit_name(kind: str, place: Path) -> str:
    """A unit name for *kind* ("mount" or "sync") at *place*: readable, and one per place."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(place)).strip("-") or "root"
    return f"websync-{kind}-{slug}.service"


def unit_text(kind: str, place: Path, home: str | None, executable: str | None = None) -> str:
    """The unit's text: run ``websync [--home HOME] KIND --foreground PLACE`` for this user."""
    program = executable or sys.executable
    command = [program, "-m", "websync_fs.cli"]
    if home:
        command += ["--home", str(Path(home).expanduser().absolute())]
    command += [kind, "--foreground", str(place)]
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
