"""Shared folders: share one with another user of the server, list them, remove a member or leave."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ..errors import ConfigError
from ._common import Context, choose_share, friendly, pass_ctx, with_remote

COMMANDS = ["share", "shares", "unshare"]

#: Seconds `share` waits for the folder to show in this machine's running mount or sync.
SHOWN_WAIT = 10.0


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
    settings, _ = ctx.home.logged_in()

    async def run(remote: Any) -> dict[str, Any]:
        chosen = choose_share(await remote.shares(), name, settings.user)
        if chosen is not None and chosen["owner"] != settings.user:
            if chosen["name"] != name:
                raise ConfigError(f"{name} is {chosen['owner']}'s shared folder: only its owner can share it")
            chosen = None  # a folder of one's own of that name: both show as NAME (OWNER) from now on
        if chosen is None and _own_has(ctx, name):
            # The server would make a new, empty folder, shown beside this one as NAME (OWNER).
            raise ConfigError(
                f"{name} is a folder of your own; a shared folder starts empty. Share a new name and move the "
                f"files in: websync share '{name} shared' {user}, then mv {name}/* '{name} shared'/")
        result: dict[str, Any] = await remote.share(chosen["name"] if chosen else name, user, read_only)
        return result

    made = with_remote(ctx.home, run)
    _wait_shown(ctx, str(made["store"]))
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
        chosen = choose_share(await remote.shares(), name, settings.user)
        if chosen is None:
            raise ConfigError(f"no shared folder is named {name!r}; see 'websync shares'")
        await remote.unshare(chosen["store"], user)
        return str(chosen["name"])

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


def _wait_shown(ctx: Context, store: str) -> None:
    """Return once a running mount or sync of the own store shows the folder (at most `SHOWN_WAIT` s).

    It hears of the share within a moment; a program that writes into the
    folder right after ``share`` must find it there.
    """
    import time

    from ..storepaths import mountpoint_of
    from ._common import running_pid

    if ctx.home.store or running_pid(ctx.home) is None:
        return
    place = ctx.home.place(store)
    deadline = time.monotonic() + SHOWN_WAIT
    while time.monotonic() < deadline:
        where = mountpoint_of(place.status_file)
        if where and running_pid(place) is not None and os.path.isdir(where):
            return
        time.sleep(0.1)


def _own_has(ctx: Context, name: str) -> bool:
    """Whether the top of the user's own tree, as this machine has it, holds *name*."""
    from ..replica import ROOT_ID, Replica
    from ..statedb import StateDb

    if ctx.home.store or not ctx.home.replica_db.exists():
        return False
    db = StateDb(ctx.home.replica_db)
    try:
        return Replica(db).lookup(ROOT_ID, name) is not None
    finally:
        db.close()


def _members(share: dict[str, Any]) -> str:
    members = [m["user"] + (" (read-only)" if m["read_only"] else "") for m in share["members"]]
    return ", ".join(members) or "none"
