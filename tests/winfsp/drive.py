"""WinFsp played by the test: the operations called from a thread, in the orders WinFsp calls them.

Each helper is one Win32 call as WinFsp turns it into operations (winfsp's
FSD and its memfs sample): CreateFile is GetSecurityByName, then Create for a
new name or Open (and Overwrite for CREATE_ALWAYS / TRUNCATE_EXISTING);
CloseHandle is Cleanup, then Close; DeleteFile is an open for DELETE,
CanDelete, and Cleanup with the delete flag; MoveFileEx is an open of the
source and Rename on its context; FindFirstFile/FindNextFile is
ReadDirectory, page after page, each from the last name returned.

`DriveTarget` is the contract suite's view of the same (tests/contract): it
turns NTSTATUS back into the errno, as Windows' C runtime and Python do.
"""

from __future__ import annotations

import errno
import functools
import stat
from typing import Any

import pytest
import trio

#: Options WinFsp passes for CreateFile on a file, CreateDirectory, RemoveDirectory and DeleteFile.
FILE_DIRECTORY_FILE = 0x1
FILE_NON_DIRECTORY_FILE = 0x40
# Access rights (winnt.h).
FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, DELETE = 0x1, 0x2, 0x4, 0x10000
# Cleanup flags (winfsp.h).
CLEANUP_DELETE, CLEANUP_SET_ARCHIVE_BIT, CLEANUP_SET_LAST_WRITE_TIME = 0x01, 0x10, 0x40
PAGE = 3  # entries per ReadDirectory page: small, so listings take several markers
STATUS_END_OF_FILE = 0xC0000011
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034


def win(path: str) -> str:
    return "\\" + path.replace("/", "\\")


