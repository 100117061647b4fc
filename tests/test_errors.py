"""Errors an operator meets in daily use: each is one clear message, never a traceback.

A full disk under state.db, a closed stdout, an upstream URL that is not an index's root,
and the exit statuses of `mirror status` and `mirror verify` that monitoring relies on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from simplemirror.check import status
from simplemirror.cli import daemon
from simplemirror.cli.main import main
from simplemirror.store.state import State
from simplemirror.sync import run as sync_module
from tests.support.canned import Canned
from tests.support.static import StaticServer
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("alpha", ["1.0"])
    return w


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


def state_read_only_after_begin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs can begin their run, and then write nothing more to state.db, as on a file
    system remounted read-only: not even their end."""

    class ReadOnlyAfterBegin(State):
        def begin_run(self, upstream: str) -> int:
            generation = super().begin_run(upstream)
            self.db.execute("PRAGMA query_only = 1")
            return generation

    monkeypatch.setattr(sync_module, "State", ReadOnlyAfterBegin)


def synced_then_disk_filling(
    tmp_path: Path, upstream: Upstream, world: World, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A mirror synced once, then enough new projects upstream that state.db must grow,
    on a disk (SQLite's page cap) that will not let it: the config to sync with."""
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    for i in range(30):
        world.add_project(f"new-{i}", ["1.0", "2.0"])
    state_filling_up(monkeypatch)
    return config


def test_a_full_disk_under_state_db_is_one_clear_error_and_the_run_is_recorded(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = synced_then_disk_filling(tmp_path, upstream, world, monkeypatch)
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
    config = synced_then_disk_filling(tmp_path, upstream, world, monkeypatch)
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
    state_read_only_after_begin(monkeypatch)
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


# -- an upstream URL that is not an index's root -------------------------------------------


def listing(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def test_a_static_servers_root_without_simple_says_so_and_leaves_nothing_behind(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    assert main(["sync", "--upstream", upstream.url, "--directory", str(source), "-q"]) == 0
    target = tmp_path / "target"
    with StaticServer(source / "web") as server:
        capsys.readouterr()
        code = main(["sync", "--upstream", server.url, "--directory",
                     str(target / "not" / "yet" / "there"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1
        assert "HTTP 404" in err and "does the URL end in /simple/?" in err
        assert "Traceback" not in err
        # No skeleton: no web/, tmp/, state.db or .lock, nor the parents made for them.
        assert not target.exists()

        # The URL the message points at is the right one.
        assert main(["sync", "--upstream", server.url + "simple/", "--directory",
                     str(target), "-q"]) == 0


def test_a_directory_listing_given_as_upstream_names_the_root_to_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a web server with directory listings shows for a static mirror's web/.
    page = (b'<html><body><h1>Index of /</h1><ul><li><a href="last-modified">last-modified'
            b'</a></li><li><a href="packages/">packages/</a></li>'
            b'<li><a href="simple/">simple/</a></li></ul></body></html>')
    server = Canned()
    try:
        server.add("/", page, headers={"Content-Type": "text/html; charset=utf-8"})
        directory = tmp_path / "m"
        directory.mkdir()
        (directory / "notes.txt").write_text("the operator's\n")
        (directory / "web").mkdir()
        before = listing(directory)
        code = main(["sync", "--upstream", server.url("/"), "--directory", str(directory),
                     "--no-progress"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 1
    assert f"give its Simple API root, {server.url('/simple/')}" in err
    # What was there stays; only what this run created is gone.
    assert listing(directory) == before
    assert (directory / "notes.txt").read_text() == "the operator's\n"


def test_an_existing_mirror_keeps_everything_and_records_the_failed_run(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    before = listing(tmp_path / "m")
    upstream.status["/simple/"] = (404, {}, 1)

    assert sync(config) == 1

    assert "does the URL end in /simple/?" in capsys.readouterr().err
    assert outcomes(tmp_path / "m") == ["ok", "error"]
    assert listing(tmp_path / "m") == before | {"reports/2.json"}


# -- mirror verify --------------------------------------------------------------------------


def test_verify_accepts_no_progress_as_the_readme_offers(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # where bars would be drawn
    capsys.readouterr()

    assert main(["verify", "-c", str(config), "--no-progress"]) == 0

    captured = capsys.readouterr()
    assert "verify: the mirror is sound" in captured.out
    assert "\x1b[" not in captured.err  # plain lines: no bars, no colour


def hold_shared(directory: Path) -> int:
    """Take the mirror's lock as a plain verify does (read-only, shared); returns the fd."""
    fd = os.open(directory / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return fd


def test_a_plain_verify_shares_the_lock_and_writes_nothing_into_it(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    directory = tmp_path / "m"
    holder = (directory / ".lock").read_text()
    fd = hold_shared(directory)  # another plain verify, reading
    try:
        capsys.readouterr()
        assert main(["verify", "--directory", str(directory), "-q"]) == 0
        assert "the mirror is sound" in capsys.readouterr().out

        # Writers still wait for the readers, and say whom for.
        assert main(["verify", "--directory", str(directory), "--delete-orphans", "-q"]) == 1
        err = capsys.readouterr().err
        assert "mirror verify --delete-orphans cannot run while a mirror verify is reading" in err
        assert sync(config) == 1
        err = capsys.readouterr().err
        assert f"mirror sync cannot run while a mirror verify is reading {directory}" in err
    finally:
        os.close(fd)
    assert (directory / ".lock").read_text() == holder  # still the last sync's pid


def test_a_sync_waits_out_a_status_looking_at_the_lock(tmp_path: Path) -> None:
    (tmp_path / ".lock").touch()
    fd = hold_shared(tmp_path)  # `mirror status` asking whether a sync runs
    release = threading.Timer(sync_module.LOCK_PATIENCE, os.close, [fd])
    release.start()
    try:
        with sync_module.locked(tmp_path) as held:
            assert held
    finally:
        release.join()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the command as another user",
)
def test_verify_by_a_user_who_cannot_write_in_the_directory(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest's own temporary directories are 0700: use one another user can enter.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        config = write_config(base, upstream.url)
        directory = base / "m"
        assert sync(config, "-q") == 0
        # A clean close removes the -shm file; a reader would have to create it.
        for leftover in directory.glob("state.db-*"):
            leftover.unlink()
        before = listing(directory)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "simplemirror", "verify", "--directory", str(directory)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": "/"},
        )
        after = listing(directory)
    finally:
        shutil.rmtree(base)
    assert done.returncode == 0, done.stderr
    assert "verify: the mirror is sound" in done.stdout
    assert "Traceback" not in done.stderr
    assert after == before


# -- mirror status: an exit status for monitoring ------------------------------------------


@pytest.mark.parametrize(("runs", "running", "expected"), [
    ([], False, False),  # never synced
    ([("ok", None)], False, True),
    ([("unchanged", None), ("partial", None)], False, True),
    ([("partial", None), ("ok", None)], False, False),
    ([("error", "upstream down"), ("ok", None)], False, False),
    ([("interrupted", None), ("ok", None)], False, False),
    ([("running", None), ("ok", None)], True, True),  # a sync going: the run before decides
    ([("running", None), ("partial", None)], True, False),
    ([("running", None)], True, False),  # the first sync, still going: nothing whole yet
    ([("running", None), ("ok", None)], False, False),  # died without recording its end
    ([("running", None), ("ok", None)], None, True),  # cannot tell: not a failure
    ([("repair", None), ("ok", None)], False, True),
    ([("repair", None), ("partial", None)], False, False),
    ([("repair", "x: HTTP 404"), ("ok", None)], False, False),
])
def test_up_to_date(
    runs: list[tuple[str, str | None]], running: bool | None, expected: bool
) -> None:
    assert status.up_to_date(runs, running) is expected


def status_of(directory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", "--directory", str(directory)])
    return code, capsys.readouterr().out


def test_status_exits_3_when_the_last_run_did_not_converge(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    directory = tmp_path / "m"
    assert sync(config) == 0
    assert status_of(directory, capsys)[0] == 0

    upstream.status["/simple/"] = (404, {}, 1)
    assert sync(config) == 1
    code, text = status_of(directory, capsys)
    assert code == 3 and "generation 2, error" in text

    assert sync(config) == 0  # unchanged since the last good run
    assert status_of(directory, capsys)[0] == 0

    # A run that could not record its end, and no sync holding the lock: it died.
    world.add_release("alpha", "2.0")
    state_read_only_after_begin(monkeypatch)
    assert sync(config) == 1
    code, text = status_of(directory, capsys)
    assert code == 3
    assert "generation 4, running" in text and "its process ended without recording how" in text


@pytest.mark.parametrize(
    "content", [b"\x8f" * 8192, b"SQLite format 3\x00" + b"\x00" * 84],
    ids=["garbage", "torn-header"],
)
def test_a_damaged_state_db_is_named_by_sync_not_taken_for_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "state.db").write_bytes(content)
    code = main(["sync", "--upstream", "http://127.0.0.1:9/simple/", "--directory",
                 str(directory), "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{directory / 'state.db'} cannot be read as a simplemirror state database" in err
    assert "restore it from a backup" in err and "writable" not in err
    assert "Traceback" not in err
    assert (directory / "state.db").read_bytes() == content  # left for the operator


def test_a_run_that_ended_in_error_mid_publish_is_reconciled_like_one_that_died(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failing commit is rolled back, but pages written before it stay on disk with
    # no row to say so: deleted upstream, they would have lingered for good.
    config = synced_then_disk_filling(tmp_path, upstream, world, monkeypatch)
    assert sync(config) == 1
    web = tmp_path / "m" / "web" / "simple"
    written = [f"new-{i}" for i in range(30) if (web / f"new-{i}").exists()]
    assert written, "no page was written before the error"
    for name in written[:2]:  # (more would trip the mass-removal cap)
        world.remove_project(name)
    assert sync(config) == 0
    assert not [name for name in written[:2] if (web / name).exists()]
    assert outcomes(tmp_path / "m") == ["ok", "error", "ok"]


def test_a_run_that_failed_before_writing_anything_costs_the_next_one_no_recovery(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, upstream.url)
    assert sync(config) == 0
    upstream.status["/simple/"] = (404, {}, 1)  # the root is gone, once
    assert sync(config) == 1
    walks: list[object] = []
    real = sync_module.recover.recover
    monkeypatch.setattr(sync_module.recover, "recover",
                        lambda *a, **k: walks.append(a) or real(*a, **k))
    world.add_project("later", ["1.0"])
    assert sync(config) == 0
    assert outcomes(tmp_path / "m") == ["ok", "error", "ok"]
    assert walks == []  # one walk of a 10-million-file tree, for nothing, otherwise
