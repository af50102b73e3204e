"""HAProxy (Debian's package) as the load balancer of test server processes, on loopback.

It listens on a free port of 127.0.0.1 and spreads requests round-robin over
the given servers, checking each with ``GET /v1/health`` every 200 ms (with a
``Host`` the servers accept: they refuse unknown host names); a
request that can't connect to one is sent to another (``retries`` with
``option redispatch``).  Its timeouts exceed the longest long poll (30 s).
It runs in the foreground (``-db``) as a child of the test and is stopped by
its pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import end_process, free_port

__all__ = ["HAProxy"]

_CONFIG = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 90s
    timeout server 90s
    retries 3
    option redispatch
    option http-server-close

frontend websync
    bind 127.0.0.1:{port}
    default_backend servers

backend servers
    balance roundrobin
    option httpchk
    http-check send meth GET uri /v1/health ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
{servers}
"""


@dataclass
class HAProxy:
    """A running HAProxy in front of some server ports; build with `HAProxy.start`."""

    process: subprocess.Popen[bytes]
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, backends: list[int], timeout: float = 20.0) -> HAProxy:
        """Balance over the servers listening on the loopback ports *backends*."""
        program = shutil.which("haproxy") or "/usr/sbin/haproxy"
        root = Path(tempfile.mkdtemp(prefix="websync-haproxy-"))
        port = free_port()
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{backend} check inter 200ms fall 1 rise 1" for i, backend in enumerate(backends)
        )
        (root / "haproxy.cfg").write_text(_CONFIG.format(port=port, servers=servers))
        with open(root / "haproxy.log", "wb") as log:
            process = subprocess.Popen([program, "-db", "-f", str(root / "haproxy.cfg")],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        proxy = cls(process, root, port)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {process.returncode}: {(root / 'haproxy.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proxy
            except OSError:
                if time.monotonic() > deadline:
                    proxy.stop()
                    raise RuntimeError(f"haproxy did not listen within {timeout} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM HAProxy (SIGKILL if it lingers) by its pid and remove its folder."""
        end_process(self.process, 10)
        shutil.rmtree(self.root, ignore_errors=True)

