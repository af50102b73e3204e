"""Session commands: log in, mount, unmount, and the status of this machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, Unauthorized, WebSyncError
from ..home import Home
from ._common import (
    Context,
    friendly,
    human,
    pass_ctx,
    ready_pipe,
    running_pid,
    setup_logging,
    start_in_background,
    stop_running,
)

COMMANDS = ["login", "mount", "unmount", "status"]


@click.command()
@click.argument("server")
@click.option("--user", "-u", required=True, help="Your user name on the server.")
@click.option("--device", help="Name of this machine (default: its host name).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Trust the server's certificate if this CA (PEM) signed it: a box with its own certificate.")
@click.option("--insecure-http", is_flag=True,
              help="Allow plain http:// to a server beyond this machine (password and files unencrypted).")
@pass_ctx
@friendly
def login(
    ctx: Context, server: str, user: str, device: str | None, password_stdin: bool, ca_file: Path | None,
    insecure_http: bool,
) -> None:  # fmt: skip
    """Log this machine in to SERVER (e.g. https://box.example.org) and store a device token.

    Plain http:// is refused for any server but this machine's own unless
    --insecure-http is given.
    """
    import trio

    from ..remote import login as remote_login
    from ..tls import check_server

    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"{server!r} is not a server address; give one like https://box.example.org")
    check_server(server, insecure_http=insecure_http)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    home = ctx.home
    settings = home.load_settings()
    same_account = (settings.server, settings.user) == (server.rstrip("/"), user)
    settings.server = server.rstrip("/")
    settings.user = user
    settings.ca_file = str(ca_file.absolute()) if ca_file else ""
    settings.insecure_http = insecure_http
    if device:
        settings.device = device
    # The same machine logging in again keeps its device name (the server knows it by this token).
    replaces = home.token_file.read_text().strip() if same_account and home.token_file.exists() else None
    answer = trio.run(partial(remote_login, replaces=replaces), settings.server, user, password, settings.device,
                      None, settings.ca_file)
    if answer["device"] != settings.device:
        click.echo(f"another device of {user} is called {settings.device}: this one is {answer['device']}")
    settings.device = answer["device"]
    settings.store = answer["store"]
    home.save_token(answer["token"])
    home.save_settings(settings)
    click.echo(f"logged in to {settings.server} as {user} (device {settings.device})")


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground until unmounted.")
@click.option("--shared", metavar="NAME",
              help="Mount the shared folder NAME (as 'websync shares' lists it) instead of your own files.")
@click.option("--allow-other", is_flag=True,
              help="Let other users of this machine in (as far as owners and modes allow); needs root or "
                   "user_allow_other in /etc/fuse.conf.")
@pass_ctx
@friendly
def mount(ctx: Context, mountpoint: Path, foreground: bool, shared: str | None, allow_other: bool) -> None:
    """Mount the store at MOUNTPOINT (on Windows a drive letter like X: or a new folder); returns once mounted.

    With --shared, a folder shared with you (or by you) is a mount of its own,
    read-only if you may only read it.
    """
    if allow_other and sys.platform != "win32":
        _check_allow_other()
    ctx.use_shared(shared)  # the process started in the background finds the folder's place as this one left it
    home = ctx.home
    home.logged_in()
    if sys.platform == "win32":
        _mount_windows(ctx, home, mountpoint, foreground)
        return
    target = mountpoint.expanduser().absolute()
    if not target.exists():
        target.mkdir(parents=False)
    if not target.is_dir():
        raise ConfigError(f"{target} is not a directory")
    if os.path.ismount(target):
        raise ConfigError(f"{target} is already a mount point")
    if any(target.iterdir()):
        raise ConfigError(f"{target} is not empty; mount on an empty folder so no files are hidden")
    from ..folder.guards import synced_folder_above

    synced = synced_folder_above(target)
    if synced is not None:
        raise ConfigError(f"{target} is inside the synced folder {synced}; the store would sync into itself")
    pid = running_pid(home)
    if pid is not None:
        raise ConfigError(f"this home is already mounted by process {pid}; run 'websync unmount' first")
    if foreground:
        _mount_foreground(ctx, home, target, allow_other)
    else:
        _mount_background(ctx, home, target, allow_other)


def _check_allow_other(fuse_conf: Path = Path("/etc/fuse.conf")) -> None:
    """Refuse --allow-other up front where fusermount3 would refuse it (not root, no user_allow_other)."""
    if sys.platform == "win32" or os.getuid() == 0:
        return  # a drive letter has no other users to let in; root may
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        lines = []
    if not any(line.strip() == "user_allow_other" for line in lines):
        raise ConfigError(f"--allow-other needs the line user_allow_other in {fuse_conf} (or mounting as root)")


def _mount_foreground(ctx: Context, home: Home, target: Path, allow_other: bool) -> None:
    import trio

    from ..fuse.mount import run_mount

    setup_logging(home, ctx.verbose)
    with ready_pipe(f"mounted at {target}") as ready:
        trio.run(run_mount, home, target, ready, ready.progress, allow_other)


def _mount_windows(ctx: Context, home: Home, mountpoint: Path, foreground: bool) -> None:
    """A drive letter, or a folder WinFsp makes (it must not exist yet), served by the WinFsp front end."""
    place = _place(mountpoint)
    if not re.fullmatch(r"[A-Za-z]:", place):
        target = Path(place)
        if target.exists():
            raise ConfigError(f"{target} exists; WinFsp mounts on a drive letter (X:) or a folder it makes itself")
        if not target.parent.is_dir():
            raise ConfigError(f"{target.parent} is not a folder")
    pid = running_pid(home)
    if pid is not None:
        raise ConfigError(f"this home is already mounted by process {pid}; run 'websync unmount' first")
    if not foreground:
        pid = start_in_background(ctx, home, ["mount", "--foreground", place], "mounting")
        click.echo(f"mounted at {place} (process {pid})")
        return
    import trio

    from ..winfsp.mount import run_mount

    setup_logging(home, ctx.verbose)
    with ready_pipe(f"mounted at {place}") as ready:
        trio.run(run_mount, home, place, ready, ready.progress)


def _mount_background(ctx: Context, home: Home, target: Path, allow_other: bool) -> None:
    args = ["mount", "--foreground", *(["--allow-other"] if allow_other else []), str(target)]
    pid = start_in_background(ctx, home, args, "mounting")
    click.echo(f"mounted at {target} (process {pid})")


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@pass_ctx
@friendly
def unmount(ctx: Context, mountpoint: Path) -> None:
    """Unmount the store from MOUNTPOINT (pending uploads go out first, briefly)."""
    target = _place(mountpoint)
    home = _home_mounted_at(ctx, target)
    if running_pid(home) is not None:
        # The running client unmounts itself: the same on every system (WinFsp has no fusermount3).
        stop_running(home, target, mount=True)
    elif sys.platform != "win32" and os.path.ismount(target):
        _unmount_dead(Path(target))
    else:
        raise ConfigError(f"{target} is not mounted")
    click.echo(f"unmounted {target}")
    pending, pending_bytes, _ = _queue_size(home)
    if pending:
        # Offline, or the server too slow to take them all before the mount ended.
        click.echo(f"{pending} change(s), {human(pending_bytes)}, stay queued on this machine;"
                   " they go up the next time the store is mounted")
    for place in home.places() if not home.store else []:
        # The shared folders the mount showed ended with it; what waits in them waits too.
        waiting, waiting_bytes, _ = _queue_size(place) if not place.revoked() else (0, 0, "")
        if waiting:
            click.echo(f"{waiting} change(s), {human(waiting_bytes)}, in shared folder {place.share().get('name')}"
                       " stay queued on this machine; they go up the next time the store is mounted")


def _home_mounted_at(ctx: Context, target: str) -> Home:
    """The home whose running client serves *target*: this machine's own, or a shared folder's place."""
    home = ctx.home
    if ctx.shared is not None or running_pid(home) is not None:
        return home
    for place in home.places():
        try:
            mounted = json.loads(place.status_file.read_text()).get("mountpoint")
        except (OSError, ValueError):
            continue
        if mounted == target and running_pid(place) is not None:
            return place
    return home


def _place(mountpoint: Path) -> str:
    """The mount point as the client names it: a drive letter (Windows) as given, anything else absolute."""
    if sys.platform == "win32" and re.fullmatch(r"[A-Za-z]:", str(mountpoint)):
        return str(mountpoint)
    return str(mountpoint.expanduser().absolute())


def _unmount_dead(target: Path) -> None:
    """Take away a mount no client serves any more (its process was killed): the system's own unmount."""
    from ..portable import unmount_command

    command = unmount_command(target)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip() or f"{command[0]} failed"
        raise WebSyncError(f"cannot unmount {target}: {reason}")


def _probe(home: Home) -> tuple[bool, str]:
    """Ask the server directly (no mount running): online?, error."""
    import trio

    from ..errors import Offline
    from ..remote import Remote

    settings, token = home.logged_in()

    async def ask() -> None:
        remote = Remote(settings.server, token, settings.store, ca_file=settings.ca_file, shared=bool(home.store))
        try:
            await remote.whoami()
        finally:
            await remote.aclose()

    try:
        trio.run(ask)
    except Offline as exc:
        return False, str(exc)
    return True, ""


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--check", is_flag=True,
              help="Compare this machine's tree with the server's and name every difference (exit 1 if any).")
