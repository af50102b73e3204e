"""What every ``websync`` command shares: the context, error handling, logging, formatting."""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.handlers
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import WebSyncError
from ..home import Home

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
log = logging.getLogger("websync_fs")


@dataclass
class Context:
    home_option: str | None
    verbose: bool
    #: The shared folder a command is about (``--shared NAME``), or None: the user's own store.
    shared: str | None = None
    _place: Home | None = None

    @property
    def home(self) -> Home:
        """This machine's home, or the place of the shared folder ``--shared`` names (home.py)."""
        base = Home.locate(self.home_option)
        if self.shared is None:
            return base
        if self._place is None:
            self._place = shared_place(base, self.shared, refresh=False)
        return self._place

    def use_shared(self, name: str | None) -> None:
        """Make ``--shared NAME`` of a mount or sync count, asking the server for the folder's mode."""
        if name is None:
            return
        self.shared = name
        self._place = shared_place(Home.locate(self.home_option), name, refresh=True)


    def follow(self, paths: Sequence[str]) -> None:
        """*paths* inside a shared folder shown in the mount are that folder's: the command goes to its place.

        A folder shared with the user runs as a place of its own inside the
        mount's process (fuse/grafts.py); its status says where it is shown.
        """
        from ..storepaths import mountpoint_of

        if self.shared is not None or not paths:
            return
        absolute = [os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(p))) for p in paths]
        for place in Home.locate(self.home_option).places():
            where = mountpoint_of(place.status_file)
            if where and all(a == where or a.startswith(where.rstrip(os.sep) + os.sep) for a in absolute):
                self.shared, self._place = str(place.share().get("name")), place
                return


def _named(share: dict[str, Any], name: str) -> bool:
    """Whether *share* is named *name*: as it is, or as a mount shows it (``NAME (OWNER)``, ``NAME (OWNER 2)``)."""
    return name == share.get("name") or re.fullmatch(
        re.escape(f"{share.get('name')} ({share.get('owner')}") + r"( [2-9]| [1-9][0-9]+)?\)", name) is not None


def choose_share(listed: list[dict[str, Any]], name: str, user: str | None) -> dict[str, Any] | None:
    """The folder of *listed* that *name* means (None: none); `ConfigError` if that is unclear.

    A folder named just so comes before one shown so (``Fam (alice)``), as in
    the mount (`sharedfolders.top_names`); of several, *user*'s own (share and
    unshare: a user shares their own folders), if *user* is given.
    """
    from ..errors import ConfigError

    found = [s for s in listed if s.get("name") == name] or [s for s in listed if _named(s, name)]
    if len(found) > 1 and user is not None:
        found = [s for s in found if s.get("owner") == user] or found
    if len(found) > 1:
        raise ConfigError(f"{len(found)} shared folders are named {name!r}; give it as '{name} (OWNER)'")
    return found[0] if found else None


def shared_place(base: Home, name: str, *, refresh: bool) -> Home:
    """The place of the shared folder *name* on this machine: as `websync shares` lists it, or ``NAME (OWNER)``.

    What the server lists wins (*refresh*, or a folder this machine has never
    had); offline, the folders this machine has had answer.  A folder named
    alike by two owners must be given with its owner.
    """
    from ..errors import ConfigError, Offline

    known = [place.share() for place in base.places()]
    listed: list[dict[str, Any]] | None = None
    if refresh or not any(_named(s, name) for s in known):
        try:
            listed = with_remote(base, lambda remote: remote.shares())
        except Offline:
            if not any(_named(s, name) for s in known):
                raise
    if listed is not None:
        _forget_unlisted(base, {str(s["store"]) for s in listed})
    share = choose_share(known if listed is None else listed, name, None)
    if share is None:
        raise ConfigError(f"no shared folder is named {name!r}; see 'websync shares'")
    place = base.place(str(share["store"]))
    if listed is not None:
        if place.revoked():
            place.status_file.unlink(missing_ok=True)  # shared again since
        place.save_share({key: share[key] for key in ("store", "name", "owner", "read_only")})
    return place


def _forget_unlisted(base: Home, listed: set[str]) -> None:
    """Delete what this machine holds of folders no longer shared with it that no client had running to see it."""
    for place in base.places():
        if place.store not in listed and not place.forgotten() and running_pid(place) is None:
            from ..kept import forget_unshared  # the engine's modules: only when a folder left the list

            forget_unshared(place)


