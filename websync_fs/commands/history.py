"""Versions, conflicts and the trash: ``history``, ``restore``, ``conflicts``, ``trash``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..errors import ConfigError, WebSyncError
from ..home import Home
from ._common import Context, friendly, human, pass_ctx, with_remote

COMMANDS = ["history", "restore", "conflicts", "trash"]


def _replica(home: Home) -> Any:
    from ..replica import Replica
    from ..statedb import StateDb

    if not home.replica_db.exists():
        raise ConfigError("this machine has no copy of the tree yet; mount the store first")
    return Replica(StateDb(home.replica_db))


def _when(ns_or_s: float) -> str:
    seconds = ns_or_s / 1e9 if ns_or_s > 1e12 else ns_or_s
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def history(ctx: Context, path: str, as_json: bool) -> None:
    """List the versions of the file at PATH, oldest first."""
    from ..storepaths import locate, mountpoint_of, store_path

    home = ctx.home
    where = store_path(path, mountpoint_of(home.status_file))
    _, _, row = locate(_replica(home), where)
    if row is None:
        raise ConfigError(f"there is no file {where} in the store")
    if row.kind != "file" or row.seq == 0:
        raise ConfigError(f"{where} has no history yet" if row.seq == 0 else f"{where} is not a file")
    versions = with_remote(home, lambda r: r.versions(row.id))
    if as_json:
        click.echo(json.dumps({"path": str(where), "versions": versions}, indent=2))
        return
    for v in versions:
        mark = "  (current)" if v.get("current") else _until(v)
        click.echo(f"{v['version']:>4}  {_when(v['time'])}  {human(v['size']):>9}  {v['device']}{mark}")


@click.command()
@click.argument("path")
@click.option("--version", "version", type=int, help="Bring back this version (see 'websync history').")
@pass_ctx
@friendly
def restore(ctx: Context, path: str, version: int | None) -> None:
    """Bring back a deleted file from the trash, or an earlier version of a file.

    Either way nothing is overwritten: an earlier version comes back as a new
    version (the current one stays in the history), and a deleted file comes
    back at its old place.
    """
    from ..storepaths import locate, mountpoint_of, store_path

    home = ctx.home
    where = store_path(path, mountpoint_of(home.status_file))
    parent, name, row = locate(_replica(home), where)
    if version is not None:
        if row is None or row.kind != "file":
            raise ConfigError(f"there is no file {where} in the store")
        n = with_remote(home, lambda r: r.restore_version(row.id, version))
        click.echo(f"restored version {version} of {where} as version {n}")
        return
    if row is not None:
        raise ConfigError(f"{where} exists; give --version N to bring back an earlier version")
    items = with_remote(home, lambda r: r.trash())
    match = [i for i in items if i["parent"] == parent and i["name"] == name]
    if not match:
        raise ConfigError(f"{where} is not in the trash")
    with_remote(home, lambda r: r.undelete(match[0]["node"], parent, name))
    click.echo(f"restored {where}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def conflicts(ctx: Context, as_json: bool) -> None:
    """List conflict copies: files two machines changed at the same time."""
    from ..conflicts import MARK
    from ..storepaths import path_of

    replica = _replica(ctx.home)
    rows = replica.state.execute(
        "SELECT e.parent, e.name, n.id, n.size, n.mtime_ns FROM entries e JOIN nodes n ON n.id = e.node "
        "WHERE instr(e.name, ?) > 0 ORDER BY e.name", (MARK,)
    ).fetchall()
    found = [
        {"path": path_of(replica, node) or name, "size": size, "mtime": _when(mtime)}
        for _parent, name, node, size, mtime in rows
    ]
    if as_json:
        click.echo(json.dumps({"conflicts": found}, indent=2))
    elif not found:
        click.echo("no conflicts")
    else:
        for c in found:
            click.echo(f"{c['path']}  ({human(c['size'])}, {c['mtime']})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def trash(ctx: Context, as_json: bool) -> None:
    """List deleted files that can be restored, newest first."""
    items = with_remote(ctx.home, lambda r: r.trash())
    if as_json:
        click.echo(json.dumps({"trash": items}, indent=2))
    elif not items:
        click.echo("the trash is empty")
    else:
        for i in items:
            click.echo(f"{_when(i['time'])}  {i['path']}  ({human(i['size'])}, deleted on {i['device']}){_until(i)}")


def _until(item: dict[str, object]) -> str:
    """"  (kept until DATE)" for an item whose answer says (servers before the collector don't)."""
    until = item.get("until")
    return f"  (kept until {_when(float(until))})" if isinstance(until, (int, float)) else ""


__all__ = ["history", "restore", "conflicts", "trash", "WebSyncError"]
