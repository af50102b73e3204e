"""`tests.clients.run_as`: the user's ids for one call, in the calling thread alone, and everything given back."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest

from tests.clients import run_as

pytestmark = pytest.mark.timeout(30)

_PR_GET_DUMPABLE = 3


def _state() -> tuple[object, ...]:
    dumpable = ctypes.CDLL(None).prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    return os.getresuid(), os.getresgid(), sorted(os.getgroups()), os.getcwd(), dumpable


def test_the_call_runs_as_the_user_while_other_threads_stay_root_and_everything_comes_back(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the tests run as root (README); run_as needs it")
    folder = tmp_path / "d"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    tmp_path.chmod(0o700)  # only root may pass: the call enters its folder as root first
    before = _state()
    asked, seen = threading.Event(), []
    other = threading.Thread(target=lambda: (asked.wait(10), seen.append(os.geteuid())))
    other.start()

    def as_user() -> tuple[object, ...]:
        asked.set()
        other.join(10)  # a thread that was running before the call kept root's ids meanwhile
        Path("made").touch()
        return os.getresuid(), os.getresgid(), sorted(os.getgroups()), os.getcwd()

    assert run_as(1001, 1001, (1001, 3000), folder, as_user) == (
        (1001, 1001, 0), (1001, 1001, 0), [1001, 3000], str(folder))
    assert seen == [0]
    assert (folder / "made").stat().st_uid == 1001 and (folder / "made").stat().st_gid == 1001
    assert _state() == before


def test_a_call_that_raises_or_ids_that_cannot_be_taken_give_everything_back(tmp_path: Path) -> None:
    before = _state()
    with pytest.raises(ZeroDivisionError):
        run_as(1001, 1001, (1001,), tmp_path, lambda: 1 // 0)
    assert _state() == before
    with pytest.raises(ValueError):
        run_as(1001, 1 << 40, (1001,), tmp_path, lambda: None)  # the groups were set before the gid failed
    assert _state() == before