def friendly(fn: F) -> F:
    """Turn WebSync errors into a message and an exit code (docs/user-guide.md lists them)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WebSyncError as exc:
            ctx = click.get_current_context().find_object(Context)
            if ctx is not None and ctx.verbose:
                log.exception("command failed")
            click.echo(f"websync: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("websync: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class _InterruptedReply(logging.Filter):
    """Demote pyfuse3's ERROR for a reply the kernel no longer waits for to DEBUG.

    libfuse's ``fuse_reply_*`` fails with ENOENT when the request was
    interrupted or the kernel dropped it (a RELEASE sent while the mount is
    being unmounted, a read whose program was killed): nothing is lost, the
    kernel wants no answer, yet pyfuse3 logs ``fuse_release(): fuse_reply_*
    failed with No such file or directory`` as an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "fuse_reply_* failed with No such file" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup_logging(home: Home, verbose: bool) -> None:
    home.ensure()
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler = logging.handlers.RotatingFileHandler(home.log_file, maxBytes=10 * 1024**2, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if verbose:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pyfuse3").addFilter(_InterruptedReply())


pass_ctx = click.make_pass_decorator(Context)


def running_pid(home: Home) -> int | None:
    """The pid of the mount running on *home* (0 while it starts), or None: decided by its lock."""
    from ..mountlock import holder

    return holder(home.pid_file) if home.state_dir.is_dir() else None


def stop_running(home: Home, place: str, mount: bool) -> None:
    """Ask the client running on *home* to stop serving *place* (control channel), and wait until it has ended.

    The client answers once its front end is going (FUSE: unmounted); it then
    gives pending uploads a short chance, so the wait is longer than that.
    """
    from ..control import NotRunning, request

    try:
        request(home.state_dir, "stop", {"place": place, "mount": mount}, timeout=120)
    except NotRunning:
        return  # it ended meanwhile
    deadline = time.monotonic() + 60
    while running_pid(home) is not None and time.monotonic() < deadline:  # its lock goes with it
        time.sleep(0.05)


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def with_remote(home: Home, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(remote)`` with a client of this machine's server and token, for a command."""
    import trio

    from ..remote import Remote

    settings, token = home.logged_in()

    async def run() -> T:
        remote = Remote(settings.server, token, settings.store, ca_file=settings.ca_file, shared=bool(home.store))
        try:
            return await fn(remote)
        finally:
            await remote.aclose()

    return trio.run(run)


class Ready:
    """Call it once the daemon runs; `progress` before that, while a first listing arrives."""

    def __init__(self, message: str, fd: int | None) -> None:
        self.message = message
        self.fd = fd

    def __call__(self) -> None:
        if self.fd is not None:
            os.write(self.fd, b"ok\n")
            os.close(self.fd)
        else:
            click.echo(self.message)

    def progress(self, records: int) -> None:
        if self.fd is not None:
            os.write(self.fd, f"progress {records}\n".encode())
        elif sys.stderr.isatty():
            click.echo(f"\rreceiving the tree: {records:,} records", nl=False, err=True)


@contextlib.contextmanager
def ready_pipe(message: str) -> Iterator[Ready]:
    """The ``ready`` callback of a daemon run in the foreground: tells the parent (or the terminal) it runs.

    A failure before ready goes to the parent as ``CODE SENTENCE`` so it can
    print the sentence and exit with the code; ``ready.progress(N)`` before
    that tells how many records of a first listing arrived.
    """
    from ..portable import inherited

    ready_fd = os.environ.pop("WEBSYNC_READY_FD", None)
    ready = Ready(message, inherited(ready_fd) if ready_fd is not None else None)
    try:
        yield ready
    except WebSyncError as exc:
        if ready.fd is not None:
            try:
                os.write(ready.fd, f"{exc.exit_code} {exc}\n".encode())
            except OSError:
                pass
        raise
    except Exception:
        # A bug: into the log the user is pointed to, not only the detached process's stderr.
        log.critical("%s: ended by an unexpected error", message, exc_info=True)
        raise


def start_in_background(ctx: Context, home: Home, command: list[str], what: str) -> int:
    """Run ``websync COMMAND`` (a ``--foreground`` daemon) detached; return its pid once it is ready."""
    home.ensure()
    from ..portable import detached_child

    read_end, write_end = os.pipe()
    detached, name = detached_child(write_end)
    env = dict(os.environ, WEBSYNC_READY_FD=name)
    args = [sys.executable, "-m", "websync_fs.cli"]
    if ctx.home_option:
        args += ["--home", str(Path(ctx.home_option).expanduser().absolute())]
    if ctx.verbose:
        args.append("-v")
    if ctx.shared is not None:
        args += ["--shared", ctx.shared]
    args += command
    with open(home.state_dir / "mount.out", "ab") as out:
        child = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **detached)
    os.close(write_end)
    answer = ""
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode(errors="replace").strip()
            if line.startswith("progress "):
                # A first start on a big store: the tree arrives page by page before it is shown.
                if sys.stderr.isatty():
                    click.echo(f"\rreceiving the tree: {int(line.split()[1]):,} records", nl=False, err=True)
                continue
            answer += line
    if sys.stderr.isatty():
        click.echo("\r\033[K", nl=False, err=True)
    if answer == "ok":
        return child.pid
    child.wait(timeout=30)
    if answer:
        code, _, message = answer.partition(" ")
        click.echo(f"websync: {message}", err=True)
        sys.exit(int(code) if code.isdigit() else 1)
    raise WebSyncError(f"{what} failed; see {home.log_file} and {home.state_dir / 'mount.out'}")
