"""Replaces in quick succession: every file a rename replaced stays a version of the same file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.clients import Machine, eventually

pytestmark = pytest.mark.mount

QUICK_REPLACES = """
import os, sys, time
f, suffix, gap = sys.argv[1], sys.argv[2], float(sys.argv[3])
for s in ('THIRD', 'FOURTH'):
    open(f + suffix, 'w').write(s + '\\n'); os.replace(f + suffix, f); time.sleep(gap)
"""


def versions(m: Machine, path: str) -> list[dict[str, object]]:
    return list(json.loads(m.cli("history", path, "--json").stdout)["versions"])


def trashed(m: Machine) -> list[str]:
    return [str(i["path"]) for i in json.loads(m.cli("trash", "--json").stdout)["trash"]]


def settled(m: Machine) -> bool:
    return json.loads(m.cli("status", "--json").stdout)["pending"] == 0


@pytest.mark.parametrize(("suffix", "gap"), [(".lock", 0.05), (".new", 0.0)])
def test_two_quick_replaces_keep_every_version(a: Machine, suffix: str, gap: float) -> None:
    a.path("rep").mkdir()
    f = a.path("rep", "keep2.txt")
    f.write_text("ORIGINAL\n")
    eventually(lambda: len(versions(a, "rep/keep2.txt")) == 1 and settled(a), what="ORIGINAL sent")
    f.write_text("SECOND\n")
    eventually(lambda: len(versions(a, "rep/keep2.txt")) == 2 and settled(a), what="SECOND sent")

    subprocess.run(["python3", "-c", QUICK_REPLACES, str(f), suffix, str(gap)], check=True, timeout=60)

    eventually(lambda: settled(a) and len(versions(a, "rep/keep2.txt")) >= 4, what="four versions")
    assert [v["size"] for v in versions(a, "rep/keep2.txt")] == [9, 7, 6, 7]  # ORIGINAL SECOND THIRD FOURTH
    assert f.read_text() == "FOURTH\n"
    assert not [p for p in trashed(a) if p.startswith("rep/keep2.txt")]
    assert sorted(os.listdir(a.path("rep"))) == ["keep2.txt"]


def git(*args: str, cwd: Path) -> None:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=120)


def test_git_config_rewrites_keep_every_version_of_the_config(a: Machine) -> None:
    repo = a.path("repo")
    git("init", "-q", "-b", "main", str(repo), cwd=a.mnt)
    eventually(lambda: settled(a) and len(versions(a, "repo/.git/config")) >= 1, what="the new repo sent")
    before = len(versions(a, "repo/.git/config"))

    # Each `git config` writes .git/config.lock and renames it over .git/config, within milliseconds.
    git("config", "user.name", "Someone", cwd=repo)
    git("config", "user.email", "someone@example.org", cwd=repo)
    git("config", "core.editor", "vi", cwd=repo)

    eventually(lambda: settled(a) and len(versions(a, "repo/.git/config")) >= before + 3, what="three new versions")
    assert len(versions(a, "repo/.git/config")) == before + 3
    assert "editor = vi" in (repo / ".git" / "config").read_text()
    assert not [p for p in trashed(a) if p.startswith("repo/.git/config")]
