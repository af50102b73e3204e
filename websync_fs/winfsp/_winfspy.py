"""The names the WinFsp front end takes from winfspy: the only import of it, so the rest reads as ordinary Python.

winfspy loads WinFsp's DLL as it is imported and exists on Windows only;
keeping the names in one module lets the tests put a stand-in in its place.
"""

from __future__ import annotations

from winfspy import (  # noqa: F401  (re-exported)
    CREATE_FILE_CREATE_OPTIONS,
    FILE_ATTRIBUTE,
    BaseFileSystemOperations,
    FileSystem,
    NTStatusError,
)
from winfspy.plumbing import SecurityDescriptor  # noqa: F401

__all__ = ["CREATE_FILE_CREATE_OPTIONS", "FILE_ATTRIBUTE", "BaseFileSystemOperations", "FileSystem",
           "NTStatusError", "SecurityDescriptor"]
