"""`mirror sync --every`: the loop, its pauses, and how signals end it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import daemon
from simplemirror.cli.config import build, parse_interval
from simplemirror.cli.main import main
from simplemirror.sync.run import Sync
from tests.support.prom import parse
from tests.support.upstream import Upstream, World

# -- the interval ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1), ("30s", 30), ("10m", 600), ("1h", 3600), ("90m", 5400), (" 2M ", 120),
    ("1d", 86400), ("7D", 7 * 86400), ("365d", 365 * 86400), ("0010m", 600),
])
def test_parse_interval(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["10", "0s", "0d", "1.5h", "10 m", "-1s", "1w", "", "m",
                                  "1h30m", "1.5d"])
def test_parse_interval_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"30s, 10m, 1h or 1d|longer than zero"):
        parse_interval(text)


@pytest.mark.parametrize("text", ["366d", "99999999999999d", "9" * 400 + "d", "9" * 5000 + "s"])
def test_parse_interval_refuses_more_than_a_year(text: str) -> None:
    # Once a traceback from int() or time.sleep() (OverflowError), after the first run.
    with pytest.raises(ValueError, match="at most 365d"):
        parse_interval(text)


@pytest.mark.parametrize("argv", [
    ["sync", "--every", "10"],  # no unit: seconds or minutes? say it
    ["sync", "--every", "0s"],
    ["sync", "--every", "99999999999999d"],
])
def test_a_bad_interval_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "--every" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "says"), [
    (["--dry-run"], "--dry-run"),
    (["--allow-mass-delete"], "--allow-mass-delete"),
])
def test_every_refuses_options_meant_for_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    argv = ["sync", "--upstream", "http://127.0.0.1:9/simple/", "--directory",
            str(tmp_path / "m"), "--every", "1s", *extra]
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# -- `every` in the config file -----------------------------------------------------------


def _every_config(tmp_path: Path, every: str, upstream: str = "http://127.0.0.1:9/simple/") -> Path:
    path = tmp_path / "every.toml"
    path.write_text(f'[mirror]\nupstream = "{upstream}"\ndirectory = "{tmp_path / "m"}"\n'
                    f"every = {every}\nretries = 0\n")
    return path


@pytest.fixture
def loops(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The intervals `mirror sync` started a loop with (the loop itself is not run)."""
    from simplemirror.cli import main as cli

    started: list[float] = []

    def record(_cfg: Any, interval: float, _make_reporter: Any) -> int:
        started.append(interval)
        return 0

    monkeypatch.setattr(cli, "_sync_forever", record)
    return started


def test_every_in_the_config_loops_and_the_command_line_overrides_it(
    tmp_path: Path, loops: list[float]
) -> None:
    config_file = str(_every_config(tmp_path, '"10m"'))
    assert main(["sync", "-c", config_file]) == 0
    assert main(["sync", "-c", config_file, "--every", "2d"]) == 0
    assert loops == [600.0, 2 * 86400.0]


