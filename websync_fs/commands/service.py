"""``websync service install|remove``: run a mount or a synced folder at login.

A systemd user unit on Linux, a launchd agent on macOS, a Task Scheduler task
on Windows (`websync_fs.service` writes each).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ._common import Context, friendly, pass_ctx

COMMANDS = ["service"]


@click.group()
def service() -> None:
    """Start the mount or a synced folder with your session (systemd, launchd or Task Scheduler)."""


def _run(*command: str) -> str:
    """Run *command*; the reason it failed, or '' when it went."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not installed"
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"{command[0]} exited {done.returncode}")


def _systemctl(*args: str) -> str:
    return _run("systemctl", "--user", *args)


def _place(kind: str, place: Path) -> Path | str:
    # A drive letter stays as it is: "X:" made absolute would be the current folder on X:.
    if sys.platform == "win32" and kind == "mount" and len(str(place)) == 2 and str(place)[1] == ":":
        return str(place)
    return place.expanduser().absolute()


def _install_elsewhere(kind: str, place: Path | str, home: str | None, no_start: bool) -> None:
    """macOS (launchd) and Windows (Task Scheduler): write the definition, register it, start it."""
    from ..service import agent_label, service_file, task_name

    path, content = service_file(sys.platform, kind, place, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    click.echo(f"wrote {path}")
    if sys.platform == "darwin":
        domain = f"gui/{os.getuid()}"
        _run("launchctl", "bootout", domain, str(path))  # an older copy of the same agent
        why = _run("launchctl", "bootstrap", domain, str(path))
        if not why and no_start:
            why = _run("launchctl", "kill", "SIGTERM", f"{domain}/{agent_label(kind, place)}")
        advice = f"launchctl bootstrap {domain} {path}"
    else:
        name = task_name(kind, place)
        why = _run("schtasks", "/Create", "/TN", name, "/XML", str(path), "/F")
        if not why and not no_start:
            why = _run("schtasks", "/Run", "/TN", name)
        advice = f'schtasks /Create /TN "{name}" /XML "{path}" /F'
    if why:
        click.echo(f"could not register it here ({why}); run:\n  {advice}")
    else:
        click.echo("registered it" + ("" if no_start else " and started it"))


def _remove_elsewhere(kind: str, place: Path | str) -> None:
    from ..service import service_file, task_name

    path, _ = service_file(sys.platform, kind, place, None)
    if not path.exists():
        raise ConfigError(f"there is no service definition {path}")
    if sys.platform == "darwin":
        why = _run("launchctl", "bootout", f"gui/{os.getuid()}", str(path))
    else:
        why = _run("schtasks", "/End", "/TN", task_name(kind, place))
        why = _run("schtasks", "/Delete", "/TN", task_name(kind, place), "/F") or why
    path.unlink()
    click.echo(f"removed {path}" + (f" ({why})" if why else ""))


@service.command("install")
@click.option("--mount", "mount_at", type=click.Path(file_okay=False, path_type=Path), help="Mount the store here.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), help="Keep this synced folder.")
@click.option("--no-start", is_flag=True, help="Write and enable the unit, but do not start it now.")
@pass_ctx
@friendly
def service_install(ctx: Context, mount_at: Path | None, folder: Path | None, no_start: bool) -> None:
    """Start a mount (--mount DIR, on Windows also X:) or a synced folder (--folder DIR) at every login.

    Linux: a systemd user unit; macOS: a launchd agent in ~/Library/LaunchAgents;
    Windows: a Task Scheduler task at logon.
    """
    from ..service import unit_dir, unit_name, unit_text

    if (mount_at is None) == (folder is None):
        raise ConfigError("say what to start: --mount DIR or --folder DIR")
    ctx.home.logged_in()  # a unit that cannot start is no help: log in first
    kind, place = ("mount", mount_at) if mount_at is not None else ("sync", folder)
    assert place is not None
    if sys.platform in ("darwin", "win32"):
        _install_elsewhere(kind, _place(kind, place), ctx.home_option, no_start)
        return
    place = place.expanduser().absolute()
    path = unit_dir() / unit_name(kind, place)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(kind, place, ctx.home_option))
    click.echo(f"wrote {path}")
    why = _systemctl("daemon-reload") or _systemctl("enable", *([] if no_start else ["--now"]), path.name)
    if why:
        click.echo(f"could not enable it here ({why}); in your session run:\n"
                   f"  systemctl --user daemon-reload && systemctl --user enable --now {path.name}")
    else:
        click.echo(f"enabled {path.name}" + ("" if no_start else " and started it"))


@service.command("remove")
@click.option("--mount", "mount_at", type=click.Path(file_okay=False, path_type=Path), help="The mount's folder.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), help="The synced folder.")
@pass_ctx
@friendly
def service_remove(ctx: Context, mount_at: Path | None, folder: Path | None) -> None:
    """Stop and remove the unit of a mount or synced folder (pending changes stay queued)."""
    from ..service import unit_dir, unit_name

    if (mount_at is None) == (folder is None):
        raise ConfigError("say which: --mount DIR or --folder DIR")
    kind, place = ("mount", mount_at) if mount_at is not None else ("sync", folder)
    assert place is not None
    if sys.platform in ("darwin", "win32"):
        _remove_elsewhere(kind, _place(kind, place))
        return
    path = unit_dir() / unit_name(kind, place.expanduser().absolute())
    if not path.exists():
        raise ConfigError(f"there is no unit {path}")
    why = _systemctl("disable", "--now", path.name)
    path.unlink()
    _systemctl("daemon-reload")
    click.echo(f"removed {path}" + (f" (systemctl: {why})" if why else ""))
