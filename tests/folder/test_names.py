"""Names Windows refuses or folds, synced into a folder on a real NTFS volume and back.

Machine A mounts the store on Linux and may use any name; machine B syncs a
folder on an NTFS loop image mounted with lowntfs-3g ``windows_names,ignore_case``,
which refuses what Windows refuses (EINVAL) and finds ``README`` for ``Readme``.
B shows each name under its alias (`websync_fs.namepolicy`); what B does to an
alias reaches the original on A.  lowntfs-3g lists every name in lower case,
so B's side is compared case-folded.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import trio

from tests.clients import Machine, eventually, read_bytes
from websync_fs.folder.probe import probe
from websync_fs.folder.watcher import DirtyPaths
from websync_fs.namepolicy import LINUX, WINDOWS, Rules, encode, fold

pytestmark = [pytest.mark.mount]

NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")
#: Every kind of name a Linux machine may give a file, with the alias B shows it under.
NAMES = {
    "a:b.txt": "a：b.txt",
    "what?.txt": "what？.txt",
    "<tag> * \"q\" | x\\y.txt": "＜tag＞ ＊ ＂q＂ ｜ x＼y.txt",
    "bell\x07.txt": "bell␇.txt",
    "CON": "COＮ",
    "nul.txt": "nuｌ.txt",
    "com1.tar.gz": "com１.tar.gz",
    "trail.": "trail．",
    "space ": "space␠",
    "a：b real.txt": "a‛：b real.txt",  # a real look-alike: quoted, never the alias of "a:b real.txt"
    "a:b real.txt": "a：b real.txt",
    NFC: NFC,
    NFD: NFD,  # NTFS keeps both forms apart, as Windows does
}
CASE_PAIR = ("Readme.md", "README.md")
LONG = ":" * 100 + ".txt"  # 104 bytes here, 304 as look-alikes: over NTFS's 255 through the kernel


def _refused(path: Path) -> bool:
    try:
        path.touch()
    except OSError as exc:
        return exc.errno == errno.EINVAL
    path.unlink()
    return False


@pytest.fixture
def ntfs(tmp_path: Path) -> Iterator[Path]:
    """An NTFS volume with Windows' name rules, mounted through lowntfs-3g, unmounted at the end."""
    if not (shutil.which("mkntfs") and shutil.which("lowntfs-3g")):
        pytest.fail("ntfs-3g is missing (platform/setup-debian.sh installs it)")
    image, where = tmp_path / "ntfs.img", tmp_path / "ntfs"
    where.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkntfs", "-F", "-Q", str(image)], check=True, capture_output=True)
    subprocess.run(["lowntfs-3g", "-o", "windows_names,ignore_case,permissions", str(image), str(where)],
                   check=True, capture_output=True)
    try:
        assert all(_refused(where / n) for n in ("a:b", "CON", "trail.")), "lowntfs-3g took a Windows-refused name"
        (where / "Readme").write_bytes(b"x")
        assert (where / "README").exists(), "lowntfs-3g did not fold case"
        (where / "Readme").unlink()
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            time.sleep(1)
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.timeout(60)
def test_the_probe_finds_windows_rules_on_ntfs_and_none_on_a_linux_disk(ntfs: Path, tmp_path: Path) -> None:
    found = probe(ntfs)
    assert found.forbidden == WINDOWS.forbidden and found.trailing == WINDOWS.trailing
    assert found.devices and found.fold_case and not found.fold_normalisation
    # Through Linux's VFS the limit is 255 UTF-8 bytes, although NTFS itself counts 255 UTF-16 units.
    assert found.max_bytes == 255 and found.max_units is None
    linux = tmp_path / "linux"
    linux.mkdir()
    assert probe(linux) == LINUX
    assert not os.listdir(ntfs) and not os.listdir(linux), "the probe left a file behind"


