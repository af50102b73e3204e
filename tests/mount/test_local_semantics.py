"""One machine: the mount answers like a local disk, errno for errno."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.clients import Machine

pytestmark = pytest.mark.mount


def expect_errno(code: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: {os.strerror(info.value.errno or 0)}"


def test_errors_match_a_local_disk(a: Machine) -> None:
    root = a.mnt
    expect_errno(errno.ENOENT, os.stat, root / "missing")
    expect_errno(errno.ENOENT, open, root / "missing")
    (root / "d").mkdir()
    (root / "d" / "f").write_text("x")
    (root / "file").write_text("y")
    expect_errno(errno.EEXIST, os.mkdir, root / "d")
    expect_errno(errno.EEXIST, os.open, str(root / "file"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.ENOTEMPTY, os.rmdir, root / "d")
    expect_errno(errno.EISDIR, os.unlink, root / "d")
    expect_errno(errno.EISDIR, open, root / "d", "w")
    expect_errno(errno.ENOTDIR, os.rmdir, root / "file")
    expect_errno(errno.ENOTDIR, os.listdir, root / "file")
    expect_errno(errno.ENOTDIR, os.stat, root / "file" / "x")
    expect_errno(errno.EINVAL, os.rename, root / "d", root / "d" / "inside")
    expect_errno(errno.ENAMETOOLONG, open, root / ("n" * 256), "w")
    expect_errno(errno.EISDIR, os.rename, root / "file", root / "d")
    expect_errno(errno.ENOTDIR, os.rename, root / "d", root / "file")
    (root / "e").mkdir()
    (root / "e" / "g").write_text("z")
    expect_errno(errno.ENOTEMPTY, os.rename, root / "d", root / "e")
    expect_errno(errno.EINVAL, os.readlink, root / "file")


def test_longest_name_and_unicode_names_work(a: Machine) -> None:
    for name in ("n" * 255, "Grüße – ünïcödé ✓.txt", "日本語のファイル名", "a:b", "CON", "trailing."):
        (a.mnt / name).write_text(name)
        assert (a.mnt / name).read_text() == name
    assert len(os.listdir(a.mnt)) == 6


def test_read_write_seek_truncate_and_append(a: Machine) -> None:
    p = a.mnt / "rw.bin"
    with open(p, "w+b") as f:
        f.write(b"hello world")
        f.seek(6)
        assert f.read() == b"world"
        f.seek(100)
        f.write(b"!")
    assert p.stat().st_size == 101
    assert p.read_bytes()[11:100] == b"\0" * 89
    os.truncate(p, 5)
    assert p.read_bytes() == b"hello"
    with open(p, "ab") as f:
        f.write(b" again")
    assert p.read_bytes() == b"hello again"
    with open(p, "r+b") as f:
        f.truncate(2)
        f.seek(0)
        assert f.read() == b"he"


def test_chmod_utimens_and_stat_fields(a: Machine) -> None:
    p = a.mnt / "t.txt"
    p.write_text("abc")
    os.chmod(p, 0o640)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and stat.S_ISREG(st.st_mode)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert st.st_size == 3 and st.st_uid == os.getuid()
    d = a.mnt / "dir"
    d.mkdir(mode=0o750)
    assert stat.S_ISDIR(d.stat().st_mode)


def test_unlinked_open_file_stays_readable(a: Machine) -> None:
    p = a.mnt / "gone.txt"
    p.write_text("still here")
    with open(p) as f:
        p.unlink()
        assert not p.exists()
        assert f.read() == "still here"


def test_statfs_answers(a: Machine) -> None:
    st = os.statvfs(a.mnt)
    assert st.f_namemax == 255 and st.f_blocks > 0


def test_writes_survive_remount(a: Machine) -> None:
    (a.mnt / "keep.txt").write_text("kept")
    (a.mnt / "folder").mkdir()
    a.unmount()
    a.mount()
    assert (a.mnt / "keep.txt").read_text() == "kept"
    assert (a.mnt / "folder").is_dir()


def test_fresh_machine_sees_the_whole_tree(a: Machine, new_machine) -> None:  # type: ignore[no-untyped-def]
    (a.mnt / "x").mkdir()
    (a.mnt / "x" / "y.txt").write_text("why")
    a.unmount()  # waits for pending uploads
    c: Machine = new_machine("C")
    assert (c.mnt / "x" / "y.txt").read_text() == "why"


def _as_nobody(code: str) -> str:
    """Run *code* as the unprivileged user nobody; return what it prints."""
    import subprocess

    # The system interpreter: the test's own may live where nobody cannot read.
    done = subprocess.run(
        ["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=60, user=65534, group=65534,
    )
    return done.stdout.strip() + done.stderr.strip()[-200:]


def test_mode_bits_are_enforced_for_other_users_as_on_a_local_disk(new_machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a: Machine = new_machine("A", options=("--allow-other",))  # other users may enter at all
    local = tmp_path / "local"
    local.mkdir()
    # Let the other user walk down to both folders (pytest's are private to root).
    opened = [p for p in (local, *local.parents, *a.mnt.parents) if str(p).startswith("/tmp/")]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in opened}
    for p in opened:
        os.chmod(p, modes[p] | 0o011)
    try:
        answers = _permission_answers(local, a.mnt)
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)
    assert answers[0] == answers[1] == "EACCES ok EACCES EACCES"


def _permission_answers(*roots: Path) -> list[str]:
    answers = []
    for root in roots:
        os.chmod(root, 0o755)
        (root / "secret").write_text("s")
        os.chmod(root / "secret", 0o600)
        (root / "public").write_text("p")
        os.chmod(root / "public", 0o644)
        code = (
            "import errno\n"
            "def t(f):\n"
            "    try:\n        f(); return 'ok'\n"
            "    except OSError as e:\n        return errno.errorcode[e.errno]\n"
            f"print(t(lambda: open({str(root / 'secret')!r}).read()),"
            f" t(lambda: open({str(root / 'public')!r}).read()),"
            f" t(lambda: open({str(root / 'public')!r}, 'a').write('x')),"
            f" t(lambda: open({str(root / 'new')!r}, 'w')))\n"
        )
        answers.append(_as_nobody(code))
    return answers


def test_only_user_attributes_exist_and_other_namespaces_say_not_supported(a: Machine) -> None:
    path = a.mnt / "doc.txt"
    path.write_text("x")
    os.setxattr(path, "user.tag", b"blue")
    assert os.getxattr(path, "user.tag") == b"blue"
    expect_errno(errno.ENODATA, os.getxattr, path, "user.absent")
    # "Not supported", as on a disk mounted without them: `ls -l` and `cp -a` then
    # stop asking this file system for SELinux labels and ACLs at all.
    expect_errno(errno.EOPNOTSUPP, os.getxattr, path, "security.selinux")
    expect_errno(errno.EOPNOTSUPP, os.getxattr, path, "system.posix_acl_access")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, path, "trusted.x", b"1")
    listing = subprocess.run(["ls", "-l", str(a.mnt)], capture_output=True, text=True, check=True).stdout
    assert "-rw" in listing and "doc.txt" in listing