@pytest.mark.parametrize("value", ['"10"', '"often"', '"0m"', "10", '""'])
def test_a_bad_every_in_the_config_is_a_configuration_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loops: list[float], value: str
) -> None:
    config_file = _every_config(tmp_path, value)
    assert main(["sync", "-c", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "every" in err and str(config_file) in err
    assert loops == [] and not (tmp_path / "m").exists()


def test_dry_run_with_every_in_the_config_makes_one_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loops: list[float]
) -> None:
    """--dry-run on the command line asks for one look, whatever the file says."""
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        config_file = str(_every_config(tmp_path, '"10m"', up.url))
        assert main(["sync", "-c", config_file, "--dry-run"]) == 0
    assert loops == []
    assert "would fetch 1 project(s)" in capsys.readouterr().out
    assert not (tmp_path / "m" / "state.db").exists()


def test_allow_mass_delete_with_every_in_the_config_makes_one_run(
    tmp_path: Path, loops: list[float]
) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        config_file = str(_every_config(tmp_path, '"10m"', up.url))
        assert main(["sync", "-c", config_file, "--allow-mass-delete"]) == 0
    assert loops == []
    assert sorted(_reports(tmp_path)) == [1]


def test_pause_length_adds_up_to_ten_percent() -> None:
    assert daemon.pause_length(600, lambda: 0.0) == 600
    assert daemon.pause_length(600, lambda: 0.5) == 630
    assert daemon.pause_length(600, lambda: 0.999999) < 660
    drawn = [daemon.pause_length(100) for _ in range(200)]
    assert all(100 <= d < 110 for d in drawn) and len(set(drawn)) > 1


# -- the loop and the gate, in-process ---------------------------------------------------


class _CountingGate(daemon.SignalGate):
    """Pauses without sleeping; a signal "arrives" during the pause after ``runs`` runs."""

    def __init__(self, runs: int) -> None:
        super().__init__()
        self.pauses: list[float] = []
        self.runs = runs

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if len(self.pauses) >= self.runs:
            self.pausing = True
            try:
                self._handle(signal.SIGTERM, None)
            finally:
                self.pausing = False


def test_failed_runs_do_not_end_the_loop_a_signal_in_the_pause_does() -> None:
    codes = iter([1, 0, 1, 0])
    calls: list[int] = []

    def once() -> int:
        calls.append(1)
        return next(codes)

    gate = _CountingGate(runs=4)
    assert daemon.run_every(60, once, gate, draw=lambda: 0.5) == 0
    assert len(calls) == 4 and gate.pauses == [63.0] * 4


def test_a_run_stopped_by_a_signal_ends_the_loop_with_its_status() -> None:
    codes: Iterator[int] = iter([1, 143])
    gate = _CountingGate(runs=10)
    assert daemon.run_every(60, lambda: next(codes), gate) == 143
    assert len(gate.pauses) == 1


def _sync(tmp_path: Path) -> Sync:
    return Sync(build({}, {"upstream": "http://127.0.0.1:9/simple/", "directory": tmp_path}))


def test_gate_routes_signals_to_the_run_then_to_the_pause(tmp_path: Path) -> None:
    gate = daemon.SignalGate()
    sync = _sync(tmp_path)
    assert gate.start_run(sync)
    gate._handle(signal.SIGTERM, None)
    assert sync.stopped_by == signal.SIGTERM and sync.client.stop.is_set()
    with pytest.raises(KeyboardInterrupt):  # the second signal: stop now
        gate._handle(signal.SIGTERM, None)
    gate.end_run()

    idle = daemon.SignalGate()
    idle._handle(signal.SIGINT, None)  # between runs: remembered...
    with pytest.raises(daemon.Stopped) as info:  # ...and the pause ends at once
        idle.pause(3600)
    assert info.value.signum == signal.SIGINT
    assert not idle.start_run(_sync(tmp_path))  # nor does another run begin


def test_a_signal_in_the_pause_interrupts_the_sleep(tmp_path: Path) -> None:
    gate = daemon.SignalGate()
    previous = signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGALRM, lambda s, f: gate._handle(signal.SIGTERM, f))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        with pytest.raises(daemon.Stopped):
            gate.pause(30)
        assert time.monotonic() - started < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- a real process against the test upstream --------------------------------------------


def _config(tmp_path: Path, up: Upstream) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[mirror]\nupstream = "{up.url}"\ndirectory = "{tmp_path / "m"}"\nworkers = 2\n'
        "retries = 0\nretry-wait = 0.0\nretry-max-wait = 0.0\nstale-retries = 0\n"
        f'metrics-file = "{tmp_path / "simplemirror.prom"}"\n'
    )
    return path


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "simplemirror", "sync", *args],
            stdout=subprocess.DEVNULL, stderr=err, text=True,
        )
    return process, log


def _wait(what: str, check: Callable[[], Any], process: subprocess.Popen[str],
          log: Path, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the loop ended ({process.returncode}) waiting for {what}:\n"
                        + log.read_text())
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}:\n" + log.read_text())
        time.sleep(0.05)


def _reports(tmp_path: Path) -> dict[int, dict[str, Any]]:
    reports = tmp_path / "m" / "reports"
    found: dict[int, dict[str, Any]] = {}
    if reports.is_dir():
        for path in reports.glob("*.json"):
            found[int(path.stem)] = json.loads(path.read_text())
    return found


