"""What every task of a running client waits on, written to its log on SIGUSR2.

A client that stops making progress (a synced folder that stays behind, a
mount whose calls hang) shows little in a thread dump: its work is trio tasks
parked at an ``await``.  ``kill -USR2 PID`` writes one line a task to the log,
its chain of awaits innermost last, indented by nursery -- what a stuck task
waits for.  One receiver per process (the front end's own), as trio gives a
signal to the receiver opened last only.

The task dump needs the event loop to run.  For a process whose loop itself
is held up (a call that blocks it, a loop that never yields), ``kill -USR1
PID`` writes every thread's Python stack into the log (`faulthandler`, from
the signal handler itself).  Nothing on Windows (no SIGUSR1 or SIGUSR2).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from typing import TextIO

import trio

log = logging.getLogger(__name__)

#: Frames of trio's own machinery left out of a task's line (every parked task ends in them).
_TRIO = ("/trio/", "/outcome/")


def log_file() -> str | None:
    """The path of this process's log file (the root logger's file handler), or None."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


#: The file the threads' stacks go to, open for as long as the process runs: faulthandler
#: writes to its descriptor number, which must never be closed and handed to another file
#: (the log handler's own stream is closed at each rotation).
_stacks: TextIO | None = None


def threads_on_signal(path: str | None) -> bool:
    """On SIGUSR1, write every thread's stack to the end of file *path*; False where that cannot be."""
    global _stacks
    if sys.platform == "win32" or path is None:
        return False  # neither SIGUSR1 nor faulthandler.register there
    stream = open(path, "a")  # noqa: SIM115 - kept open on purpose, see _stacks
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    if _stacks is not None:
        _stacks.close()  # registered again: the old file is no longer used
    _stacks = stream
    return True


async def serve() -> None:
    """Until cancelled: on each SIGUSR2, log every task of this process and what it awaits.

    It also arms SIGUSR1 for the threads' stacks (`threads_on_signal`) into the log.
    """
    threads_on_signal(log_file())
    usr2 = getattr(signal, "SIGUSR2", None)
    if usr2 is None:
        return
    with trio.open_signal_receiver(usr2) as signals:
        async for _ in signals:
            root = trio.lowlevel.current_root_task()
            log.warning("tasks and what they wait for (SIGUSR2):")
            for line in lines(root) if root is not None else []:
                log.warning("%s", line)


def lines(task: trio.lowlevel.Task, depth: int = 0) -> list[str]:
    """One line for *task* and each task under it: its name and the awaits it is parked in."""
    frames = []
    for frame, lineno in task.iter_await_frames():
        code = frame.f_code
        if not any(part in code.co_filename for part in _TRIO):
            frames.append(f"{os.path.basename(code.co_filename)}:{lineno} {code.co_name}")
    out = [f"{'  ' * depth}{task.name}: {' > '.join(frames) or '-'}"]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            out.extend(lines(child, depth + 1))
    return out
