"""The mount's log: pyfuse3's complaint about a reply nobody waits for is no error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from websync_fs.commands._common import setup_logging
from websync_fs.home import Home


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Home]:
    home = Home.locate(tmp_path / "home")
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    setup_logging(home, verbose=False)
    yield home
    for handler in root.handlers[len(before):]:
        handler.close()
    root.handlers[:] = before
    root.setLevel(level)
    for f in list(logging.getLogger("pyfuse3").filters):
        logging.getLogger("pyfuse3").removeFilter(f)


def test_an_interrupted_reply_is_not_logged_as_an_error_and_real_errors_are(logged: Home) -> None:
    fuse = logging.getLogger("pyfuse3")
    # As pyfuse3 words it when a RELEASE's reply finds the unmounting kernel gone.
    fuse.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
    fuse.error("fuse_read(): fuse_reply_* failed with %s", "Invalid argument")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = logged.log_file.read_text()
    assert "fuse_release()" not in text
    assert "ERROR pyfuse3: fuse_read(): fuse_reply_* failed with Invalid argument" in text
