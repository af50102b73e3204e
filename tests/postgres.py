"""A private PostgreSQL cluster for tests: initdb and pg_ctl of Debian's package, on loopback.

The cluster lives in a temporary folder owned by the ``postgres`` system user
(PostgreSQL refuses to run as root), listens on a free port of 127.0.0.1 only,
trusts local connections (nothing but this machine can reach it), and runs
with ``fsync=off``: a test cluster is thrown away, never recovered.  Each test
gets a database of its own (`PostgresCluster.new_database`), so tests never see
each other's rows.  `PostgresCluster.stop` ends the server by its postmaster pid
(``pg_ctl stop``, then SIGKILL of that pid), never by name.

    cluster = PostgresCluster.start()
    url = cluster.new_database()   # postgresql://websync@127.0.0.1:PORT/test_1
    ...
    cluster.stop()
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

__all__ = ["PostgresCluster", "postgres_bin"]

_RUN_AS = "postgres"
_SUPERUSER = "websync"
_databases = itertools.count(1)


def postgres_bin() -> Path | None:
    """The bin folder of the newest installed PostgreSQL, or None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresCluster:
    """A running throw-away PostgreSQL server; build with `PostgresCluster.start`."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls) -> PostgresCluster:
        """initdb a cluster in a new temporary folder and start it on a free loopback port."""
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        root = Path(tempfile.mkdtemp(prefix="websync-pg-"))
        user = pwd.getpwnam(_RUN_AS) if os.geteuid() == 0 else None
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = cls(bin_dir, root, free_port())
        cluster._run("initdb", "-D", str(cluster.data), "-U", _SUPERUSER, "--auth=trust", "-E", "UTF8",
                     "--no-sync", "--locale=C.UTF-8")  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        }
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(root / "server.log"), "-w", "-t", "60", "start")
        return cluster

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of *database* in this cluster."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"test_{os.getpid()}_{next(_databases)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through psql and return what it printed."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement,
             self.url(database)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL of its pid) and remove its folder."""
        pid = self._postmaster_pid()
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", _RUN_AS, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

