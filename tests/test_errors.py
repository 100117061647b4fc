"""Errors an operator meets in daily use: each is one clear message, never a traceback.

A full disk under state.db, a closed stdout, an upstream URL that is not an index's root,
and the exit statuses of `mirror status` and `mirror verify` that monitoring relies on.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simplemirror import daemon
from simplemirror import sync as sync_module
from simplemirror.cli import main
from simplemirror.state import State
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("alpha", ["1.0"])
    return w


@pytest.fixture
def upstream(world: World) -> Iterator[Upstream]:
    with Upstream(world) as up:
        yield up


def write_config(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[mirror]\nupstream = "{upstream}"\ndirectory = "{tmp_path / "m"}"\nworkers = 2\n'
        "download-processes = 0\nretries = 0\nretry-wait = 0.0\nretry-max-wait = 0.0\n"
        "stale-retries = 0\n" + extra
    )
    return path


def outcomes(directory: Path) -> list[str]:
    with sqlite3.connect(directory / "state.db") as db:
        return [row[0] for row in db.execute("SELECT outcome FROM runs ORDER BY generation")]


def sync(config: Path, *args: str) -> int:
    return main(["sync", "-c", str(config), "--no-progress", *args])


# -- a full disk under state.db ------------------------------------------------------------


def state_filling_up(monkeypatch: pytest.MonkeyPatch, runs: int = 1) -> None:
    """The next ``runs`` syncs find state.db's disk full once their run has begun.

    A real SQLite error, not a fake one: ``max_page_count`` caps the database at the size
    it has, so any write that needs a new page fails with "database or disk is full".
    """
    left = [runs]

    class FillingUp(State):
        def begin_run(self, upstream: str) -> int:
            generation = super().begin_run(upstream)
            if left[0] > 0:
                left[0] -= 1
                (pages,) = self.db.execute("PRAGMA page_count").fetchone()
                self.db.execute(f"PRAGMA max_page_count = {pages}")
            return generation

    monkeypatch.setattr(sync_module, "State", FillingUp)


def add_projects(world: World, count: int) -> None:
    for i in range(count):
        world.add_project(f"new-{i}", ["1.0", "2.0"])


def test_a_full_disk_under_state_db_is_one_clear_error_and_the_run_is_recorded(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    add_projects(world, 30)  # enough rows that state.db must grow
    state_filling_up(monkeypatch)
    capsys.readouterr()

    assert sync(config) == 1

    err = capsys.readouterr().err
    assert "database or disk is full" in err and "free some space" in err
    assert "Traceback" not in err
    assert outcomes(tmp_path / "m") == ["ok", "error"]  # not left 'running'
    assert sync(config) == 0  # space again: the next run converges
    assert outcomes(tmp_path / "m") == ["ok", "error", "ok"]


def test_a_full_disk_does_not_end_an_every_loop(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    add_projects(world, 30)
    state_filling_up(monkeypatch)
    pauses: list[float] = []

    def pause(_gate: daemon.SignalGate, seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise daemon.Stopped(signal.SIGTERM)  # as a SIGTERM in the second pause would

    monkeypatch.setattr(daemon.SignalGate, "pause", pause)
    capsys.readouterr()

    assert sync(config, "--every", "1s") == 0

    assert len(pauses) == 2
    assert outcomes(tmp_path / "m") == ["ok", "error", "ok"]
    err = capsys.readouterr().err
    assert "is full" in err and "trying again after the pause" in err
    assert "Traceback" not in err


def test_a_run_that_cannot_record_its_failure_still_ends_with_one_message(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    world.add_release("alpha", "2.0")

    class ReadOnlyAfterBegin(State):
        def begin_run(self, upstream: str) -> int:
            generation = super().begin_run(upstream)
            self.db.execute("PRAGMA query_only = 1")  # every later write fails, as on a
            return generation  # file system remounted read-only

    monkeypatch.setattr(sync_module, "State", ReadOnlyAfterBegin)
    capsys.readouterr()

    assert sync(config) == 1

    err = capsys.readouterr().err
    assert "mirror: cannot write into" in err and "fix its permissions" in err
    assert "could not record run 2 as failed" in err
    assert "Traceback" not in err
    assert outcomes(tmp_path / "m") == ["ok", "running"]


# -- a reader of stdout that goes away early (`mirror ... | head`) ------------------------


def with_stdout_closed(*args: str) -> subprocess.CompletedProcess[str]:
    """`mirror ARGS` whose stdout is a pipe nobody reads any more, as after `| head`."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "simplemirror", *args],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write)


def assert_quiet(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipe" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_commands_whose_reader_goes_away_end_quietly_with_their_own_status(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    config = write_config(tmp_path, upstream.url)
    directory = tmp_path / "m"

    synced = with_stdout_closed("sync", "-c", str(config), "-q")
    assert_quiet(synced)
    assert synced.returncode == 0
    assert (directory / "reports" / "1.json").is_file()  # the report after the summary
    for args in (("status",), ("status", "--json"), ("verify", "-q")):
        done = with_stdout_closed(*args, "--directory", str(directory))
        assert_quiet(done)
        assert done.returncode == 0, (args, done.stderr)

    for i in range(600):  # a plan longer than stdout's buffer: the pipe breaks mid-print
        world.add_project(f"many-{i}", ["1.0"])
    planned = with_stdout_closed("sync", "-c", str(config), "--dry-run", "-q")
    assert_quiet(planned)
    assert planned.returncode == 0
