"""``python -m tests.bench.login_flood``: where a flood of wrong logins from one address costs the others.

The household of ``tests/bench/household.py`` runs throughout (50 users x 4
devices by default) while ``household.attack_logins`` runs in the middle of
it.  The attack has two phases: its address's free tries are checked
(argon2), then every try is refused before its body is read.  The server's log
dates each failed check, so the run splits into before, checks, refusals and
after, and prints each phase's listing p50 and p99 and the server process's
CPU (its threads, argon2's included), as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.household import Household, attack_logins, log_in, percentile, set_up
from tests.servers import ServerProcess

_DEVICE_PROCESSES = 4


class _DatedHousehold(Household):
    """A `Household` that also keeps when each listing started."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.listings: list[tuple[float, float]] = []  # (started, seconds)

    async def _timed(self, kind: str, request: object) -> None:
        started, clock = time.time(), time.perf_counter()
        await super()._timed(kind, request)  # type: ignore[arg-type]
        if kind == "changes" and len(self.latencies["changes"]) > len(self.listings):
            self.listings.append((started, time.perf_counter() - clock))


def _devices(url: str, logins: list[dict[str, str]], devices: int, seconds: float) -> list[tuple[float, float]]:
    household = _DatedHousehold(url, logins, devices)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await household.run(stop)

    asyncio.run(run())
    return household.listings


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _failed_checks(log: Path) -> list[float]:
    """When the server logged each failed login (its log is in UTC)."""
    stamps = [line[:23] for line in log.read_text().splitlines() if "failed login" in line]
    return sorted(datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=datetime.timezone.utc)
                  .timestamp() for s in stamps)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.login_flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--devices", type=int, default=4, help="devices per user")
    parser.add_argument("--before-s", type=float, default=12.0)
    parser.add_argument("--attack-s", type=float, default=15.0)
    parser.add_argument("--after-s", type=float, default=12.0)
    args = parser.parse_args(argv)
    total = args.before_s + args.attack_s + args.after_s
    with tempfile.TemporaryDirectory(prefix="websync-login-flood-") as tmp:
        data = Path(tmp) / "data"
        set_up(data, args.users)
        with ServerProcess.start(data) as server:
            logins, attacker = log_in(server.url, args.users, args.devices)
            cpu: list[tuple[float, float]] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.5):
                    cpu.append((time.time(), _cpu_seconds(server.pid)))

            threading.Thread(target=sample, daemon=True).start()
            context = multiprocessing.get_context("spawn")
            shares = [logins[n::_DEVICE_PROCESSES] for n in range(_DEVICE_PROCESSES)]
            with context.Pool(_DEVICE_PROCESSES) as pool:
                started = time.time()
                running = pool.starmap_async(_devices, [(server.url, s, args.devices, total) for s in shares])
                time.sleep(args.before_s)
                ready, stop = context.Event(), context.Event()
                attack = context.Process(target=attack_logins, args=(server.url, attacker, ready, stop))
                attack.start()
                ready.wait(120)
                attack_from = time.time()
                time.sleep(args.attack_s)
                stop.set()
                attack.join(120)
                attack_to = time.time()
                listings = [listing for share in running.get(total + 120) for listing in share]
            done.set()
            checks = _failed_checks(server.data_dir / "server.log")
    checks_to = max(checks, default=attack_from) + 0.2
    print(f"`python -m tests.bench.login_flood {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"))
    print(f"\n{len(checks)} failed checks, the last {checks_to - attack_from:.1f} s into the attack\n")
    print("| phase | seconds | listings | listing p50 | listing p99 | server CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    phases = [("before (devices starting)", started + 4, attack_from), ("passwords checked", attack_from, checks_to),
              ("refused before the body", checks_to, attack_to), ("after", attack_to, started + total)]  # fmt: skip
    for name, begin, end in phases:
        took = [seconds for at, seconds in listings if begin <= at < end]
        used = [c for at, c in cpu if begin <= at < end]
        cores = (used[-1] - used[0]) / (end - begin) if len(used) > 1 else float("nan")
        print(f"| {name} | {end - begin:.1f} | {len(took)} | {percentile(took, 0.5) * 1000:.1f} ms | "
              f"{percentile(took, 0.99) * 1000:.1f} ms | {cores:.2f} core |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
