"""The ``websync-server`` command: run the server and manage its users.

Commands only compose: they parse options, call the components and print.
Every failure becomes one sentence on stderr and exit code 1 (`_friendly_errors`);
``-v`` adds the traceback.  Heavy imports (uvicorn, starlette, SQLAlchemy) happen
inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .services import Services

__all__ = ["main"]

log = logging.getLogger("websync_server")

F = TypeVar("F", bound=Callable[..., Any])

DATA_ENV = "WEBSYNC_SERVER_DATA"
DATABASE_ENV = "WEBSYNC_SERVER_DATABASE"
BLOCKS_ENV = "WEBSYNC_SERVER_BLOCKS"
# Where --database and --blocks leave their values for `_storage` (click context meta).
_STORAGE_META = "websync_server.storage"
DEFAULT_DATA = Path("~/.local/share/websync-server")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOG_MAX_BYTES = 10 * 1024 * 1024
_LOG_BACKUPS = 5


def _friendly_errors(func: F) -> F:
    """Turn any failure into one sentence and exit code 1; the traceback only with -v."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if kwargs.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(_describe(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _describe(exc: Exception) -> str:
    from ._exceptions import ServerError

    if isinstance(exc, ServerError):
        return exc.message
    if isinstance(exc, OSError):
        if not exc.strerror:
            return str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"unexpected {type(exc).__name__}: {exc} (run with -v for details)"


def _data_option(func: F) -> F:
    """--data, and --database and --blocks beside it: every command that opens the server's state takes all three.

    --database and --blocks don't become parameters of each command: they are
    left in the click context for `_storage`, so a command that opens the
    state through `_services` needs no change to honour them.
    """
    func = click.option(
        "--blocks", metavar="FOLDER|s3://BUCKET[/PREFIX]", envvar=BLOCKS_ENV, expose_value=False,
        callback=_remember_storage,
        help=f"Where blocks live: a folder, or S3-compatible object storage with the standard AWS_* variables "
             f"(default: DATA/blocks; ${BLOCKS_ENV}).",
    )(func)  # fmt: skip
    func = click.option(
        "--database", metavar="URL", envvar=DATABASE_ENV, expose_value=False, callback=_remember_storage,
        help=f"The metadata database, e.g. postgresql://USER:PASSWORD@HOST/DB (default: SQLite in DATA; ${DATABASE_ENV}).",
    )(func)  # fmt: skip
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=DATA_ENV,
        default=DEFAULT_DATA,
        show_default=f"${DATA_ENV} or {DEFAULT_DATA}",
        help="The server's data directory: log and local state, and the database and blocks by default.",
    )(func)


def _remember_storage(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_STORAGE_META, {})[param.name] = value
    return value


def _storage() -> tuple[str | None, str | None]:
    """The --database URL and --blocks folder of the running command (None: the defaults in --data)."""
    given = click.get_current_context().meta.get(_STORAGE_META, {})
    return given.get("database"), given.get("blocks")


def _block_folder(services: Services) -> Path | None:
    """The folder of the server's blocks, or None when they are in object storage."""
    from .blocks import BlockStore

    return services.blocks.root if isinstance(services.blocks, BlockStore) else None


def _only_default_storage(what: str) -> None:
    """Refuse a command that works on the embedded SQLite database and block folder only."""
    if any(value is not None for value in _storage()):
        raise click.UsageError(f"{what} works on the default storage in --data only; see docs/operations.md")


