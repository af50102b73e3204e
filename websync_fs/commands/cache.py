"""Pins and the cache: ``pin``, ``unpin``, ``pins``, ``cache`` (show, limit, clean, verify).

Requests go to the running mount over the control socket, because the mount
holds the cache's protection in memory; with no mount running, the command
opens the cache itself, holding the cache lock (see websync_fs/control.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..errors import WebSyncError
from ..home import Home
from ._common import Context, friendly, human, pass_ctx

if TYPE_CHECKING:
    from ..cachectl import CacheControl

COMMANDS = ["pin", "unpin", "pins", "cache"]

#: Seconds a command waits for a mount that holds the cache lock to answer.
CONNECT_TIMEOUT = 30.0
#: `pin` stops waiting after this many fetch attempts in a row found the server unreachable.
OFFLINE_ATTEMPTS = 3
POLL = 0.2


class BadSize(WebSyncError):
    exit_code = 2


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes in *text*: ``500M`` and ``10GB`` are decimal (as printed), ``10GiB`` binary."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise BadSize(f"{text!r} is not a size; give one like 500M, 10G or 2GiB")
    return int(float(match.group(1)) * _UNITS[unit])


# -- where requests go ------------------------------------------------------------


class Channel:
    """The running mount, or (none running) this process with the cache lock held."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.daemon = False
        self.mountpoint: str | None = None
        self._local: CacheControl | None = None

    def call(self, op: str, timeout: float | None = 60.0, **args: Any) -> Any:
        if self.daemon:
            from ..control import request

            return request(self.home.state_dir, op, args, timeout=timeout)
        import trio

        assert self._local is not None
        return trio.run(self._local.handle, op, args)

    def store_paths(self, arguments: tuple[str, ...] | list[str]) -> list[str]:
        from ..storepaths import store_path

        return [store_path(a, self.mountpoint) for a in arguments]


@contextmanager
def open_channel(home: Home) -> Iterator[Channel]:
    """Connect to the mount of *home*, or take the cache for this command if none runs."""
    from ..cachectl import local_control
    from ..control import CacheLock, NotRunning, request

    home.ensure()
    channel = Channel(home)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        lock = CacheLock.try_acquire(home.state_dir)
        if lock is not None:
            try:
                with local_control(home) as control:
                    channel._local = control
                    yield channel
            finally:
                lock.release()
            return
        try:
            hello = request(home.state_dir, "hello", timeout=10.0)
        except NotRunning:
            if time.monotonic() > deadline:
                raise WebSyncError(
                    "another websync process holds the cache but does not answer; try again when it has finished"
                ) from None
            time.sleep(0.1)
            continue
        channel.daemon = True
        channel.mountpoint = hello.get("mountpoint")
        yield channel
        return


