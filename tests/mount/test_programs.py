"""Real programs in the mount: version control, builds, databases, venvs, rsync,
memory maps and locks -- the way people use a local disk."""

from __future__ import annotations

import fcntl
import mmap
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from tests.clients import Machine, eventually, read_bytes

pytestmark = pytest.mark.mount


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_NOSYSTEM="1",
               HOME=str(cwd or Path.cwd()))
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_git_clone_status_commit_gc(a: Machine, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    work = tmp_path / "seed"
    run("git", "init", "-q", "-b", "main", str(work), cwd=tmp_path)
    for i in range(40):
        (work / f"file{i}.txt").write_text(f"line {i}\n" * 50)
    run("git", "add", ".", cwd=work)
    run("git", "commit", "-qm", "seed", cwd=work)
    run("git", "clone", "-q", "--bare", str(work), str(origin), cwd=tmp_path)

    run("git", "clone", "-q", str(origin), str(a.path("repo")), cwd=tmp_path)
    repo = a.path("repo")
    assert run("git", "status", "--porcelain", cwd=repo) == ""
    (repo / "file3.txt").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "change", cwd=repo)
    run("git", "gc", "-q", cwd=repo)
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""
    assert "change" in run("git", "log", "--oneline", cwd=repo)


def test_unpack_a_source_tarball_and_build_it(a: Machine, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    for d in range(20):
        pkg = src / f"pkg{d}"
        pkg.mkdir(parents=True)
        for f in range(100):
            (pkg / f"doc{f}.txt").write_text(f"documentation {d}/{f}\n")
        (pkg / "unit.c").write_text(f"int unit{d}(void) {{ return {d}; }}\n")
    calls = " + ".join(f"unit{d}()" for d in range(20))
    decls = "".join(f"int unit{d}(void);\n" for d in range(20))
    (src / "main.c").write_text(f'#include <stdio.h>\n{decls}int main(void) {{ printf("%d\\n", {calls}); return 0; }}\n')
    objs = " ".join(f"pkg{d}/unit.o" for d in range(20))
    (src / "Makefile").write_text(f"prog: main.o {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O0 -c -o $@ $<\n")
    tarball = tmp_path / "proj.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="proj")
    run("tar", "-xzf", str(tarball), "-C", str(a.mnt))
    run("make", "-j2", cwd=a.path("proj"))
    out = run(str(a.path("proj", "prog")))
    assert out.strip() == str(sum(range(20)))
    assert len(list(a.path("proj").rglob("*.txt"))) == 2000


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_sqlite_database_with_a_concurrent_writer(a: Machine, journal: str) -> None:
    path = a.path(f"db-{journal}.sqlite")
    setup = sqlite3.connect(path)
    setup.execute(f"PRAGMA journal_mode={journal}")
    setup.execute("CREATE TABLE t (who TEXT, n INTEGER)")
    setup.commit()
    setup.close()

    def writer(who: str) -> None:
        db = sqlite3.connect(path, timeout=30)
        for n in range(100):
            with db:
                db.execute("INSERT INTO t VALUES (?, ?)", (who, n))
        db.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT who, count(*) FROM t GROUP BY who ORDER BY who").fetchall() == [("x", 100), ("y", 100)]
    db.close()


def test_python_venv_inside_the_mount(a: Machine) -> None:
    venv = a.path("venv")
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    out = run(str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)")
    assert out.strip() == str(venv)


def test_rsync_in_and_out_shows_no_difference(a: Machine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    for i in range(50):
        (src / "sub" / f"f{i}.bin").write_bytes(os.urandom(1000 + i * 97))
    (src / "sub" / "deeper" / "x").write_text("x")
    os.symlink("sub/f1.bin", src / "link")
    os.chmod(src / "sub" / "f2.bin", 0o600)
    run("rsync", "-a", f"{src}/", f"{a.path('copy')}/")
    assert run("rsync", "-a", "--checksum", "--dry-run", "--itemize-changes", f"{src}/", f"{a.path('copy')}/") == ""
    back = tmp_path / "back"
    run("rsync", "-a", f"{a.path('copy')}/", f"{back}/")
    assert run("rsync", "-a", "--checksum", "--dry-run", "--itemize-changes", f"{src}/", f"{back}/") == ""


def test_shared_mmap_writes_reach_the_other_machine(a: Machine, b: Machine) -> None:
    path = a.path("mapped.bin")
    path.write_bytes(b"\0" * 8192)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 8192) as m:
            m[100:105] = b"hello"
            m[5000:5005] = b"world"
            m.flush()
    expected = bytearray(8192)
    expected[100:105] = b"hello"
    expected[5000:5005] = b"world"
    eventually(lambda: read_bytes(b.path("mapped.bin")) == bytes(expected), what="mmap writes on B")


def test_flock_and_fcntl_locks_work_between_processes(a: Machine) -> None:
    path = a.path("lockfile")
    path.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"f = open({str(path)!r}, 'r+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\n"
         f"g = open({str(path)!r}, 'r+')\n"
         "fcntl.lockf(g, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with open(path, "r+") as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        probe = subprocess.run(
            [sys.executable, "-c",
             "import fcntl\n"
             f"f = open({str(path)!r}, 'r+')\n"
             "try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('busy')\n"],
            capture_output=True, text=True, timeout=30,
        )
        assert probe.stdout.strip() == "busy"
    finally:
        holder.communicate("", timeout=30)
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