class Drive:
    """Win32 calls on a `WinFspOperations`, each as WinFsp's sequence of operations."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    async def call(self, name: str, *args: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(getattr(self.ops, name), *args))

    async def status(self, name: str, *args: Any) -> int:
        """The NTSTATUS of a call that must fail."""
        from winfspy import NTStatusError

        with pytest.raises(NTStatusError) as caught:
            await self.call(name, *args)
        return caught.value.value  # type: ignore[no-any-return]

    async def exists(self, path: str) -> bool:
        from winfspy import NTStatusError

        try:
            await self.call("get_security_by_name", win(path))
            return True
        except NTStatusError as exc:
            if exc.value == STATUS_OBJECT_NAME_NOT_FOUND:
                return False
            raise

    async def open(self, path: str, access: int = FILE_READ_DATA, options: int = 0) -> Any:
        from winfspy import NTStatusError

        attributes, _, _ = await self.call("get_security_by_name", win(path))
        if attributes & 0x1 and access & (FILE_WRITE_DATA | FILE_APPEND_DATA):
            raise NTStatusError(STATUS_ACCESS_DENIED)  # WinFsp's own check (FspAccessCheckEx)
        return await self.call("open", win(path), options, access)

    async def create(self, path: str, options: int = FILE_NON_DIRECTORY_FILE, attributes: int = 0x80) -> Any:
        return await self.call("create", win(path), options, FILE_READ_DATA | FILE_WRITE_DATA, attributes,
                               None, 0)

    async def close(self, ctx: Any, flags: int = 0, path: str | None = None) -> None:
        await self.call("cleanup", ctx, win(path) if path is not None else None, flags)
        await self.call("close", ctx)

    async def write_file(self, path: str, data: bytes) -> None:
        """CreateFile(CREATE_ALWAYS), WriteFile, CloseHandle."""
        if await self.exists(path):
            ctx = await self.open(path, FILE_READ_DATA | FILE_WRITE_DATA, FILE_NON_DIRECTORY_FILE)
            await self.call("overwrite", ctx, 0x80, False, 0)
        else:
            ctx = await self.create(path)
        if data:
            await self.call("write", ctx, data, 0, False, False)
        await self.close(ctx, CLEANUP_SET_ARCHIVE_BIT | CLEANUP_SET_LAST_WRITE_TIME)

    async def append_file(self, path: str, data: bytes) -> None:
        """CreateFile(OPEN_ALWAYS, FILE_APPEND_DATA), WriteFile at the end."""
        ctx = await self.open(path, FILE_READ_DATA | FILE_WRITE_DATA) if await self.exists(path) \
            else await self.create(path)
        await self.call("write", ctx, data, 0, True, False)
        await self.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)

    async def read_file(self, path: str) -> bytes:
        from winfspy import NTStatusError

        ctx = await self.open(path, FILE_READ_DATA, FILE_NON_DIRECTORY_FILE)
        parts, offset = [], 0
        try:
            while True:
                try:
                    chunk = await self.call("read", ctx, offset, 1 << 20)
                except NTStatusError as exc:
                    if exc.value == STATUS_END_OF_FILE:
                        break
                    raise
                parts.append(chunk)
                offset += len(chunk)
        finally:
            await self.close(ctx)
        return b"".join(parts)

    async def delete(self, path: str, folder: bool = False) -> None:
        """DeleteFile / RemoveDirectory: open for DELETE, CanDelete, Cleanup with the delete flag."""
        ctx = await self.open(path, DELETE, FILE_DIRECTORY_FILE if folder else FILE_NON_DIRECTORY_FILE)
        try:
            await self.call("can_delete", ctx, win(path))
        except BaseException:
            await self.close(ctx)
            raise
        await self.close(ctx, CLEANUP_DELETE, path)

    async def move(self, src: str, dst: str, replace: bool) -> None:
        """MoveFileEx, with or without MOVEFILE_REPLACE_EXISTING."""
        ctx = await self.open(src, DELETE)
        try:
            await self.call("rename", ctx, win(src), win(dst), replace)
        finally:
            await self.close(ctx)

    async def list(self, path: str) -> list[str]:
        """FindFirstFile/FindNextFile: pages of ReadDirectory, each after the last name seen."""
        ctx = await self.open(path, FILE_READ_DATA, FILE_DIRECTORY_FILE)
        names: list[str] = []
        marker = None
        try:
            while True:
                page = (await self.call("read_directory", ctx, marker))[:PAGE]
                if not page:
                    return names
                names += [entry["file_name"] for entry in page]
                marker = page[-1]["file_name"]
        finally:
            await self.close(ctx)

    async def info(self, path: str) -> dict[str, int]:
        ctx = await self.open(path, 0)
        try:
            return await self.call("get_file_info", ctx)  # type: ignore[no-any-return]
        finally:
            await self.close(ctx)


def _errno_of() -> dict[int, int]:
    from websync_fs.winfsp import ntstatus as nt

    back: dict[int, int] = {}
    for code, status in nt.TABLE.items():
        back.setdefault(status, code)
    back[nt.STATUS_OBJECT_PATH_NOT_FOUND] = errno.ENOENT  # ERROR_PATH_NOT_FOUND: ENOENT in the C runtime
    back[nt.STATUS_ACCESS_DENIED] = errno.EACCES
    return back


class DriveTarget(Drive):
    """The contract suite's `Target` through the WinFsp operations; NTSTATUS comes back as OSError(errno)."""

    async def _os(self, coro: Any) -> Any:
        from winfspy import NTStatusError

        try:
            return await coro
        except NTStatusError as exc:
            code = _errno_of().get(exc.value, errno.EIO)
            raise OSError(code, f"NTSTATUS {exc.value:#x}") from None

    async def write(self, path: str, data: bytes) -> None:
        await self._os(self.write_file(path, data))

    async def append(self, path: str, data: bytes) -> None:
        await self._os(self.append_file(path, data))

    async def read(self, path: str) -> bytes:
        return await self._os(self.read_file(path))  # type: ignore[no-any-return]

    async def mkdir(self, path: str) -> None:
        async def make() -> None:
            if await self.exists(path):
                from websync_fs.winfsp import ntstatus as nt
                from winfspy import NTStatusError

                raise NTStatusError(nt.STATUS_OBJECT_NAME_COLLISION)
            await self.close(await self.create(path, FILE_DIRECTORY_FILE, 0x10))

        await self._os(make())

    async def rmdir(self, path: str) -> None:
        await self._os(self.delete(path, folder=True))

    async def unlink(self, path: str) -> None:
        await self._os(self.delete(path))

    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None:
        await self._os(self.move(src, dst, replace=not noreplace))

    async def listdir(self, path: str) -> list[str]:
        names = await self._os(self.list(path))
        return sorted(n for n in names if n not in (".", ".."))

    async def kind_size_mode(self, path: str) -> tuple[str, int, int]:
        info = await self._os(self.info(path))
        if info["file_attributes"] & 0x10:
            return "dir", 0, 0o755
        return "file", info["file_size"], 0o444 if info["file_attributes"] & 0x1 else 0o644

    async def symlink(self, target: str, path: str) -> None:
        pytest.skip("symbolic links are not made through the drive letter (docs/windows.md)")

    async def readlink(self, path: str) -> str:
        pytest.skip("symbolic links are not read through the drive letter (docs/windows.md)")

    async def chmod(self, path: str, mode: int) -> None:
        if stat.S_IMODE(mode) not in (0o444, 0o644):
            pytest.skip("Windows sets only the read-only attribute, not POSIX modes")
        ctx = await self._os(self.open(path, 0x100))  # FILE_WRITE_ATTRIBUTES
        await self._os(self.call("set_basic_info", ctx, 0x1 if not mode & 0o200 else 0x80, 0, 0, 0, 0, None))
        await self.close(ctx)

    async def truncate(self, path: str, size: int) -> None:
        async def cut() -> None:
            ctx = await self.open(path, FILE_READ_DATA | FILE_WRITE_DATA)
            try:
                await self.call("set_file_size", ctx, size, False)
            finally:
                await self.close(ctx, CLEANUP_SET_LAST_WRITE_TIME)

        await self._os(cut())