def _verbose_option(func: F) -> F:
    return click.option(
        "-v", "--verbose", count=True, help="Log to the terminal too and show tracebacks; -vv for debug logs."
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """WebSync server: keeps every machine's files the same over HTTP."""
    # Every file the server makes (database, blocks, log) is its owner's alone.
    os.umask(0o077)


@main.command()
@_data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8080, type=click.IntRange(0, 65535), show_default=True, help="0 picks a free port.")
@click.option(
    "--gc-every", "gc_hours", default=24.0, type=click.FloatRange(0), show_default=True,
    help="Hours between collections of expired history and unnamed blocks (0: never; see 'gc').",
)  # fmt: skip
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve https with this PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The private key (PEM) of --tls-cert.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name clients use to reach the server (repeatable); other Host headers are refused. "
                   "Default: loopback names when listening on loopback, else any.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a connection has to send a request's headers.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds a request body may go without a byte arriving.")
@click.option("--max-connections", type=click.IntRange(16), default=4000, show_default=True,
              help="Open connections beyond which requests get 503 (long polls count; kept below the file limit).")
@click.option("--device-idle-days", type=click.FloatRange(0), default=90.0, show_default=True,
              help="Days a device may go unseen before its token stops working (0: never).")
@click.option("--access-log", is_flag=True,
              help="Log a line for every request (caller, method, path, status) beside the server's own records.")
@_verbose_option
@_friendly_errors
def serve(
    data: Path, host: str, port: int, gc_hours: float, tls_cert: Path | None, tls_key: Path | None,
    allowed_hosts: tuple[str, ...], header_timeout: float, body_timeout: float, max_connections: int,
    device_idle_days: float, access_log: bool, verbose: int,
) -> None:  # fmt: skip
    """Run the server until SIGTERM or Ctrl-C.

    Prints "websync-server listening on URL" once it accepts connections.
    On the internet, serve TLS (--tls-cert/--tls-key, or a reverse proxy) and
    name the server's host (--allowed-host): see docs/operations.md.
    """
    from . import runner
    from .app import create_app
    from .services import LOG_FILENAME, prepare_data_dir

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    data_dir = prepare_data_dir(data)
    _setup_logging(data_dir / LOG_FILENAME, verbose)
    tls = runner.Tls(tls_cert, tls_key) if tls_cert and tls_key else None
    database_url, blocks_dir = _storage()
    try:
        app = create_app(
            data_dir, database_url=database_url, blocks_dir=blocks_dir, body_timeout=body_timeout,
            allowed_hosts=allowed_hosts or _default_hosts(host), device_idle_s=device_idle_days * 86400,
        )  # fmt: skip
        sock = runner.listen(host, port)
    except Exception as exc:
        log.error("can't start: %s", exc)  # the terminal gets it from _friendly_errors
        raise
    url = runner.url_of(host, sock, tls=tls is not None)
    if gc_hours > 0:
        app.state.services.schedule_collection(gc_hours * 3600)

    def listening() -> None:
        click.echo(f"websync-server listening on {url}")
        sys.stdout.flush()
        log.info("listening on %s, data in %s", url, data_dir)

    limits = runner.Limits(header_timeout=header_timeout, connections=max_connections)
    started = runner.serve(
        app, sock, on_listening=listening, on_exit_signal=app.state.services.notifier.close, limits=limits, tls=tls,
        access_log=access_log,
    )
    if not started:
        raise click.ClickException(f"the server failed to start; see {data_dir / LOG_FILENAME}")
    log.info("stopped")


