"""Shared folders: share one with another user of the server, list them, remove a member or leave."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ConfigError
from ._common import Context, friendly, pass_ctx, with_remote

COMMANDS = ["share", "shares", "unshare"]


@click.command()
@click.argument("path")
@click.argument("user")
@click.option("--read-only", is_flag=True, help="USER may read the folder but change nothing in it.")
@pass_ctx
@friendly
def share(ctx: Context, path: str, user: str, read_only: bool) -> None:
    """Share the folder PATH with USER of the same server, read-write unless --read-only.

    A shared folder lies at the top of the tree and is made, empty, the first time
    it is shared; move files into it. Sharing it again changes USER's mode.
    """
    name = _top_name(ctx, path)
    made = with_remote(ctx.home, lambda remote: remote.share(name, user, read_only))
    mode = "read-only" if read_only else "read-write"
    click.echo(f"shared {made['name']} with {user} ({mode}); members: {_members(made)}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def shares(ctx: Context, as_json: bool) -> None:
    """List the shared folders you own or are a member of, with their members."""
    found = with_remote(ctx.home, lambda remote: remote.shares())
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no shared folders")
        return
    width = max([6, *(len(s["name"]) for s in found)])
    owners = max([5, *(len(s["owner"]) for s in found)])
    click.echo(f"{'FOLDER':<{width}}  {'OWNER':<{owners}}  {'YOU':<10}  MEMBERS")
    for s in found:
        you = "read-only" if s["read_only"] else "read-write"
        click.echo(f"{s['name']:<{width}}  {s['owner']:<{owners}}  {you:<10}  {_members(s)}")


@click.command()
@click.argument("path")
@click.argument("user")
@pass_ctx
@friendly
def unshare(ctx: Context, path: str, user: str) -> None:
    """Stop sharing the folder PATH with USER; USER's machines keep only their work never sent.

    A member may name themself as USER to leave a folder shared with them.
    """
    name = _top_name(ctx, path)
    settings, _ = ctx.home.logged_in()

    async def remove(remote: Any) -> str:
        listed = await remote.shares()
        chosen = [s for s in listed if s["name"] == name and s["owner"] == settings.user]
        chosen = chosen or [s for s in listed if s["name"] == name]
        if not chosen:
            raise ConfigError(f"no shared folder is named {name!r}; see 'websync shares'")
        if len(chosen) > 1:
            raise ConfigError(f"{len(chosen)} folders shared with you are named {name!r}; ask their owners")
        await remote.unshare(chosen[0]["store"], user)
        return str(chosen[0]["name"])

    removed = with_remote(ctx.home, remove)
    click.echo(f"{removed} is no longer shared with {user}")


def _top_name(ctx: Context, path: str) -> str:
    """The shared folder's name for *path*: a name, or a folder at the top of the mounted tree."""
    from ..storepaths import BadPath, mountpoint_of, store_path

    try:
        where = store_path(path, mountpoint_of(ctx.home.status_file))
    except BadPath as exc:
        raise ConfigError(str(exc)) from None
    if not where or "/" in where:
        raise ConfigError(f"{path}: a shared folder lies at the top of the tree; give a name such as 'Family'")
    return where


def _members(share: dict[str, Any]) -> str:
    members = [m["user"] + (" (read-only)" if m["read_only"] else "") for m in share["members"]]
    return ", ".join(members) or "none"
