"""The WinFsp front end driven as WinFsp drives it, against a real engine and an in-process server.

winfspy and WinFsp exist on Windows only: the names the front end takes from
winfspy come from tests/winfsp_stub.py, and the test plays WinFsp (drive.py),
calling the operations from a thread in the orders WinFsp's driver and its
memfs sample use.  What reaches the server is read from the server's store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio


from tests.client.engine import EngineMachine
from tests.winfsp.drive import (
    CLEANUP_DELETE,
    CLEANUP_SET_LAST_WRITE_TIME,
    DELETE,
    FILE_DIRECTORY_FILE,
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    Drive,
)
from tests.winfsp.conftest import Setup

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_DIRECTORY_NOT_EMPTY = 0xC0000101
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_CANNOT_DELETE = 0xC0000121


@pytest.mark.timeout(60)
async def test_create_write_cleanup_close_makes_one_version(setup: Setup) -> None:
    drive = setup.drive
    assert not await drive.exists("report.txt")
    ctx = await drive.create("report.txt")
    assert await drive.call("write", ctx, b"hello ", 0, False, False) == 6
    assert await drive.call("write", ctx, b"world", 6, False, False) == 5
    await drive.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)
    await setup.settle()
    assert setup.versions("report.txt") == 1
    assert await drive.read_file("report.txt") == b"hello world"
    assert (await drive.info("report.txt"))["file_size"] == 11


@pytest.mark.timeout(60)
async def test_open_with_overwrite_replaces_the_content(setup: Setup) -> None:
    drive = setup.drive
    await drive.write_file("notes.txt", b"a long first version")
    await drive.write_file("notes.txt", b"short")  # CREATE_ALWAYS on an existing file: Open, then Overwrite
    await setup.settle()
    assert await drive.read_file("notes.txt") == b"short"
    assert setup.server.tree()["notes.txt"][0] == "file"


@pytest.mark.timeout(60)
async def test_write_to_end_of_file_appends_and_constrained_io_stops_at_the_end(setup: Setup) -> None:
    drive = setup.drive
    await drive.write_file("log.txt", b"one\n")
    ctx = await drive.open("log.txt", FILE_READ_DATA | FILE_WRITE_DATA)
    assert await drive.call("write", ctx, b"two\n", 0, True, False) == 4
    # Paging I/O from the cache manager may not extend the file.
    assert await drive.call("write", ctx, b"TWO\nthree", 4, False, True) == 4
    assert await drive.call("write", ctx, b"x", 100, False, True) == 0
    await drive.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)
    assert await drive.read_file("log.txt") == b"one\nTWO\n"


@pytest.mark.timeout(60)
async def test_delete_on_cleanup_and_can_delete_refuses_a_full_folder(setup: Setup) -> None:
    drive = setup.drive
    await drive.close(await drive.create("docs", FILE_DIRECTORY_FILE, 0x10))
    await drive.write_file("docs/a.txt", b"a")
    folder = await drive.open("docs", DELETE, FILE_DIRECTORY_FILE)
    assert await drive.status("can_delete", folder, "\\docs") == STATUS_DIRECTORY_NOT_EMPTY
    await drive.close(folder)
    await drive.delete("docs/a.txt")
    await drive.delete("docs", folder=True)
    assert await drive.list("") == []
    await setup.settle()
    assert setup.server.tree() == {}


@pytest.mark.timeout(60)
async def test_a_file_created_and_deleted_never_reaches_the_server(setup: Setup) -> None:
    drive = setup.drive
    ctx = await drive.create("scratch.bin")
    await drive.call("write", ctx, b"x" * 1000, 0, False, False)
    await drive.close(ctx, CLEANUP_DELETE, "scratch.bin")  # FILE_DELETE_ON_CLOSE
    await setup.settle()
    assert "scratch.bin" not in setup.sent_names
    assert not await drive.exists("scratch.bin")


@pytest.mark.timeout(60)
async def test_rename_with_and_without_replace(setup: Setup) -> None:
    drive = setup.drive
    await drive.write_file("a.txt", b"A")
    await drive.write_file("b.txt", b"B")
    ctx = await drive.open("a.txt", DELETE)
    assert await drive.status("rename", ctx, "\\a.txt", "\\b.txt", False) == STATUS_OBJECT_NAME_COLLISION
    await drive.close(ctx)
    await drive.move("a.txt", "b.txt", replace=True)
    assert await drive.list("") == ["b.txt"]
    assert await drive.read_file("b.txt") == b"A"
    await drive.move("b.txt", "B.TXT", replace=False)  # a change of case only
    assert await drive.list("") == ["B.TXT"]
    await setup.settle()
    assert list(setup.server.tree()) == ["B.TXT"]


@pytest.mark.timeout(60)
async def test_replace_never_replaces_a_folder(setup: Setup) -> None:
    drive = setup.drive
    await drive.close(await drive.create("d", FILE_DIRECTORY_FILE, 0x10))
    await drive.write_file("f", b"f")
    ctx = await drive.open("f", DELETE)
    assert await drive.status("rename", ctx, "\\f", "\\d", True) == STATUS_ACCESS_DENIED
    await drive.close(ctx)


@pytest.mark.timeout(60)
async def test_directory_listing_comes_in_pages_after_each_marker(setup: Setup) -> None:
    drive = setup.drive
    await drive.close(await drive.create("sub", FILE_DIRECTORY_FILE, 0x10))
    names = ["b.txt", "a.txt", "é.txt", "C.txt", "d", "z", "_x"]
    for name in names:
        await drive.write_file(f"sub/{name}", name.encode())
    await drive.write_file("top.txt", b"t")
    assert await drive.list("") == ["sub", "top.txt"]  # no "." or ".." in the root
    assert await drive.list("sub") == sorted(names + [".", ".."])
    ctx = await drive.open("sub", FILE_READ_DATA, FILE_DIRECTORY_FILE)
    after = await drive.call("read_directory", ctx, "b.txt")
    assert [e["file_name"] for e in after] == ["d", "z", "é.txt"]
    found = await drive.call("get_dir_info_by_name", ctx, "A.TXT")
    assert found["file_name"] == "a.txt" and found["file_size"] == 5
    assert await drive.status("get_dir_info_by_name", ctx, "missing") == STATUS_OBJECT_NAME_NOT_FOUND
    await drive.close(ctx)


@pytest.mark.timeout(60)
async def test_names_are_found_whatever_their_case_and_keep_their_own(setup: Setup) -> None:
    drive = setup.drive
    await drive.write_file("Report.docx", b"v1")
    assert await drive.read_file("REPORT.DOCX") == b"v1"
    await drive.write_file("report.docx", b"v2")  # the same file, as on NTFS
    assert await drive.list("") == ["Report.docx"]
    assert await drive.read_file("Report.docx") == b"v2"
    ctx = await drive.create("other.txt")
    await drive.close(ctx)
    assert await drive.status("create", "\\OTHER.txt", 0x40, FILE_WRITE_DATA, 0x80, None, 0) \
        == STATUS_OBJECT_NAME_COLLISION


@pytest.mark.timeout(60)
async def test_missing_names_and_folders_give_windows_errors(setup: Setup) -> None:
    drive = setup.drive
    assert await drive.status("get_security_by_name", "\\missing.txt") == STATUS_OBJECT_NAME_NOT_FOUND
    assert await drive.status("get_security_by_name", "\\nowhere\\f.txt") == STATUS_OBJECT_PATH_NOT_FOUND
    assert await drive.status("create", "\\nowhere\\f.txt", 0x40, FILE_WRITE_DATA, 0x80, None, 0) \
        == STATUS_OBJECT_PATH_NOT_FOUND


@pytest.mark.timeout(60)
async def test_read_only_attribute_is_the_write_bit_and_times_are_filetimes(setup: Setup) -> None:
    from websync_fs.winfsp.ops import filetime

    drive = setup.drive
    await drive.write_file(".gitignore", b"*.o\n")
    info = await drive.info(".gitignore")
    assert info["file_attributes"] == 0x20  # ARCHIVE only: a dot-file is not hidden
    ctx = await drive.open(".gitignore", 0x100)
    when = filetime(1_700_000_000_123_456_700)
    info = await drive.call("set_basic_info", ctx, 0x1 | 0x2, 0, 0, when, 0, None)
    await drive.close(ctx)
    assert info["file_attributes"] == 0x21 and info["last_write_time"] == when
    assert setup.machine.vfs.getattr(setup.machine.vfs.lookup(1, ".gitignore").ino).mode & 0o777 == 0o444
    await setup.settle()
    # Read-only: WinFsp refuses writing, the front end deleting (as NTFS); clearing the flag
    # gives the owner the write bit back.
    from winfspy import NTStatusError

    with pytest.raises(NTStatusError) as refused:
        await drive.open(".gitignore", FILE_WRITE_DATA)
    assert refused.value.value == STATUS_ACCESS_DENIED
    ctx = await drive.open(".gitignore", DELETE)
    assert await drive.status("can_delete", ctx, "\\.gitignore") == STATUS_CANNOT_DELETE
    await drive.call("set_basic_info", ctx, 0x20, 0, 0, 0, 0, None)
    await drive.close(ctx)
    assert setup.machine.vfs.lookup(1, ".gitignore").mode & 0o777 == 0o644
    assert setup.machine.vfs.lookup(1, ".gitignore").mtime_ns == 1_700_000_000_123_456_700


@pytest.mark.timeout(60)
async def test_set_file_size_cuts_and_extends_and_allocation_alone_keeps_the_size(setup: Setup) -> None:
    drive = setup.drive
    await drive.write_file("t.bin", b"0123456789")
    ctx = await drive.open("t.bin", FILE_READ_DATA | FILE_WRITE_DATA)
    await drive.call("set_file_size", ctx, 1 << 20, True)
    await drive.call("set_file_size", ctx, 4, False)
    await drive.call("set_file_size", ctx, 6, False)
    await drive.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)
    assert await drive.read_file("t.bin") == b"0123\0\0"


@pytest.mark.timeout(60)
async def test_volume_security_and_flush(setup: Setup) -> None:
    drive = setup.drive
    volume = await drive.call("get_volume_info")
    assert volume == {"total_size": 10 << 30, "free_size": 4 << 30, "volume_label": "WebSync"}
    attributes, sddl, size = await drive.call("get_security_by_name", "\\")
    assert attributes == 0x10
    assert sddl == f"O:{SID}G:{SID}D:P(A;;FA;;;{SID})(A;;FA;;;SY)(A;;FA;;;BA)" and size == len(sddl)
    ctx = await drive.create("f.txt")
    await drive.call("write", ctx, b"durable", 0, False, False)
    await drive.call("flush", ctx)  # FlushFileBuffers: a version is queued before the handle closes
    assert len(setup.machine.queue) >= 1
    assert await drive.call("get_security", ctx) == (sddl, size)
    await drive.call("set_security", ctx, 4, object())  # accepted, not kept
    await drive.close(ctx)
    await drive.call("flush", None)


@pytest.mark.timeout(60)
async def test_word_save_dance_is_one_version_and_no_temporary_file_reaches_the_server(setup: Setup) -> None:
    """Word's save, as Process Monitor shows it on a WinFsp drive: write ~WRD, move the
    original to ~WRL, move ~WRD to the original name, delete ~WRL."""
    drive = setup.drive
    await drive.write_file("Thesis.docx", b"version one")
    await setup.settle()
    node = setup.node_id("Thesis.docx")
    setup.sent_names.clear()

    owner = await drive.create("~$Thesis.docx")  # Word's owner file, open while the document is
    await drive.call("write", owner, b"me", 0, False, False)
    tmp = await drive.create("~WRD0001.tmp")
    await drive.call("write", tmp, b"version two, longer", 0, False, False)
    await drive.close(tmp, CLEANUP_SET_LAST_WRITE_TIME)
    await drive.move("Thesis.docx", "~WRL0001.tmp", replace=False)
    await drive.move("~WRD0001.tmp", "Thesis.docx", replace=False)
    await drive.delete("~WRL0001.tmp")
    await drive.close(owner, CLEANUP_DELETE, "~$Thesis.docx")
    await setup.settle()

    assert list(setup.server.tree()) == ["Thesis.docx"]
    assert setup.node_id("Thesis.docx") == node  # the document keeps its history
    assert setup.versions("Thesis.docx") == 2
    assert not [n for n in setup.sent_names if n.endswith(".tmp") or n.startswith("~$")], setup.sent_names
    assert await drive.read_file("Thesis.docx") == b"version two, longer"


@pytest.mark.timeout(60)
def test_the_security_descriptor_is_refused_a_malformed_sid(winfspy: None) -> None:
    from websync_fs.winfsp.security import security_sddl

    assert security_sddl("S-1-5-18").startswith("O:S-1-5-18G:S-1-5-18D:P(")
    with pytest.raises(ValueError):
        security_sddl("S-1-5-18)(A;;FA;;;WD")


@pytest.mark.timeout(60)
def test_a_drive_letter_and_a_folder_get_the_volume_parameters_they_need(winfspy: None) -> None:
    from websync_fs.winfsp.mount import volume_params

    drive, folder = volume_params("X:"), volume_params(r"C:\Users\me\WebSync")
    assert drive["reject_irp_prior_to_transact0"] == 0 and folder["reject_irp_prior_to_transact0"] == 1
    assert drive["case_sensitive_search"] == 0 and drive["case_preserved_names"] == 1
    assert drive["sector_size"] * drive["sectors_per_allocation_unit"] == 4096  # type: ignore[operator]


@pytest.mark.timeout(60)
async def test_excel_save_through_hex_named_temporaries_is_one_version(setup: Setup) -> None:
    """Excel: write the new book to an 8-hex-digit name, move the original to another, the new
    one to the original name, delete the old one."""
    drive = setup.drive
    await drive.write_file("Budget.xlsx", b"book one")
    await setup.settle()
    node = setup.node_id("Budget.xlsx")
    setup.sent_names.clear()
    await drive.write_file("5E1A9C20", b"book two")
    await drive.move("Budget.xlsx", "D8F3B7A1.tmp", replace=False)
    await drive.move("5E1A9C20", "Budget.xlsx", replace=False)
    await drive.delete("D8F3B7A1.tmp")
    await setup.settle()
    assert list(setup.server.tree()) == ["Budget.xlsx"]
    assert setup.node_id("Budget.xlsx") == node and setup.versions("Budget.xlsx") == 2
    assert setup.sent_names == [] or set(setup.sent_names) <= {"Budget.xlsx"}, setup.sent_names


@pytest.mark.timeout(60)
async def test_notepad_save_truncates_in_place_and_is_one_version(setup: Setup) -> None:
    """Notepad opens the file with CREATE_ALWAYS (Open, then Overwrite) and writes it whole."""
    drive = setup.drive
    await drive.write_file("todo.txt", b"milk\n")
    await setup.settle()
    node = setup.node_id("todo.txt")
    await drive.write_file("todo.txt", b"milk\neggs\n")
    await setup.settle()
    assert setup.node_id("todo.txt") == node and setup.versions("todo.txt") == 2
    assert await drive.read_file("todo.txt") == b"milk\neggs\n"


@pytest.mark.timeout(30)
def test_winfspy_is_imported_in_one_place_only() -> None:
    """The stand-in replaces one module; any other import of winfspy would go untested."""
    package = Path(__file__).resolve().parents[2] / "websync_fs" / "winfsp"
    importers = sorted(p.name for p in package.glob("*.py")
                       if any(line.lstrip().startswith(("import winfspy", "from winfspy"))
                              for line in p.read_text().splitlines()))
    assert importers == ["_winfspy.py"]


@pytest.mark.timeout(60)
async def test_a_save_on_the_drive_meeting_another_machines_edit_makes_the_usual_conflict_copy(
    setup: Setup, tmp_path: Path
) -> None:
    """Word on the drive letter and a Linux machine change one document at once: both versions stay,
    the loser under the conflict name every front end uses."""
    from websync_fs.conflicts import is_conflict_copy

    drive = setup.drive
    other = EngineMachine("linux-box", tmp_path / "other", setup.server)
    try:
        await drive.write_file("Plan.docx", b"first")
        await setup.settle()
        await other.settle()
        await other.files.write("Plan.docx", b"edited on Linux")
        await other.settle()
        await drive.write_file("~WRD0002.tmp", b"edited in Word")
        await drive.move("Plan.docx", "~WRL0002.tmp", replace=False)
        await drive.move("~WRD0002.tmp", "Plan.docx", replace=False)
        await drive.delete("~WRL0002.tmp")
        for machine in (setup.machine, other, setup.machine, other):
            await machine.settle()
        names = sorted(setup.server.tree())
        assert len(names) == 2 and "Plan.docx" in names, names
        copy = next(n for n in names if n != "Plan.docx")
        assert is_conflict_copy(copy) and copy.endswith(".docx") and not copy.startswith("~"), copy
        texts = {await drive.read_file(name) for name in names}
        assert texts == {b"edited on Linux", b"edited in Word"}
        assert setup.machine.tree() == other.tree() == setup.server.tree()
    finally:
        other.close()


@pytest.mark.timeout(60)
async def test_the_volume_is_the_local_disk_also_where_there_is_no_statvfs(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    from websync_fs.winfsp.ops import WinFspOperations

    ops = WinFspOperations(setup.machine.vfs, trio.lowlevel.current_trio_token(), setup.drive.ops.security)
    disk = shutil.disk_usage(tmp_path / "a" / "work")
    # As on Windows: no statvfs, and disk_usage answered by the system (GetDiskFreeSpaceExW).
    monkeypatch.delattr("os.statvfs")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk)
    volume = await Drive(ops).call("get_volume_info")
    assert volume["total_size"] == disk.total and volume["free_size"] == disk.free
