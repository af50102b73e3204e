"""Versions, conflicts and the trash: ``history``, ``restore``, ``conflicts``, ``trash``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from websync_server.protocol import Restore

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


def _find(
    home: Home, replica: Any, path: str, wanted: Callable[[str, str, Any], bool], missing: str
) -> tuple[str, str, str, Any]:
    """``(store path, parent, name, row)`` of the first reading of *path* that *wanted* accepts.

    A relative path inside the mount is read from the current folder, then as a
    store path (storepaths.readings); *missing* says what none of them was, e.g.
    "in the store".
    """
    from ..storepaths import BadPath, locate, mountpoint_of, readings

    tried = readings(path, mountpoint_of(home.status_file))
    for where, _how in tried:
        try:
            parent, name, row = locate(replica, where)
        except BadPath:
            if len(tried) == 1:
                raise
            continue
        if wanted(parent, name, row):
            return where, parent, name, row
    if len(tried) == 1:
        raise ConfigError(f"{tried[0][0]} is not {missing}")
    named = " nor ".join(f"{where} ({how})" for where, how in tried)
    raise ConfigError(f"neither {named} is {missing}")


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def history(ctx: Context, path: str, as_json: bool) -> None:
    """List the versions of the file at PATH, oldest first."""
    ctx.follow([path])
    home = ctx.home
    where, _, _, row = _find(home, _replica(home), path, lambda p, n, r: r is not None, "in the store")
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
@click.option("--as", "new_name", metavar="NAME",
              help="Bring a deleted file back under another name in its folder (its own name is taken).")
@pass_ctx
@friendly
def restore(ctx: Context, path: str, version: int | None, new_name: str | None) -> None:
    """Bring back a deleted file from the trash, or an earlier version of a file.

    Either way nothing is overwritten: an earlier version comes back as a new
    version (the current one stays in the history), and a deleted file comes
    back at its old place, or under the name --as gives when that is taken.
    PATH is read from the current folder inside the mount, then as a path in
    the store.
    """
    ctx.follow([path])
    home = ctx.home
    replica = _replica(home)
    if version is not None and new_name is not None:
        raise ConfigError("--as brings back a deleted file; --version brings back an earlier version in place")
    if version is not None:
        where, _, _, row = _find(
            home, replica, path, lambda p, n, r: r is not None and r.kind == "file", "a file in the store"
        )
        n = with_remote(home, lambda r: r.restore_version(row.id, version))
        click.echo(f"restored version {version} of {where} as version {n}")
        return
    items = with_remote(home, lambda r: r.trash())
    trashed: dict[tuple[str, str], dict[str, Any]] = {}
    for i in items:
        trashed.setdefault((i["parent"], i["name"]), i)  # newest first: the newest is restored
    where, parent, name, row = _find(
        home, replica, path, lambda p, n, r: r is not None or (p, n) in trashed, "in the trash"
    )
    if (parent, name) not in trashed:
        raise ConfigError(f"{where} exists and is not in the trash; give --version N to bring back an earlier version")
    target = new_name or name
    if new_name is not None and (new_name in (".", "..") or "/" in new_name or not new_name):
        raise ConfigError(f"{new_name!r} is not a file name (--as takes a name, not a path)")
    if replica.lookup(parent, target) is not None:
        taken = "/".join([*where.split("/")[:-1], target])
        if new_name:
            raise ConfigError(f"{taken} exists too; give another --as NAME")
        raise ConfigError(f"{taken} exists (something took the deleted file's name); give --as NEW_NAME to bring"
                          " the deleted one back beside it, or --version N for an earlier version of the file there now")
    item = trashed[(parent, name)]
    with_remote(home, lambda r: r.undelete(item["node"], parent, target))
    inside = _deleted_with(item, items) if item["kind"] == "dir" else []
    for start in range(0, len(inside), _RESTORE_BATCH):
        ops = [Restore(id=i["node"], parent=i["parent"], name=i["name"]).to_wire()
               for i in inside[start:start + _RESTORE_BATCH]]  # fmt: skip

        async def send(remote: Any, ops: list[dict[str, Any]] = ops) -> int:
            return int(await remote.commit(uuid.uuid4().hex, ops))

        with_remote(home, send)
    brought = f" with the {len(inside)} item(s) deleted inside it" if inside else ""
    click.echo(f"restored {where}" + (f" as {target}" if new_name else "") + brought)


#: Items deleted inside a folder this long before the folder itself went with it (an
#: ``rm -rf`` removes the contents first, a big one over minutes); older ones stay in the trash.
WITH_FOLDER_S = 600.0
#: Restores sent in one commit (the server takes at most 1,000 ops a batch).
_RESTORE_BATCH = 500


def _deleted_with(folder: dict[str, Any], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trash's items that were inside *folder* when it was deleted, folders before what they held.

    A folder comes back empty (its entries were all removed before it was);
    what was in it comes back with it, as in the trash of a desktop.  Of two
    items once at one name, the newest.
    """
    since = float(folder["time"]) - WITH_FOLDER_S
    children: dict[str, dict[str, dict[str, Any]]] = {}
    for i in items:  # newest first: the first at a name is the one that comes back
        if float(i["time"]) >= since:
            children.setdefault(i["parent"], {}).setdefault(i["name"], i)
    out: list[dict[str, Any]] = []
    level = [folder["node"]]
    while level and len(out) < 1_000_000:
        found = [i for parent in level for i in children.get(parent, {}).values()]
        out.extend(found)
        level = [i["node"] for i in found if i["kind"] == "dir"]
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_ctx
@friendly
def conflicts(ctx: Context, as_json: bool) -> None:
    """List conflict copies: files two machines changed at the same time."""
    from ..conflicts import MARK, REF_MARK
    from ..storepaths import path_of

    def listed(home: Home, top: str) -> list[dict[str, Any]]:
        replica = _replica(home)
        return [
            {"path": top + (path_of(replica, row.id) or name), "size": row.size, "mtime": _when(row.mtime_ns)}
            for name, row in (*replica.named_with(MARK), *replica.named_with(REF_MARK))
        ]

    found = listed(ctx.home, "")
    # The shared folders shown in the own tree, under the name they are shown by.
    for place in ctx.home.places() if not ctx.home.store else []:
        if place.replica_db.exists() and not place.revoked():
            found += listed(place, f"{place.share().get('name')}/")
    if as_json:
        click.echo(json.dumps({"conflicts": found}, indent=2))
    elif not found:
        click.echo("no conflicts")
    else:
        for c in found:
            click.echo(f"{c['path']}  ({human(c['size'])}, {c['mtime']})")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="List programs' internal files one by one too.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (every entry, each marked).")
