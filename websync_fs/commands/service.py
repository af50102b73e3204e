"""``websync service install|remove``: run a mount or a synced folder at login (systemd user units)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from ..errors import ConfigError
from ._common import Context, friendly, pass_ctx

COMMANDS = ["service"]


@click.group()
def service() -> None:
    """Start the mount or a synced folder with your session (a systemd user unit)."""


def _systemctl(*args: str) -> str:
    """Run ``systemctl --user ARGS``; the reason it failed, or '' when it went."""
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    done = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"systemctl exited {done.returncode}")


@service.command("install")
@click.option("--mount", "mount_at", type=click.Path(file_okay=False, path_type=Path), help="Mount the store here.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), help="Keep this synced folder.")
@click.option("--no-start", is_flag=True, help="Write and enable the unit, but do not start it now.")
@pass_ctx
@friendly
def service_install(ctx: Context, mount_at: Path | None, folder: Path | None, no_start: bool) -> None:
    """Write a systemd user unit for a mount (--mount DIR) or a synced folder (--folder DIR) and enable it."""
    from ..service import unit_dir, unit_name, unit_text

    if (mount_at is None) == (folder is None):
        raise ConfigError("say what to start: --mount DIR or --folder DIR")
    ctx.home.logged_in()  # a unit that cannot start is no help: log in first
    kind, place = ("mount", mount_at) if mount_at is not None else ("sync", folder)
    assert place is not None
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
    path = unit_dir() / unit_name(kind, place.expanduser().absolute())
    if not path.exists():
        raise ConfigError(f"there is no unit {path}")
    why = _systemctl("disable", "--now", path.name)
    path.unlink()
    _systemctl("daemon-reload")
    click.echo(f"removed {path}" + (f" (systemctl: {why})" if why else ""))
