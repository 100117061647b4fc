"""`mirror status`: read from state.db after syncs against the test upstream."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from simplemirror.store import state as state_module
from simplemirror.sync.run import locked
from tests.support.process import run
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    w.add_project("tiny", ["0.1"])
    return w


def sync(capsys: pytest.CaptureFixture[str], upstream: Upstream, directory: Path) -> int:
    cfg = directory.with_name("mirror.toml")
    cfg.write_text(
        f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{directory}"\n'
        "retries = 0\nretry-wait = 0.0\nstale-retries = 0\nstale-wait = 0.0\n"
    )
    return run(capsys, "sync", "-c", str(cfg))[0]


def status_json(capsys: pytest.CaptureFixture[str], directory: Path) -> dict[str, Any]:
    code, out, _ = run(capsys, "status", "--directory", str(directory), "--json")
    info: dict[str, Any] = json.loads(out)
    assert code == (0 if info["up_to_date"] else 3)  # exit 3: the mirror did not converge
    return info


def test_status_after_a_sync(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    upstream.reset_requests()

    code, text, _ = run(capsys, "status", "--directory", str(directory))

    assert code == 0
    assert f"upstream:      {upstream.url} (from the last run)" in text
    assert "last run:      generation 1, ok, started" in text
    assert "last complete: generation 1, ok" in text
    assert f"serial:        held {world.serial}, upstream last seen {world.serial}\n" in text
    assert "projects:      2 ok, 0 deferred, 0 failed, 0 pending, 0 removed" in text
    sizes = sum(f.size for p in world.projects.values() for f in p.files)
    assert sizes < 100_000 and f"files:         6 held, {sizes / 1000:.1f} kB\n" in text
    assert "deferred" not in text.split("projects:")[1].split("\n", 1)[1]

    info = status_json(capsys, directory)
    assert info["upstream"] == upstream.url and info["upstream_from"] == "last run"
    assert info["last_run"]["generation"] == 1 and info["last_run"]["outcome"] == "ok"
    assert info["last_run"]["duration_seconds"] >= 0
    assert info["last_complete_run"] == info["last_run"]
    assert info["serial_held"] == info["upstream_serial_seen"] == world.serial
    assert info["projects"] == {"ok": 2, "deferred": 0, "failed": 0, "pending": 0, "removed": 0}
    assert (info["files_held"], info["bytes_held"]) == (6, sizes)
    assert info["deferred"] == info["failed"] == []
    assert upstream.requests == []  # status never goes to the network

    # The config file's upstream is the one shown (status takes no --upstream: it would
    # only be echoed back).
    other = directory.with_name("other.toml")
    other.write_text(
        f'[mirror]\nupstream = "https://other.test/simple/"\ndirectory = "{directory}"\n'
    )
    code, text, _ = run(capsys, "status", "-c", str(other))
    assert code == 0 and "upstream:      https://other.test/simple/ (from the config)" in text


def test_status_after_a_partial_run(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    held = world.serial
    world.add_release("tiny", "0.2")
    world.add_release("Foo__Bar.baz", "3.0")
    upstream.stale["tiny"] = 10
    upstream.fail["/simple/foo-bar-baz/"] = 10
    assert sync(capsys, upstream, directory) == 1

    code, text, _ = run(capsys, "status", "--directory", str(directory))

    assert code == 3  # the last run did not converge: look at the mirror
    assert "last run:      generation 2, partial" in text
    assert "last complete: generation 1, ok" in text
    assert f"held {held}, upstream last seen {world.serial} (2 behind)" in text
    assert "projects:      0 ok, 1 deferred, 1 failed, 0 pending, 0 removed" in text
    assert "  deferred tiny: " in text and "older than the root" in text
    assert "  failed foo-bar-baz: " in text and "HTTP 503" in text

    info = status_json(capsys, directory)
    assert info["last_run"]["generation"] == 2 and info["last_run"]["outcome"] == "partial"
    assert info["last_complete_run"]["generation"] == 1
    assert (info["serial_held"], info["upstream_serial_seen"]) == (held, world.serial)
    assert [d["name"] for d in info["deferred"]] == ["tiny"]
    assert "older than the root" in info["deferred"][0]["error"]
    assert [f["name"] for f in info["failed"]] == ["foo-bar-baz"]
    assert "503" in info["failed"][0]["error"]


def test_status_of_a_first_run_that_did_not_complete(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    upstream.stale["tiny"] = 10
    assert sync(capsys, upstream, directory) == 1

    code, text, _ = run(capsys, "status", "--directory", str(directory))

    assert code == 3
    assert "last complete: none" in text and "serial:        held none" in text
    info = status_json(capsys, directory)
    assert info["last_complete_run"] is None and info["serial_held"] is None
    assert info["projects"]["deferred"] == 1 and info["files_held"] == 4


def test_status_reads_while_a_sync_writes(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    writer = sqlite3.connect(directory / "state.db", timeout=0.1)
    # A sync holds the mirror's lock while it writes.
    with locked(directory), contextlib.closing(writer):
        # A run in progress, not committed yet: status sees the last committed state,
        # and is not blocked by the writer's lock.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO runs (started, upstream, outcome) VALUES ('2030-01-01', 'x', 'running')"
        )
        info = status_json(capsys, directory)
        assert info["last_run"]["generation"] == 1
        writer.commit()
        info = status_json(capsys, directory)
        assert info["last_run"]["generation"] == 2 and info["last_run"]["finished"] is None
        code, text, _ = run(capsys, "status", "--directory", str(directory))
        # Running is not a failure: the run before it decides the exit status.
        assert code == 0 and "generation 2, running" in text and "still running" in text
        assert info["sync_running"] is True and info["up_to_date"] is True


def test_status_reads_one_snapshot_without_writing(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    statements: list[str] = []
    real_connect = state_module.connect_readonly

    def traced(path: Path) -> sqlite3.Connection:
        conn = real_connect(path)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(state_module, "connect_readonly", traced)
    status_json(capsys, directory)

    # Every query between one BEGIN and its end, so a sync committing meanwhile cannot
    # make the counts disagree with each other; and nothing but reads.
    selects = [i for i, s in enumerate(statements) if s.lstrip().upper().startswith("SELECT")]
    begin = statements.index("BEGIN")
    assert selects and begin < selects[0]
    assert not any(s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "CREATE"))
                   for s in statements)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        real_connect(directory / "state.db").execute("DELETE FROM runs")


def test_status_without_state_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "status", "--directory", str(tmp_path / "nothing"))
    assert code == 1 and out == ""
    assert "no state.db" in err and "mirror sync" in err
    assert not (tmp_path / "nothing").exists()


def test_status_without_a_directory(capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "status")
    assert code == 2 and "--directory" in err


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the command as another user",
)
def test_status_as_a_user_who_cannot_write_beside_state_db_says_whom_to_run_as(
    capsys: pytest.CaptureFixture[str], upstream: Upstream
):
    # pytest's own temporary directories are 0700: use one another user can enter.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        directory = base / "mirror"
        assert sync(capsys, upstream, directory) == 0
        # A clean close removes the -shm file; a reader would have to create it.
        for leftover in directory.glob("state.db-*"):
            leftover.unlink()
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "simplemirror", "status", "--directory", str(directory)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/"},
        )
    finally:
        shutil.rmtree(base)
    assert done.returncode == 1, done.stderr
    assert "run this as the mirror's user" in done.stderr
    assert "Traceback" not in done.stderr
