"""Machines always converge: random concurrent work on several mounts ends in one tree.

Two or three machines run random operations on the same few folders at once
(`tests/faults/chaos.py`), optionally with one of them cut off or killed
midway.  Then everyone goes quiet, and:

* every queue is empty and no machine reports an error it is stuck on;
* every machine's tree (names, kinds, bytes, modes) equals the tree a machine
  mounted fresh at the end shows, which is the server's;
* every whole write that no later operation can have removed is somewhere in
  that tree, at its name or in a conflict copy.

A failure prints the seed (replay with ``WEBSYNC_FAULT_SEED=N``) and the
operations that touched the paths that differ.  By default each case runs a
few seconds of work from a fixed seed (the same choices on every run, so a
red CI run is a bug to replay, not a draw); ``--slow`` draws a new seed each
run and runs ``WEBSYNC_CHAOS_SECONDS`` (default 60).
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable

import pytest

from tests.clients import Machine, eventually
from tests.faults.chaos import Actor, Event, Tree, difference, protected, read_tree, story
from tests.faults.conftest import Site, dump_stacks, log_lines, status
from tests.proxy import Proxy

pytestmark = [pytest.mark.mount, pytest.mark.slow]

#: Operations per second on each machine.
RATE = 40.0


#: The seed of each case in the bounded run.
FIXED_SEED = 20261203


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The case's seed: fixed in the bounded run, drawn with --slow, WEBSYNC_FAULT_SEED to replay."""
    if os.environ.get("WEBSYNC_FAULT_SEED"):
        value = int(os.environ["WEBSYNC_FAULT_SEED"])
    elif request.config.getoption("--slow"):
        value = random.randrange(1, 10**9)
    else:
        value = FIXED_SEED
    print(f"\n{request.node.name}: WEBSYNC_FAULT_SEED={value}")
    return value


def _seconds(request: pytest.FixtureRequest, default: float) -> float:
    if request.config.getoption("--slow"):
        return float(os.environ.get("WEBSYNC_CHAOS_SECONDS", "60"))
    return default


def _run(actors: list[Actor], seconds: float, during: Callable[[float], None] = lambda t: None) -> None:
    """Run every actor in its own thread for *seconds*; *during* is called with the elapsed time."""
    stop = threading.Event()
    errors: list[BaseException] = []
    until = time.monotonic() + seconds

    def work(actor: Actor) -> None:
        try:
            actor.run(until, RATE, stop)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(actor,)) for actor in actors]
    for t in threads:
        t.start()
    began = time.monotonic()
    while any(t.is_alive() for t in threads):
        during(time.monotonic() - began)
        time.sleep(0.05)
    if errors:
        raise errors[0]


def _settled(machine: Machine) -> bool:
    info = status(machine)
    # An assertion, not False: a machine that never settles is reported with its status.  One whose
    # mount or sync ended has an empty queue too, and would pass for settled without the pid.
    assert info["pid"], f"{machine.name} is not running any more: {info}"
    assert info["online"] and info["pending"] == 0 and not info.get("held"), f"{machine.name}: {info}"
    return True


#: Log lines that say how a machine settled what two machines did at once, or what went wrong.
_SETTLING = ("conflict", "kept", "merged", "restored", "refused", "ERROR", "Traceback")


