"""``python -m tests.bench.household``: a household's load, with and without an attacker.

50 users with 4 devices each (by default) against one real server process on
loopback: every device holds a long poll, asks for changes now and then, and
one device of each user commits a small change every couple of seconds.  One
attacker runs each attack of ``tests/server/hostile.py`` in turn (the deepest
tree's costliest batch, a flood of wrong logins from one address and from
ever new ones, huge and deeply nested bodies, half-sent requests), in windows that alternate with quiet ones of the
same length, so that each attack is compared with quiet measured beside it on
a machine whose other load drifts.  It prints, per attack, the p50 and p99 of
the legitimate commits and change listings, quiet and attacked, and the p99
ratios, as a Markdown table for docs/benchmarks.md.  Everything is bounded:
each attack runs ``--phase-s`` seconds in all and stops with its windows.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.pool
import random
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from tests.server.hostile import deep_chain, mkdir, worst_batch
from tests.servers import ServerProcess, add_user, login
from websync_server.protocol import ROOT_ID, new_node_id

PASSWORD = "household-password"


class Signal(Protocol):
    """A multiprocessing event: an attack says by one that it is under way, and is told to stop by another."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Household:
    """The legitimate users' devices, recording each request's latency by kind."""

    def __init__(self, url: str, logins: list[dict[str, str]], devices: int, pace: float = 1.0) -> None:
        self._url = url
        self._logins = logins
        self._devices = devices
        self._pace = pace  # the pauses between a device's requests are scaled by this
        self.latencies: dict[str, list[float]] = {"commit": [], "changes": []}
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        # A client (connection pool) per device, as on real machines: one pool
        # for hundreds of requests at once spent seconds in its own bookkeeping.
        await asyncio.gather(*(self._device(answer, stop) for answer in self._logins))

    async def _device(self, answer: dict[str, str], stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self._url, timeout=60) as http:
            headers = {"Authorization": f"Bearer {answer['token']}"}
            tasks = [self._poll(http, answer["store"], headers, stop), self._list(http, answer["store"], headers, stop)]
            if answer["device"] == "device0":  # one device of each user writes
                tasks.append(self._commit(http, answer["store"], headers, stop))
            await asyncio.gather(*tasks)

    async def _timed(self, kind: str, request: Callable[[], object]) -> None:
        started = time.perf_counter()
        try:
            answer = await request()  # type: ignore[misc]
            answer.raise_for_status()  # type: ignore[attr-defined]
        except httpx.HTTPError:
            self.errors += 1
            return
        self.latencies[kind].append(time.perf_counter() - started)

    async def _poll(self, http: httpx.AsyncClient, store: str, headers: dict[str, str], stop: asyncio.Event) -> None:
        cursor = 0
        while not stop.is_set():
            try:
                answer = await http.get(f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": 5},
                                        headers=headers)  # fmt: skip
                cursor = answer.json()["cursor"]
            except (httpx.HTTPError, ValueError, KeyError):
                self.errors += 1
                await asyncio.sleep(1)

    async def _list(self, http: httpx.AsyncClient, store: str, headers: dict[str, str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(2, 6) * self._pace)
            await self._timed("changes", lambda: http.get(f"/v1/stores/{store}/changes", params={"cursor": 0},
                                                          headers=headers))  # fmt: skip

    async def _commit(self, http: httpx.AsyncClient, store: str, headers: dict[str, str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(1, 3) * self._pace)
            body = {"batch": new_node_id(), "ops": [mkdir(ROOT_ID, new_node_id())]}
            await self._timed("commit", lambda: http.post(f"/v1/stores/{store}/commit", json=body, headers=headers))


# -- the attacks: each runs until *stop* is set ------------------------------------------


def attack_deep_tree(url: str, attacker: dict[str, str], ready: Signal, stop: Signal) -> None:
    headers = {"Authorization": f"Bearer {attacker['token']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        batch = worst_batch(*deep_chain(http, attacker["store"], top=new_node_id()))  # a chain per round

        def hammer(begin: threading.Barrier) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as own:
                begin.wait()
                while not stop.is_set():
                    own.post(f"/v1/stores/{attacker['store']}/commit", json={"batch": new_node_id(), "ops": batch})

        _threads(hammer, 4, ready, stop)


def attack_logins(url: str, _attacker: dict[str, str], ready: Signal, stop: Signal) -> None:
    def guess(begin: threading.Barrier) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            begin.wait()
            while not stop.is_set():
                http.post("/v1/login", json={"user": f"user{random.randrange(50)}", "password": "guess-guess",
                                             "device": "x"})  # fmt: skip

    _threads(guess, 40, ready, stop)


def attack_logins_spread(url: str, _attacker: dict[str, str], ready: Signal, stop: Signal) -> None:
    """Wrong logins as from many machines: each try from another address, so no address's count ever holds.

    The address is the proxy's ``X-Forwarded-For``, which the server trusts from loopback.
    """
    def guess(begin: threading.Barrier) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            begin.wait()
            while not stop.is_set():
                address = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
                http.post("/v1/login", json={"user": f"user{random.randrange(50)}", "password": "guess-guess",
                                             "device": "x"}, headers={"X-Forwarded-For": address})  # fmt: skip

    _threads(guess, 40, ready, stop)


def attack_bodies(url: str, attacker: dict[str, str], ready: Signal, stop: Signal) -> None:
    big = b'{"user": "' + b"a" * (16 * 1024 * 1024) + b'"}'
    nested = b'{"batch": "b", "ops": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {"Authorization": f"Bearer {attacker['token']}", "Content-Type": "application/json"}

    def send(begin: threading.Barrier) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            begin.wait()
            while not stop.is_set():
                try:
                    http.post("/v1/login", content=big, headers={"Content-Type": "application/json"})
                    http.post(f"/v1/stores/{attacker['store']}/commit", content=nested, headers=headers)
                except httpx.HTTPError:
                    pass

    _threads(send, 4, ready, stop)


def attack_slow(url: str, _attacker: dict[str, str], ready: Signal, stop: Signal) -> None:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    socks: list[socket.socket] = []
    ready.set()  # opening the connections is the attack
    try:
        while not stop.is_set():
            while len(socks) < 250 and not stop.is_set():
                sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(b"POST /v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
                socks.append(sock)
            stop.wait(1)
            socks = [s for s in socks if _open(s)]
    finally:
        for sock in socks:
            sock.close()


def _open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _threads(target: Callable[[threading.Barrier], None], count: int, ready: Signal, stop: Signal) -> None:
    """*count* threads of *target*, which passes the barrier once set up; *ready* is set when all have."""
    begin = threading.Barrier(count + 1)
    threads = [threading.Thread(target=target, args=(begin,), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    begin.wait(120)
    ready.set()
    stop.wait()
    for thread in threads:
        thread.join(120)


#: ``attack(url, attacker's login, ready, stop)``: sets *ready* once under way, runs until *stop*.
Attack = Callable[[str, dict[str, str], Signal, Signal], None]

ATTACKS: dict[str, Attack] = {
    "deepest tree, costliest batch (4 at once)": attack_deep_tree,
    "wrong logins, 40 at once": attack_logins,
    "wrong logins, 40 at once, each from a new address": attack_logins_spread,
    "16 MiB login bodies and 100,000-deep JSON (4 at once)": attack_bodies,
    "250 half-sent requests": attack_slow,
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Samples:
    """Legitimate requests' latencies (seconds) by kind, and how many failed."""

    commits: list[float] = field(default_factory=list)
    listings: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, other: Samples) -> None:
        self.commits += other.commits
        self.listings += other.listings
        self.errors += other.errors

    def p99(self) -> tuple[float, float]:
        """The p99 of commits and of listings."""
        return percentile(self.commits, 0.99), percentile(self.listings, 0.99)

    def row(self, name: str, quiet: Samples | None = None) -> str:
        """A Markdown table row; with *quiet*, the p99 ratios against it."""
        ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
        med = lambda vs: ms(statistics.median(vs)) if vs else "-"  # noqa: E731
        ratios = "| – | – | –"
        if quiet is not None:
            ratios = " | ".join(f"{mine / theirs:.2f}x" for mine, theirs in zip(self.p99(), quiet.p99()))
            ratios = "| " + ratios
        return (f"| {name} | {len(self.commits)} | {med(self.commits)} | {ms(self.p99()[0])} | {len(self.listings)} | "
                f"{med(self.listings)} | {ms(self.p99()[1])} | {self.errors} {ratios} |")  # fmt: skip


def compare(url: str, logins: list[dict[str, str]], devices: int, seconds: float, rounds: int,
            attack: Attack, attacker: dict[str, str], pace: float = 1.0) -> list[tuple[Samples, Samples]]:
    """The household's samples without and with *attack*, in *rounds* pairs of windows of *seconds* each.

    Alternating quiet and attacked windows within one run compares them under
    the same load from the rest of the machine, which drifts over minutes.
    """
    # One pool of device processes for every window: starting its interpreters
    # anew for each window cost seconds of the machine's CPU each time.
    with multiprocessing.get_context("spawn").Pool(_DEVICE_PROCESSES) as pool:
        return [(phase(url, logins, devices, seconds, None, attacker, pace, pool),
                 phase(url, logins, devices, seconds, attack, attacker, pace, pool))
                for _ in range(rounds)]  # fmt: skip


def pooled(pairs: list[tuple[Samples, Samples]]) -> tuple[Samples, Samples]:
    """All quiet windows' samples together, and all attacked windows'."""
    quiet, attacked = Samples(), Samples()
    for calm, loaded in pairs:
        quiet.add(calm)
        attacked.add(loaded)
    return quiet, attacked


def median_ratios(pairs: list[tuple[Samples, Samples]]) -> tuple[float, float]:
    """The median over the pairs of windows of attacked p99 / quiet p99, for commits and for listings.

    One stall of the whole machine (other work on it) lands in one window and
    moves its p99 alone; the median over pairs of neighbouring windows does not follow it.
    """
    ratios = [[mine / theirs for mine, theirs in zip(loaded.p99(), calm.p99())] for calm, loaded in pairs]
    return statistics.median(r[0] for r in ratios), statistics.median(r[1] for r in ratios)


def set_up(data: Path, users: int) -> None:
    """*users* users, and one more for the attacker, in a new data directory."""
    for n in range(users + 1):
        add_user(data, f"user{n}", PASSWORD)


def log_in(url: str, users: int, devices: int) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Every device of the household logged in, and the attacker (the last user)."""
    logins = [login(url, f"user{n}", PASSWORD, f"device{d}") for n in range(users) for d in range(devices)]
    return logins, login(url, f"user{users}", PASSWORD, "attacker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.household", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--devices", type=int, default=4, help="devices per user")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of each attack, and of quiet beside it")
    parser.add_argument("--rounds", type=int, default=4, help="quiet and attacked windows each phase is cut into")
    parser.add_argument("--attack", action="append", default=[], metavar="WORDS",
                        help="run only the attacks whose name contains WORDS (repeatable)")
    args = parser.parse_args(argv)
    attacks = {name: attack for name, attack in ATTACKS.items()
               if not args.attack or any(words in name for words in args.attack)}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="websync-household-") as tmp:
        data = Path(tmp) / "data"
        set_up(data, args.users)
        with ServerProcess.start(data) as server:
            logins, attacker = log_in(server.url, args.users, args.devices)
            for name, attack in attacks.items():
                pairs = compare(server.url, logins, args.devices, args.phase_s / args.rounds, args.rounds,
                                attack, attacker)  # fmt: skip
                quiet, attacked = pooled(pairs)
                by_window = " / ".join(f"{r:.2f}x" for r in median_ratios(pairs))
                rows += [quiet.row("(quiet, beside the next row)"),
                         attacked.row(name, quiet) + f" {by_window} |"]  # fmt: skip
    command = "python -m tests.bench.household " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"`{command.strip()}`: {args.users} users x {args.devices} devices, {args.phase_s:g} s per phase "
          f"in {args.rounds} windows alternating with as much quiet\n")  # fmt: skip
    print("| attacker | commits | commit p50 | commit p99 | listings | listing p50 | listing p99 | errors "
          "| commit p99 / quiet | listing p99 / quiet | median of the windows' ratios |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    return 0


_DEVICE_PROCESSES = 4


def _devices(url: str, logins: list[dict[str, str]], devices: int, seconds: float,
             pace: float) -> tuple[dict[str, list[float]], int]:  # fmt: skip
    """Run some devices for *seconds*; their latencies by kind, and the number of errors."""
    household = Household(url, logins, devices, pace)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await household.run(stop)

    asyncio.run(run())
    return household.latencies, household.errors


def phase(url: str, logins: list[dict[str, str]], devices: int, seconds: float,
          attack: Attack | None, attacker: dict[str, str],
          pace: float, pool: multiprocessing.pool.Pool) -> Samples:
    """The household's samples over *seconds*, from devices in *pool*'s processes, while *attack* (if any) runs."""
    # The attacker is a process of its own: its threads must not take this one's GIL.
    context = multiprocessing.get_context("spawn")
    attack_ready, attack_stop = context.Event(), context.Event()
    attacking = context.Process(target=attack, args=(url, attacker, attack_ready, attack_stop)) if attack else None
    if attacking:
        # Measured from when the attack is under way: its clients' set-up is the
        # attacker's CPU (on this shared machine), not the server's doing.
        attacking.start()
        attack_ready.wait(180)

    # The devices in a few processes of their own, so that the measuring
    # clients' CPU is not what is measured.
    shares = [logins[n :: _DEVICE_PROCESSES] for n in range(_DEVICE_PROCESSES)]
    results = pool.starmap(_devices, [(url, share, devices, seconds, pace) for share in shares])
    attack_stop.set()
    if attacking:
        attacking.join(180)
        if attacking.is_alive():
            attacking.kill()
    samples = Samples()
    for latencies, errors in results:
        samples.add(Samples(latencies["commit"], latencies["changes"], errors))
    return samples


if __name__ == "__main__":
    sys.exit(main())
