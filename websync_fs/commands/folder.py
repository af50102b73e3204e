"""The synced folder command: ``websync sync DIR``, its stop and its fresh start."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ._common import (
    Context,
    friendly,
    pass_ctx,
    ready_pipe,
    running_pid,
    setup_logging,
    start_in_background,
    stop_running,
)

COMMANDS = ["sync"]


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground until stopped.")
@click.option("--only", "only", multiple=True, metavar="PATH",
              help="Sync only this folder of the store (repeatable); kept for later starts.")
@click.option("--stop", is_flag=True, help="Stop the sync of FOLDER (pending uploads go out first, briefly).")
@click.option("--reset", is_flag=True,
              help="Forget what this machine last synced with FOLDER: the next start is a first sync "
                   "(nothing is deleted; files that differ become conflict copies).")
@click.option("--shared", metavar="NAME",
              help="Sync the shared folder NAME (as 'websync shares' lists it) instead of your own files.")
@pass_ctx
@friendly
def sync(ctx: Context, folder: Path, foreground: bool, only: tuple[str, ...], stop: bool, reset: bool,
         shared: str | None) -> None:
    """Keep FOLDER, a folder of real files on this disk, in sync with the store both ways.

    Changes in FOLDER are seen as they happen (and by a scan at every start)
    and go up through the same queue as the mount's; changes from other
    machines are written into FOLDER.  Lock and temporary files of Office,
    LibreOffice and editors stay on this machine, and so does whatever
    FOLDER/.websyncignore names (gitignore syntax).
    """
    ctx.use_shared(shared)
    home = ctx.home
    if home.share().get("read_only"):
        raise ConfigError("this shared folder is read-only for you: mount it ('websync mount DIR --shared NAME')")
    target = folder.expanduser().absolute()
    if stop:
        _stop(ctx, target)
        return
    home.logged_in()
    pid = running_pid(home)
    if pid is not None:
        raise ConfigError(f"this home is already in use by process {pid} (a mount or a synced folder); stop it first")
    if reset:
        _reset(ctx, target)
        return
    if foreground:
        import trio

        from ..folder.client import run_folder

        setup_logging(home, ctx.verbose)
        with ready_pipe(f"syncing {target}") as ready:
            trio.run(run_folder, home, target, only, ready)
    else:
        command = ["sync", "--foreground", *[a for p in only for a in ("--only", p)], str(target)]
        pid = start_in_background(ctx, home, command, "starting the sync")
        click.echo(f"syncing {target} (process {pid})")


def _stop(ctx: Context, target: Path) -> None:
    home = ctx.home
    pid = running_pid(home)
    try:
        folder = json.loads(home.status_file.read_text()).get("folder", "")
    except (FileNotFoundError, ValueError):
        folder = ""
    if pid is None or folder != str(target):
        raise ConfigError(f"{target} is not being synced by this machine")
    stop_running(home, str(target), mount=False)
    click.echo(f"stopped syncing {target}")


def _reset(ctx: Context, target: Path) -> None:
    ctx.home.known_db.unlink(missing_ok=True)
    click.echo(f"forgot the last synced state of {target}: the next 'websync sync' is a first sync")
