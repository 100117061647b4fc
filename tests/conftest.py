"""Fixtures shared by the tests."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest
import responses

from simplemirror.upstream import Client


@pytest.fixture(autouse=True)
def restore_process_state() -> Iterator[None]:
    """The commands install a log handler on the package logger and signal handlers;
    put both back after each test."""
    logger = logging.getLogger("simplemirror")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


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
