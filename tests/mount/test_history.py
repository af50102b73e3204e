"""Versions and the trash: nothing a user saved or deleted is out of reach."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.clients import Machine, eventually, read_bytes

pytestmark = pytest.mark.mount


def history(m: Machine, path: str) -> list[dict[str, object]]:
    return list(json.loads(m.cli("history", path, "--json").stdout)["versions"])


def test_every_save_is_a_version_and_any_can_come_back(a: Machine, b: Machine) -> None:
    doc = a.path("essay.txt")
    for text in (b"draft one", b"draft two", b"final"):
        doc.write_bytes(text)
        eventually(lambda t=text: read_bytes(b.path("essay.txt")) == t, what=f"{text!r} on B")
    versions = eventually(lambda: (v := history(a, str(doc))) and len(v) == 3 and v, what="three versions")
    assert [v["size"] for v in versions] == [9, 9, 5]
    assert {v["device"] for v in versions} == {"A"}
    assert versions[-1]["current"] is True

    out = b.cli("restore", str(b.path("essay.txt")), "--version", "1").stdout
    assert "version 1" in out
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("essay.txt")) == b"draft one", what=f"restored on {m.name}")
    assert len(history(b, "essay.txt")) == 4


def test_deleted_files_go_to_the_trash_and_come_back(a: Machine, b: Machine) -> None:
    a.path("Notes").mkdir()
    a.path("Notes", "plan.txt").write_bytes(b"the plan")
    eventually(lambda: read_bytes(b.path("Notes", "plan.txt")) == b"the plan", what="plan on B")
    a.path("Notes", "plan.txt").unlink()
    eventually(lambda: not b.path("Notes", "plan.txt").exists(), what="delete on B")

    def listed() -> list[dict[str, object]]:
        items = json.loads(b.cli("trash", "--json").stdout)["trash"]
        return [i for i in items if i["path"] == "Notes/plan.txt"]

    item = eventually(listed, what="plan.txt in the trash")[0]
    assert item["device"] == "A"
    b.cli("restore", "Notes/plan.txt")
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("Notes", "plan.txt")) == b"the plan", what=f"back on {m.name}")
    result = b.cli("restore", "Notes/never-existed.txt", check=False)
    assert result.returncode != 0 and "not in the trash" in result.stderr


def test_a_folder_comes_back_with_what_was_deleted_inside_it(a: Machine, b: Machine) -> None:
    """``rm -rf Trip``, then ``websync restore Trip``: the folder and all it held, not an empty folder."""
    a.path("Trip", "days").mkdir(parents=True)
    a.path("Trip", "plan.txt").write_bytes(b"the plan")
    a.path("Trip", "days", "one.txt").write_bytes(b"day one")
    eventually(lambda: read_bytes(b.path("Trip", "days", "one.txt")) == b"day one", what="the folder on B")
    shutil.rmtree(a.path("Trip"))
    wanted = {"Trip", "Trip/plan.txt", "Trip/days", "Trip/days/one.txt"}

    def in_trash() -> bool:
        return wanted <= {i["path"] for i in json.loads(b.cli("trash", "--json").stdout)["trash"]}

    eventually(in_trash, what="the folder and its contents in the trash")
    assert "with the 3 item(s) deleted inside it" in b.cli("restore", "Trip").stdout
    for m in (a, b):
        eventually(lambda m=m: read_bytes(m.path("Trip", "days", "one.txt")) == b"day one"
                   and read_bytes(m.path("Trip", "plan.txt")) == b"the plan", what=f"back on {m.name}")  # fmt: skip
