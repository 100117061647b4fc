"""What a sync asks of its upstream: how many requests a second, how many connections to
a host, and who it says it is. Bounds on time here are lower bounds only (a rate holds
requests back; nothing makes them come sooner), so a slow machine cannot break them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.cli.config import Config
from simplemirror.sync.run import RunSummary, Sync
from simplemirror.upstream.client import Client
from tests.support.upstream import Upstream, World


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "retries": 0,
        "download_processes": 0,
    }
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def world_of(projects: int) -> World:
    """``projects`` projects of one wheel each: a page, the wheel and its .metadata."""
    world = World()
    for i in range(projects):
        wheel = world.add_project(f"p{i}", ["1.0"], sdist=False).files[0]
        # Not its wheel's METADATA, so downloaded (not read from the wheel): a request.
        wheel.metadata = (wheel.metadata or b"") + b"Description: apart\n"
    return world


def span(up: Upstream) -> tuple[int, float]:
    """How many requests the server saw, and the seconds from the first to the last."""
    times = sorted(r.at for r in up.requests)
    return len(times), times[-1] - times[0]


def test_max_requests_per_second_holds_the_rate_of_a_run(tmp_path: Path) -> None:
    with Upstream(world_of(10)) as up:
        summary = sync(up, tmp_path, workers=8, max_requests_per_second=20)
        count, seconds = span(up)
    assert summary.exit_code == 0 and summary.files_fetched == 10
    assert count == 31  # the root, and a page, a wheel and its .metadata a project
    # 30 intervals of 1/20 s: 1.5 s at least, whatever the 8 workers could do at once.
    assert seconds >= 1.4


def test_the_rate_is_shared_out_among_the_download_processes(tmp_path: Path) -> None:
    """Each process gets its share of the rate, and they begin once the main process's
    own requests have had their turns: across all of them, the run keeps to the rate."""
    with Upstream(world_of(20)) as up:
        summary = sync(up, tmp_path, workers=8, download_processes=2,
                       max_requests_per_second=20)
        count, seconds = span(up)
    assert summary.exit_code == 0 and summary.files_fetched == 20
    assert count == 61
    # Two processes at 10 a second each may each take a turn at the very start of a
    # window, and the main process one before them: 60 intervals, less those three.
    assert seconds >= (count - 1 - 3) / 20


def test_connections_per_host_caps_the_connections_to_one_host(tmp_path: Path) -> None:
    with Upstream(world_of(6)) as up:
        # Every answer held a while, so that eight workers would all be at it at once.
        for i in range(6):
            up.delay[f"/simple/p{i}/"] = (0.2, 1)
        summary = sync(up, tmp_path, workers=8, connections_per_host=2)
        peak = up.peak_connections
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert peak <= 2


@pytest.mark.parametrize(
    ("workers", "per_host", "rate", "shares", "expected"),
    [
        # (workers, connections-per-host, rate): each process's (per-host, rate)
        (50, 50, 20.0, [25, 25], [(25, 10.0), (25, 10.0)]),
        (5, 5, None, [3, 2], [(3, None), (2, None)]),
        (8, 3, 8.0, [4, 4], [(1, 4.0), (1, 4.0)]),
        (10, 3, 1.0, [4, 3, 3], [(1, 0.4), (1, 0.3), (1, 0.3)]),
    ],
)
def test_each_process_gets_its_share_of_the_host_cap_and_the_rate(
    workers: int, per_host: int, rate: float | None, shares: list[int],
    expected: list[tuple[int, float | None]],
) -> None:
    cfg = config.build({}, {
        "upstream": "http://127.0.0.1:1/simple/", "directory": "/nonexistent",
        "workers": workers, "connections_per_host": per_host,
        "max_requests_per_second": rate,
    })
    clients = [Client(cfg, share) for share in shares]
    got = [(c.per_host, c.rate) for c in clients]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1] for g in got] == [pytest.approx(e[1]) if e[1] else None for e in expected]
    assert sum(c.per_host for c in clients) <= per_host or per_host < len(shares)
    if rate:
        assert sum(c.rate or 0 for c in clients) == pytest.approx(rate)


def test_fewer_download_processes_than_the_host_cap_allows_none_idle() -> None:
    """connections-per-host 1 leaves one download process, with the one connection."""
    from simplemirror.sync.run import shares

    cfg = Config(upstream="http://127.0.0.1:1/simple/", directory=Path("/nonexistent"),
                 workers=8, connections_per_host=1)
    parts = shares(cfg.workers, min(4, cfg.connections_per_host))
    assert parts == [8]
    assert Client(cfg, parts[0]).per_host == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", '"fast"'])
def test_max_requests_per_second_must_be_a_positive_number(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[mirror]\nupstream = "http://127.0.0.1:1/simple/"\ndirectory = "{tmp_path}"\n'
        f"max-requests-per-second = {value}\n"
    )
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert "max-requests-per-second must be" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["0", "257"])
def test_connections_per_host_is_bounded(tmp_path: Path, value: str) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[mirror]\nupstream = "http://127.0.0.1:1/simple/"\ndirectory = "{tmp_path}"\n'
        f"connections-per-host = {value}\n"
    )
    with pytest.raises(config.ConfigError, match="connections-per-host must be between 1"):
        config.load(path)


def test_the_defaults_are_documented_and_polite() -> None:
    cfg = config.build({}, {"upstream": "http://127.0.0.1:1/simple/", "directory": "/x"})
    assert cfg.max_requests_per_second is None  # off unless set
    assert 1 <= cfg.connections_per_host <= cfg.workers
    assert cfg.user_agent.startswith("simplemirror/")
