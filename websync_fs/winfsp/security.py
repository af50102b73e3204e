"""The one security descriptor every file shows: the logged-in user has full access.

The store keeps POSIX modes, not ACLs, and one person's machine mounts it, so
each file gets the same descriptor, owned by that user, with full access for
them, SYSTEM (backup, the search indexer) and the Administrators.  No Everyone
entry: other accounts on the machine see nothing of the drive's content.
"""

from __future__ import annotations

import re
import subprocess

_SID = re.compile(r"S-1-\d+(?:-\d+)+")


def security_sddl(sid: str) -> str:
    """The descriptor in SDDL: owner and group *sid*, protected DACL of full access (FA) for *sid*, SY, BA."""
    if not _SID.fullmatch(sid):
        raise ValueError(f"not a SID: {sid!r}")
    return f"O:{sid}G:{sid}D:P(A;;FA;;;{sid})(A;;FA;;;SY)(A;;FA;;;BA)"


def current_user_sid() -> str:
    """The SID of the user running this process (Windows' ``whoami /user``)."""
    out = subprocess.run(["whoami", "/user", "/fo", "csv", "/nh"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    found = _SID.search(out)
    if found is None:
        raise RuntimeError(f"whoami /user gave no SID: {out!r}")
    return found.group(0)
