"""Two machines, one server, through real kernel mounts: what one writes, the other reads."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

import pytest

from tests.clients import Machine, eventually, read_bytes
from tests.servers import ServerProcess

pytestmark = pytest.mark.mount


def test_file_written_on_a_is_read_identical_on_b(a: Machine, b: Machine) -> None:
    data = os.urandom(300_000)
    a.path("hello.bin").write_bytes(data)
    assert eventually(lambda: read_bytes(b.path("hello.bin")) == data, what="hello.bin on B")


def test_change_reaches_b_without_action_on_b(a: Machine, b: Machine) -> None:
    a.path("notes.txt").write_text("first version\n")
    eventually(lambda: b.path("notes.txt").read_text() == "first version\n", what="v1 on B")
    # B now has v1 in its page cache; A's edit must invalidate it.
    a.path("notes.txt").write_text("second, longer version\n")
    eventually(lambda: b.path("notes.txt").read_text() == "second, longer version\n", what="v2 on B")
    assert b.path("notes.txt").stat().st_size == len("second, longer version\n")


def test_a_name_b_found_missing_shows_once_a_makes_it(a: Machine, b: Machine) -> None:
    # B's kernel remembers a missing name as missing (a negative entry, as SQLite's journal
    # look-ups want): A making the name, or moving a file onto it, must end that at once.
    a.path("sub").mkdir()
    a.path("draft.txt").write_text("moved in\n")
    eventually(lambda: b.path("sub").is_dir() and b.path("draft.txt").exists(), what="sub/ on B")
    for _ in range(3):
        assert not b.path("later.txt").exists() and not b.path("sub", "later.txt").exists()
        assert not b.path("sub", "final.txt").exists()
    a.path("later.txt").write_text("made on A\n")
    a.path("sub", "later.txt").write_text("made on A too\n")
    os.rename(a.path("draft.txt"), a.path("sub", "final.txt"))
    eventually(lambda: b.path("later.txt").exists() and b.path("sub", "later.txt").exists()
               and b.path("sub", "final.txt").exists(), what="the new names on B")
    assert b.path("sub", "final.txt").read_text() == "moved in\n"


def test_directories_renames_deletes_chmod_and_symlinks_propagate(a: Machine, b: Machine) -> None:
    a.path("docs").mkdir()
    a.path("docs", "sub").mkdir()
    a.path("docs", "sub", "f.txt").write_text("content")
    a.path("link").symlink_to("docs/sub/f.txt")
    eventually(lambda: b.path("docs", "sub", "f.txt").read_text() == "content", what="tree on B")
    assert os.readlink(b.path("link")) == "docs/sub/f.txt"
    assert b.path("link").read_text() == "content"

    a.path("docs", "sub", "f.txt").chmod(0o600)
    eventually(lambda: stat.S_IMODE(b.path("docs", "sub", "f.txt").stat().st_mode) == 0o600, what="chmod on B")

    a.path("docs", "sub").rename(a.path("docs", "moved"))
    eventually(lambda: b.path("docs", "moved", "f.txt").read_text() == "content", what="rename on B")
    assert not b.path("docs", "sub").exists()

    a.path("docs", "moved", "f.txt").unlink()
    a.path("docs", "moved").rmdir()
    a.path("link").unlink()
    eventually(lambda: sorted(os.listdir(b.path("docs"))) == [] and not os.path.lexists(b.path("link")),
               what="deletes on B")


def test_rename_over_existing_file_replaces_it_on_both(a: Machine, b: Machine) -> None:
    a.path("doc.txt").write_text("old")
    eventually(lambda: b.path("doc.txt").read_text() == "old", what="old on B")
    a.path("tmp.txt").write_text("new")
    os.rename(a.path("tmp.txt"), a.path("doc.txt"))
    eventually(lambda: b.path("doc.txt").read_text() == "new", what="new on B")
    assert sorted(os.listdir(b.mnt)) == ["doc.txt"]


def test_100_mib_random_file_round_trips(a: Machine, b: Machine) -> None:
    size = 100 * 1024 * 1024
    digest = hashlib.sha256()
    with open(a.path("big.bin"), "wb") as f:
        for _ in range(size // (1024 * 1024)):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            f.write(chunk)
    expected = digest.hexdigest()

    def b_digest() -> bool:
        if b.path("big.bin").stat().st_size != size:
            return False
        h = hashlib.sha256()
        with open(b.path("big.bin"), "rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
        return h.hexdigest() == expected

    eventually(b_digest, timeout=120, what="100 MiB file on B")


def test_simultaneous_edits_keep_both_versions_on_both_machines(a: Machine, b: Machine) -> None:
    a.path("Report.docx").write_bytes(b"base")
    eventually(lambda: read_bytes(b.path("Report.docx")) == b"base", what="base on B")
    # Both edit before either's quiet period ends, so neither has seen the other.
    barrier = threading.Barrier(2)

    def edit(m: Machine, text: bytes) -> None:
        barrier.wait()
        m.path("Report.docx").write_bytes(text)

    threads = [threading.Thread(target=edit, args=(m, t)) for m, t in ((a, b"from A"), (b, b"from B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def settled(m: Machine) -> list[str] | None:
        names = sorted(os.listdir(m.mnt))
        return names if len(names) == 2 else None

    names_a = eventually(lambda: settled(a), what="conflict copy on A")
    names_b = eventually(lambda: settled(b), what="conflict copy on B")
    assert names_a == names_b
    copy = next(n for n in names_a if n != "Report.docx")
    assert copy.startswith("Report (conflict from ") and copy.endswith(").docx")
    for m in (a, b):
        contents = eventually(
            lambda: {read_bytes(m.path("Report.docx")), read_bytes(m.path(copy))} == {b"from A", b"from B"},
            what=f"both versions on {m.name}",
        )
        assert contents
    # The copy names the machine whose commit came second.
    loser = "A" if read_bytes(a.path("Report.docx")) == b"from B" else "B"
    assert f"conflict from {loser} " in copy


def test_wrong_token_gets_a_clear_cli_error(a: Machine) -> None:
    a.unmount()
    token = a.home / "token"
    token.write_text("not-a-real-token\n")
    result = a.cli("status", check=False)
    assert result.returncode == 4
    assert "token" in result.stderr and "login" in result.stderr
    assert "Traceback" not in result.stderr
    result = a.cli("mount", str(a.mnt), check=False)
    assert result.returncode == 4 and "token" in result.stderr
    assert not os.path.ismount(a.mnt)


def test_status_shows_server_user_connection_and_queue(a: Machine) -> None:
    info = json.loads(a.cli("status", "--json").stdout)
    assert info["server"] == a.server_url
    assert info["online"] is True and info["mounted"] is True
    assert info["pending"] == 0
    human = a.cli("status").stdout
    assert "online" in human and a.server_url in human


BLOCK = 4 * 1024 * 1024


def _on_server(server: ServerProcess, h: str) -> bool:
    return any((server.data_dir / "blocks").glob(f"*/{h[:2]}/{h[2:4]}/{h}"))


def test_fsynced_content_of_a_file_kept_open_reaches_b_once_the_writer_pauses(a: Machine, b: Machine) -> None:
    with open(a.path("app.log"), "wb") as f:
        for line in range(20):
            f.write(b"line %d\n" % line)
            f.flush()
            os.fsync(f.fileno())
        written = b"".join(b"line %d\n" % line for line in range(20))
        # Never closed: sealed after a quiet moment, as one version of the last fsync'd bytes.
        assert eventually(lambda: read_bytes(b.path("app.log")) == written, what="app.log on B while open")
        f.write(b"not fsync'd, not closed\n")
        f.flush()
        assert read_bytes(b.path("app.log")) == written
    assert eventually(lambda: read_bytes(b.path("app.log")) == written + b"not fsync'd, not closed\n",
                      what="the closed app.log on B")


def test_finished_blocks_of_a_file_still_open_reach_the_server(a: Machine, server: ServerProcess) -> None:
    blocks = [os.urandom(BLOCK) for _ in range(4)]
    hashes = [hashlib.sha256(data).hexdigest() for data in blocks]
    with open(a.path("growing.bin"), "wb", buffering=0) as f:
        f.write(blocks[0])  # the first block goes with the commit: the file may end here (a photo)
        for data, h in zip(blocks[1:], hashes[1:]):
            f.write(data)
            # Still open: nothing is committed, yet each further finished block goes up (one
            # at a time here: a block offered while the sender is busy may wait for close).
            eventually(lambda h=h: _on_server(server, h), timeout=60, what="an early block on the server")
        f.write(b"tail")
    assert a.path("growing.bin").read_bytes() == b"".join(blocks) + b"tail"
    eventually(lambda: _on_server(server, hashes[0]), timeout=60, what="the first block, with the commit")


def test_a_local_only_file_never_sends_its_blocks(a: Machine, server: ServerProcess) -> None:
    blocks = [os.urandom(BLOCK) for _ in range(3)]
    with open(a.path(".big.txt.swp"), "wb") as f:
        for data in blocks:
            f.write(data)
    a.path("marker.txt").write_text("after")
    eventually(lambda: _on_server(server, hashlib.sha256(b"after").hexdigest()), what="marker on the server")
    assert not any(_on_server(server, hashlib.sha256(data).hexdigest()) for data in blocks)
