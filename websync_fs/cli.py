"""The ``websync`` command: a click group that only composes commands.

Every `WebSyncError` becomes one clear sentence on stderr and its exit code;
tracebacks only appear for bugs, or with ``-v``.
"""

from __future__ import annotations

import click

from .commands import cache as cache_commands
from .commands import account, folder, history, service, session, share
from .commands._common import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="websync", prog_name="websync", message="%(prog)s %(version)s")
@click.option("--home", envvar="WEBSYNC_HOME", type=click.Path(file_okay=False),
              help="Directory for this machine's config, state and cache (default: XDG directories).")
@click.option("-v", "--verbose", is_flag=True, help="Log to the terminal too, with debug detail.")
@click.option("--shared", metavar="NAME",
              help="Act on the shared folder NAME's place on this machine (its mount, status, history, trash).")
@click.pass_context
def main(ctx: click.Context, home: str | None, verbose: bool, shared: str | None) -> None:
    """WebSync: the same files on every machine, mounted as a folder."""
    ctx.obj = Context(home, verbose, shared)



for module in (session, folder, account, history, share, cache_commands, service):
    for name in module.COMMANDS:
        main.add_command(getattr(module, name))


if __name__ == "__main__":
    main()