@pass_ctx
@friendly
def status(ctx: Context, paths: tuple[str, ...], as_json: bool, check: bool) -> None:
    """Show the server, user, connection and uploads waiting; for PATHS, where each file's content is.

    A file is online-only, partly cached, cached, pinned, waiting for upload,
    or a conflict copy (also readable as: getfattr -n user.websync.state FILE).
    With --check the running mount compares its tree with the server's; it
    repairs what differs by itself, keeping every byte (docs/design.md).
    """
    ctx.follow(paths)
    from ..tls import encrypted
    from .cache import file_states, state_lines

    home = ctx.home
    settings, _ = home.logged_in()
    files = file_states(home, paths) if paths else None
    pid = running_pid(home)
    daemon: dict[str, Any] = {}
    if pid is not None:
        try:
            daemon = json.loads(home.status_file.read_text())
        except (FileNotFoundError, ValueError):
            daemon = {}
    revoked = home.revoked()
    if revoked:
        online, error = False, ""
    elif daemon:
        online, error = bool(daemon.get("online")), str(daemon.get("error", ""))
    else:
        online, error = _probe(home)
    # The queue itself is the truth about what waits (the daemon's file lags).
    pending, pending_bytes, held = _queue_size(home)
    info = {
        "server": settings.server, "user": settings.user, "device": settings.device,
        "online": online, "error": error, "mounted": pid is not None and not daemon.get("folder"),
        "mountpoint": daemon.get("mountpoint", ""), "pid": pid,
        # A synced folder runs the same engine: its folder, conflicts kept and files it could not sync.
        "folder": daemon.get("folder", "") if pid is not None else "",
        "conflicts": int(daemon.get("conflicts") or 0), "problems": dict(daemon.get("problems") or {}),
        # Names this folder's file system refuses or folds, shown under another name: local -> server.
        "aliased": dict(daemon.get("aliased") or {}) if pid is not None else {},
        "pending": pending, "pending_bytes": pending_bytes, "held": held, "encrypted": encrypted(settings.server),
    }
    held = str(daemon.get("held") or held)
    info["held"] = held
    if daemon.get("updated"):
        # The running process writes its state every second: an old one means it is stuck.
        info["status_age"] = round(max(0.0, time.time() - float(daemon["updated"])), 1)
    info["notices"] = list(daemon.get("notices") or [])[-10:]
    if home.store:
        info["shared"] = home.share() | {"revoked": revoked}
    else:
        info["places"] = _running_places(home)
    if files is not None:
        info["files"] = files
    if check:
        info["check"] = _check(home, pid)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"server:     {settings.server}{'' if info['encrypted'] else ' (not encrypted)'}")
        click.echo(f"user:       {settings.user} (device {settings.device})")
        if home.store:
            share = home.share()
            mode = "read-only" if share.get("read_only") else "read-write"
            click.echo(f"shared:     {share.get('name')} of {share.get('owner')} ({mode})")
        if revoked:
            click.echo(f"stopped:    {revoked}")
        click.echo(f"connection: {'online' if online else 'offline'}{f' ({error})' if error else ''}")
        if info["folder"]:
            click.echo(f"synced:     {info['folder']} (process {pid})")
        else:
            click.echo(f"mounted:    {info['mountpoint']} (process {pid})" if pid else "mounted:    no")
        for place in info.get("places", []):
            where = f"mounted at {place['mountpoint']}" if place["mountpoint"] else f"synced with {place['folder']}"
            if place["read_only"] and not place["mountpoint"]:
                where += " (read-only: synced down only)"
            # As the mount shows it (Family (alice)): every command takes that name.
            shown = os.path.basename(place["mountpoint"]) or place["name"]
            waiting = f"; {place['pending']} change(s) waiting" if place["pending"] else ""
            click.echo(f"shared:     {place['name']} of {place['owner']} {where} (process {place['pid']}{waiting};"
                       f" 'websync --shared \"{shown}\" status')")
        for path, reason in info["problems"].items():
            click.echo(f"not synced: {path}: {reason} (retried)")
        for local, original in info["aliased"].items():
            click.echo(f"shown as:   {local} (on the server: {original})")
        elsewhere = sum(place["pending"] for place in info.get("places", []))
        click.echo(f"pending:    {pending} change(s), {human(pending_bytes)} waiting for upload"
                   + (f" (and {elsewhere} in shared folders)" if elsewhere else ""))
        if held:
            click.echo(f"held back:  {held}")
        for line in info["notices"]:
            click.echo(f"notice:     {line}")
        for line in state_lines(files or []):
            click.echo(line)
        if check:
            found = info["check"]["differences"]
            click.echo(f"check:      {len(found)} difference(s) from the server" + ("" if found else ": in step"))
            for line in found:
                click.echo(f"  {line}")
    if "token" in error and not online:
        raise Unauthorized("the server refused this device's token; run 'websync login' again")
    if check and info["check"]["differences"]:
        sys.exit(1)


