"""The time of a changes call with nothing new (no wait) on the caller's own store, over HTTP.

``PYTHONPATH=. .venv/bin/python tests/bench/changes_call.py``: one SQLite
server process, 3,000 calls in a row, the first 500 dropped (docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import ServerProcess, add_user, login

CALLS = 3000
WARM_UP = 500


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        add_user(data, "alice", "alice-password")
        with ServerProcess.start(data) as server:
            answer = login(server.url, "alice", "alice-password")
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {answer['token']}"}) as http:
                url = f"/v1/stores/{answer['store']}/changes"
                cursor = http.get(url).json()["cursor"]
                times = []
                for _ in range(CALLS):
                    started = time.perf_counter()
                    http.get(url, params={"cursor": cursor})
                    times.append(time.perf_counter() - started)
    kept = times[WARM_UP:]
    print(f"median {statistics.median(kept) * 1e3:.3f} ms, p90 {statistics.quantiles(kept, n=10)[-1] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
