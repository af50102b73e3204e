"""Account commands: change the password, log this machine out, list and revoke devices."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..errors import ConfigError, Unauthorized
from ._common import Context, friendly, pass_ctx, running_pid, with_remote

COMMANDS = ["passwd", "logout", "devices"]


@click.command()
@click.option("--password-stdin", is_flag=True,
              help="Read the current password, then the new one, from the first two lines of stdin.")
@pass_ctx
@friendly
def passwd(ctx: Context, password_stdin: bool) -> None:
    """Change your password on the server; every logged-in device stays logged in."""
    if password_stdin:
        old, new = sys.stdin.readline().rstrip("\n"), sys.stdin.readline().rstrip("\n")
    else:
        old = click.prompt("Current password", hide_input=True)
        new = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    with_remote(ctx.home, lambda remote: remote.change_password(old, new))
    click.echo("changed your password")


@click.command()
@pass_ctx
@friendly
def logout(ctx: Context) -> None:
    """Log this machine out: its token ends on the server and is deleted here.

    Changes still waiting for upload stay queued and go after the next 'websync login'.
    The server must be reachable, so the token really ends (one revoked already is just deleted here).
    """
    home = ctx.home
    pid = running_pid(home)
    if pid is not None:
        raise ConfigError(f"the store is mounted here (process {pid}); run 'websync unmount' first")
    settings, _ = home.logged_in()
    try:
        with_remote(home, lambda remote: remote.logout())
    except Unauthorized:
        pass  # revoked already (from another device, or unseen too long): only the local copy is left
    home.drop_token()
    click.echo(f"logged out of {settings.server} (device {settings.device})")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@click.pass_context
@friendly
def devices(click_ctx: click.Context, ctx: Context, as_json: bool) -> None:
    """List the devices logged in as you, with when each was last seen; see 'devices revoke'."""
    if click_ctx.invoked_subcommand is not None:
        return
    found = with_remote(ctx.home, lambda remote: remote.devices())
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    width = max([6, *(len(d["name"]) for d in found)])
    click.echo(f"{'ID':>6}  {'DEVICE':<{width}}  {'LOGGED IN':<16}  LAST SEEN")
    for d in found:
        mark = "  (this machine)" if d["current"] else ""
        click.echo(f"{d['id']:>6}  {d['name']:<{width}}  {_when(d['created_ns']):<16}  {_when(d['last_seen_ns'])}{mark}")


@devices.command("revoke")
@click.argument("device")
@pass_ctx
@friendly
def devices_revoke(ctx: Context, device: str) -> None:
    """Log out DEVICE (its name, or its id when two share a name), e.g. a lost phone."""
    home = ctx.home

    async def revoke(remote: Any) -> tuple[int, str]:
        listed = await remote.devices()
        chosen = [d for d in listed if d["name"] == device] or [d for d in listed if str(d["id"]) == device]
        if not chosen:
            raise ConfigError(f"no device named {device!r} is logged in; see 'websync devices'")
        if len(chosen) > 1:
            ids = ", ".join(str(d["id"]) for d in chosen)
            raise ConfigError(f"{len(chosen)} devices are named {device!r} (ids {ids}); name one by its id")
        return chosen[0]["id"], await remote.revoke_device(chosen[0]["id"])

    device_id, name = with_remote(home, revoke)
    click.echo(f"logged out device {name} ({device_id})")


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))