def _default_hosts(host: str) -> tuple[str, ...]:
    """Host names accepted without --allowed-host: only loopback's on loopback (no DNS rebinding), else any."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return ("127.0.0.1", "localhost", "::1") if loopback else ("*",)


@main.group()
def user() -> None:
    """Add, list and lock out users, and set their passwords."""


@user.command("add")
@click.argument("name")
@_data_option
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@_verbose_option
@_friendly_errors
def user_add(name: str, data: Path, password_stdin: bool, verbose: int) -> None:
    """Create user NAME with a password and an empty store.

    Prompts for the password twice unless --password-stdin is given.  The
    server may be running meanwhile.
    """
    from .accounts import validate_user_name

    validate_user_name(name)  # before asking for a password it can't use
    password = _new_password(name, password_stdin)
    with _services(data) as services:
        store = services.accounts.add_user(name, password)
    click.echo(f"created user {name} with store {store}")


@user.command("passwd")
@click.argument("name")
@_data_option
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of stdin.")
@_verbose_option
@_friendly_errors
def user_passwd(name: str, data: Path, password_stdin: bool, verbose: int) -> None:
    """Set a new password for user NAME (devices logged in stay so; see 'user revoke')."""
    password = _new_password(name, password_stdin)
    with _services(data) as services:
        services.accounts.set_password(name, password)
    log.info("password of user %s changed from the command line", name)
    click.echo(f"changed the password of {name}")


@user.command("list")
@_data_option
@_verbose_option
@_friendly_errors
def user_list(data: Path, verbose: int) -> None:
    """List the users with their store and number of logged-in devices."""
    with _services(data) as services:
        users = services.accounts.users()
    if not users:
        click.echo("no users yet; add one with: websync-server user add NAME")
        return
    width = max(len(u.name) for u in users)
    click.echo(f"{'USER':<{width}}  {'STORE':<32}  DEVICES")
    for info in users:
        click.echo(f"{info.name:<{width}}  {info.store:<32}  {info.devices}")


@user.command("revoke")
@click.argument("name")
@_data_option
@_verbose_option
@_friendly_errors
def user_revoke(name: str, data: Path, verbose: int) -> None:
    """Log out every device of user NAME (e.g. after a laptop was lost)."""
    with _services(data) as services:
        count = services.accounts.revoke_devices(name)
    log.info("revoked %d device token(s) of user %s from the command line", count, name)
    click.echo(f"revoked {count} device token(s) of {name}")


@user.command("remove")
@click.argument("name")
@_data_option
@click.option("--yes", is_flag=True, help="Don't ask for confirmation (for scripts).")
@_verbose_option
@_friendly_errors
def user_remove(name: str, data: Path, yes: bool, verbose: int) -> None:
    """Remove user NAME with all their files, history, trash and devices; this can't be undone.

    Asks to confirm by typing the name unless --yes is given.  The server may be running.
    """
    from .removal import remove_user

    if not yes:
        typed = click.prompt(f"This deletes {name} and all their files for good. Type the name to confirm",
                             default="", show_default=False)  # fmt: skip
        if typed != name:
            raise click.ClickException(f"not confirmed; {name} was left as they were")
    with _services(data) as services:
        removed = remove_user(services.db, services.blocks, name)
    click.echo(f"removed user {name} with {removed} files and folders")


@user.command("set")
@click.argument("name")
@_data_option
@click.option("--quota", metavar="SIZE", help="Bytes the user may store, like 50G or 700M ('none': no bound).")
@click.option("--max-nodes", metavar="N", help="Files and folders the user may have ('none': no bound).")
@_verbose_option
@_friendly_errors
def user_set(name: str, data: Path, quota: str | None, max_nodes: str | None, verbose: int) -> None:
    """Set user NAME's quota of bytes and bound on files and folders; without options, show them.

    History, trash and uploads not yet committed count (docs/operations.md).
    A running server takes a change within seconds.
    """
    from .quotas import format_size, parse_size

    changes: dict[str, int | None] = {}
    if quota is not None:
        changes["bytes"] = None if quota.strip().lower() == "none" else parse_size(quota)
    if max_nodes is not None:
        if max_nodes.strip().lower() != "none" and not max_nodes.strip().isdecimal():
            raise click.BadParameter("give a whole number or 'none'", param_hint="--max-nodes")
        changes["nodes"] = None if max_nodes.strip().lower() == "none" else int(max_nodes)
    with _services(data) as services:
        limits = services.quotas.set_limits(name, **changes)
        stored = services.quotas.stored_bytes(name)
    if changes:
        log.info("quota of user %s set from the command line: %s", name, changes)
    shown = format_size(limits.bytes) if limits.bytes is not None else "none"
    click.echo(f"{name}: quota {shown} ({format_size(stored)} stored), "
               f"max nodes {limits.nodes if limits.nodes is not None else 'none'}")  # fmt: skip


def _new_password(user: str, from_stdin: bool) -> str:
    """A new password for *user* from stdin's first line or asked twice; refused if weak."""
    from .accounts import check_password_strength

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password must not be empty")
    return check_password_strength(user, password)


