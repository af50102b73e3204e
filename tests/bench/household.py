"""``python -m tests.bench.household``: a household's load, with and without an attacker.

50 users with 4 devices each (by default) against one real server process on
loopback: every device holds a long poll, asks for changes now and then, and
one device of each user commits a small change every couple of seconds.  After
a quiet phase, one attacker runs each attack of ``tests/server/hostile.py`` in
turn (the deepest tree's costliest batch, a flood of wrong logins, huge and
deeply nested bodies, half-sent requests).  It prints, per phase, the p50 and
p99 of the legitimate commits and change listings as a Markdown table for
docs/benchmarks.md.  Everything is bounded: the phases last ``--phase-s``
seconds each and every attack stops with its phase.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from tests.server.hostile import deep_chain, mkdir, worst_batch
from tests.servers import ServerProcess, add_user, login
from websync_server.protocol import ROOT_ID, new_node_id

PASSWORD = "household-password"


class Stop(Protocol):
    """What an attack is told to stop by (a multiprocessing event)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Household:
    """The legitimate users' devices, recording each request's latency by kind."""

    def __init__(self, url: str, logins: list[dict[str, str]], devices: int) -> None:
        self._url = url
        self._logins = logins
        self._devices = devices
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
            await asyncio.sleep(random.uniform(2, 6))
            await self._timed("changes", lambda: http.get(f"/v1/stores/{store}/changes", params={"cursor": 0},
                                                          headers=headers))  # fmt: skip

    async def _commit(self, http: httpx.AsyncClient, store: str, headers: dict[str, str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(1, 3))
            body = {"batch": new_node_id(), "ops": [mkdir(ROOT_ID, new_node_id())]}
            await self._timed("commit", lambda: http.post(f"/v1/stores/{store}/commit", json=body, headers=headers))


# -- the attacks: each runs until *stop* is set ------------------------------------------


def attack_deep_tree(url: str, attacker: dict[str, str], stop: Stop) -> None:
    headers = {"Authorization": f"Bearer {attacker['token']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        batch = worst_batch(*deep_chain(http, attacker["store"]))

        def hammer() -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as own:
                while not stop.is_set():
                    own.post(f"/v1/stores/{attacker['store']}/commit", json={"batch": new_node_id(), "ops": batch})

        _threads(hammer, 4, stop)


def attack_logins(url: str, _attacker: dict[str, str], stop: Stop) -> None:
    def guess() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                http.post("/v1/login", json={"user": f"user{random.randrange(50)}", "password": "guess-guess",
                                             "device": "x"})  # fmt: skip

    _threads(guess, 40, stop)


def attack_bodies(url: str, attacker: dict[str, str], stop: Stop) -> None:
    big = b'{"user": "' + b"a" * (16 * 1024 * 1024) + b'"}'
    nested = b'{"batch": "b", "ops": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {"Authorization": f"Bearer {attacker['token']}", "Content-Type": "application/json"}

    def send() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                try:
                    http.post("/v1/login", content=big, headers={"Content-Type": "application/json"})
                    http.post(f"/v1/stores/{attacker['store']}/commit", content=nested, headers=headers)
                except httpx.HTTPError:
                    pass

    _threads(send, 4, stop)


def attack_slow(url: str, _attacker: dict[str, str], stop: Stop) -> None:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    socks: list[socket.socket] = []
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


def _threads(target: Callable[[], None], count: int, stop: Stop) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(120)


ATTACKS: dict[str, Callable[[str, dict[str, str], Stop], None]] = {
    "deepest tree, costliest batch (4 at once)": attack_deep_tree,
    "wrong logins, 40 at once": attack_logins,
    "16 MiB login bodies and 100,000-deep JSON (4 at once)": attack_bodies,
    "250 half-sent requests": attack_slow,
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.household", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--devices", type=int, default=4, help="devices per user")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of each phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="websync-household-") as tmp:
        data = Path(tmp) / "data"
        for n in range(args.users + 1):
            add_user(data, f"user{n}", PASSWORD)
        with ServerProcess.start(data) as server:
            logins = [login(server.url, f"user{n}", PASSWORD, f"device{d}")
                      for n in range(args.users) for d in range(args.devices)]  # fmt: skip
            attacker = login(server.url, f"user{args.users}", PASSWORD, "attacker")
            rows = [_phase(server.url, logins, args, "no attacker", None, attacker)]
            for name, attack in ATTACKS.items():
                rows.append(_phase(server.url, logins, args, name, attack, attacker))
    command = "python -m tests.bench.household " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"`{command.strip()}`: {args.users} users x {args.devices} devices, {args.phase_s:g} s per phase\n")
    print("| attacker | commits | commit p50 | commit p99 | listings | listing p50 | listing p99 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    return 0


_DEVICE_PROCESSES = 4


def _devices(url: str, logins: list[dict[str, str]], devices: int, seconds: float) -> tuple[dict[str, list[float]], int]:
    """Run some devices for *seconds*; their latencies by kind, and the number of errors."""
    household = Household(url, logins, devices)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await household.run(stop)

    asyncio.run(run())
    return household.latencies, household.errors


def _phase(url: str, logins: list[dict[str, str]], args: argparse.Namespace, name: str,
           attack: Callable[[str, dict[str, str], Stop], None] | None, attacker: dict[str, str]) -> str:
    # The attacker is a process of its own: its threads must not take this one's GIL.
    context = multiprocessing.get_context("spawn")
    attack_stop = context.Event()
    attacking = context.Process(target=attack, args=(url, attacker, attack_stop)) if attack else None
    if attacking:
        attacking.start()

    # The devices in a few processes of their own, so that the measuring
    # clients' CPU is not what is measured.
    shares = [logins[n :: _DEVICE_PROCESSES] for n in range(_DEVICE_PROCESSES)]
    with context.Pool(_DEVICE_PROCESSES) as pool:
        results = pool.starmap(_devices, [(url, share, args.devices, args.phase_s) for share in shares])
    attack_stop.set()
    if attacking:
        attacking.join(180)
        if attacking.is_alive():
            attacking.kill()
    commits = [v for result in results for v in result[0]["commit"]]
    listings = [v for result in results for v in result[0]["changes"]]
    errors = sum(result[1] for result in results)
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    return (f"| {name} | {len(commits)} | {ms(statistics.median(commits)) if commits else '-'} | "
            f"{ms(percentile(commits, 0.99))} | {len(listings)} | "
            f"{ms(statistics.median(listings)) if listings else '-'} | {ms(percentile(listings, 0.99))} | "
            f"{errors} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
