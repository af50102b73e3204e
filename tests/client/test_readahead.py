"""The mount's read-ahead window: found from mountinfo, set through sysfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.clients import Machine
from websync_fs.fuse import readahead

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
98 22 0:40 / /tmp/ls/mb rw,nosuid,nodev,relatime shared:50 - fuse.websync websync rw,user_id=0
99 22 0:41 / /home/al/My\\040Files rw,nosuid shared:51 - fuse.websync websync rw,user_id=0
100 98 0:44 / /tmp/ls/mb rw,nosuid shared:52 - fuse.websync websync rw,user_id=0
"""


def test_the_device_is_read_from_mountinfo_the_topmost_mount_wins() -> None:
    assert readahead.device_of("/tmp/ls/mb", MOUNTINFO) == "0:44"
    assert readahead.device_of("/home/al/My Files", MOUNTINFO) == "0:41"
    assert readahead.device_of("/nowhere", MOUNTINFO) is None


@pytest.mark.mount
def test_a_mount_gets_the_wide_window(a: Machine) -> None:
    st = os.stat(a.mnt)
    window = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    expected = readahead.WINDOW_KIB if os.geteuid() == 0 else 128  # sysfs is root's to write
    assert int(window.read_text()) == expected