@main.command()
@_data_option
@click.option("--dry-run", is_flag=True, help="Only report what would be freed.")
@click.option("--trash-days", type=click.FloatRange(0), help="Keep the trash this long for this run (0: empty it).")
@click.option("--version-days", type=click.FloatRange(0), help="Keep old versions this long for this run (0: drop them).")
@click.option("--grace-hours", type=click.FloatRange(0), help="Spare blocks uploaded within this many hours (default: the setting).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_verbose_option
@_friendly_errors
def gc(
    data: Path, dry_run: bool, trash_days: float | None, version_days: float | None, grace_hours: float | None,
    as_json: bool, verbose: int,
) -> None:  # fmt: skip
    """Free what nothing needs any more: expired versions and trash, old journal records, unnamed blocks.

    Safe while the server runs (it collects by itself every day too, see
    'serve --gc-every').  The retention settings ('websync-server retention')
    decide what expires; --trash-days and --version-days override them for
    this run only.
    """
    from .gc import collection_lock

    with _services(data) as services:
        with collection_lock(services.data_dir):
            report = services.collector().run(
                dry_run=dry_run, trash_days=trash_days, version_days=version_days, grace_hours=grace_hours
            )
    click.echo(json.dumps(report.to_wire(), indent=2) if as_json else report.summary())


@main.command()
@_data_option
@click.option("--repair", is_flag=True, help="Repair what is safe to repair (nothing named is ever deleted).")
@click.option("--no-rehash", is_flag=True, help="Don't read every block file to check its hash (much faster).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_verbose_option
@_friendly_errors
def check(data: Path, repair: bool, no_rehash: bool, as_json: bool, verbose: int) -> None:
    """Check the database and the block files; exit status 0 only when all is well.

    Safe while the server runs.  --repair moves damaged or stray files into
    DATA/quarantine (never deletes them), removes stale uploads and frees
    block files nothing names (as 'gc' does), then checks again.
    """
    from . import check as checker
    from .services import prepare_data_dir

    data_dir = prepare_data_dir(data)
    with _services(data) as services:
        folder = _block_folder(services)
        objects = services.blocks if folder is None else None
        report = checker.check(data_dir, rehash=not no_rehash, db=services.db, blocks_dir=folder, objects=objects)
        if repair and (report.problems or report.orphans):
            done = checker.repair(data_dir, report, services)
            report = checker.check(data_dir, rehash=not no_rehash, db=services.db, blocks_dir=folder,
                                   objects=objects)
            report.repaired = done
    if as_json:
        click.echo(json.dumps(report.to_wire(), indent=2))
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for problem in report.problems:
            click.echo(f"{problem.kind}: {problem.message}")
        orphans = sum(report.orphans.values())
        counts = ", ".join(f"{n} {what}" for what, n in report.counts.items())
        click.echo(f"{'ok' if report.ok else f'{len(report.problems)} problems'}: checked {counts}"
                   + (f"; {orphans} block files named by nothing (see 'gc')" if orphans else ""))
    if not report.ok:
        sys.exit(1)


@main.command()
@_data_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_verbose_option
@_friendly_errors
def backup(data: Path, dest: Path, as_json: bool, verbose: int) -> None:
    """Back up the server into folder DEST while it runs (again into DEST: only new blocks are copied).

    The database is copied with SQLite's online backup (one consistent
    moment), then the blocks; collections wait meanwhile.  Restore with
    'websync-server restore'.  With --database/--blocks (PostgreSQL, object
    storage) the backup reads one snapshot of the rows and copies the objects
    into the same single-box layout: 'restore' it, then 'migrate' it back.
    """
    from .backup import backup as run_backup
    from .backup import backup_scaled
    from .services import prepare_data_dir

    if any(value is not None for value in _storage()):
        # PostgreSQL and object storage: into a single box's layout ('restore', then 'migrate').
        with _services(data) as services:
            report = backup_scaled(prepare_data_dir(data), services.db, services.blocks, dest)
    else:
        report = run_backup(prepare_data_dir(data), dest)
    click.echo(json.dumps(report.to_wire(), indent=2) if as_json else report.summary(f"backed up into {dest}"))


@main.command()
@_data_option
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_verbose_option
@_friendly_errors
def restore(data: Path, source: Path, as_json: bool, verbose: int) -> None:
    """Restore the backup in SOURCE into a new data directory (--data), then serve it.

    Every machine lists its store again when it next reaches the server, and
    a machine that has work newer than the backup sends it again.
    """
    from .backup import restore as run_restore

    _only_default_storage("restore")
    report = run_restore(data.expanduser().absolute(), source)
    click.echo(json.dumps(report.to_wire(), indent=2) if as_json else report.summary(f"restored into {data}"))


@main.command()
@_data_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_verbose_option
@_friendly_errors
def usage(data: Path, as_json: bool, verbose: int) -> None:
    """Show each user's bytes of current files, history, trash and on disk, and their quota."""
    from .usage import read_usage

    with _services(data) as services:
        folder = _block_folder(services)
        rows = read_usage(services.db, folder, services.blocks if folder is None else None)
    if as_json:
        click.echo(json.dumps([r.to_wire() for r in rows], indent=2))
        return
    width = max([4, *(len(r.user) for r in rows)])
    click.echo(f"{'USER':<{width}}  {'CURRENT':>10}  {'HISTORY':>10}  {'TRASH':>10}  {'ON DISK':>10}  "
               f"{'BLOCKS':>8}  {'QUOTA':>10}  MAX NODES")  # fmt: skip
    for r in rows:
        sizes = "  ".join(f"{_size(n):>10}" for n in (r.current, r.history, r.trash, r.disk))
        quota = _size(r.quota) if r.quota is not None else "-"
        click.echo(f"{r.user:<{width}}  {sizes}  {r.blocks:>8}  {quota:>10}  {r.max_nodes if r.max_nodes is not None else '-'}")


@main.command()
@_data_option
@click.option("--user", "user_name", help="Set the value for this user only (trash and version days).")
@click.option("--trash-days", type=click.FloatRange(0), help="How long deleted files can be restored.")
@click.option("--version-days", type=click.FloatRange(0), help="How long replaced versions are kept.")
@click.option("--journal-days", type=click.FloatRange(0), help="How long removals stay in the change journal.")
@click.option("--grace-hours", type=click.FloatRange(0), help="How long an uploaded block waits for its commit.")
@click.option("--default", "reset", multiple=True, metavar="SETTING", help="Return SETTING to its default.")
@_verbose_option
@_friendly_errors
def retention(
    data: Path, user_name: str | None, trash_days: float | None, version_days: float | None,
    journal_days: float | None, grace_hours: float | None, reset: tuple[str, ...], verbose: int,
) -> None:  # fmt: skip
    """Show or change how long history, the trash and the journal are kept.

    Without options, prints the settings in force.  A running server takes a
    change within seconds; the next collection applies it.
    """
    from .retention import read_retention, user_names, write_setting

    given = {"trash_days": trash_days, "version_days": version_days, "journal_days": journal_days,
             "grace_hours": grace_hours}  # fmt: skip
    with _services(data) as services:
        with services.db.read() as conn:
            names = user_names(conn)
        user_id = None
        if user_name is not None:
            user_id = next((uid for uid, name in names.items() if name == user_name), None)
            if user_id is None:
                raise click.ClickException(f"there is no user {user_name}")
        for name in reset:
            write_setting(services.db, name.replace("-", "_"), None, user_id)
        for name, value in given.items():
            if value is not None:
                write_setting(services.db, name, value, user_id)
        with services.db.read() as conn:
            settings = read_retention(conn)
    for name in ("trash_days", "version_days", "journal_days", "grace_hours"):
        click.echo(f"{name.replace('_', '-')}: {getattr(settings, name):g}")
    for uid, name, value in settings.per_user:
        click.echo(f"{name.replace('_', '-')} for {names.get(uid, uid)}: {value:g}")


@main.command()
@click.option("--data", "data", type=click.Path(file_okay=False, exists=True, path_type=Path), envvar=DATA_ENV,
              default=DEFAULT_DATA, show_default=f"${DATA_ENV} or {DEFAULT_DATA}",
              help="The single box's data directory (its SQLite database and block folder are copied).")
@click.option("--to", "to", required=True, metavar="URL",
              help="The target database, e.g. postgresql://USER:PASSWORD@HOST/DB; it must have no users yet.")
@click.option("--blocks", "blocks", required=True, metavar="FOLDER|s3://BUCKET[/PREFIX]",
              help="The target block store (S3 credentials from the standard AWS_* variables).")
@_verbose_option
@_friendly_errors
def migrate(data: Path, to: str, blocks: str, verbose: int) -> None:
    """Move a single box (SQLite and a block folder) onto another database and block store.

    Stop the server first; machines keep their changes queued and send them
    once the new set-up serves.  Every login stays valid.  Then serve with
    --database URL --blocks ... (see docs/operations.md, "Scaling out").
    """
    from .blocks import BlockStore
    from .database import Database
    from .gc import collection_lock
    from .services import BLOCKS_DIR, LOG_FILENAME, open_blocks, prepare_data_dir
    from .transfer import TransferReport, copy_blocks, copy_database

    data_dir = prepare_data_dir(data)
    _setup_logging(data_dir / LOG_FILENAME, verbose)
    report = TransferReport()
    with collection_lock(data_dir):
        source, target = Database.open_in(data_dir), Database.open(to)
        try:
            copy_database(source, target, report)
        finally:
            source.close()
            target.close()
        click.echo(f"copied the database into {_without_password(to)}")
        folder = BlockStore(data_dir / BLOCKS_DIR)
        with click.progressbar(length=sum(1 for _ in folder.root.rglob("*") if _.is_file()),
                               label="copying blocks", file=sys.stderr) as bar:  # fmt: skip
            copy_blocks(folder, open_blocks(blocks, data_dir), report, bar.update)
    log.info("migrated %s to %s and %s: %s", data_dir, _without_password(to), blocks, report.summary())
    click.echo(report.summary())


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _services:
    """The server's components for one CLI command, closed afterwards."""

    def __init__(self, data: Path) -> None:
        self._data = data

    def __enter__(self) -> Services:
        from .services import LOG_FILENAME, Services, prepare_data_dir

        # What a user command changes (passwords, revocations) goes into the
        # server's log beside what the server itself did: one audit trail.
        if not logging.getLogger().handlers:
            _setup_logging(prepare_data_dir(self._data) / LOG_FILENAME, 0)
        database_url, blocks_dir = _storage()
        self._services = Services.open(self._data, database_url=database_url, blocks_dir=blocks_dir)
        return self._services

    def __exit__(self, *exc: object) -> None:
        self._services.close()


def _setup_logging(path: Path, verbose: int) -> None:
    """Log to *path* always (rotated), and to stderr with -v; -vv logs debug records."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    formatter = logging.Formatter(_LOG_FORMAT)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            path, maxBytes=_LOG_MAX_BYTES, backupCount=_LOG_BACKUPS, encoding="utf-8"
        )
    ]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


if __name__ == "__main__":
    main()
