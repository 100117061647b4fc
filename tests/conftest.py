"""Fixtures shared by the tests."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from simplemirror.upstream.client import Client
from tests.support.process import process_state_kept
from tests.support.upstream import Upstream, World


@pytest.fixture(autouse=True)
def restore_process_state() -> Iterator[None]:
    """The commands install a log handler on the package logger and signal handlers;
    put both back after each test."""
    with process_state_kept():
        yield


_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@pytest.fixture(autouse=True)
def no_name_lookups_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never touch the network beyond loopback, DNS included: a name other than
    localhost looked up in this process fails the test (the file-host guard resolves the
    hosts pages name, so a test that forgets to set file-hosts would ask real DNS)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name and name.lower() not in _LOCAL_NAMES:
            try:
                ipaddress.ip_address(name.split("%", 1)[0])
            except ValueError:
                asked.append(name)
                raise socket.gaierror(socket.EAI_NONAME, f"test looked up {name!r}") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not asked, f"the test looked up names beyond loopback: {sorted(set(asked))}"


@pytest.fixture
def upstream(world: World) -> Iterator[Upstream]:
    """The fake index serving the test module's ``world`` fixture, on 127.0.0.1."""
    with Upstream(world) as up:
        yield up


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait between retries, recorded instead of slept."""
    recorded: list[float] = []

    async def pause(self: Client, seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(Client, "pause", pause)
    return recorded
