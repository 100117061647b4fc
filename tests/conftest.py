"""Fixtures shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses
import tenacity


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait tenacity asks for, recorded instead of slept.

    tenacity's default ``sleep`` (bound into Retrying at import time) calls
    ``time.sleep`` through the ``time`` module held by ``tenacity.nap``.
    """
    recorded: list[float] = []
    monkeypatch.setattr(tenacity.nap.time, "sleep", recorded.append)
    return recorded


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
