"""The names conflict copies get: beside the file, and inside a git repository's refs."""

from __future__ import annotations

import subprocess

import pytest

from websync_fs.conflicts import conflict_name, in_git_refs, is_conflict_copy

WHEN = 1_796_600_000.0  # a fixed moment: the stamp is in the name


def _valid_ref(name: str) -> bool:
    done = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], capture_output=True, timeout=30)
    return done.returncode == 0


def test_a_copy_keeps_its_extension_last_and_says_whose_it_is() -> None:
    name = conflict_name("report.docx", "laptop", WHEN)
    assert name.startswith("report (conflict from laptop ") and name.endswith(").docx")
    assert is_conflict_copy(name)


@pytest.mark.parametrize("folder", [".git/refs/heads", "code/app/.git/refs/heads/feature", "srv/app.git/refs/tags",
                                    "code/.git/modules/lib/refs/heads", ".git/refs"])
def test_inside_a_repository_s_refs_a_copy_is_a_branch_git_accepts(folder: str) -> None:
    taken = {conflict_name("main", "Bob's Mac (2)", WHEN, folder=folder)}
    second = conflict_name("main", "Bob's Mac (2)", WHEN, taken=taken.__contains__, folder=folder)
    for name in (*taken, second):
        assert name.startswith("main.conflict-from-Bob-s-Mac-2-") and _valid_ref(name), name
        assert is_conflict_copy(name)
    assert second.endswith("-2") and second not in taken


@pytest.mark.parametrize("folder", ["", ".git", "code/.git/logs", "refs/heads", "git/refs", "code/.github/refs"])
def test_elsewhere_a_copy_has_the_usual_name(folder: str) -> None:
    assert not in_git_refs(folder)
    assert " (conflict from laptop " in conflict_name("index", "laptop", WHEN, folder=folder)
