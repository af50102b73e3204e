"""The packages stay apart: a client install needs none of the server's libraries, and back.

Each side's modules are imported in a fresh interpreter and the modules that
got loaded are checked: the client may load the shared wire models
(``websync_server.protocol``) and nothing else of the server, and none of
its libraries; the server loads nothing of the client, its cache or FUSE.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOADED = """
import importlib, json, pkgutil, sys
for package in {packages!r}:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        # Alembic's scripts run only inside Alembic; the WinFsp front end only on Windows (winfspy).
        if ".migrations" not in info.name and (".winfsp." not in info.name or sys.platform == "win32"):
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(*packages: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOADED.format(packages=packages)],
                          capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout))


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.timeout(180)
def test_the_client_loads_nothing_of_the_server_but_the_wire_models() -> None:
    loaded = _loaded("websync_fs", "cache")
    server = {m for m in loaded if _top(m) == "websync_server"} - {"websync_server", "websync_server.protocol"}
    libraries = {m for m in loaded if _top(m) in ("sqlalchemy", "starlette", "uvicorn", "argon2", "uvloop")}
    assert not server and not libraries, sorted(server | libraries)


@pytest.mark.timeout(180)
def test_the_server_loads_nothing_of_the_client() -> None:
    loaded = _loaded("websync_server")
    client = {m for m in loaded if _top(m) in ("websync_fs", "cache", "pyfuse3", "diskcache")}
    assert not client, sorted(client)
