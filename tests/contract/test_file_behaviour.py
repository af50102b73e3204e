"""File behaviour every front end shares: the same tests on the bare core, the mount and a synced folder.

The core runs in this process with no kernel and no server (a fast loop for
the engine's own rules); the mount goes through FUSE and the kernel; the
synced folder's answers wait until a mount on another machine agrees; the
drive letter's WinFsp operations are called in this process as WinFsp calls
them (tests/winfsp/drive.py), with winfspy's names from a stand-in.  All
must give the same bytes and the same errno for each case.
"""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.targets import FolderTarget, MountTarget, Target, core_target, drive_target


@pytest.fixture(params=["core", "mount", "folder", "winfsp"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "core":
        async with core_target(tmp_path / "core") as core:
            yield core
    elif request.param == "winfsp":
        request.getfixturevalue("winfspy")
        async with core_target(tmp_path / "core") as core:
            yield drive_target(core.vfs)
    elif request.param == "mount":
        machine = request.getfixturevalue("a")
        yield MountTarget(machine.mnt)
    else:
        mirror = request.getfixturevalue("a")
        syncing = request.getfixturevalue("new_machine")("B", mount=False)
        syncing.sync(tmp_path / "folder")
        yield FolderTarget(tmp_path / "folder", MountTarget(mirror.mnt))


async def _fails(code: int, call: object) -> None:
    with pytest.raises(OSError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.errno == code, f"expected {errno.errorcode[code]}, got {caught.value!r}"


async def test_written_bytes_read_back(target: Target) -> None:
    data = random.Random(1).randbytes(9 * 1024 * 1024 + 17)  # three blocks, the last one short
    await target.write("big.bin", data)
    assert await target.read("big.bin") == data
    assert await target.kind_size_mode("big.bin") == ("file", len(data), 0o644)


async def test_an_overwrite_replaces_and_an_append_adds(target: Target) -> None:
    await target.write("f.txt", b"first version, long")
    await target.write("f.txt", b"second")
    await target.append("f.txt", b"+more")
    assert await target.read("f.txt") == b"second+more"


async def test_folders_list_their_entries_sorted(target: Target) -> None:
    await target.mkdir("d")
    await target.mkdir("d/inner")
    for name in ("b.txt", "a.txt", "é.txt"):
        await target.write(f"d/{name}", name.encode())
    assert await target.listdir("d") == ["a.txt", "b.txt", "inner", "é.txt"]
    assert (await target.kind_size_mode("d/inner"))[0] == "dir"


async def test_rename_replaces_a_file_and_noreplace_refuses(target: Target) -> None:
    await target.write("a", b"A")
    await target.write("b", b"B")
    await _fails(errno.EEXIST, target.rename("a", "b", noreplace=True))
    await target.rename("a", "b")
    assert await target.listdir("") == ["b"]
    assert await target.read("b") == b"A"


async def test_a_folder_cannot_move_into_itself(target: Target) -> None:
    await target.mkdir("x")
    await target.mkdir("x/y")
    await _fails(errno.EINVAL, target.rename("x", "x/y/x"))


async def test_removing_the_wrong_kind_gives_the_local_errno(target: Target) -> None:
    await target.mkdir("d")
    await target.write("d/f", b"f")
    await _fails(errno.ENOTEMPTY, target.rmdir("d"))
    await _fails(errno.EISDIR, target.unlink("d"))
    await _fails(errno.ENOTDIR, target.rmdir("d/f"))
    await _fails(errno.ENOENT, target.unlink("d/missing"))
    await _fails(errno.ENOENT, target.write("nowhere/f", b"x"))
    await _fails(errno.EEXIST, target.mkdir("d"))


async def test_a_name_longer_than_255_bytes_is_refused(target: Target) -> None:
    await _fails(errno.ENAMETOOLONG, target.write("é" * 128 + ".txt", b"x"))


async def test_symlinks_keep_their_target(target: Target) -> None:
    await target.symlink("../somewhere/else", "link")
    assert await target.readlink("link") == "../somewhere/else"
    assert (await target.kind_size_mode("link"))[0] == "symlink"


async def test_chmod_sets_the_permission_bits(target: Target) -> None:
    await target.write("run.sh", b"#!/bin/sh\n")
    await target.chmod("run.sh", 0o750)
    assert await target.kind_size_mode("run.sh") == ("file", 10, 0o750)


async def test_truncate_shortens_and_extends_with_zeros(target: Target) -> None:
    await target.write("t", b"0123456789")
    await target.truncate("t", 4)
    assert await target.read("t") == b"0123"
    await target.truncate("t", 8)
    assert await target.read("t") == b"0123\0\0\0\0"


async def test_a_deleted_file_leaves_the_listing(target: Target) -> None:
    await target.write("gone.txt", b"x")
    await target.write("kept.txt", b"y")
    await target.unlink("gone.txt")
    assert await target.listdir("") == ["kept.txt"]
