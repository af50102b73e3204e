"""Desktop programs' save sequences, run on A the way each program runs them.

Throughout every save a watcher lists B's folder as fast as it can: B must
never see the document missing, nor any temporary, owner, lock or swap file.
After the save B reads the new content, and the document has one new version.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, read_bytes

pytestmark = pytest.mark.mount


class Watcher:
    """Lists a folder on B continuously and records everything it ever saw."""

    def __init__(self, folder: Path, document: str) -> None:
        self.folder = folder
        self.document = document
        self.seen: set[str] = set()
        self.missing_at: list[float] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            names = set(os.listdir(self.folder))
            self.seen |= names
            if self.document not in names:
                self.missing_at.append(time.monotonic())
            self.samples += 1

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def versions(m: Machine, name: str) -> int:
    out = m.cli("history", name, "--json", check=True).stdout
    import json

    return len(json.loads(out)["versions"])


@contextmanager
def watched_save(a: Machine, b: Machine, document: str, new: bytes, allowed: set[str]) -> Iterator[Watcher]:
    """Run a save on A (the body) while B is watched; then wait for B to have *new*."""
    before = versions(a, str(a.path(document)))
    with Watcher(b.mnt, document) as watcher:
        yield watcher
        eventually(lambda: read_bytes(b.path(document)) == new, what=f"new {document} on B")
        # Temporary names wait longer than the quiet period before upload: watch past it.
        time.sleep(4)
    assert watcher.samples > 10
    assert not watcher.missing_at, f"B saw {document} missing during the save"
    assert watcher.seen <= allowed, f"B saw files it must not: {sorted(watcher.seen - allowed)}"
    assert sorted(os.listdir(b.mnt)) == sorted(allowed & set(os.listdir(a.mnt)))
    eventually(lambda: versions(a, str(a.path(document))) == before + 1, what="one new version")


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def start(a: Machine, b: Machine, document: str, data: bytes) -> None:
    write(a.path(document), data)
    eventually(lambda: read_bytes(b.path(document)) == data, what=f"{document} on B")


def test_word_save(a: Machine, b: Machine) -> None:
    start(a, b, "Report.docx", b"version 1")
    with watched_save(a, b, "Report.docx", b"version 2", {"Report.docx"}):
        owner = a.path("~$Report.docx")
        write(owner, b"owner: alice")
        write(a.path("~WRD0000.tmp"), b"version 2")
        os.rename(a.path("Report.docx"), a.path("~WRL0001.tmp"))
        os.rename(a.path("~WRD0000.tmp"), a.path("Report.docx"))
        os.unlink(a.path("~WRL0001.tmp"))
        os.unlink(owner)


def test_excel_save(a: Machine, b: Machine) -> None:
    start(a, b, "Book.xlsx", b"sheet 1")
    with watched_save(a, b, "Book.xlsx", b"sheet 2", {"Book.xlsx"}):
        write(a.path("~$Book.xlsx"), b"owner")
        write(a.path("3A1F09C2"), b"sheet 2")
        os.unlink(a.path("Book.xlsx"))
        os.rename(a.path("3A1F09C2"), a.path("Book.xlsx"))
        os.unlink(a.path("~$Book.xlsx"))


def test_libreoffice_save(a: Machine, b: Machine) -> None:
    start(a, b, "Report.odt", b"odt 1")
    with watched_save(a, b, "Report.odt", b"odt 2", {"Report.odt"}):
        write(a.path(".~lock.Report.odt#"), b",alice,host,2026;")
        write(a.path("lu4711abcd.tmp"), b"odt 2")
        os.rename(a.path("lu4711abcd.tmp"), a.path("Report.odt"))
        os.unlink(a.path(".~lock.Report.odt#"))


def test_gedit_save(a: Machine, b: Machine) -> None:
    start(a, b, "notes.txt", b"gedit 1\n")
    with watched_save(a, b, "notes.txt", b"gedit 2\n", {"notes.txt"}):
        write(a.path(".goutputstream-K2Z4Q1"), b"gedit 2\n")
        os.rename(a.path(".goutputstream-K2Z4Q1"), a.path("notes.txt"))


def test_vim_save(a: Machine, b: Machine) -> None:
    start(a, b, "notes.txt", b"vim 1\n")
    swap = a.path(".notes.txt.swp")
    write(swap, b"swap while editing")
    with watched_save(a, b, "notes.txt", b"vim 2\n", {"notes.txt"}):
        probe = os.open(a.path("4913"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(probe)
        os.unlink(a.path("4913"))
        os.rename(a.path("notes.txt"), a.path("notes.txt~"))
        write(a.path("notes.txt"), b"vim 2\n")
        os.unlink(a.path("notes.txt~"))
    os.unlink(swap)
    assert not b.path(".notes.txt.swp").exists()


def test_emacs_save_keeps_the_backup_everywhere(a: Machine, b: Machine) -> None:
    start(a, b, "notes.txt", b"emacs 1\n")
    lock = a.path(".#notes.txt")
    os.symlink("alice@host.1234:1700000000", lock)
    with watched_save(a, b, "notes.txt", b"emacs 2\n", {"notes.txt", "notes.txt~"}):
        os.rename(a.path("notes.txt"), a.path("notes.txt~"))
        write(a.path("notes.txt"), b"emacs 2\n")
    # The backup the user keeps reaches B after the quiet period; the lock link never does.
    eventually(lambda: read_bytes(b.path("notes.txt~")) == b"emacs 1\n", what="notes.txt~ on B")
    os.unlink(lock)
    assert not os.path.lexists(b.path(".#notes.txt"))


def test_a_temporary_file_that_stays_reaches_b(a: Machine, b: Machine) -> None:
    write(a.path("draft.tmp"), b"kept")
    eventually(lambda: read_bytes(b.path("draft.tmp")) == b"kept", what="draft.tmp on B")


def test_lock_files_stay_local_but_work_locally(a: Machine, b: Machine) -> None:
    write(a.path("~$Budget.xlsx"), b"owner")
    write(a.path("visible.txt"), b"x")
    eventually(lambda: b.path("visible.txt").exists(), what="visible.txt on B")
    assert read_bytes(a.path("~$Budget.xlsx")) == b"owner"
    assert not b.path("~$Budget.xlsx").exists()
    # Renamed to a normal name, it syncs after all.
    os.rename(a.path("~$Budget.xlsx"), a.path("Budget-owner.txt"))
    eventually(lambda: read_bytes(b.path("Budget-owner.txt")) == b"owner", what="renamed lock on B")
