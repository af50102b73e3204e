"""The winfspy adapter: resolve the path, call one core method, translate errors once.

WinFsp calls these methods from its own threads, by path, with Windows'
create options, attributes and FILETIMEs.  Each one runs on the trio thread
that owns the core (`trio.from_thread.run`), so core calls never run
concurrently, exactly as under FUSE; a method's body has no checkpoint between
a check and the change it guards unless it says so.

What WinFsp does itself (winfsp's dll/create.c) and is not repeated here:
the create disposition (it asks `get_security_by_name` whether the name
exists, then calls `create`, or `open` and `overwrite`), sharing modes, access
checks against the security descriptor, refusing to write to or delete on
close a file whose attributes say read-only, and the file name pattern of a
directory listing.

Decisions, written down in docs/windows.md as well:

* Read-only is the absence of the owner's write bit; no other attribute is
  stored (the store keeps POSIX modes).  Setting HIDDEN or ARCHIVE is accepted
  and not kept.
* Names starting with a dot are *not* shown hidden: they are the files
  developers work with (``.gitignore``, ``.env``) and Windows itself gives the
  dot no meaning; a hidden flag the user could not clear would be worse.
* Names are found whatever their case, and keep the case they were made with.
* Names Windows refuses (``a:b``, ``CON``, ``trail.``) and the second of two
  names that differ in case only are shown under the aliases a synced folder
  on NTFS shows (`aliases.DriveNames`); a new name made with look-alikes is
  the name it looks like.
* The store keeps one modification time: it is also shown as the creation,
  access and change time.
* Every file has one security descriptor, giving the logged-in user full
  access; a program's change to it is accepted and not kept.
* Symbolic links from other systems show as read-only empty files that cannot
  be opened (WinFsp's reparse points are not used).
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import trio

from ..errors import FsError
from ..folder.corepaths import CorePaths
from ..namepolicy import WINDOWS
from ..replica import ROOT_INO
from ..vfs import FileAttr, OpenMode, Vfs
from . import ntstatus as nt
from .aliases import DriveNames
from ._winfspy import (
    CREATE_FILE_CREATE_OPTIONS,
    FILE_ATTRIBUTE,
    BaseFileSystemOperations,
    NTStatusError,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: 100-nanosecond intervals from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
FILETIME_EPOCH = 116_444_736_000_000_000

# Cleanup flags (winfsp.h: FspCleanupDelete and friends).
CLEANUP_DELETE = 0x01
CLEANUP_SET_ALLOCATION_SIZE = 0x02
CLEANUP_SET_LAST_WRITE_TIME = 0x40

INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF
ALLOCATION_UNIT = 4096

#: A new file's mode, and a folder's; read-only clears the write bits.
FILE_MODE = 0o644
DIR_MODE = 0o755


def filetime(ns: int) -> int:
    """Nanoseconds since 1970 as a FILETIME."""
    return ns // 100 + FILETIME_EPOCH


def ns_from_filetime(ft: int) -> int:
    return (ft - FILETIME_EPOCH) * 100


def windows_path(file_name: str) -> str:
    r"""WinFsp's ``\dir\file.txt`` as the core's ``dir/file.txt`` ('' for the root)."""
    return file_name.replace("\\", "/").strip("/")


@dataclass(eq=False)
class OpenObject:
    """WinFsp's file context: one open file or folder, from `create`/`open` until `close`."""

    path: str
    ino: int
    is_dir: bool
    #: The core's handle of a file; read-only until the program first changes the content.
    fh: int | None = None
    writable: bool = False

    def __repr__(self) -> str:
        return f"OpenObject({self.path!r})"


