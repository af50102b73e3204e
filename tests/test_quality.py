"""The code base stays typed and free of dead imports (mypy and ruff, as in review)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["websync_fs", "websync_server", "cache"]


@pytest.mark.timeout(600)
def test_mypy_finds_no_type_errors() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_no_undefined_names_or_unused_imports() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9", *PACKAGES, "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
