"""``python -m tests.bench run``: WebSync vs a local directory, an in-memory FUSE ceiling and rclone mount.

Run from the repository root as root (for FUSE and for dropping the page
cache before cold reads).  It prints one table and writes it, with the
machine and the command, into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from .harness import ALL_TARGETS, run
from .rclone import rclone_version
from .report import (
    check_targets,
    machine_info,
    render_checks,
    render_section,
    render_table,
    write_doc,
)
from .targets import MiB
from .workloads import PHASES, Params

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def _list(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        if item not in allowed:
            raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run", help="run the benchmark")
    cmd.add_argument("--quick", action="store_true",
                     help="small sizes (64 MiB files, 1,000 small files, 50 edits, 20,000-file store): about 16 minutes")
    cmd.add_argument("--size-mib", type=int, help="size of each big file in MiB (default 1024; quick 64)")
    cmd.add_argument("--files", type=int, help="number of small files (default 10,000; quick 1,000)")
    cmd.add_argument("--edits", type=int, help="propagation edits (default 200; quick 50)")
    cmd.add_argument("--store-files", type=int, help="files in the big store of the changes row (default 200,000)")
    cmd.add_argument("--targets", type=lambda s: _list(s, ALL_TARGETS), default=list(ALL_TARGETS),
                     help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    cmd.add_argument("--only", type=lambda s: _list(s, tuple(PHASES)), default=list(PHASES),
                     help=f"comma-separated phases to run ({','.join(PHASES)}); later ones need 'big'")
    cmd.add_argument("--no-drop-caches", action="store_true", help="never drop the kernel's caches")
    cmd.add_argument("--workdir", type=Path, help="where the targets live (default: a new dir in /var/tmp)")
    cmd.add_argument("--keep", action="store_true", help="keep the working directory afterwards")
    cmd.add_argument("--profile", type=Path, metavar="DIR",
                     help="record py-spy profiles (collapsed stacks) of the WebSync processes into DIR")
    cmd.add_argument("--budget-min", type=float, metavar="MIN",
                     help="start no further phase after MIN minutes (the table says what did not run)")
    cmd.add_argument("--doc", type=Path, default=DOC, help="the results page to update (default docs/benchmarks.md)")
    cmd.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    params = Params()
    mode = "full"
    if args.quick:
        mode = "quick"
        params = Params(size=64 * MiB, files=1_000, edits=50, store_files=20_000)
    if args.size_mib:
        params.size = args.size_mib * MiB
    if args.files:
        params.files = args.files
    if args.edits:
        params.edits = args.edits
    if args.store_files:
        params.store_files = args.store_files
    if any(v is not None for v in (args.size_mib, args.files, args.edits, args.store_files)) or \
            args.only != list(PHASES) or args.targets != list(ALL_TARGETS):
        mode = "custom"
    params.drop_caches = not args.no_drop_caches

    command = ".venv/bin/python -m tests.bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.time()
    load_before = os.getloadavg()[0]
    results = run(params, args.targets, args.only, workdir=args.workdir, keep=args.keep, profile=args.profile,
                  budget=args.budget_min * 60 if args.budget_min else None)
    elapsed = time.time() - started

    print()
    print(render_table(params, results))
    print()
    print(render_checks(check_targets(params, results)))
    for where, error in results.errors.items():
        print(f"error in {where}: {error}")
    if not args.no_doc:
        info = machine_info()
        info["load"] = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        section = render_section(mode, command, time.strftime("%Y-%m-%d %H:%M"), info, params, results,
                                 elapsed, rclone_version() if any(t.startswith("rclone") for t in args.targets)
                                 else "rclone not run")
        write_doc(args.doc, mode, section)
        print(f"\nwritten to {args.doc} (section '{mode}')")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
