"""What the synced folder's file system refuses and folds, found out by trying it in the folder.

A folder on Linux may sit on NTFS (ntfs-3g), exFAT, a Samba share or a
case-insensitive ext4 directory, so the platform says little: like mature
sync clients, the folder asks its own file system, once at start, inside a
hidden ``.websync-probe-*`` directory that is removed afterwards.

    does ``A`` find ``a``?                      case folds
    does the NFD form find the NFC one?         normalisation folds
    is ``a:b``, ``CON``, ``x.`` refused?        Windows' forbidden names
    how long may a name of ``a`` be?            the length limit (halving, a dozen tries)
    does a name of that many ``é`` fit?         the limit counts UTF-16 units, not bytes

lowntfs-3g with ``windows_names,ignore_case`` answers EINVAL for the refused
names and finds ``README`` for ``Readme``; ext4 and tmpfs take everything.
Names longer than the limit are refused with ENAMETOOLONG: 255 UTF-8 bytes
on ext4 and through lowntfs-3g (Linux's VFS, although NTFS itself counts 255
UTF-16 units, as it does on Windows), 143 on eCryptfs.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

from ..namepolicy import NAME_MAX, WINDOWS_FORBIDDEN, Rules

log = logging.getLogger(__name__)

PROBE_PREFIX = ".websync-probe-"


def _takes(where: Path, name: str) -> bool:
    """True if a file named *name* can be made in *where* (and it is removed again)."""
    path = where / name
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass
    return True


def _finds(where: Path, made: str, asked: str) -> bool:
    """True if *asked* finds the file made as *made*."""
    (where / made).touch()
    try:
        return os.path.lexists(where / asked)
    finally:
        os.unlink(where / made)


def longest(takes: Callable[[int], bool], most: int = 4 * NAME_MAX) -> int:
    """The largest n <= *most* with ``takes(n)``, where a name taken is taken shorter too (0: none)."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if takes(middle):
            low = middle
        else:
            high = middle - 1
    return low


def probe(folder: Path) -> Rules:
    """The rules of the file system that holds *folder* (an existing directory)."""
    for left in folder.glob(PROBE_PREFIX + "*"):
        shutil.rmtree(left, ignore_errors=True)  # a probe a kill -9 cut short
    where = folder / f"{PROBE_PREFIX}{secrets.token_hex(4)}"
    where.mkdir()
    try:
        forbidden = frozenset(c for c in WINDOWS_FORBIDDEN if not _takes(where, f"a{c}b"))
        trailing = frozenset(c for c in ". " if not _takes(where, f"x{c}"))
        devices = not all(_takes(where, name) for name in ("CON", "nul.txt", "COM1")) and _takes(where, "CONSOLE")
        fold_case = _finds(where, "Readme", "README")
        nfc = unicodedata.normalize("NFC", "caf\u00e9")
        fold_normalisation = _finds(where, nfc, unicodedata.normalize("NFD", nfc))
        limit = longest(lambda n: _takes(where, "a" * n))
        # 255 UTF-16 units (NTFS on Windows) hold 255 é; 255 UTF-8 bytes (ext4, APFS) hold 127.
        units = _takes(where, "\u00e9" * limit)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if not limit:
        raise OSError(errno.ENAMETOOLONG, f"{folder}: the file system takes no name of one letter")
    # A limit over the server's own (NAME_MAX bytes) never shortens a name: kept as the server's.
    limit = min(limit, NAME_MAX) if not units else limit
    rules = Rules(forbidden, trailing, devices, fold_case, fold_normalisation,
                  max_bytes=4 * limit if units else limit, max_units=limit if units else None)
    if rules.strict:
        log.info("%s: names %s; case %s, normalisation %s; at most %d %s: names it refuses are shown under aliases",
                 folder, "Windows refuses are refused" if forbidden or devices else "of any kind are taken",
                 "folds" if fold_case else "counts", "folds" if fold_normalisation else "counts",
                 limit, "UTF-16 units" if units else "bytes")
    return rules