def _store(root: Path) -> dict[str, bytes]:
    """Every file under *root* by relative path, the folder's own files left out."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".websync")]
        for name in filenames:
            if not name.startswith(".websync"):
                path = Path(dirpath) / name
                found[str(path.relative_to(root))] = read_bytes(path)
    return found


def _folded(files: dict[str, bytes], rules: Rules = WINDOWS) -> dict[str, bytes]:
    return {fold(p, rules): data for p, data in files.items()}


def _status(machine: Machine) -> dict[str, object]:
    return json.loads(machine.cli("status", "--json").stdout)  # type: ignore[no-any-return]


def _quiet(*machines: Machine) -> Callable[[], bool]:
    return lambda: all(_status(m)["pending"] == 0 for m in machines)


def _fill(a: Machine) -> dict[str, bytes]:
    """Every kind of name on A's mount, each file with content of its own."""
    written = {}
    for i, name in enumerate([*NAMES, *CASE_PAIR, LONG]):
        a.path(name).write_bytes(b"file %d: %r" % (i, name.encode()))
        written[name] = read_bytes(a.path(name))
    a.path("dir:x").mkdir()
    a.path("dir:x", "in?side.txt").write_bytes(b"inside")
    written["dir:x/in?side.txt"] = b"inside"
    return written


