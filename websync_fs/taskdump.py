"""What every task of a running client waits on, written to its log on SIGUSR2.

A client that stops making progress (a synced folder that stays behind, a
mount whose calls hang) shows little in a thread dump: its work is trio tasks
parked at an ``await``.  ``kill -USR2 PID`` writes one line a task to the log,
its chain of awaits innermost last, indented by nursery -- what a stuck task
waits for.  One receiver per process (the front end's own), as trio gives a
signal to the receiver opened last only.  Nothing on Windows (no SIGUSR2).
"""

from __future__ import annotations

import logging
import os
import signal

import trio

log = logging.getLogger(__name__)

#: Frames of trio's own machinery left out of a task's line (every parked task ends in them).
_TRIO = ("/trio/", "/outcome/")


async def serve() -> None:
    """Until cancelled: on each SIGUSR2, log every task of this process and what it awaits."""
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
