"""Fixtures for the cache tests: fail any test that logs a warning it did not expect."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_unexpected_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if the cache logged a warning or error the test did not consume.

    A test that expects one asserts on ``caplog.records`` and then calls
    ``caplog.clear()``.
    """
    caplog.set_level(logging.INFO, logger="cache")
    yield
    unexpected = [
        record
        for record in caplog.get_records("call")
        if record.levelno >= logging.WARNING and record.name.startswith("cache")
    ]
    assert not unexpected, [record.getMessage() for record in unexpected]
