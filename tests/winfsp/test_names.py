"""Names Windows refuses or folds, on the drive letter: shown under the synced folder's aliases, found back.

A Linux machine (an engine of its own) gives files names Windows refuses and
a case pair; the drive (WinFsp played by the test, winfspy's names from
tests/winfsp_stub.py: Windows itself cannot run here) lists them under the
aliases a synced folder on NTFS shows, finds them whatever their case, and
what it does to an alias reaches the original on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.client.engine import EngineMachine
from tests.winfsp.drive import CLEANUP_SET_LAST_WRITE_TIME, FILE_WRITE_DATA
from tests.winfsp.conftest import Setup
from websync_fs.namepolicy import WINDOWS, fits, fold

STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_NAME_TOO_LONG = 0xC0000106

#: What the Linux machine names its files, and what the drive shows.
SHOWN = {
    "a:b.txt": "a：b.txt",
    "what?.txt": "what？.txt",
    "CON": "COＮ",
    "nul.txt": "nuｌ.txt",
    "trail.": "trail．",
    "a：b.txt": "a‛：b.txt",  # a real look-alike: quoted, so it never meets the alias of a:b.txt
    "notes.txt": "notes.txt",
}
PAIR = ("Readme.md", "README.md")
LONG_PAIR = ("x" * 246 + ".md", "X" * 246 + ".md")  # the marked one is over 255 UTF-16 units


@pytest.fixture
async def linux(setup: Setup, tmp_path: Path) -> AsyncIterator[EngineMachine]:
    """Another machine, on Linux, that fills the store with every kind of name."""
    other = EngineMachine("linux-box", tmp_path / "other", setup.server)
    try:
        for name in [*SHOWN, *PAIR, *LONG_PAIR]:
            await other.files.write(name, name.encode())
        await other.files.mkdir("dir:x")
        await other.files.write("dir:x/in?side.txt", b"inside")
        await other.settle()
        await setup.settle()
        yield other
    finally:
        other.close()


@pytest.mark.timeout(60)
async def test_names_windows_refuses_are_listed_under_aliases_and_read_whatever_their_case(
    setup: Setup, linux: EngineMachine
) -> None:
    drive = setup.drive
    listed = await drive.list("")
    assert set(SHOWN.values()) | {"dir：x"} <= set(listed)
    for name, alias in SHOWN.items():
        assert await drive.read_file(alias) == name.encode(), name
    assert await drive.read_file("A：B.TXT") == b"a:b.txt" and await drive.read_file("coｎ") == b"CON"
    assert await drive.read_file("DIR：X/IN？SIDE.txt") == b"inside"
    # Each pair: both listed, one under its own name, the other marked; no two names fold together.
    assert len({fold(n, WINDOWS) for n in listed}) == len(listed)
    for pair in (PAIR, LONG_PAIR):
        plain = [n for n in listed if n in pair]
        # The marked name, or where the mark makes it too long a shortened one.
        marked = [n for n in listed if n not in pair and fold(n, WINDOWS).startswith(fold(pair[0][:5], WINDOWS))]
        assert len(plain) == 1 and len(marked) == 1, listed
        assert fits(marked[0], WINDOWS)
        other = next(n for n in pair if n != plain[0])
        assert await drive.read_file(marked[0]) == other.encode()
        assert await drive.read_file(plain[0].swapcase()) == plain[0].encode()  # any case finds the plain one
    root = await drive.open("", 0x1, 0x1)
    try:
        found = await drive.call("get_dir_info_by_name", root, "NUＬ.TXT")
    finally:
        await drive.close(root)
    assert found["file_name"] == "nuｌ.txt"


@pytest.mark.timeout(60)
async def test_edits_renames_and_deletes_of_aliases_on_the_drive_reach_the_originals(
    setup: Setup, linux: EngineMachine
) -> None:
    drive = setup.drive
    await drive.write_file("COＮ", b"edited on Windows")
    await drive.move("trail．", "dir：x\\moved？.txt", replace=False)
    await drive.delete("what？.txt")
    await drive.write_file("new？ on windows.txt", b"made on Windows")
    listed = await drive.list("")
    marked = next(n for n in listed if n.startswith(("Readme (", "README (")))
    await drive.write_file(marked, b"the marked one, edited")
    node = setup.node_id("notes.txt")
    await drive.move("notes.txt", "Notes.txt", replace=False)  # in case only: one rename
    await setup.settle()
    await linux.settle()
    tree = setup.server.tree()
    assert "CON" in tree and "trail." not in tree and "dir:x/moved?.txt" in tree and "what?.txt" not in tree
    assert "new? on windows.txt" in tree and "Notes.txt" in tree and "notes.txt" not in tree
    assert setup.node_id("Notes.txt") == node
    assert linux.tree() == setup.machine.tree() == tree
    texts = {name: await linux.files.read(name) for name in ("CON", "dir:x/moved?.txt", *PAIR)}
    assert texts["CON"] == b"edited on Windows" and texts["dir:x/moved?.txt"] == b"trail."
    edited = PAIR[0] if marked.startswith("Readme") else PAIR[1]
    assert texts[edited] == b"the marked one, edited"
    assert texts[PAIR[1 - PAIR.index(edited)]] == PAIR[1 - PAIR.index(edited)].encode()


@pytest.mark.timeout(60)
async def test_a_new_name_taken_in_another_case_or_read_as_no_alias_is_refused(
    setup: Setup, linux: EngineMachine
) -> None:
    drive = setup.drive
    status = await drive.status("create", "\\A：B.TXT", 0x40, FILE_WRITE_DATA, 0x80, None, 0)
    assert status == STATUS_OBJECT_NAME_COLLISION
    # ‛‛x: no name is shown so, and made as ‛x it would come back as another name.
    assert await drive.status("create", "\\‛‛x", 0x40, FILE_WRITE_DATA, 0x80, None, 0) == STATUS_OBJECT_NAME_INVALID
    assert await drive.status("get_security_by_name", "\\‛‛x") == STATUS_OBJECT_NAME_INVALID
    # 200 characters fit Windows (255 UTF-16 units) but are 400 UTF-8 bytes: over what the store keeps.
    too_long = "\\" + "\u00e9" * 200
    assert await drive.status("create", too_long, 0x40, FILE_WRITE_DATA, 0x80, None, 0) == STATUS_NAME_TOO_LONG
    ctx = await drive.create("fine：name")
    await drive.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)
    await setup.settle()
    assert "fine:name" in setup.server.tree()


@pytest.mark.timeout(60)
async def test_word_saving_a_marked_twin_keeps_its_original_name(
    setup: Setup, linux: EngineMachine
) -> None:
    """Word's save renames the document away and its temporary file to the document's name: on a
    marked or shortened name that name must stand for the original again, not become a name itself."""
    drive = setup.drive
    listed = await drive.list("")
    for pair in (PAIR, LONG_PAIR):
        shown = next(n for n in listed if n not in pair and fold(n, WINDOWS).startswith(fold(pair[0][:5], WINDOWS)))
        await drive.write_file("~WRD0001.tmp", b"saved in Word")
        await drive.move(shown, "~WRL0001.tmp", replace=False)
        await drive.move("~WRD0001.tmp", shown, replace=False)
        await drive.delete("~WRL0001.tmp")
        assert await drive.read_file(shown) == b"saved in Word"
    await setup.settle()
    await linux.settle()
    tree = linux.tree()
    assert set(tree) ^ {*SHOWN, *PAIR, *LONG_PAIR, "dir:x", "dir:x/in?side.txt"} == set()
    for pair in (PAIR, LONG_PAIR):
        saved = [n for n in pair if await linux.files.read(n) == b"saved in Word"]
        assert len(saved) == 1


@pytest.mark.timeout(60)
async def test_a_folder_map_brought_up_to_date_is_the_map_made_anew(
    setup: Setup, linux: EngineMachine
) -> None:
    from websync_fs.replica import ROOT_INO
    from websync_fs.winfsp.aliases import DriveNames

    drive = setup.drive
    names = drive.ops.names
    for i, name in enumerate(["new：1", "Plain", "trail．", "COＭ1.txt", "a" * 200 + "：" * 20]):
        await drive.write_file(name, b"%d" % i)
        assert names.shown(ROOT_INO) == DriveNames(setup.machine.vfs).shown(ROOT_INO)
    await drive.delete("Plain")
    await drive.write_file("PLAIN", b"again")  # the name back in another case
    await drive.write_file("readme.MD", b"x")  # the pair's plain name in another case: that file
    assert names.shown(ROOT_INO) == DriveNames(setup.machine.vfs).shown(ROOT_INO)
    await setup.settle()
    assert "new:1" in setup.server.tree() and "trail." in setup.server.tree()
