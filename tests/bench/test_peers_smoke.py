"""The side-by-side benchmark of synced folders still runs: every row at tiny sizes, WebSync and Syncthing.

No timing is asserted (the machine is shared): only that every row fills a
positive figure for each system run.  Syncthing is Debian's package, which
the set-up installs; where it is missing the test fails and says how to
install it.  rclone
bisync is left out (its loop of whole-tree runs makes the test slow, not
surer).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.bench.peers import INSTALL, ROWS, Params, run

pytestmark = [pytest.mark.mount, pytest.mark.timeout(300)]

TINY = Params(files=40, folders=4, big_mib=2, samples=3, restart_files=100, timeout=90, sample_timeout=30,
              syncthing_delay=1)
EXPECTED = {"small_s", "content_bytes", "folder_disk", "state_disk", "big_s", "prop_p50", "prop_p99",
            "restart_first_s", "restart_s"}


def _measured(system: str, tmp_path: Path) -> set[str]:
    results = run(TINY, (system,), ROWS, tmp_path)
    assert results.notes == []
    measured = {row for row, by in results.values.items() if system in by}
    for row in measured - {"syncthing_folder"}:
        assert results.values[row][system] > 0, f"{row} on {system} is {results.values[row][system]}"
    return measured


def test_every_row_runs_on_websync(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: the folder-to-mount row mounts WebSync through FUSE")
    assert _measured("websync", tmp_path) == EXPECTED | {"prop_p50_mount", "prop_p99_mount"}


def test_every_row_runs_on_syncthing(tmp_path: Path) -> None:
    if not shutil.which("syncthing"):  # platform/setup-debian.sh installs it
        pytest.fail(INSTALL["syncthing"])
    assert _measured("syncthing", tmp_path) == EXPECTED | {"syncthing_folder"}
