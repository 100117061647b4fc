"""`mirror sync --dry-run` says what the run will do: the same plan, the same requests for
pages, the files it will download, the exit status it will end with."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("alpha", ["1.0"])
    w.add_project("beta", ["1.0", "2.0"])
    w.add_project("gamma", ["0.1"])
    return w


def settings(url: str, directory: Path, **overrides: Any) -> config.Config:
    values = {
        "upstream": url, "directory": str(directory), "workers": 3, "retries": 0,
        "retry_wait": 0.0, "stale_retries": 0, "stale_wait": 0.0,
    }
    values.update(overrides)
    return config.build({}, values)


def sync(url: str, directory: Path, **overrides: Any) -> RunSummary:
    return Sync(settings(url, directory, **overrides)).run()


def dry_run(url: str, directory: Path, **overrides: Any) -> RunSummary:
    return Sync(settings(url, directory, **overrides)).run(dry_run=True)


def page_requests(up: Upstream) -> list[tuple[str, str | None]]:
    """Every request for a project page, with the ETag it sent (conditional or not)."""
    return sorted(
        (r.path, r.header("If-None-Match"))
        for r in up.requests
        if r.path.startswith("/simple/") and r.path != "/simple/"
    )


def downloads(up: Upstream) -> list[str]:
    return [r.path for r in up.requests if r.path.startswith("/packages/")]


def forecast_then_run(up: Upstream, directory: Path, **overrides: Any) -> tuple[
    RunSummary, list[tuple[str, str | None]], RunSummary | SyncError,
    list[tuple[str, str | None]],
]:
    """A dry run, then the run, each with the page requests it made."""
    up.reset_requests()
    predicted = dry_run(up.url, directory, **overrides)
    assert downloads(up) == []  # a dry run downloads nothing
    asked = page_requests(up)
    up.reset_requests()
    try:
        done: RunSummary | SyncError = sync(up.url, directory, **overrides)
    except SyncError as exc:
        done = exc
    return predicted, asked, done, page_requests(up)


def _first_sync(up: Upstream, world: World, directory: Path) -> None:
    pass


def _a_new_release(up: Upstream, world: World, directory: Path) -> None:
    assert sync(up.url, directory).exit_code == 0
    world.add_release("beta", "3.0")


def _no_serials(up: Upstream, world: World, directory: Path) -> None:
    up.serial_mode = "none"
    assert sync(up.url, directory).exit_code == 0
    world.add_release("beta", "3.0")


def _no_serials_root_unchanged(up: Upstream, world: World, directory: Path) -> None:
    up.serial_mode = "none"
    assert sync(up.url, directory).exit_code == 0
    world.project("gamma").files.pop()  # a page changes, the root stays the same bytes


def _root_unchanged_after_a_deferral(up: Upstream, world: World, directory: Path) -> None:
    assert sync(up.url, directory).exit_code == 0
    world.add_release("beta", "3.0")
    up.stale["beta"] = 1
    assert sync(up.url, directory).deferred  # the root's ETag is saved, beta left behind


def _html_only(up: Upstream, world: World, directory: Path) -> None:
    up.json_enabled = False  # no sizes on the pages


SCENARIOS: dict[str, Callable[[Upstream, World, Path], None]] = {
    "first sync": _first_sync,
    "a new release": _a_new_release,
    "no serials": _no_serials,
    "no serials, root unchanged": _no_serials_root_unchanged,
    "root unchanged after a deferral": _root_unchanged_after_a_deferral,
    "HTML only": _html_only,
}


@pytest.mark.parametrize("prepare", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_the_dry_run_asks_for_the_pages_the_run_asks_for_and_counts_its_files(
    upstream: Upstream, world: World, tmp_path: Path,
    prepare: Callable[[Upstream, World, Path], None],
):
    prepare(upstream, world, tmp_path)

    predicted, asked, done, run_asked = forecast_then_run(upstream, tmp_path)

    assert isinstance(done, RunSummary)
    assert asked == run_asked and asked  # the same projects, conditional the same way
    forecast = predicted.forecast
    assert forecast is not None and predicted.plan is not None
    assert forecast.serials == (upstream.serial_mode == "normal" and upstream.json_enabled)
    assert forecast.files == done.files_fetched
    fetched = {r.path for r in upstream.requests if r.path.startswith("/packages/")}
    sizes = {f.path: f.size for p in world.projects.values() for f in p.files}
    if upstream.json_enabled:
        assert forecast.bytes == sum(sizes[path] for path in fetched if path in sizes)
        assert forecast.unknown_size == 0
    else:
        assert forecast.bytes == 0 and forecast.unknown_size == done.files_fetched
    assert predicted.exit_code == done.exit_code == 0


def test_the_non_serial_fallback_is_planned_and_pages_answered_304_are_unchanged(
    upstream: Upstream, world: World, tmp_path: Path
):
    _no_serials(upstream, world, tmp_path)

    predicted = dry_run(upstream.url, tmp_path)

    assert predicted.forecast is not None and not predicted.forecast.serials
    assert predicted.plan is not None and len(predicted.plan.fetch) == 3
    assert predicted.forecast.pages_unchanged == 2  # alpha and gamma: 304
    assert predicted.forecast.files == 2  # beta 3.0's sdist and wheel


def test_the_mass_removal_refusal_is_predicted_word_for_word(
    upstream: Upstream, world: World, tmp_path: Path
):
    for i in range(8):
        world.add_project(f"extra-{i}", ["1.0"])
    assert sync(upstream.url, tmp_path).exit_code == 0
    for i in range(3):
        world.remove_project(f"extra-{i}")

    predicted, asked, done, _ = forecast_then_run(upstream, tmp_path)

    assert isinstance(done, SyncError)
    assert predicted.forecast is not None and predicted.forecast.refusal == str(done)
    assert predicted.exit_code == 1
    assert asked == []  # the run stops before any page: so does its forecast
    assert predicted.plan is not None and len(predicted.plan.removed) == 3


def test_the_file_removal_cap_is_predicted(upstream: Upstream, world: World, tmp_path: Path):
    for i in range(30):
        world.add_file("alpha", f"alpha-0.{i}.tar.gz", f"old {i}".encode())
    assert sync(upstream.url, tmp_path).exit_code == 0
    for i in range(30):
        world.remove_file("alpha", f"alpha-0.{i}.tar.gz")

    predicted, _, done, _ = forecast_then_run(upstream, tmp_path)

    assert isinstance(done, RunSummary) and done.exit_code == 1
    assert predicted.forecast is not None and predicted.forecast.files_dropped == 30
    assert predicted.forecast.file_refusal is not None
    assert "max-removal" in predicted.forecast.file_refusal
    assert predicted.exit_code == 1

    allowed = dry_run(upstream.url, tmp_path, allow_mass_delete=True)
    assert allowed.forecast is not None and allowed.forecast.file_refusal is None
    assert allowed.exit_code == 0


def test_a_refused_file_host_fails_the_project_in_the_forecast_too(
    upstream: Upstream, world: World, tmp_path: Path
):
    world.add_file("alpha", "alpha-1.1.tar.gz", b"elsewhere")
    world.project("alpha").files[-1].extra["url"] = "http://files.example/alpha-1.1.tar.gz"

    # With file-hosts set, that list decides, and no name is looked up.
    predicted, _, done, _ = forecast_then_run(
        upstream, tmp_path, file_hosts=("mirror-files.example",)
    )

    assert isinstance(done, RunSummary)
    assert [name for name, _ in predicted.failed] == [name for name, _ in done.failed]
    assert predicted.failed[0][1] == done.failed[0][1]
    assert predicted.exit_code == done.exit_code == 1


def test_a_dry_run_while_a_sync_writes_neither_waits_nor_fails(
    upstream: Upstream, world: World, tmp_path: Path
):
    assert sync(upstream.url, tmp_path).exit_code == 0
    world.add_release("beta", "3.0")
    writer = sqlite3.connect(tmp_path / "state.db")
    writer.execute("BEGIN IMMEDIATE")  # as a sync does while it records projects
    writer.execute("UPDATE projects SET error = 'writing'")
    try:
        started = time.monotonic()
        predicted = dry_run(upstream.url, tmp_path)
        took = time.monotonic() - started
    finally:
        writer.rollback()
        writer.close()

    assert predicted.plan is not None and [t.name for t in predicted.plan.fetch] == ["beta"]
    assert took < 3, f"the dry run waited {took:.1f} s for the writer"


def test_after_the_upstream_changed_the_refusal_says_so_before_the_flag(tmp_path: Path):
    old_world = World()
    for i in range(10):
        old_world.add_project(f"old-{i}", ["1.0"])
    new_world = World()
    new_world.add_project("other", ["1.0"])
    with Upstream(old_world) as old, Upstream(new_world) as new:
        assert sync(old.url, tmp_path).exit_code == 0
        with pytest.raises(SyncError) as refused:
            sync(new.url, tmp_path)
        predicted = dry_run(new.url, tmp_path)
        message = str(refused.value)
        assert f"is not the one the last run synced from, {old.url}" in message
        # Setting it back comes first: the flag would wipe the mirror of the old index.
        assert message.index("set the upstream back") < message.index("--allow-mass-delete")
        assert predicted.forecast is not None and predicted.forecast.refusal == message
        # A refused run is not "the last run" for this: the next one still says it.
        with pytest.raises(SyncError, match="is not the one the last run synced from"):
            sync(new.url, tmp_path)
        # The same upstream, truncated, gets the advice as before.
        old_world.projects.clear()
        with pytest.raises(SyncError, match="its index is truncated") as truncated:
            sync(old.url, tmp_path)
        assert "last run synced from" not in str(truncated.value)


def mirror(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simplemirror", *args], capture_output=True, text=True,
        timeout=120,
    )


def test_the_printed_plan_shows_files_bytes_the_fallback_and_the_refusal(
    upstream: Upstream, world: World, tmp_path: Path
):
    world.add_file("alpha", "alpha-big.tar.gz", b"x" * 1_500_000)
    args = ["sync", "--dry-run", "--upstream", upstream.url, "--directory", str(tmp_path)]

    first = mirror(*args)
    assert first.returncode == 0, first.stderr
    assert "would fetch 3 project(s); 0 unchanged" in first.stdout
    assert "would download 9 file(s), 1.5 MB" in first.stdout

    upstream.serial_mode, upstream.json_enabled = "none", False
    assert mirror("sync", *args[2:]).returncode == 0
    world.add_release("gamma", "0.2")
    plain = mirror(*args)
    assert plain.returncode == 0, plain.stderr
    assert "no usable serials" in plain.stdout
    assert "pages: 1 changed, 2 unchanged" in plain.stdout
    assert "would download 2 file(s), none with a declared size" in plain.stdout

    world.projects.clear()
    world.add_project("newcomer", ["1.0"])
    refused = mirror(*args)
    assert refused.returncode == 1
    assert "would stop before changing anything" in refused.stdout
    assert "mirror: upstream no longer lists 3 of the 3 projects held" in refused.stderr
    assert "Traceback" not in refused.stderr