@pytest.mark.timeout(240)
def test_every_name_a_linux_machine_gives_is_there_under_an_alias_on_ntfs(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a = new_machine("A")
    written = _fill(a)
    b = new_machine("B", mount=False)
    eventually(_quiet(a), timeout=60, what="A's uploads")
    folder = ntfs / "Sync"
    b.sync(folder)
    eventually(lambda: len(_store(folder)) == len(written), timeout=60, what="every file on the NTFS folder")
    here = _store(folder)
    assert sorted(here.values()) == sorted(written.values()), "a file is missing or was overwritten"
    for name, alias in NAMES.items():
        assert read_bytes(folder / alias) == written[name], name
    assert read_bytes(folder / "dir：x" / "in？side.txt") == b"inside"
    # The case pair: both kept, the one B learned of first under its own name.
    plain = [n for n in os.listdir(folder) if fold(n, WINDOWS) == fold("README.md", WINDOWS)]
    marked = [n for n in os.listdir(folder) if "(case conflict)" in n]
    assert len(plain) == 1 and len(marked) == 1, os.listdir(folder)
    assert {read_bytes(folder / plain[0]), read_bytes(folder / marked[0])} == {written[n] for n in CASE_PAIR}
    # The long name: shortened, with its extension, and mapped back (the status lists it).
    long = [n for n in os.listdir(folder) if n.startswith("：") and "~" in n]
    assert len(long) == 1 and long[0].endswith(".txt") and read_bytes(folder / long[0]) == written[LONG]
    def listed() -> bool:
        aliased = _status(b)["aliased"]
        return isinstance(aliased, dict) and LONG in aliased.values() and aliased.get("a：b.txt") == "a:b.txt"

    eventually(listed, what="the status to list the aliases")
    # Nothing of B's came back to A as a new name.
    time.sleep(1)
    eventually(_quiet(a, b), what="both machines settled")
    assert _store(a.mnt) == written


@pytest.mark.timeout(240)
def test_edits_renames_and_deletes_of_aliases_reach_the_originals(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a = new_machine("A")
    written = _fill(a)
    a.path("notes.txt").write_bytes(b"notes")
    b = new_machine("B", mount=False)
    eventually(_quiet(a), timeout=60, what="A's uploads")
    folder = ntfs / "Sync"
    b.sync(folder)
    eventually(lambda: len(_store(folder)) == len(written) + 1, timeout=60, what="every file on the NTFS folder")
    # An edit of an alias reaches its original, and only it.
    (folder / "a：b.txt").write_bytes(b"edited on B")
    eventually(lambda: read_bytes(a.path("a:b.txt")) == b"edited on B", what="the edit of a:b.txt")
    assert read_bytes(a.path("a：b real.txt")) == written["a：b real.txt"]
    marked = next(n for n in os.listdir(folder) if "(case conflict)" in n)
    original = "Readme.md" if marked.startswith("Readme") else "README.md"
    (folder / marked).write_bytes(b"the marked one, edited")
    eventually(lambda: read_bytes(a.path(original)) == b"the marked one, edited", what="the marked twin's edit")
    other = CASE_PAIR[1 - CASE_PAIR.index(original)]
    assert read_bytes(a.path(other)) == written[other]
    # A rename on B into a name Windows refuses as it is: the original name on A.
    os.rename(folder / "COＮ", folder / "dir：x" / "moved？.txt")
    eventually(lambda: a.path("dir:x", "moved?.txt").exists() and not a.path("CON").exists(), what="the rename")
    assert read_bytes(a.path("dir:x", "moved?.txt")) == written["CON"]
    os.unlink(folder / "trail．")
    eventually(lambda: not a.path("trail.").exists(), what="the delete of trail.")
    # A new file made on B with look-alikes in its name: A sees what it stands for.
    (folder / "new？ on b.txt").write_bytes(b"made on B")
    eventually(lambda: a.path("new? on b.txt").exists(), what="a file made on B")
    # A name that no original encodes to is left alone, and the status says why.
    (folder / "‛‛odd.txt").write_bytes(b"odd")
    eventually(lambda: "‛‛odd.txt" in _status(b)["problems"], what="the unsyncable name in the status")  # type: ignore[operator]
    assert not [n for n in os.listdir(a.mnt) if "odd" in n]
    os.unlink(folder / "‛‛odd.txt")
    eventually(lambda: not _status(b)["problems"], what="the problem to go with the file")
    # Remote changes: an edit, a rename into a refused name, a rename in case only.
    a.path("space ").write_bytes(b"edited on A")
    eventually(lambda: read_bytes(folder / "space␠") == b"edited on A", what="A's edit of 'space '")
    os.rename(a.path("what?.txt"), a.path("why|.txt"))
    eventually(lambda: (folder / "why｜.txt").exists() and not (folder / "what？.txt").exists(), what="A's rename")
    os.rename(a.path("notes.txt"), a.path("Notes.txt"))
    eventually(_quiet(a, b), what="both settled")
    time.sleep(2)
    eventually(_quiet(a, b), what="both settled")
    assert read_bytes(folder / "notes.txt") == b"notes"
    assert a.path("Notes.txt").exists() and "notes.txt" not in os.listdir(a.mnt)
    assert not [n for n in os.listdir(a.mnt) if "conflict from" in n]
    there = _store(a.mnt)
    expected = {_alias(p): d for p, d in there.items()}
    # The case pair's marked twin is the one name not its plain alias.
    expected[fold(marked, WINDOWS)] = expected.pop(_alias(original))
    expected = {k: v for k, v in expected.items() if not k.startswith("：")}
    assert {k: v for k, v in _folded(_store(folder)).items() if "~" not in k} == _folded(expected)
    assert len(_store(folder)) == len(there)


#: Names the NTFS folder cannot hold as they are: longer than 255 UTF-8 bytes once aliased (Linux's VFS
#: limit, which lowntfs-3g meets before NTFS's 255 UTF-16 units).
LONG_NAMES = {
    "first": "a:b " * 60 + "one.txt",  # 247 bytes here, 367 as look-alikes
    "second": "a:b " * 60 + "two.txt",  # the same start: told apart by the hash
    "full": "\u00e9" * 125 + "?.md",  # 254 bytes, 256 with ？
    "twin": "x" * 246 + ".md",  # fits, and so does its case twin's plain name ...
    "TWIN": "X" * 246 + ".md",  # ... but not its marked one
}
LONG_DIR = "d:" * 100  # 200 bytes, 400 as look-alikes


def _where(folder: Path, data: bytes) -> str:
    """The one path in *folder* that holds *data* (each file here has content of its own)."""
    found = [p for p, d in _store(folder).items() if d == data]
    assert len(found) == 1, (data, found)
    return found[0]


@pytest.mark.timeout(240)
def test_names_too_long_for_ntfs_are_shortened_and_what_b_does_to_them_reaches_the_originals(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a = new_machine("A")
    for key, name in LONG_NAMES.items():
        a.path(name).write_bytes(key.encode())
    a.path(LONG_DIR).mkdir()
    a.path(LONG_DIR, "inside?.txt").write_bytes(b"inside")
    b = new_machine("B", mount=False)
    eventually(_quiet(a), timeout=60, what="A's uploads")
    folder = ntfs / "Sync"
    b.sync(folder)
    eventually(lambda: len(_store(folder)) == len(LONG_NAMES) + 1, timeout=60, what="every file on the NTFS folder")
    shown = {key: _where(folder, key.encode()) for key in LONG_NAMES}
    assert all(len(path.encode()) <= 255 for path in shown.values())
    # Shortened, never cut to a clash; of the case pair one keeps its plain name, the marked one is cut.
    assert sorted("~" in path for key, path in shown.items()) == [False, True, True, True, True], shown
    assert shown["first"].startswith("a：b a：b ") and shown["first"].endswith(".txt")
    assert fold(shown["twin"], WINDOWS) != fold(shown["TWIN"], WINDOWS)
    inside = _where(folder, b"inside")
    assert inside.startswith("d：d：") and "~" in inside and inside.endswith("/inside？.txt")
    cut = {LONG_NAMES[key] for key, path in shown.items() if "~" in path}
    eventually(lambda: cut <= set(_status(b)["aliased"].values()),  # type: ignore[union-attr]
               what="the status to list the shortened names")
    # B's edits, renames and deletes of the shortened names reach the originals, and only them.
    (folder / shown["first"]).write_bytes(b"first, edited on B")
    eventually(lambda: read_bytes(a.path(LONG_NAMES["first"])) == b"first, edited on B", what="the edit")
    assert read_bytes(a.path(LONG_NAMES["second"])) == b"second"
    os.rename(folder / shown["second"], folder / "short？.txt")
    eventually(lambda: a.path("short?.txt").exists() and not a.path(LONG_NAMES["second"]).exists(),
               what="the rename to a short name")
    assert read_bytes(a.path("short?.txt")) == b"second"
    os.unlink(folder / shown["full"])
    eventually(lambda: not a.path(LONG_NAMES["full"]).exists(), what="the delete")
    marked = "twin" if "~" in shown["twin"] else "TWIN"
    (folder / shown[marked]).write_bytes(b"marked, edited on B")
    eventually(lambda: read_bytes(a.path(LONG_NAMES[marked])) == b"marked, edited on B", what="the marked twin's edit")
    (folder / inside).write_bytes(b"inside, edited on B")
    eventually(lambda: read_bytes(a.path(LONG_DIR, "inside?.txt")) == b"inside, edited on B", what="the edit inside")
    # A's rename of a long name to another long name: one rename on B, under the new alias.
    before = os.stat(folder / shown["first"]).st_ino
    renamed = "b:a " * 60 + "one.txt"
    os.rename(a.path(LONG_NAMES["first"]), a.path(renamed))
    eventually(lambda: _where(folder, b"first, edited on B").startswith("b：a "), what="A's rename")
    assert os.stat(folder / _where(folder, b"first, edited on B")).st_ino == before  # moved, not downloaded again
    eventually(_quiet(a, b), what="both settled")
    expected = {renamed: b"first, edited on B", "short?.txt": b"second", LONG_NAMES["twin"]: b"twin",
                LONG_NAMES["TWIN"]: b"TWIN", f"{LONG_DIR}/inside?.txt": b"inside, edited on B"}
    expected[LONG_NAMES[marked]] = b"marked, edited on B"
    assert _store(a.mnt) == expected
    assert sorted(_store(folder).values()) == sorted(expected.values())


def _deep(top: Path, parts: list[str], data: bytes) -> None:
    """Make the folders *parts* under *top* and a file ``f`` in the last, by descriptor: no path is long."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


@pytest.mark.timeout(180)
def test_a_path_longer_than_the_folder_takes_is_named_in_the_status_and_kept_everywhere_else(
    new_machine: Callable[..., Machine], tmp_path: Path
) -> None:
    """Whole paths are not shortened (docs/design.md): past Linux's PATH_MAX the folder says so."""
    a = new_machine("A")
    parts = [f"{i:02d}" + "d" * 248 for i in range(20)]  # 20 folders of 250 bytes: over 4,096 with the folder's own
    _deep(a.mnt, parts, b"deep")
    a.path("plain.txt").write_bytes(b"plain")
    b = new_machine("B", mount=False)
    eventually(_quiet(a), timeout=60, what="A's uploads")
    folder = tmp_path / "Sync"
    b.sync(folder)
    eventually(lambda: (folder / "plain.txt").exists(), timeout=60, what="the plain file on B")

    def named() -> bool:
        problems = _status(b)["problems"]
        return isinstance(problems, dict) and any("too long" in str(why) for why in problems.values())

    eventually(named, timeout=60, what="the status to name the path too long")
    deepest = folder
    made = 0
    for part in parts:
        try:
            if not (deepest / part).is_dir():
                break
        except OSError:
            break
        deepest, made = deepest / part, made + 1
    assert 0 < made < len(parts)  # the folders that fit are there, the rest is not
    time.sleep(1)
    eventually(_quiet(a, b), what="both settled")
    # Nothing was deleted on the server for it: A still has the file, and B's plain edit goes up.
    fd = os.open(a.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        kept = os.open("f", os.O_RDONLY, dir_fd=fd)
        assert os.read(kept, 100) == b"deep"
        os.close(kept)
    finally:
        os.close(fd)
    (folder / "plain.txt").write_bytes(b"edited on B")
    eventually(lambda: read_bytes(a.path("plain.txt")) == b"edited on B", what="B's edit")


def _respell(path: Path, new: str) -> None:
    """Rename *path* to *new*, which differs from it in case only, as Linux can on a folding file system.

    rename(2) onto the name that lowntfs-3g's ignore_case finds as the same
    file does nothing (one inode: POSIX), so the change goes through a third
    name, as a user's ``mv`` would have to; Windows and macOS rename directly.
    """
    between = path.with_name(path.name + ".renaming")
    os.rename(path, between)
    os.rename(between, path.with_name(new))


def test_a_case_change_through_a_third_name_is_one_rename_even_across_batches() -> None:
    async def main() -> None:
        dirty = DirtyPaths()
        for move in [(".websync-tmp-1", "Readme.md"), ("Readme.md", "x"), ("x", "README.md"), ("a", "b")]:
            dirty.moved(*move)
        assert dirty.take_respelled() == [("Readme.md", "README.md")]
        # Split by a batch: the half-way chain is carried once, to meet its next step.
        dirty.moved("Docs", "tmp")
        dirty.moved("Docs/plan", "tmp/plan")
        assert dirty.take_respelled(exists=lambda path: False) == []
        dirty.moved("tmp", "DOCS")
        dirty.moved("tmp/plan", "DOCS/plan")
        assert dirty.take_respelled() == [("Docs", "DOCS"), ("Docs/plan", "DOCS/plan")]
        dirty.moved("gone", "elsewhere")
        dirty.take_respelled(exists=lambda path: False)
        dirty.take_respelled(exists=lambda path: False)
        assert not dirty.moves  # carried once, then dropped

    trio.run(main)


def _readme_and_docs(ntfs: Path, new_machine: Callable[..., Machine]) -> tuple[Machine, Machine, Path]:
    """A with Readme.md, notes.txt and Docs/plan.txt; B syncing them into a folder on *ntfs*."""
    a = new_machine("A")
    a.path("Readme.md").write_bytes(b"readme")
    a.path("notes.txt").write_bytes(b"notes")
    a.path("Docs").mkdir()
    a.path("Docs", "plan.txt").write_bytes(b"plan")
    b = new_machine("B", mount=False)
    eventually(_quiet(a), timeout=60, what="A's uploads")
    folder = ntfs / "Sync"
    b.sync(folder)
    eventually(lambda: len(_store(folder)) == 3, timeout=60, what="every file on the NTFS folder")
    return a, b, folder


@pytest.mark.timeout(240)
def test_a_rename_in_case_only_is_one_rename_both_ways_on_ntfs(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a, b, folder = _readme_and_docs(ntfs, new_machine)
    on_a = {name: os.stat(a.path(name)).st_ino for name in ("Readme.md", "Docs")}
    # On B: README.md and DOCS, in case only; A sees the same nodes renamed, not new ones.
    _respell(folder / "Readme.md", "README.md")
    _respell(folder / "Docs", "DOCS")
    eventually(lambda: {"README.md", "DOCS"} <= set(os.listdir(a.mnt)), what="B's renames on A")
    eventually(_quiet(a, b), what="both settled")
    assert sorted(os.listdir(a.mnt)) == ["DOCS", "README.md", "notes.txt"]
    assert os.stat(a.path("README.md")).st_ino == on_a["Readme.md"] and os.stat(a.path("DOCS")).st_ino == on_a["Docs"]
    assert read_bytes(a.path("DOCS", "plan.txt")) == b"plan" and read_bytes(a.path("README.md")) == b"readme"
    # On A: Notes.txt; on B the same file, kept (not downloaded again) and no clash.
    on_b = os.stat(folder / "notes.txt").st_ino
    os.rename(a.path("notes.txt"), a.path("Notes.txt"))
    eventually(_quiet(a, b), what="both settled")
    time.sleep(1)
    eventually(_quiet(a, b), what="both settled")
    assert os.stat(folder / "Notes.txt").st_ino == on_b and read_bytes(folder / "Notes.txt") == b"notes"
    assert not [n for n in os.listdir(folder) if "conflict" in n] and not _status(b)["problems"]
    # B holds it under the new spelling: its edit reaches Notes.txt, and notes.txt does not come back.
    (folder / "Notes.txt").write_bytes(b"notes, edited on B")
    eventually(lambda: read_bytes(a.path("Notes.txt")) == b"notes, edited on B", what="B's edit")
    eventually(_quiet(a, b), what="both settled")
    assert sorted(os.listdir(a.mnt)) == ["DOCS", "Notes.txt", "README.md"]
    assert not [n for n in os.listdir(a.mnt) if "conflict" in n]


def _known_paths(machine: Machine) -> set[str]:
    """The paths of a synced folder's last synced state (its merge base, `websync_fs.folder.known`)."""
    with closing(sqlite3.connect(machine.home / "state" / "folder.db")) as db:
        return {path for (path,) in db.execute("SELECT path FROM known")}


def _unmount(where: Path) -> None:
    eventually(lambda: subprocess.run(["umount", str(where)], capture_output=True).returncode == 0,
               what=f"{where} to unmount")


def _on_disk(image: Path, folder: str = "") -> set[str]:
    """The names NTFS itself holds in *folder* of an unmounted volume (lowntfs-3g lists them in lower case)."""
    listed = subprocess.run(["ntfsls", "-p", f"/{folder}", str(image)], capture_output=True, text=True, check=True)
    return set(listed.stdout.split("\n")) - {"", ".", ".."}


def _mount_ntfs(image: Path, where: Path) -> None:
    subprocess.run(["lowntfs-3g", "-o", "windows_names,ignore_case,permissions", str(image), str(where)],
                   check=True, capture_output=True)


@pytest.mark.timeout(240)
def test_a_case_only_rename_on_a_mount_changes_the_case_on_ntfs_and_nothing_else(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a, b, folder = _readme_and_docs(ntfs, new_machine)
    on_a = {name: os.stat(a.path(name)).st_ino for name in ("Readme.md", "Docs", "notes.txt")}
    on_b = {name: os.stat(folder / name).st_ino for name in ("readme.md", "docs", "docs/plan.txt")}
    os.rename(a.path("Readme.md"), a.path("README.md"))
    os.rename(a.path("Docs"), a.path("DOCS"))
    eventually(lambda: {"README.md", "DOCS", "DOCS/plan.txt"} <= _known_paths(b), what="B to take A's renames")
    # A change made on B after them reaches A after anything B would have sent about them.
    (folder / "after.txt").write_bytes(b"after")
    eventually(lambda: a.path("after.txt").exists(), what="B's file after the renames")
    eventually(_quiet(a, b), what="both settled")
    assert sorted(os.listdir(a.mnt)) == ["DOCS", "README.md", "after.txt", "notes.txt"]
    assert os.listdir(a.path("DOCS")) == ["plan.txt"]
    assert {name: os.stat(a.path(name)).st_ino for name in ("README.md", "DOCS", "notes.txt")} == {
        "README.md": on_a["Readme.md"], "DOCS": on_a["Docs"], "notes.txt": on_a["notes.txt"]}
    assert {name: os.stat(folder / name).st_ino for name in ("readme.md", "docs", "docs/plan.txt")} == on_b
    assert _store(folder) == {"readme.md": b"readme", "notes.txt": b"notes", "docs/plan.txt": b"plan",
                              "after.txt": b"after"}
    assert not _status(b)["problems"] and not _status(b)["conflicts"]
    assert _known_paths(b) == {"README.md", "notes.txt", "DOCS", "DOCS/plan.txt", "after.txt"}
    b.cli("sync", "--stop", str(folder))
    image = ntfs.parent / "ntfs.img"
    _unmount(ntfs)
    assert _on_disk(image, "Sync") == {".websync-folder", "README.md", "DOCS", "after.txt", "notes.txt"}
    assert _on_disk(image, "Sync/DOCS") == {"plan.txt"}

    # A kill between the two renames leaves the file under its hidden third name and the intent
    # recorded (the rows move with the intent's end): the next start puts it back and renames again.
    _mount_ntfs(image, ntfs)
    os.rename(folder / "notes.txt", folder / ".websync-case-0123456789ab")
    with closing(sqlite3.connect(b.home / "state" / "folder.db")) as db, db:
        db.execute("INSERT INTO meta VALUES ('respelling', ?)", (json.dumps(["notes.txt", ".websync-case-0123456789ab"]),))
    os.rename(a.path("notes.txt"), a.path("NOTES.txt"))
    eventually(_quiet(a), what="A's rename")
    b.sync(folder)
    eventually(lambda: "NOTES.txt" in _known_paths(b), what="B to take the rename")
    eventually(_quiet(a, b), what="both settled")
    assert sorted(os.listdir(a.mnt)) == ["DOCS", "NOTES.txt", "README.md", "after.txt"]
    assert os.stat(a.path("NOTES.txt")).st_ino == on_a["notes.txt"] and read_bytes(folder / "notes.txt") == b"notes"
    assert not _status(b)["problems"] and not _status(b)["conflicts"]
    b.cli("sync", "--stop", str(folder))
    _unmount(ntfs)
    assert _on_disk(image, "Sync") == {".websync-folder", "README.md", "DOCS", "after.txt", "NOTES.txt"}


def _alias(path: str) -> str:
    return "/".join(encode(part, WINDOWS) for part in path.split("/"))


#: Names the random mix uses on each side: disjoint, so every change has one author.
_ON_A = ["x:1", "CON.txt", "tail.", "q?", "Mixed", "MIXED", "é:é"]
_ON_B = ["b：1", "prn．txt", "plain", "star＊", "lower"]


@pytest.mark.timeout(300)
def test_a_random_mix_on_both_sides_converges_with_nothing_lost(
    ntfs: Path, new_machine: Callable[..., Machine]
) -> None:
    a = new_machine("A")
    b = new_machine("B", mount=False)
    folder = ntfs / "Sync"
    b.sync(folder)
    rng = random.Random(32)  # a seed whose steps hold the case pair from the 7th on, and rename often
    model: dict[str, bytes] = {}  # original name -> content: what both sides must end with
    deadline = time.monotonic() + 5
    step = 0
    while time.monotonic() < deadline:
        step += 1
        on_a = rng.random() < 0.5
        pool = _ON_A if on_a else _ON_B
        name = rng.choice(pool)
        original = name if on_a else _original(name)
        where = a.path(name) if on_a else folder / name
        present = [n for n in pool if (n if on_a else _original(n)) in model]
        op = rng.choice(["write", "write", "rename", "delete"] if present else ["write"])
        if op == "write":
            data = b"step %d on %s" % (step, b"A" if on_a else b"B")
            where.write_bytes(data)
            model[original] = data
        else:
            name = rng.choice(present)
            where = a.path(name) if on_a else folder / name
            original = name if on_a else _original(name)
            free = [n for n in pool if (n if on_a else _original(n)) not in model]
            if op == "rename" and free:
                target = rng.choice(free)
                os.rename(where, a.path(target) if on_a else folder / target)
                model[target if on_a else _original(target)] = model.pop(original)
            else:
                where.unlink()
                model.pop(original)
        time.sleep(rng.choice([0.0, 0.05, 0.3]))

    def converged() -> bool:
        there, here = _store(a.mnt), _store(folder)
        if there != model or sorted(here.values()) != sorted(model.values()):
            return False
        # Each name under its alias; of a case pair one is under a marked name, checked by content above.
        alone = {_alias(p): d for p, d in model.items()
                 if [fold(q, WINDOWS) for q in model].count(fold(p, WINDOWS)) == 1}
        return _folded(alone).items() <= _folded(here).items()

    try:
        eventually(converged, timeout=60, what="both sides to hold what was done, nothing lost")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nmodel: {model}\nA: {_store(a.mnt)}\nB: {_store(folder)}\n"
                             f"B's status: {_status(b)}") from None


def _original(alias: str) -> str:
    from websync_fs.namepolicy import decode
    return decode(alias, WINDOWS)