def _converged(machines: list[Machine], oracle: Machine, events: list[Event], seed: int) -> None:
    """Wait for quiet, then compare every machine with the fresh one and check that no write is lost."""
    for m in machines:
        try:
            eventually(lambda: _settled(m), timeout=120, what=f"{m.name} to send everything")
        except AssertionError as exc:
            dump_stacks(m)
            tail = "\n".join(log_lines(m)[-200:])
            raise AssertionError(f"seed {seed}: {exc}\nthe end of {m.name}'s log:\n{tail}") from None
    oracle.mount()
    truth: Tree = {}

    def agree() -> bool:
        nonlocal truth
        truth = read_tree(oracle.mnt)
        return all(read_tree(m.mnt) == truth for m in machines)

    try:
        eventually(agree, timeout=60, what="every machine to show the server's tree")
    except AssertionError:
        lines, paths = [], set()
        for m in machines:
            diff = difference(truth, read_tree(m.mnt))
            paths |= {line.split(":", 1)[0] for line in diff}
            lines += [f"{m.name} against a fresh machine:", *("  " + d for d in diff)]
            if diff:
                # A rare disagreement explains itself: how this machine's conflicts were settled.
                told = [line for line in log_lines(m) if any(w in line for w in _SETTLING)]
                lines += [f"{m.name}'s log on conflicts and errors:", *("  " + t for t in told[-60:])]
        raise AssertionError(
            f"seed {seed}: the machines disagree\n" + "\n".join(lines)
            + "\noperations on those paths:\n" + story(events, paths)
        ) from None
    for m in machines:
        assert _settled(m), f"{m.name} has changes waiting after the trees agreed: {status(m)}"
    contents = {data for kind, data, _ in truth.values() if kind == "file"}
    lost = [w for w in protected(events) if w.data not in contents]
    assert not lost, f"seed {seed}: writes lost:\n" + "\n".join(
        f"{w}\n  earlier and later on that path:\n{story(events, [w.paths[-1]])}" for w in lost[:5]
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("count", [2, 3])
def test_machines_working_at_once_end_in_one_tree(
    make_machine: Callable[..., Machine], site: Site, seed: int, count: int, request: pytest.FixtureRequest
) -> None:
    machines = [make_machine(chr(ord("A") + i), site) for i in range(count)]
    rng = random.Random(seed)
    actors = [Actor(m.name, m.mnt, rng.randrange(10**9)) for m in machines]
    _run(actors, _seconds(request, 12.0))
    events = [e for a in actors for e in a.events]
    _converged(machines, make_machine("fresh", site, mount=False), events, seed)


@pytest.mark.timeout(600)
def test_a_machine_cut_off_midway_converges_with_the_others(
    make_machine: Callable[..., Machine], site: Site, seed: int, proxy: Proxy, request: pytest.FixtureRequest
) -> None:
    a = make_machine("A", site)
    b = make_machine("B", site, url=proxy.url)
    rng = random.Random(seed)
    actors = [Actor(m.name, m.mnt, rng.randrange(10**9)) for m in (a, b)]
    seconds = _seconds(request, 12.0)

    def cut(elapsed: float) -> None:
        proxy.online = not (seconds * 0.25 <= elapsed < seconds * 0.75)

    _run(actors, seconds, cut)
    proxy.online = True
    _converged([a, b], make_machine("fresh", site, mount=False), [e for x in actors for e in x.events], seed)


@pytest.mark.timeout(600)
def test_a_machine_killed_midway_converges_after_it_mounts_again(
    make_machine: Callable[..., Machine], site: Site, seed: int, request: pytest.FixtureRequest
) -> None:
    a = make_machine("A", site)
    b = make_machine("B", site, allow=(r"fuse|FUSE",))
    rng = random.Random(seed)
    actors = [Actor(m.name, m.mnt, rng.randrange(10**9)) for m in (a, b)]
    seconds = _seconds(request, 12.0)
    killed_at: list[float] = []

    def kill(elapsed: float) -> None:
        if elapsed >= seconds / 2 and not killed_at:
            actors[1].halt.set()
            killed_at.append(time.monotonic())
            b.kill()

    _run(actors, seconds, kill)
    # B's last operation may have gone to the dead mount or to the bare folder after it:
    # it is uncertain and protects nothing; what reached the bare folder is not B's store.
    for leftover in b.mnt.iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
    b.mount()
    events = [e for x in actors for e in x.events if e.actor != "B" or e.end < killed_at[0]]
    _converged([a, b], make_machine("fresh", site, mount=False), events, seed)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("folders", [1, 2])
def test_a_mount_and_synced_folders_working_at_once_end_in_one_tree(
    make_machine: Callable[..., Machine], site: Site, seed: int, folders: int, request: pytest.FixtureRequest
) -> None:
    """The same property with machines that keep their files in a synced folder (`websync sync`)."""
    machines = [make_machine("A", site)]
    for i in range(folders):
        m = make_machine(chr(ord("B") + i), site, mount=False)
        m.sync(m.mnt)  # a plain folder where the mount point would be: every check reads it the same way
        machines.append(m)
    rng = random.Random(seed)
    actors = [Actor(m.name, m.mnt, rng.randrange(10**9), links=(m is machines[0])) for m in machines]
    _run(actors, _seconds(request, 12.0))
    _converged(machines, make_machine("fresh", site, mount=False), [e for x in actors for e in x.events], seed)
