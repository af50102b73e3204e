"""How shared folders are named at the top of the own tree, and what a synced folder leaves alone for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from websync_fs.folder.guards import MARKER
from websync_fs.folder.ignore import IgnoreRules
from websync_fs.folder.tree import clear_leftovers, local_paths
from websync_fs.names import NamePolicy
from websync_fs.sharedfolders import top_names

pytestmark = pytest.mark.timeout(30)


def _names(shares: list[dict[str, str]], own: set[str]) -> list[str]:
    named = top_names(range(len(shares)), lambda i: shares[i], own.__contains__)
    return sorted(named)


def test_a_shared_folder_takes_its_name_unless_the_own_tree_or_another_folder_has_it() -> None:
    family = {"name": "Family", "owner": "alice"}
    assert _names([family], set()) == ["Family"]
    assert _names([family], {"Family"}) == ["Family (alice)"]
    assert _names([family, {"name": "Family", "owner": "dave"}], set()) == ["Family (alice)", "Family (dave)"]
    assert _names([family, {"name": "Photos", "owner": "alice"}], {"Photos"}) == ["Family", "Photos (alice)"]


def test_no_shared_folder_is_ever_hidden_behind_another_s_name() -> None:
    """Alice's Fam meets Bob's Fam (so it shows as "Fam (alice)"), and a folder she named "Fam (alice)"."""
    shares = [{"name": "Fam", "owner": "alice", "store": "1"}, {"name": "Fam", "owner": "bob", "store": "2"},
              {"name": "Fam (alice)", "owner": "alice", "store": "3"}]
    assert _names(shares, set()) == ["Fam (alice 2)", "Fam (alice)", "Fam (bob)"]
    assert _names(shares, {"Fam (alice 2)"}) == ["Fam (alice 3)", "Fam (alice)", "Fam (bob)"]


def test_a_name_as_the_mount_shows_it_means_that_folder_in_every_command() -> None:
    from websync_fs.commands._common import choose_share
    from websync_fs.errors import ConfigError

    shares = [{"name": "Fam", "owner": "alice", "store": "1"}, {"name": "Fam", "owner": "bob", "store": "2"},
              {"name": "Fam (alice)", "owner": "alice", "store": "3"}, {"name": "Trip", "owner": "carol", "store": "4"}]
    named = top_names(range(len(shares)), lambda i: shares[i], lambda name: name == "Trip")
    for shown, index in named.items():
        assert choose_share(shares, shown, "alice") is shares[index], shown
    assert choose_share(shares, "Fam", "alice") is shares[0]  # of two named so, the user's own
    with pytest.raises(ConfigError, match="2 shared folders"):
        choose_share(shares, "Fam", None)  # --shared NAME: no one's own comes first
    assert choose_share(shares, "Trip", "alice") is shares[3] and choose_share(shares, "Nothing", "alice") is None
    with pytest.raises(ConfigError, match="give it as 'Fam [(]OWNER[)]'"):
        choose_share(shares, "Fam", "dave")


def test_a_synced_folder_leaves_every_other_synced_folder_at_its_top_alone(tmp_path: Path) -> None:
    root = tmp_path / "sync"
    for sub in ("Family", "Mine", "Shown"):
        (root / sub).mkdir(parents=True)
        (root / sub / "a.txt").write_text(sub)
        (root / sub / ".websync-tmp-x").write_text("half a download")
    (root / "Family" / MARKER).write_text(json.dumps({"id": "1", "store": "f" * 32}))
    rules = IgnoreRules(root, NamePolicy((), ()))
    rules.grafted = frozenset({"Shown"})  # a subfolder about to be made, its marker not there yet
    assert rules.elsewhere("Family/a.txt") and rules.ignored("Family", is_dir=True)
    assert rules.ignored("Shown/a.txt") and not rules.ignored("Mine/a.txt")
    assert sorted(local_paths(root, rules)) == ["Mine", "Mine/a.txt"]
    # The leftover sweep clears the own folder's half-written downloads, never another engine's.
    assert clear_leftovers(root, ".websync-tmp-", rules.elsewhere) == 1
    assert (root / "Family" / ".websync-tmp-x").exists() and (root / "Shown" / ".websync-tmp-x").exists()
    assert not (root / "Mine" / ".websync-tmp-x").exists()
