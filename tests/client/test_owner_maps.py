"""Numbers of owners mapped per machine (config.json's uid_map and gid_map)."""

from __future__ import annotations

import pytest

from websync_fs.client import _numbers
from websync_fs.errors import ConfigError
from websync_fs.owners import Owners


def test_a_mapped_number_is_shown_as_this_machines_and_stored_as_the_stores() -> None:
    owners = Owners(1000, 1000, {1234: 4321}, {5678: 8765})
    assert (owners.shown_uid(1234), owners.shown_gid(5678)) == (4321, 8765)
    assert (owners.stored_uid(4321), owners.stored_gid(8765)) == (1234, 5678)
    assert owners.shown_uid(1235) == 1235 and owners.stored_uid(1235) == 1235
    assert owners.shown_uid(None) == 1000 and owners.stored_uid(1000) is None


@pytest.mark.parametrize("bad", [{"x": 1}, {"1": "y"}, {"1": 5, "2": 5}, {"-1": 3}])
def test_a_bad_map_in_the_config_is_a_clear_error(bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="uid_map and gid_map"):
        _numbers(bad)
