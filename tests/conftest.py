"""Fixtures shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from simplemirror.upstream import Client
from tests.support.process import process_state_kept


@pytest.fixture(autouse=True)
def restore_process_state() -> Iterator[None]:
    """The commands install a log handler on the package logger and signal handlers;
    put both back after each test."""
    with process_state_kept():
        yield


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait between retries, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(Client, "pause", lambda self, seconds: recorded.append(seconds))
    return recorded


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