@pass_ctx
@friendly
def trash(ctx: Context, show_all: bool, as_json: bool) -> None:
    """List deleted files that can be restored, newest first.

    What you deleted comes first; files programs made and removed themselves
    (inside .git, SQLite journals, lock and temporary files) are summed up in
    one line: --all lists them, and any of them can be restored like the rest.
    """
    from ..names import NamePolicy
    from ..trashlist import TrashList

    home = ctx.home
    settings = home.load_settings()
    listed = TrashList(with_remote(home, lambda r: r.trash()), NamePolicy(settings.local_only, settings.temporary))
    if as_json:
        click.echo(json.dumps({"trash": listed.items}, indent=2))
        return
    if not listed.items:
        click.echo("the trash is empty")
        return
    for i in listed.items if show_all else listed.personal:
        click.echo(f"{_when(i['time'])}  {i['path']}  ({human(i['size'])}, deleted on {i['device']}){_until(i)}")
    if listed.internals and not show_all:
        click.echo(f"and {listed.summary()}; 'websync trash --all' lists them")


def _until(item: dict[str, object]) -> str:
    """"  (kept until DATE)" for an item whose answer says (servers before the collector don't)."""
    until = item.get("until")
    return f"  (kept until {_when(float(until))})" if isinstance(until, (int, float)) else ""


__all__ = ["history", "restore", "conflicts", "trash", "WebSyncError"]