def _stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, float]:
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return code, time.monotonic() - sent


def test_loop_survives_a_held_lock_and_a_down_upstream(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    (tmp_path / "m").mkdir()
    lock = os.open(tmp_path / "m" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    with Upstream(world) as up:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sync holds the mirror
        process, log = _start(tmp_path, "-c", str(_config(tmp_path, up)), "--every", "1s")
        try:
            _wait("two refused runs", lambda: log.read_text().count("another mirror sync") >= 2,
                  process, log)
            assert _reports(tmp_path) == {}  # a refused run begins no generation
            prom = parse((tmp_path / "simplemirror.prom").read_text())
            assert prom["simplemirror_last_run_outcome"].value(outcome="error") == 1
            os.close(lock)

            ok = _wait("a good run", lambda: _reports(tmp_path).get(1), process, log)
            assert ok["outcome"] == "ok"

            up.fail["/simple/"] = 10**6  # the upstream goes down
            error = _wait("a failed run", lambda: [
                g for g, r in _reports(tmp_path).items() if r["outcome"] == "error"
            ], process, log)[0]
            assert "could not read the upstream root index" in _reports(tmp_path)[error]["error"]

            up.fail.clear()  # and comes back
            world.add_release("alpha", "2.0")
            later = _wait("a run after the outage", lambda: [
                r for g, r in _reports(tmp_path).items() if g > error and r["outcome"] == "ok"
            ], process, log)[0]
            assert later["counts"]["files_fetched"] == 2
            assert process.poll() is None
        finally:
            if process.poll() is None:
                code, _ = _stop(process)
    # A run or a pause: either way the loop ends, and promptly.
    assert code in (0, 128 + signal.SIGTERM), log.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_pause_exits_0_at_once(tmp_path: Path, signum: int) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        process, log = _start(tmp_path, "-c", str(_config(tmp_path, up)), "--every", "1h")
        try:
            _wait("the pause", lambda: "next sync in" in log.read_text(), process, log)
            code, took = _stop(process, signum)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0, log.read_text()
    assert took < 5
    assert "received between runs: exiting" in log.read_text()
    assert [r["outcome"] for r in _reports(tmp_path).values()] == ["ok"]


def test_every_from_the_config_file_keeps_a_process_syncing(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        config_file = _config(tmp_path, up)
        config_file.write_text(config_file.read_text() + 'every = "1h"\n')
        process, log = _start(tmp_path, "-c", str(config_file))
        try:
            _wait("the pause", lambda: "next sync in" in log.read_text(), process, log)
            code, _ = _stop(process)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0, log.read_text()
    assert [r["outcome"] for r in _reports(tmp_path).values()] == ["ok"]


def test_a_signal_during_a_run_stops_it_and_ends_the_loop(tmp_path: Path) -> None:
    world = World()
    for i in range(6):
        world.add_project(f"proj-{i}", ["1.0"])
        world.add_file(f"proj-{i}", f"proj_{i}-1.0-data.tar.gz", bytes(range(256)) * 400)
    with Upstream(world) as up:
        for project in world.projects.values():
            for f in project.files:
                if f.filename.endswith("-data.tar.gz"):
                    up.slow_body[f.path] = 1
        up.slow_chunk, up.slow_pause = 1024, 0.05
        process, log = _start(tmp_path, "-c", str(_config(tmp_path, up)), "--every", "1s")
        try:
            _wait("a download", lambda: any(
                r.path.endswith("-data.tar.gz") for r in list(up.requests)
            ), process, log)
            time.sleep(0.3)
            code, took = _stop(process)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 128 + signal.SIGTERM, log.read_text()
    assert took < 10
    with sqlite3.connect(tmp_path / "m" / "state.db") as db:
        assert db.execute("SELECT outcome FROM runs").fetchall() == [("interrupted",)]
    report = _reports(tmp_path)[1]
    assert (report["outcome"], report["exit_code"], report["stopped_by_signal"]) == (
        "interrupted", 143, signal.SIGTERM)
