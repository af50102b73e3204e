"""Pins, the cache limit, cache commands and file states, through real mounts and real servers.

Tests that stop the server run one of their own (`own_server`), restarted on
the same port when a test needs it back, so the machines' configuration stays
valid.  Nothing here reads a pinned file on the pinning machine before the
server is gone: what is read offline was fetched by the pin.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import BIN, Machine, eventually, read_bytes
from tests.conftest import MACHINE_SETTINGS
from tests.servers import ServerProcess, add_user

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
BLOCK = 4 * MiB


class OwnServer:
    """A server a test may stop and start again on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process = ServerProcess.start(data_dir)
        self.url = self.process.url
        add_user(data_dir, "alice", "pw-alice")

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process = ServerProcess.start(self.data_dir, port=self.process.port)
        assert self.process.url == self.url


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    server = OwnServer(tmp_path / "server")
    yield server
    server.stop()


@pytest.fixture
def machines(tmp_path: Path, own_server: OwnServer) -> Iterator[Callable[..., Machine]]:
    """Like `new_machine`, against `own_server`."""
    made: list[Machine] = []

    def make(name: str, **settings: object) -> Machine:
        machine = Machine(name, tmp_path, own_server.url)
        made.append(machine)
        machine.login("alice", "pw-alice")
        config = machine.home / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **MACHINE_SETTINGS, **settings}))
        machine.mount()
        return machine

    yield make
    for machine in made:
        machine.cleanup()
    for machine in made:
        unexpected = [line for line in machine.log().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not unexpected, f"machine {machine.name} logged errors:\n" + "\n".join(unexpected[:20])


def cli_json(machine: Machine, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(machine.cli(*args, "--json").stdout)


def cache_bytes(machine: Machine) -> int:
    """Bytes of block content the cache index of *machine* counts, read straight from its database."""
    db = sqlite3.connect(f"file:{machine.home / 'cache' / 'blocks' / 'cache.db'}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute("SELECT value FROM Settings WHERE key = 'size'").fetchone()[0])
    finally:
        db.close()


def block_files_bytes(machine: Machine) -> int:
    return sum(p.stat().st_size for p in (machine.home / "cache" / "blocks").rglob("*.val"))


def wait_uploaded(machine: Machine, timeout: float = 60) -> None:
    eventually(lambda: cli_json(machine, "status")["pending"] == 0, timeout=timeout, what=f"{machine.name} uploads")


def write_files(folder: Path, count: int, size: int) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i in range(count):
        data = os.urandom(size)
        (folder / f"f{i:03d}.bin").write_bytes(data)
        contents[f"f{i:03d}.bin"] = data
    return contents


def test_a_pinned_folder_of_200_files_survives_a_restart_and_reads_with_the_server_stopped(
    machines: Callable[..., Machine], own_server: OwnServer
) -> None:
    a = machines("A")
    # B's limit is far below what it pins: only the pin keeps the files.
    b = machines("B", cache_limit=256 * KiB)
    trip = write_files(a.path("trip"), 200, 20 * KiB)
    a.path("elsewhere.bin").write_bytes(os.urandom(50 * KiB))
    wait_uploaded(a)
    eventually(lambda: len(os.listdir(b.path("trip"))) == 200 and b.path("elsewhere.bin").exists(),
               what="the tree on B")

    answer = cli_json(b, "pin", str(b.path("trip")))
    assert answer["progress"]["done"] and answer["progress"]["files_local"] == 200
    pins = cli_json(b, "pins")["pins"]
    assert [(p["path"], p["files"], p["bytes"], p["done"]) for p in pins] == [("trip", 200, 200 * 20 * KiB, True)]

    # Pins survive a restart, and everything not pinned goes on a clean.
    b.unmount()
    b.mount()
    b.cli("cache", "clean")
    stats = cli_json(b, "cache")
    assert stats["pinned"] == 200 * 20 * KiB and stats["used"] == stats["pinned"]
    assert stats["protected_over_limit"]
    assert "alone exceed the limit" in b.cli("cache").stdout

    own_server.stop()
    for name, data in trip.items():
        assert read_bytes(b.path("trip", name)) == data, name
    # The file that was not pinned needs the server: the reads above came from the pin.
    with pytest.raises(OSError) as offline:
        read_bytes(b.path("elsewhere.bin"))
    assert offline.value.errno == errno.ENETUNREACH


def test_a_50_mib_cache_limit_holds_while_200_mib_are_read(new_machine: Callable[..., Machine]) -> None:
    a = new_machine("A")
    b = new_machine("B", cache_limit=50 * MiB)
    digests = {}
    a.path("big").mkdir()
    for i in range(25):
        data = os.urandom(8 * MiB)
        a.path("big", f"{i:02d}.bin").write_bytes(data)
        digests[f"{i:02d}.bin"] = hashlib.sha256(data).hexdigest()
    wait_uploaded(a, timeout=120)
    eventually(lambda: len(os.listdir(b.path("big"))) == 25, what="the files on B")

    highest = 0
    for name, digest in digests.items():
        assert hashlib.sha256(read_bytes(b.path("big", name))).hexdigest() == digest
        highest = max(highest, cache_bytes(b))
        assert highest <= 50 * MiB + BLOCK, f"{highest} bytes cached after reading {name}"
    stats = cli_json(b, "cache")
    assert stats["limit"] == 50 * MiB
    assert 50 * MiB - BLOCK <= stats["used"] <= 50 * MiB + BLOCK
    assert block_files_bytes(b) == stats["used"]
    assert stats["misses"] >= 50 and stats["hit_rate"] is not None

    # A lower limit takes effect at once and is kept in the config.
    b.cli("cache", "limit", "10MiB")
    assert cache_bytes(b) <= 10 * MiB
    assert json.loads((b.home / "config.json").read_text())["cache_limit"] == 10 * MiB


def test_data_waiting_for_upload_survives_cache_clean_and_a_one_byte_limit(
    machines: Callable[..., Machine], own_server: OwnServer
) -> None:
    # A longer quiet period makes the three writes one failing attempt, not three: the
    # uploader doubles its retry delay with every failed attempt, however close together.
    a = machines("A", quiet_period=1.0, first_quiet_period=1.0)
    own_server.stop()
    eventually(lambda: not cli_json(a, "status")["online"], what="A notices the server is gone")
    waiting = {f"w{i}.bin": os.urandom(3 * MiB + i) for i in range(3)}
    for name, data in waiting.items():
        a.path(name).write_bytes(data)
    open_data = os.urandom(2 * MiB)
    with open(a.path("open.bin"), "wb") as still_open:
        still_open.write(open_data)
        still_open.flush()

        a.cli("cache", "clean")
        a.cli("cache", "limit", "1")
        stats = cli_json(a, "cache")
        assert stats["waiting_for_upload"] >= sum(len(d) for d in waiting.values())
        assert stats["protected_over_limit"] and stats["reclaimable"] == 0
        assert cli_json(a, "status", str(a.path("w0.bin")))["files"][0]["state"] == "waiting-for-upload"
        assert os.getxattr(a.path("w1.bin"), "user.websync.state") == b"waiting-for-upload"
        for name, data in waiting.items():
            assert read_bytes(a.path(name)) == data
    assert cli_json(a, "status")["pending"] >= 4

    own_server.start()
    wait_uploaded(a, timeout=90)
    # A fresh machine sees exactly what was written while the server was away.
    b = machines("B")
    for name, data in {**waiting, "open.bin": open_data}.items():
        assert read_bytes(b.path(name)) == data, name


def test_pins_follow_remote_changes(machines: Callable[..., Machine], own_server: OwnServer) -> None:
    a = machines("A")
    b = machines("B", cache_limit=1)
    a.path("docs").mkdir()
    a.path("docs", "kept.txt").write_text("version 1\n")
    a.path("loose.bin").write_bytes(os.urandom(40 * KiB))
    a.path("later").mkdir()
    a.path("later", "x.bin").write_bytes(os.urandom(40 * KiB))
    eventually(lambda: b.path("loose.bin").exists() and b.path("later", "x.bin").exists(), what="tree on B")
    b.cli("pin", str(b.path("docs")))

    changed = "version 2, longer than the first\n"
    a.path("docs", "kept.txt").write_text(changed)
    a.path("docs", "sub").mkdir()
    new_data = os.urandom(6 * MiB)
    a.path("docs", "sub", "new.bin").write_bytes(new_data)
    os.rename(a.path("loose.bin"), a.path("docs", "moved.bin"))
    moved_data = read_bytes(a.path("docs", "moved.bin"))
    wait_uploaded(a)

    def all_local_on_b() -> bool:
        files = cli_json(b, "status", "docs/kept.txt", "docs/sub/new.bin", "docs/moved.bin")["files"]
        return all(f["state"] == "pinned" and f["local_bytes"] == f["size"] for f in files) and \
            files[0]["size"] == len(changed)

    # Checked without opening anything on B: the pin fetched them in the background.
    eventually(all_local_on_b, timeout=30, what="B fetching the pinned changes")
    assert os.getxattr(b.path("docs", "sub", "new.bin"), "user.websync.state") == b"pinned"
    own_server.stop()
    assert b.path("docs", "kept.txt").read_text() == changed
    assert read_bytes(b.path("docs", "sub", "new.bin")) == new_data
    assert read_bytes(b.path("docs", "moved.bin")) == moved_data

    # Pinning with the server gone keeps the pin and says what is missing.
    offline = b.cli("pin", "later", check=False)
    assert offline.returncode == 3, offline
    assert "pinned later\n1 file(s), 41.0 KB: 0 file(s), 0 B local\n" == offline.stdout
    assert offline.stderr.startswith("websync: the server is unreachable (")
    assert [p["path"] for p in cli_json(b, "pins")["pins"]] == ["docs", "later"]


def test_every_command_answers_json_and_refuses_bad_input_in_one_sentence(a: Machine) -> None:
    a.path("docs").mkdir()
    a.path("docs", "x.txt").write_text("x")
    wait_uploaded(a)
    assert cli_json(a, "pin", "docs")["pins"][0]["path"] == "docs"
    assert cli_json(a, "pins")["pins"][0]["done"] is True
    assert cli_json(a, "status", str(a.path("docs", "x.txt")))["files"][0]["state"] == "pinned"
    assert cli_json(a, "cache")["pins"] == 1
    assert cli_json(a, "cache", "limit", "500M")["limit"] == 500_000_000
    assert cli_json(a, "cache", "limit")["limit"] == 500_000_000
    assert cli_json(a, "cache", "clean", "--dry-run")["dry_run"] is True
    assert cli_json(a, "cache", "clean")["dry_run"] is False
    assert cli_json(a, "cache", "verify")["corrupt"] == []
    assert cli_json(a, "unpin", "docs")["unpinned"][0]["path"] == "docs"
    for command in (["pin"], ["unpin"], ["pins"], ["cache"], ["cache", "limit"], ["cache", "clean"],
                    ["cache", "verify"], ["status"]):
        assert "--json" in a.cli(*command, "--help").stdout

    for args, message in (
        (("cache", "limit", "lots"), "'lots' is not a size; give one like 500M, 10G or 2GiB"),
        (("pin", "/etc"), f"/etc is not inside the WebSync folder {a.mnt}"),
        (("pin", "no/such/folder"), "no/such/folder does not exist in the store"),
        (("status", "missing.txt"), "missing.txt does not exist in the store"),
        (("unpin", "docs"), "docs is not pinned"),
    ):
        result = a.cli(*args, check=False)
        assert result.returncode == 2, (args, result)
        assert result.stderr == f"websync: {message}\n", (args, result.stderr)
        assert result.stdout == ""


def run_in_terminal(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run *argv* with stdin, stdout and stderr on a new pseudo-terminal; return its status and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=max(1, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_progress_bar_shows_on_a_terminal_and_not_in_a_pipe(a: Machine, b: Machine) -> None:
    write_files(a.path("album"), 20, 1 * MiB)
    wait_uploaded(a)
    eventually(lambda: len(os.listdir(b.path("album"))) == 20, what="the album on B")
    argv = [str(BIN / "websync"), "--home", str(b.home), "pin", str(b.path("album"))]

    status, output = run_in_terminal(argv)
    assert status == 0, output
    text = output.replace("\r\n", "\n")  # the terminal turns every newline into CR LF
    redrawn = [line for line in text.split("\n") if "\r" in line]
    assert redrawn and "\x1b[K" in redrawn[-1]
    bar = redrawn[-1].rsplit("\r", 1)[-1]
    assert "20/20 files" in bar and "21.0 MB of 21.0 MB" in bar and "B/s" in bar and "done" in bar
    assert "20 file(s), 21.0 MB: all local" in output

    b.cli("unpin", "album")
    b.cli("cache", "clean")
    assert cli_json(b, "status", "album")["files"][0]["state"] == "online-only"
    piped = b.cli("pin", str(b.path("album")))
    assert "\r" not in piped.stdout + piped.stderr and "\x1b" not in piped.stdout + piped.stderr
    assert piped.stderr == ""
    assert piped.stdout == "pinned album\n20 file(s), 21.0 MB: all local\n"


def test_file_states_show_in_status_and_as_an_xattr(a: Machine, b: Machine) -> None:
    a.path("small.txt").write_text("hello")
    a.path("big.bin").write_bytes(os.urandom(8 * BLOCK))  # read-ahead fetches 4 blocks past the one read
    a.path("notes (conflict from Z 2024-01-01 120000).txt").write_text("theirs")
    wait_uploaded(a)
    eventually(lambda: b.path("big.bin").exists() and b.path("small.txt").exists(), what="files on B")

    def state(name: str) -> str:
        return os.getxattr(b.path(name), "user.websync.state").decode()

    assert state("small.txt") == "online-only"
    # Not listed, so that cp -a, rsync -X and tar --xattrs do not carry a machine's state away.
    assert "user.websync.state" not in os.listxattr(b.path("small.txt"))
    assert b.path("small.txt").read_text() == "hello"
    # Written to the cache in the background, right after the read is answered.
    eventually(lambda: state("small.txt") == "cached", what="small.txt cached")
    with open(b.path("big.bin"), "rb") as f:
        # Read on through the first block: a reader that goes on gets whole blocks and
        # read-ahead (a single small read is answered by range and caches nothing).
        f.read(BLOCK)
    eventually(lambda: state("big.bin") == "partly-cached", what="big.bin partly cached")
    assert state("notes (conflict from Z 2024-01-01 120000).txt") == "conflict"

    files = cli_json(b, "status", "small.txt", "big.bin")["files"]
    assert [f["state"] for f in files] == ["cached", "partly-cached"]
    assert 0 < files[1]["local_bytes"] < files[1]["size"] == 8 * BLOCK
    text = b.cli("status", str(b.path("big.bin"))).stdout
    assert "big.bin  partly cached (" in text and "% local)" in text

    b.cli("pin", "big.bin")
    assert state("big.bin") == "pinned"
    assert cli_json(b, "status", "big.bin")["files"][0]["local_bytes"] == 8 * BLOCK
    # The state is computed, never stored or synced: setting it changes nothing.
    os.setxattr(b.path("small.txt"), "user.websync.state", b"pinned")
    assert state("small.txt") == "cached"


def test_verify_drops_a_damaged_block_and_fetches_it_again(a: Machine, b: Machine) -> None:
    data = os.urandom(300 * KiB)
    a.path("f.bin").write_bytes(data)
    wait_uploaded(a)
    eventually(lambda: read_bytes(b.path("f.bin")) == data, what="f.bin on B")
    h = hashlib.sha256(data).hexdigest()
    # The read is answered first; the block reaches the cache right after.
    (stored,) = eventually(lambda: list((b.home / "cache" / "blocks").rglob(f"{h}*.val")), what="f.bin cached")
    stored.write_bytes(b"\0" * 100 + stored.read_bytes()[100:])

    answer = cli_json(b, "cache", "verify")
    assert answer["corrupt"] == [h] and answer["refetched"] == [h] and answer["lost"] == []
    (again,) = (b.home / "cache" / "blocks").rglob(f"{h}*.val")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == h