def operation(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run the body on the core's trio thread; only NTStatusError leaves it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        try:
            return trio.from_thread.run(functools.partial(fn, *args, **kwargs),
                                        trio_token=self._token)  # type: ignore[attr-defined]
        except NTStatusError:
            raise
        except (FsError, OSError) as exc:
            raise NTStatusError(nt.ntstatus(exc.errno or 0)) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise NTStatusError(nt.STATUS_UNEXPECTED_IO_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _folder_status(exc: OSError) -> int:
    """A folder on the way to a name is missing: PATH_NOT_FOUND, which Windows tells apart from NAME_NOT_FOUND."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return nt.STATUS_OBJECT_PATH_NOT_FOUND
    return nt.ntstatus(exc.errno or 0)


def _valid(fn: Callable[P, str], *args: P.args, **kwargs: P.kwargs) -> str:
    """*fn*'s store name; a name that reads as no alias is an invalid name to Windows."""
    try:
        return fn(*args, **kwargs)
    except FsError as exc:
        if exc.errno == errno.EINVAL:
            raise _fail(nt.STATUS_OBJECT_NAME_INVALID) from None
        raise


def _fail(status: int) -> NTStatusError:
    return NTStatusError(status)


class WinFspOperations(BaseFileSystemOperations):  # type: ignore[misc]
    """The store's operations as WinFsp calls them, by path, on one `Vfs`."""

    def __init__(self, vfs: Vfs, token: trio.lowlevel.TrioToken, security: Any, *, label: str = "WebSync",
                 space: Callable[[], tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.vfs = vfs
        self.names = DriveNames(vfs, WINDOWS)
        self.paths = CorePaths(vfs, stored=self._stored)
        self._token = token
        #: The one security descriptor of every file (winfspy's SecurityDescriptor: handle, size).
        self.security = security
        self.label = label
        #: (total, free) bytes of the volume; the local disk's by default.
        self.space = space or self._disk_space

    # -- paths -------------------------------------------------------------------
    async def _find(self, path: str) -> FileAttr:
        """The node at *path*: a missing folder on the way is PATH_NOT_FOUND, a missing last name NAME_NOT_FOUND."""
        head, _, name = path.rpartition("/")
        try:
            parent = await self.paths.ino(head)
        except OSError as exc:
            raise _fail(_folder_status(exc)) from None
        if not name:
            return self.vfs.getattr(parent)
        return self.vfs.lookup(parent, self._stored(parent, name))

    async def _entry(self, path: str) -> tuple[int, str]:
        """The folder holding *path* and the name as stored there (the original of a new name)."""
        head, _, name = path.rpartition("/")
        try:
            parent = await self.paths.ino(head)
        except OSError as exc:
            raise _fail(_folder_status(exc)) from None
        return parent, self._stored(parent, name)

    def _stored(self, parent: int, name: str) -> str:
        """The store's name for shown *name* in folder *parent* (`_valid`)."""
        return _valid(self.names.stored, parent, name)

    def _info(self, attr: FileAttr) -> dict[str, int]:
        if stat.S_ISDIR(attr.mode):
            attributes, size = FILE_ATTRIBUTE.FILE_ATTRIBUTE_DIRECTORY, 0
        else:
            attributes, size = FILE_ATTRIBUTE.FILE_ATTRIBUTE_ARCHIVE, attr.size
            if not attr.mode & stat.S_IWUSR or not stat.S_ISREG(attr.mode):
                attributes |= FILE_ATTRIBUTE.FILE_ATTRIBUTE_READONLY
            if not stat.S_ISREG(attr.mode):
                size = 0
        written = filetime(attr.mtime_ns)
        return {
            "file_attributes": int(attributes),
            "allocation_size": -(-size // ALLOCATION_UNIT) * ALLOCATION_UNIT,
            "file_size": size,
            "creation_time": written,
            "last_access_time": written,
            "last_write_time": written,
            "change_time": filetime(attr.ctime_ns),
            "index_number": attr.ino,
        }

    async def _writable(self, obj: OpenObject) -> int:
        """The open file's core handle, reopened for writing the first time the content changes.

        Opening every file for writing would give each reader a working copy and
        hold remote changes back while it is open (`Vfs.busy`).
        """
        if obj.is_dir:
            raise _fail(nt.STATUS_FILE_IS_A_DIRECTORY)
        if not obj.writable:
            fh, _ = await self.vfs.open(obj.ino, OpenMode(read=True, write=True))
            if obj.fh is not None:
                await self.vfs.release(obj.fh)
            obj.fh, obj.writable = fh, True
        assert obj.fh is not None
        return obj.fh

    def _disk_space(self) -> tuple[int, int]:
        st = self.vfs.statfs()
        return st.total_bytes, st.available_bytes

    # -- volume ------------------------------------------------------------------
    @operation
    async def get_volume_info(self) -> dict[str, Any]:
        total, free = self.space()
        return {"total_size": total, "free_size": free, "volume_label": self.label}

    def set_volume_label(self, volume_label: str) -> None:
        raise _fail(nt.STATUS_NOT_SUPPORTED)

    # -- security ----------------------------------------------------------------
    @operation
    async def get_security_by_name(self, file_name: str) -> tuple[int, Any, int]:
        attr = await self._find(windows_path(file_name))
        return self._info(attr)["file_attributes"], self.security.handle, self.security.size

    def get_security(self, file_context: OpenObject) -> tuple[Any, int]:
        return self.security.handle, self.security.size

    def set_security(self, file_context: OpenObject, security_information: int, modification_descriptor: Any) -> None:
        # The store keeps no ACLs; refusing would make Explorer's and Office's saves fail.
        return None

    # -- open and close --------------------------------------------------------------
    @operation
    async def create(self, file_name: str, create_options: int, granted_access: int, file_attributes: int,
                     security_descriptor: Any, allocation_size: int) -> OpenObject:
        path = windows_path(file_name)
        # An existing name in another case comes back spelled as stored: the core refuses it (EEXIST).
        parent, name = await self._entry(path)
        if create_options & CREATE_FILE_CREATE_OPTIONS.FILE_DIRECTORY_FILE:
            attr = self.vfs.mkdir(parent, name, DIR_MODE)
            return OpenObject(path, attr.ino, True)
        mode = FILE_MODE & ~0o222 if file_attributes & FILE_ATTRIBUTE.FILE_ATTRIBUTE_READONLY else FILE_MODE
        fh, attr = self.vfs.create(parent, name, mode, OpenMode(read=True, write=True))
        return OpenObject(path, attr.ino, False, fh, writable=True)

    @operation
    async def open(self, file_name: str, create_options: int, granted_access: int) -> OpenObject:
        path = windows_path(file_name)
        attr = await self._find(path)
        if stat.S_ISDIR(attr.mode):
            if create_options & CREATE_FILE_CREATE_OPTIONS.FILE_NON_DIRECTORY_FILE:
                raise _fail(nt.STATUS_FILE_IS_A_DIRECTORY)  # DeleteFile on a folder
            return OpenObject(path, attr.ino, True)
        if create_options & CREATE_FILE_CREATE_OPTIONS.FILE_DIRECTORY_FILE:
            raise _fail(nt.STATUS_NOT_A_DIRECTORY)
        fh, _ = await self.vfs.open(attr.ino, OpenMode(read=True))
        return OpenObject(path, attr.ino, False, fh)

    @operation
    async def overwrite(self, file_context: OpenObject, file_attributes: int, replace_file_attributes: bool,
                        allocation_size: int) -> None:
        fh = await self._writable(file_context)
        await self.vfs.setattr(file_context.ino, size=0, fh=fh)
        # Replaced, or added to the file's own (FILE_SUPERSEDE versus FILE_OVERWRITE).
        if replace_file_attributes or file_attributes & FILE_ATTRIBUTE.FILE_ATTRIBUTE_READONLY:
            await self._set_read_only(file_context, file_attributes)

    @operation
    async def cleanup(self, file_context: OpenObject, file_name: str | None, flags: int) -> None:
        """The program closed its last handle: delete if asked, else make what it wrote a version.

        The core's handle stays open until `close`: the cache manager may still
        write the file's mapped pages between the two.  A deleted file is
        unlinked before its handle goes, so what it held never becomes a version.
        """
        obj = file_context
        if flags & CLEANUP_DELETE:
            # WinFsp names the file as it is now: another handle may have renamed it.
            parent, name = await self._entry(windows_path(file_name) if file_name else obj.path)
            if obj.is_dir:
                self.vfs.rmdir(parent, name)
            else:
                self.vfs.unlink(parent, name)
            return
        if obj.writable and obj.fh is not None:
            await self.vfs.flush(obj.fh)

    @operation
    async def close(self, file_context: OpenObject) -> None:
        if file_context.fh is not None:
            fh, file_context.fh = file_context.fh, None
            await self.vfs.release(fh)

    # -- content ---------------------------------------------------------------------
    @operation
    async def read(self, file_context: OpenObject, offset: int, length: int) -> bytes:
        if file_context.fh is None:
            raise _fail(nt.STATUS_FILE_IS_A_DIRECTORY)
        data = await self.vfs.read(file_context.fh, offset, length)
        if not data and length:
            raise _fail(nt.STATUS_END_OF_FILE)
        return bytes(data)

    @operation
    async def write(self, file_context: OpenObject, buffer: Any, offset: int, write_to_end_of_file: bool,
                    constrained_io: bool) -> int:
        fh = await self._writable(file_context)
        data = bytes(buffer)
        size = self.vfs.getattr(file_context.ino).size
        if constrained_io:
            # Paging I/O from the cache manager: never past the end of the file.
            if offset >= size:
                return 0
            data = data[:size - offset]
        elif write_to_end_of_file:
            offset = size
        return await self.vfs.write(fh, offset, data)

    @operation
    async def flush(self, file_context: OpenObject | None) -> None:
        # FlushFileBuffers: durable here, as fsync is (None flushes the volume: nothing to do).
        if file_context is not None and file_context.writable and file_context.fh is not None:
            await self.vfs.fsync(file_context.fh)

    @operation
    async def set_file_size(self, file_context: OpenObject, new_size: int, set_allocation_size: bool) -> None:
        size = self.vfs.getattr(file_context.ino).size
        if set_allocation_size and new_size >= size:
            return  # room reserved ahead: nothing to keep
        fh = await self._writable(file_context)
        await self.vfs.setattr(file_context.ino, size=new_size, fh=fh)

    # -- attributes --------------------------------------------------------------------
    @operation
    async def get_file_info(self, file_context: OpenObject) -> dict[str, int]:
        return self._info(self.vfs.getattr(file_context.ino))

    @operation
    async def set_basic_info(self, file_context: OpenObject, file_attributes: int, creation_time: int,
                             last_access_time: int, last_write_time: int, change_time: int,
                             file_info: Any) -> dict[str, int]:
        if file_attributes != INVALID_FILE_ATTRIBUTES:
            await self._set_read_only(file_context, file_attributes)
        if last_write_time:  # 0: leave as it is
            await self.vfs.setattr(file_context.ino, mtime_ns=ns_from_filetime(last_write_time), fh=file_context.fh)
        return self._info(self.vfs.getattr(file_context.ino))

    async def _set_read_only(self, obj: OpenObject, file_attributes: int) -> None:
        if obj.is_dir:
            return  # a folder's read-only flag marks a customised folder on Windows, not a permission
        mode = stat.S_IMODE(self.vfs.getattr(obj.ino).mode)
        wanted = mode & ~0o222 if file_attributes & FILE_ATTRIBUTE.FILE_ATTRIBUTE_READONLY else mode | stat.S_IWUSR
        if wanted != mode:
            await self.vfs.setattr(obj.ino, mode=wanted)

    # -- namespace ----------------------------------------------------------------------
    @operation
    async def can_delete(self, file_context: OpenObject, file_name: str) -> None:
        attr = self.vfs.getattr(file_context.ino)
        if stat.S_ISDIR(attr.mode):
            if self.vfs.listdir(attr.ino):
                raise _fail(nt.STATUS_DIRECTORY_NOT_EMPTY)
        elif not attr.mode & stat.S_IWUSR:
            raise _fail(nt.STATUS_CANNOT_DELETE)  # NTFS refuses to delete a read-only file

    @operation
    async def rename(self, file_context: OpenObject, file_name: str, new_file_name: str,
                     replace_if_exists: bool) -> None:
        old_parent, old_name = await self._entry(windows_path(file_name))
        new_path = windows_path(new_file_name)
        new_parent, stored = await self._entry(new_path)
        shown = new_path.rpartition("/")[2]
        try:
            target: FileAttr | None = self.vfs.lookup(new_parent, stored)
        except FsError:
            target = None
        # Onto a name as shown, or a new one: the store's name for it; in another case: that case.
        exact = target is None or self.names.shown(new_parent).get(stored) == shown
        new_name = stored if exact else _valid(self.names.original, shown)
        if target is not None and target.ino != file_context.ino:
            if not replace_if_exists:
                raise _fail(nt.STATUS_OBJECT_NAME_COLLISION)
            if stat.S_ISDIR(target.mode):
                raise _fail(nt.STATUS_ACCESS_DENIED)  # MoveFileEx never replaces a folder
            if stored != new_name:
                self.vfs.unlink(new_parent, stored)  # the same name in another case: it goes
        self.vfs.rename(old_parent, old_name, new_parent, new_name, noreplace=not replace_if_exists)
        file_context.path = new_path

    @operation
    async def read_directory(self, file_context: OpenObject, marker: str | None) -> list[dict[str, Any]]:
        """The folder's entries after *marker*, sorted by name; "." and ".." in every folder but the root."""
        obj = file_context
        shown = self.names.shown(obj.ino)
        entries = [(shown.get(name, name), attr) for name, attr in self.vfs.listdir(obj.ino)]
        if obj.ino != ROOT_INO:
            head = obj.path.rpartition("/")[0]
            entries.append((".", self.vfs.getattr(obj.ino)))
            entries.append(("..", self.vfs.getattr(await self.paths.ino(head))))
        entries.sort(key=lambda entry: entry[0])
        return [{"file_name": name, **self._info(attr)} for name, attr in entries
                if marker is None or name > marker]

    @operation
    async def get_dir_info_by_name(self, file_context: OpenObject, file_name: str) -> dict[str, Any]:
        try:
            name = self.names.stored(file_context.ino, file_name)
            attr = self.vfs.lookup(file_context.ino, name)
        except FsError:
            raise _fail(nt.STATUS_OBJECT_NAME_NOT_FOUND) from None
        return {"file_name": self.names.shown(file_context.ino).get(name, name), **self._info(attr)}
