"""Set up every target, run the phases on each, tear everything down whatever happens.

Phases run in the outer loop and targets in the inner one, so the numbers of
one row are taken minutes apart, not half an hour apart: on a shared machine
the load drifts, and the issue's targets are ratios within a row.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .rclone import ensure_rclone
from .targets import (
    CeilingTarget,
    LocalTarget,
    RcloneDefaultsTarget,
    RcloneTarget,
    Target,
    WebSyncTarget,
    remove_workdir,
    stop_pid,
)
from .workloads import PHASES, Params, Results

__all__ = ["ALL_TARGETS", "run"]

ALL_TARGETS = ("local", "ceiling", "websync", "rclone", "rclone-defaults")
_MAKERS: dict[str, Callable[[Path], Target]] = {
    "local": LocalTarget, "ceiling": CeilingTarget, "websync": WebSyncTarget, "rclone": RcloneTarget,
    "rclone-defaults": RcloneDefaultsTarget,
}


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


@contextlib.contextmanager
def _profiling(targets: list[Target], out: Path | None) -> Iterator[None]:
    """py-spy on every WebSync process while the phases run (collapsed stacks, one file each).

    ``--nonblocking`` is required, not an optimisation: py-spy otherwise stops
    the process for each sample, and a FUSE daemon stopped while its
    invalidator thread waits in the kernel (``fuse_reverse_inval_entry`` needs
    the directory lock that a pending unlink holds, and the unlink waits for
    the stopped daemon) never gets going again (seen with py-spy 0.4.3).
    """
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    recorders = []
    for target in targets:
        for name, pid in target.pids().items():
            if not name.startswith("websync"):
                continue
            path = out / f"{name}.collapsed.txt"
            with open(out / f"{name}.py-spy.log", "wb") as errors:
                recorders.append(subprocess.Popen(
                    [str(py_spy), "record", "--pid", str(pid), "--nonblocking", "--format", "raw",
                     "--rate", "200", "--output", str(path)],
                    stdout=subprocess.DEVNULL, stderr=errors,
                ))
            log(f"py-spy records {name} (pid {pid}) into {path}")
    try:
        yield
    finally:
        for recorder in recorders:
            stop_pid(recorder.pid)  # SIGINT: py-spy writes its output and exits


def run(
    params: Params,
    targets: Sequence[str] = ALL_TARGETS,
    phases: Sequence[str] = tuple(PHASES),
    workdir: Path | None = None,
    keep: bool = False,
    profile: Path | None = None,
    budget: float | None = None,
) -> Results:
    """Run *phases* on *targets* and return what was measured (errors are recorded, not raised).

    With a *budget* (seconds), no phase starts on a target once it is spent:
    what did not run is noted, and the results so far are still returned.
    Ctrl-C (or SIGTERM) stops the same way, after tearing everything down.
    """
    results = Results()
    began = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    if any(key.startswith("rclone") for key in targets):
        ensure_rclone()
    base = Path(tempfile.mkdtemp(prefix="websync-bench-", dir=str(workdir) if workdir else "/var/tmp"))
    log(f"working in {base}")
    made: list[Target] = []
    try:
        with contextlib.ExitStack() as stack:
            for key in targets:
                log(f"setting up {key}")
                target = _MAKERS[key](base / key)
                made.append(target)
                stack.callback(_close, target)
            with _profiling(made, profile):
                for phase in phases:
                    for target in made:
                        if budget is not None and time.monotonic() - began > budget:
                            results.note(f"not run: {phase} on {target.label} (time budget of "
                                         f"{budget / 60:.0f} min spent)")
                            continue
                        start = time.perf_counter()
                        log(f"[{target.key}] {phase} ...")
                        try:
                            PHASES[phase](target, params, results)
                        except KeyboardInterrupt:
                            results.note(f"interrupted during {phase} on {target.label}; later phases not run")
                            budget = 0.0
                        except Exception as exc:  # noqa: BLE001 - recorded; the other rows go on
                            traceback.print_exc()
                            results.errors[f"{phase} on {target.label}"] = f"{type(exc).__name__}: {exc}"
                        log(f"[{target.key}] {phase} done in {time.perf_counter() - start:.1f} s")
            for target in made:
                if isinstance(target, WebSyncTarget):
                    for line in target.logged_errors()[:10]:
                        results.note(f"WebSync logged: {line.strip()[:300]}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep:
            remove_workdir(base)
        else:
            log(f"kept {base}")
    return results


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _close(target: Target) -> None:
    log(f"tearing down {target.key}")
    try:
        target.close()
    except Exception:  # noqa: BLE001 - the other targets must still be torn down
        traceback.print_exc()
