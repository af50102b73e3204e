"""Which names stay on this machine, and which look temporary.

Desktop programs keep owner, lock and swap files beside a document while it is
open (``~$Report.docx``, ``.~lock.Report.odt#``, ``.notes.txt.swp``) and write
temporary files while they save (``~WRD0000.tmp``, ``.goutputstream-XXXXXX``).

* *Local-only* names never leave this machine: no other machine has any use for
  another machine's lock file, and uploading them only makes noise.
* *Temporary* names are uploaded only after a longer quiet period: a save
  normally renames or deletes them within milliseconds, so they cost no
  traffic; one that stays (``draft.tmp``, Emacs' ``notes.txt~``) still reaches
  every machine.

Both lists are shell patterns matched against the file name alone, and can be
changed in the client's config (``local_only``, ``temporary``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

DEFAULT_LOCAL_ONLY = (
    "~$*",  # Microsoft Office owner file
    ".~lock.*#",  # LibreOffice lock file
    ".*.sw[a-p]",  # vim swap files (.notes.txt.swp, .swo, ...)
    "*.swp",
    "4913",  # vim's probe that the folder is writable
    ".#*",  # Emacs lock link
)

DEFAULT_TEMPORARY = (
    "*.tmp",  # Word (~WRD0000.tmp, ~WRL0001.tmp), LibreOffice (lu….tmp)
    "*~",  # vim and Emacs backups
    ".goutputstream-*",  # GLib (gedit, GNOME apps) atomic save
    "[0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F]",  # Excel's save temp
    "*.part",
    "*.crdownload",
)


class NamePolicy:
    def __init__(self, local_only: Iterable[str] = DEFAULT_LOCAL_ONLY,
                 temporary: Iterable[str] = DEFAULT_TEMPORARY) -> None:
        self._local = _compile(local_only)
        self._temporary = _compile(temporary)

    def local_only(self, name: str) -> bool:
        return bool(self._local and self._local.match(name))

    def temporary(self, name: str) -> bool:
        return bool(self._temporary and self._temporary.match(name))


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    # Case-sensitive, like the filesystem: fnmatch.translate, not fnmatch.fnmatch.
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts)) if parts else None