def _emit(as_json: bool, data: Any, text: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in text:
            click.echo(line)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


# -- pin, unpin, pins ---------------------------------------------------------------


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Return at once; the files are fetched in the background.")
@_json_option
@pass_ctx
@friendly
def pin(ctx: Context, paths: tuple[str, ...], no_wait: bool, as_json: bool) -> None:
    """Keep PATHS local for offline use; new and changed files under them are fetched as they arrive.

    PATHS are folders or files under the mount point (or paths inside the
    store, like Photos/2023).  Waits until everything is local, with a progress
    bar on a terminal.
    """
    ctx.follow(paths)
    with open_channel(ctx.home) as channel:
        answer = channel.call("pin", paths=channel.store_paths(paths))
        nodes = [p["node"] for p in answer["pins"]]
        progress = channel.call("progress", nodes=nodes)
        if channel.daemon and not no_wait:
            progress = _wait(channel, nodes, progress, _label(answer["pins"]))
    offline = not progress["done"] and progress["failures"] >= OFFLINE_ATTEMPTS and not no_wait
    _emit(as_json, {**answer, "progress": progress}, _pin_lines(answer, progress, no_wait))
    if progress["failed_blocks"] and not no_wait:
        raise WebSyncError(f"{progress['failed_blocks']} block(s) could not be fetched: {progress['error']}")
    if offline:
        from ..errors import Offline

        raise Offline(f"the server is unreachable ({progress['error']}); the rest comes down when it is back")


def _label(pins: list[dict[str, Any]]) -> str:
    names = [p["path"] or "/" for p in pins]
    label = names[0] if len(names) == 1 else f"{len(names)} paths"
    return label if len(label) <= 30 else "…" + label[-29:]


def _wait(channel: Channel, nodes: list[str], progress: dict[str, Any], label: str) -> dict[str, Any]:
    from ._progress import ProgressBar

    bar = ProgressBar(sys.stderr, label) if sys.stderr.isatty() else None
    try:
        while True:
            if bar is not None:
                bar.update(progress["files_local"], progress["files"], progress["bytes_local"], progress["bytes"])
            if progress["done"] or progress["failures"] >= OFFLINE_ATTEMPTS:
                break
            time.sleep(POLL)
            progress = channel.call("progress", nodes=nodes)
        if bar is not None:
            bar.update(progress["files_local"], progress["files"], progress["bytes_local"], progress["bytes"],
                       force=True)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        click.echo("interrupted: the pin stays, and fetching goes on in the background", err=True)
        sys.exit(130)
    finally:
        if bar is not None:
            bar.close()
    return progress


def _pin_lines(answer: dict[str, Any], progress: dict[str, Any], no_wait: bool) -> list[str]:
    lines = []
    for p in answer["pins"]:
        where = p["path"] or "/"
        note = "" if p["new"] else " (already pinned)"
        if p["inside"]:
            note += f" (also inside the pinned folder {p['inside'][0] or '/'})"
        lines.append(f"pinned {where}{note}")
    summary = f"{progress['files']} file(s), {human(progress['bytes'])}"
    if progress["done"]:
        lines.append(f"{summary}: all local")
    elif not answer["fetching"]:
        lines.append(f"{summary}: {human(progress['bytes_local'])} local; the rest is fetched when the store is "
                     "mounted")
    elif no_wait:
        lines.append(f"{summary}: {human(progress['bytes_local'])} local; fetching in the background "
                     "(see 'websync pins')")
    else:
        lines.append(f"{summary}: {progress['files_local']} file(s), {human(progress['bytes_local'])} local")
    return lines


@click.command()
@click.argument("paths", nargs=-1, required=True)
@_json_option
@pass_ctx
@friendly
def unpin(ctx: Context, paths: tuple[str, ...], as_json: bool) -> None:
    """Stop keeping PATHS local; their content stays cached until it is evicted."""
    ctx.follow(paths)
    with open_channel(ctx.home) as channel:
        answer = channel.call("unpin", paths=channel.store_paths(paths))
    _emit(as_json, answer, [f"unpinned {u['path'] or '/'}" for u in answer["unpinned"]])


@click.command()
@_json_option
@pass_ctx
@friendly
def pins(ctx: Context, as_json: bool) -> None:
    """List what is pinned, with sizes and whether it is all local."""
    with open_channel(ctx.home) as channel:
        answer = channel.call("pins")
    lines = []
    for p in answer["pins"]:
        where = p["path"] or "/"
        if not p["exists"]:
            lines.append(f"{where}  (no longer exists; 'websync unpin {where}' removes the pin)")
            continue
        if p["done"]:
            state = "all local"
        else:
            share = p["bytes_local"] * 100 // p["bytes"] if p["bytes"] else 0
            state = f"{share}% local" + (", fetching" if answer["fetching"] else ", fetched when mounted")
            if p["failed_blocks"]:
                state += f", {p['failed_blocks']} block(s) failed: {p['error']}"
        lines.append(f"{where}  {p['files']} file(s), {human(p['bytes'])}, {state}")
    if not lines:
        lines.append("nothing is pinned; 'websync pin PATH' keeps a folder local for offline use")
    _emit(as_json, answer, lines)


# -- cache ----------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@_json_option
@pass_ctx
@friendly
def cache(ctx: Context, as_json: bool) -> None:
    """Show the local cache: used, limit, pinned, waiting for upload, free disk, hit rate.

    The subcommands set the limit, evict now and check the cached blocks.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    with open_channel(ctx.home) as channel:
        stats = channel.call("cache")
    _emit(as_json, stats, _stats_lines(stats))


def _stats_lines(s: dict[str, Any]) -> list[str]:
    share = f" ({s['used'] * 100 // s['limit']}%)" if s["limit"] else ""
    rate = "no reads yet" if s["hit_rate"] is None else (
        f"{s['hit_rate'] * 100:.0f}% ({s['hits']} hits, {s['misses']} misses)")
    lines = [
        f"cache:              {s['directory']}",
        f"used:               {human(s['used'])} of {human(s['limit'])} limit{share}, {s['blocks']} blocks",
        f"pinned:             {human(s['pinned'])} ({s['pins']} pin(s))",
        f"waiting for upload: {human(s['waiting_for_upload'])} ({s['changes_waiting']} change(s))",
        f"reclaimable:        {human(s['reclaimable'])}",
        f"free disk:          {human(s['free_disk'])}",
        f"hit rate:           {rate}",
    ]
    if not s["mounted"]:
        lines.append("(not mounted: pinned files are fetched when the store is mounted)")
    if s["protected_over_limit"]:
        lines.append(
            f"note: pinned data and data waiting for upload ({human(s['protected'])}) alone exceed the limit; "
            "everything else is evicted. Raise the limit ('websync cache limit SIZE') or unpin something."
        )
    return lines


@cache.command("limit")
@click.argument("size", required=False)
@_json_option
@pass_ctx
@friendly
def cache_limit(ctx: Context, size: str | None, as_json: bool) -> None:
    """Show or set the cache size limit (500M, 10G, 2GiB); takes effect at once.

    Pinned data and data waiting for upload are kept even above the limit.
    """
    home = ctx.home
    if size is None:
        limit = home.load_settings().cache_limit
        _emit(as_json, {"limit": limit}, [f"cache limit: {human(limit)}"])
        return
    limit = parse_size(size)
    settings = home.load_settings()
    settings.cache_limit = limit
    home.save_settings(settings)
    with open_channel(home) as channel:
        stats = channel.call("limit", limit=limit)
    lines = [f"cache limit set to {human(limit)}; {human(stats['used'])} used"]
    if stats["protected_over_limit"]:
        lines.append(f"note: pinned data and data waiting for upload ({human(stats['protected'])}) alone exceed it")
    _emit(as_json, stats, lines)


@cache.command("clean")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be evicted.")
@_json_option
@pass_ctx
@friendly
def cache_clean(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Evict everything that is neither pinned nor waiting for upload, now."""
    with open_channel(ctx.home) as channel:
        answer = channel.call("clean", dry_run=dry_run)
    if dry_run:
        lines = [f"would free {human(answer['freed'])} ({answer['blocks']} blocks) from "
                 f"{len(answer['files']) + answer['more_files']} file(s); {human(answer['kept'])} stays "
                 "(pinned or waiting for upload)"]
        lines += [f"  {name}" for name in answer["files"][:20]]
        hidden = len(answer["files"]) - 20 + answer["more_files"]
        if hidden > 0:
            lines.append(f"  ... and {hidden} more (--json lists up to 1000)")
    else:
        lines = [f"freed {human(answer['freed'])}; {human(answer['kept'])} stays (pinned or waiting for upload)"]
    _emit(as_json, answer, lines)


@cache.command("verify")
@_json_option
@pass_ctx
@friendly
def cache_verify(ctx: Context, as_json: bool) -> None:
    """Re-hash every cached block; drop damaged ones and fetch them again."""
    with open_channel(ctx.home) as channel:
        answer = channel.call("verify", timeout=None)
    corrupt = answer["corrupt"]
    if not corrupt:
        lines = [f"checked {answer['checked']} blocks: all intact"]
    else:
        lines = [f"checked {answer['checked']} blocks: {len(corrupt)} damaged and dropped, "
                 f"{len(answer['refetched'])} fetched again"]
        for f in answer["failed"]:
            lines.append(f"  {f['hash'][:16]}…: {f['error']}")
    _emit(as_json, answer, lines)
    if answer["lost"]:
        raise WebSyncError(
            f"{len(answer['lost'])} damaged block(s) were waiting for upload and exist nowhere else; "
            "the files that changed here may have lost data"
        )


# -- file states, for ``websync status PATH`` ----------------------------------------


def file_states(home: Home, paths: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """The state of each of *paths* (see websync_fs/filestate.py)."""
    with open_channel(home) as channel:
        answer = channel.call("state", paths=channel.store_paths(paths))
    files: list[dict[str, Any]] = answer["files"]
    return files


def state_lines(files: list[dict[str, Any]]) -> list[str]:
    from ..filestate import FileState

    width = max((len(f["path"] or "/") for f in files), default=0)
    lines = []
    for f in files:
        state = FileState(
            f["path"], f["kind"], f["size"], f["local_bytes"], f["pinned"], f["pending"], f["conflict"],
            f["complete"], f.get("held", ""),
        )
        lines.append(f"{(f['path'] or '/').ljust(width)}  {state.describe()}")
    return lines