def _running_places(home: Home) -> list[dict[str, Any]]:
    """The shared folders this machine is mounting or syncing now, each by its own client."""
    found = []
    for place in home.places():
        pid = running_pid(place)
        if pid is None:
            continue
        try:
            running = json.loads(place.status_file.read_text())
        except (OSError, ValueError):
            running = {}
        share = place.share()
        found.append({"name": share.get("name"), "owner": share.get("owner"), "read_only": share.get("read_only"),
                      "pid": pid, "mountpoint": running.get("mountpoint", ""), "folder": running.get("folder", ""),
                      "pending": int(running.get("pending") or 0)})
    return found


def _check(home: Home, pid: int | None) -> dict[str, Any]:
    """Ask the running mount to compare its tree with the server's."""
    if pid is None:
        raise ConfigError("--check needs the mount running: it compares the mount's tree with the server's")
    from ..control import request

    answer: dict[str, Any] = request(home.state_dir, "check", {"repair": False}, timeout=300)
    return answer


def _queue_size(home: Home) -> tuple[int, int, str]:
    """Changes waiting, their bytes, and why the oldest failed one has not gone yet."""
    if not home.replica_db.exists():
        return 0, 0, ""
    from ..statedb import StateDb
    from ..writeback import WriteBackQueue

    db = StateDb(home.replica_db)
    try:
        queue = WriteBackQueue(db)
        return len(queue), queue.pending_bytes(), queue.first_error()
    finally:
        db.close()

