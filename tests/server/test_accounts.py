"""Accounts: argon2 passwords, per-device tokens stored only as hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.server.conftest import FAST_HASHER
from websync_server._exceptions import InvalidRequest, Unauthorized, UserExists
from websync_server import accounts as accounts_module
from websync_server.accounts import Accounts
from websync_server.database import DB_FILENAME, Database
from websync_server.schema import devices, users


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    return Accounts(Database.open_in(tmp_path), FAST_HASHER)


def test_add_user_creates_a_store_and_hashes_the_password(accounts: Accounts, tmp_path: Path) -> None:
    store = accounts.add_user("alice", "correct horse")
    assert len(store) == 32
    [info] = accounts.users()
    assert (info.name, info.store, info.devices) == ("alice", store, 0)
    with Database.open_in(tmp_path).read() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


def test_user_names_are_unique_and_restricted(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    with pytest.raises(UserExists):
        accounts.add_user("alice", "other")
    for bad in ("Alice", "", ".hidden", "a/b", "x" * 65, "bob smith"):
        with pytest.raises(InvalidRequest):
            accounts.add_user(bad, "pw")
    with pytest.raises(InvalidRequest):
        accounts.add_user("carol", "")


def test_login_gives_a_token_that_identifies_the_device(accounts: Accounts) -> None:
    store = accounts.add_user("alice", "pw")
    login = accounts.login("alice", "pw", "laptop")
    identity = accounts.authenticate(login.token)
    assert identity == login.identity
    assert (identity.user, identity.device, identity.store) == ("alice", "laptop", store)


def test_two_logins_with_one_device_name_both_stay_valid(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    first = accounts.login("alice", "pw", "host")
    second = accounts.login("alice", "pw", "host")
    assert first.token != second.token
    assert accounts.authenticate(first.token).device_id != accounts.authenticate(second.token).device_id


def test_a_taken_device_name_gets_a_suffix_unless_its_token_is_replaced(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    accounts.add_user("bob", "pw")
    first = accounts.login("alice", "pw", "host")
    assert [accounts.login("alice", "pw", "host").identity.device for _ in range(2)] == ["host-2", "host-3"]
    assert accounts.login("bob", "pw", "host").identity.device == "host"  # per user
    again = accounts.login("alice", "pw", "host", replaces=first.token)
    assert again.identity.device == "host"  # the same machine logging in again
    accounts.revoke_devices("alice")
    assert accounts.login("alice", "pw", "host").identity.device == "host"  # revoked names are free
    long = "é" * (accounts_module.DEVICE_NAME_MAX // 2)
    accounts.login("alice", "pw", long)
    suffixed = accounts.login("alice", "pw", long).identity.device
    assert suffixed.endswith("-2") and len(suffixed.encode()) <= accounts_module.DEVICE_NAME_MAX
    with pytest.raises(InvalidRequest):
        accounts.login("alice", "pw", "host", replaces=5)


def test_wrong_password_or_user_is_unauthorized(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    for user, password in (("alice", "wrong"), ("nobody", "pw"), ("Not A Name/", "pw")):
        with pytest.raises(Unauthorized):
            accounts.login(user, password, "laptop")
    with pytest.raises(InvalidRequest):
        accounts.login("alice", "pw", "")
    with pytest.raises(InvalidRequest):
        accounts.login("alice", None, "laptop")


def test_tokens_are_stored_only_as_sha256(accounts: Accounts, tmp_path: Path) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    with Database.open_in(tmp_path).read() as conn:
        stored = conn.execute(select(devices.c.token_sha256)).scalar_one()
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    for path in tmp_path.glob(DB_FILENAME + "*"):  # the database and its WAL
        assert token.encode() not in path.read_bytes()


def test_unknown_and_revoked_tokens_are_unauthorized(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    with pytest.raises(Unauthorized):
        accounts.authenticate(token + "x")
    assert accounts.revoke_devices("alice") == 1
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


def test_a_token_is_trusted_briefly_after_it_authenticates(
    accounts: Accounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    assert accounts.trusted(token) is None  # never asked yet: the database decides
    identity = accounts.authenticate(token)
    assert accounts.trusted(token) == identity
    assert accounts.trusted(token + "x") is None
    # Revoked by another process (the CLI): trusted until the window ends, then refused.
    assert Accounts(Database.open_in(tmp_path), FAST_HASHER).revoke_devices("alice") == 1
    assert accounts.trusted(token) == identity
    monkeypatch.setattr(accounts_module.time, "monotonic", lambda: 1e12)
    assert accounts.trusted(token) is None
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


def test_a_token_whose_trust_ran_out_is_answered_at_once_and_checked_again(
    accounts: Accounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    assert accounts.recheck_due(token) is None  # never authenticated: nothing to remember
    identity = accounts.authenticate(token)
    now = accounts_module.time.monotonic()
    clock = [now + accounts_module.TOKEN_TRUST_S + 1]
    monkeypatch.setattr(accounts_module.time, "monotonic", lambda: clock[0])

    assert accounts.trusted(token) is None
    assert accounts.recheck_due(token) == identity  # answered now, checked beside the request
    assert accounts.trusted(token) == identity  # while that check runs: no second one
    accounts.recheck(token)  # still valid: trusted anew
    assert accounts.trusted(token) == identity

    # Revoked by another process: the next recheck refuses it and it is forgotten.
    assert Accounts(Database.open_in(tmp_path), FAST_HASHER).revoke_devices("alice") == 1
    clock[0] += accounts_module.TOKEN_TRUST_S + 1
    assert accounts.recheck_due(token) == identity
    with pytest.raises(Unauthorized):
        accounts.recheck(token)
    assert accounts.trusted(token) is None
    assert accounts.recheck_due(token) is None
    with pytest.raises(Unauthorized):
        accounts.authenticate(token)


def test_a_token_unused_for_long_is_checked_before_it_is_answered(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    accounts.authenticate(token)
    later = accounts_module.time.monotonic() + accounts_module.TOKEN_TRUST_S + accounts_module.TOKEN_RECHECK_S + 1
    monkeypatch.setattr(accounts_module.time, "monotonic", lambda: later)
    assert accounts.trusted(token) is None
    assert accounts.recheck_due(token) is None


def test_revoking_in_the_same_process_ends_trust_at_once(accounts: Accounts) -> None:
    accounts.add_user("alice", "pw")
    token = accounts.login("alice", "pw", "laptop").token
    accounts.authenticate(token)
    accounts.revoke_devices("alice")
    assert accounts.trusted(token) is None
