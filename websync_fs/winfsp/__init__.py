"""The WinFsp front end: the store as a Windows drive letter or folder (winfspy).

- ``_winfspy.py`` -- the one place that imports winfspy (Windows only)
- ``ntstatus.py`` -- errno -> NTSTATUS, the one translation table
- ``ops.py`` -- the WinFsp operations: resolve the path, call one core method, translate errors once
- ``mount.py`` -- builds a `websync_fs.client.Client`, starts the WinFsp file system, runs until stopped

Nothing here is imported on Linux or macOS; the CLI picks this front end on Windows only.
"""
