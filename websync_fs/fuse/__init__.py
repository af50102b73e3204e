"""The FUSE front end: the store as a mounted folder through the kernel (pyfuse3).

- ``ops.py`` -- the pyfuse3 operations: decode, call one core method, translate errors once
- ``readahead.py`` -- the kernel's read-ahead window for this mount
- ``mount.py`` -- builds a `websync_fs.client.Client`, mounts, runs the pyfuse3 loop
"""
