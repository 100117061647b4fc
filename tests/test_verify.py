"""`mirror verify` against mirrors synced from the test upstream on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from simplemirror.check import verify
from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.sync.run import locked
from tests.support.consistency import as_if_killed_before_commit, assert_mirror_invariants
from tests.support.process import process_state_kept
from tests.support.schemas import as_schema_2
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

# A name that needs percent-encoding in a link: verify must decode it to find the file.
ODD_NAME = "tiny-0.2 beta+local.tar.gz"


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    w.add_project("tiny", ["0.1"])
    w.add_file("tiny", ODD_NAME, b"odd sdist bytes")
    return w


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Mirror:
    directory: Path
    config: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def web(self) -> Path:
        return self.directory / "web"

    def run(self, *args: str) -> Result:
        """`mirror ARGS` in this process; verify is given only the directory unless told.

        Its log handler and logger settings go with it: they would hide later log
        records from caplog (the fixture runs a sync), with or without a pytest
        that copes with loggers made non-propagating before a test.
        """
        self.capsys.readouterr()
        with process_state_kept():
            code = main(list(args))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def verify(self, *args: str) -> Result:
        return self.run("verify", "--directory", str(self.directory), *args)

    def repair(self, *args: str) -> Result:
        # --repair goes to the network: it takes the config sync uses.
        return self.run("verify", "-c", str(self.config), "--repair", *args)

    def path_of(self, filename: str) -> Path:
        return self.web / self.row(filename)["path"]

    def row(self, filename: str) -> dict[str, Any]:
        with sqlite3.connect(self.directory / "state.db") as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(
                "SELECT * FROM files WHERE filename = ? AND removed_gen IS NULL", [filename]
            ).fetchone()
        assert row is not None, filename
        return dict(row)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.directory / "state.db") as conn:
            return conn.execute(statement, params).fetchall()


@pytest.fixture
def mirror(upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Mirror:
    directory = tmp_path / "mirror"
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(
        f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{directory}"\nworkers = 3\n'
        "retries = 1\nretry-wait = 0.0\nstale-retries = 0\nstale-wait = 0.0\n"
    )
    m = Mirror(directory, cfg, capsys)
    synced = m.run("sync", "-c", str(cfg))
    assert synced.code == 0, synced.out + synced.err
    upstream.reset_requests()
    return m


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_synced_mirror_verifies_clean(mirror: Mirror, upstream: Upstream):
    result = mirror.verify()

    assert result.code == 0, result.out
    assert "7 file(s)" in result.out and "3 metadata file(s)" in result.out
    # A small mirror's size in kB, not "0.0 MB".
    held = sum(size for (size,) in mirror.sql("SELECT size FROM files"))
    assert held < 100_000 and f"7 file(s) ({held / 1000:.1f} kB)" in result.out
    # The root and two projects, each in both formats.
    assert "6 page(s)" in result.out
    assert "0 missing, 0 corrupt, 0 broken page link(s), 0 orphan(s)" in result.out
    assert "the mirror is sound" in result.out
    assert upstream.requests == []  # verify alone never goes to the network
    # The orphan walk's path lookups rely on an index on files(path).
    assert mirror.sql("SELECT name FROM sqlite_master WHERE name = 'files_path'")


def test_flipped_byte_is_found_and_repaired(
    mirror: Mirror, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
):
    # Small batches and a short window: rows stream through the pool several times over.
    monkeypatch.setattr(verify, "BATCH", 2)
    monkeypatch.setattr(verify, "WINDOW_PER_WORKER", 1)
    bad = "foo_bar_baz-2.0-py3-none-any.whl"
    flip_byte(mirror.path_of(bad))

    found = mirror.verify()

    assert found.code == 1
    assert f"corrupt foo-bar-baz/{bad}" in found.out and "sha256 is" in found.out
    assert "1 corrupt" in found.out and "7 file(s)" in found.out
    # The pages linking it are fine; the file is what needs repair, reported once.
    assert "0 broken page link(s)" in found.out
    assert "--repair" in found.out

    repaired = mirror.repair()

    assert repaired.code == 0, repaired.out + repaired.err
    assert f"repaired foo-bar-baz/{bad}" in repaired.out
    assert [p for p in upstream.paths("GET")] == [upstream.world.project("Foo__Bar.baz")
                                                   .file(bad).path]
    assert mirror.sql("SELECT outcome, files_fetched FROM runs ORDER BY generation DESC LIMIT 1") \
        == [("repair", 1)]
    assert mirror.verify().code == 0
    assert_consistent(mirror.web)
    assert_mirror_invariants(mirror.directory)


def test_hashing_keeps_a_bounded_window_of_files_in_flight(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
):
    in_flight, most = [0], [0]

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            return super().submit(fn, *args)

    real_checked = verify.Verifier._checked

    def checked(self: verify.Verifier, done: Any) -> None:
        in_flight[0] -= 1
        real_checked(self, done)

    monkeypatch.setattr(verify, "ThreadPoolExecutor", CountingPool)
    monkeypatch.setattr(verify.Verifier, "_checked", checked)
    monkeypatch.setattr(verify, "BATCH", 2)
    monkeypatch.setattr(verify, "WINDOW_PER_WORKER", 1)

    assert mirror.verify("--workers", "2").code == 0
    assert in_flight == [0] and most[0] == 2  # workers * WINDOW_PER_WORKER, not 7


def test_deleted_file_is_missing_and_repaired(mirror: Mirror):
    gone = "tiny-0.1-py3-none-any.whl"
    mirror.path_of(gone).unlink()

    found = mirror.verify()

    assert found.code == 1
    assert f"missing tiny/{gone}" in found.out and "not on disk" in found.out
    # Its .metadata, still there, is the sibling of a held file: not an orphan.
    assert "0 orphan(s)" in found.out
    sdist = mirror.path_of("tiny-0.1.tar.gz")
    sdist.write_bytes(sdist.read_bytes()[:-1])
    found = mirror.verify()
    assert f"{sdist.stat().st_size} bytes on disk, {sdist.stat().st_size + 1} expected" in (
        found.out
    )

    repaired = mirror.repair()

    assert repaired.code == 0, repaired.out
    assert mirror.path_of(gone).is_file()
    assert mirror.verify().code == 0
    assert "tiny-0.1-py3-none-any.whl" in assert_consistent(mirror.web)["tiny"]


def test_missing_metadata_is_restored_alone(mirror: Mirror, upstream: Upstream):
    wheel = "tiny-0.1-py3-none-any.whl"
    meta = Path(f"{mirror.path_of(wheel)}.metadata")
    meta.unlink()

    found = mirror.verify()

    assert found.code == 1 and f"missing tiny/{wheel}.metadata" in found.out

    assert mirror.repair().code == 0
    # Read from the wheel, whose METADATA it is: nothing is asked of upstream (when it is
    # not, the .metadata is downloaded: test_wheel_metadata.py).
    assert upstream.paths("GET") == []
    assert meta.read_bytes() == upstream.world.project("tiny").file(wheel).metadata
    assert_mirror_invariants(mirror.directory)


def test_stray_file_is_an_orphan_and_deleted_on_request(mirror: Mirror):
    stray = mirror.web / "packages/zz/zz" / ("f" * 60) / "stray-1.0.tar.gz"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by someone")
    rel = stray.relative_to(mirror.web).as_posix()

    found = mirror.verify()

    # Orphans waste space, but no page links them: the mirror is still sound.
    assert found.code == 0
    assert f"orphan {rel}" in found.out and "1 orphan(s)" in found.out
    assert "--delete-orphans" in found.out
    assert found.out.count("orphan packages/") == 1  # the .metadata siblings are not orphans

    deleted = mirror.verify("--delete-orphans")

    assert deleted.code == 0
    assert "orphans: 1 deleted" in deleted.out
    assert not stray.exists()
    assert not (mirror.web / "packages/zz").exists()  # its directories went with it
    assert "0 orphan(s)" in mirror.verify().out
    assert_mirror_invariants(mirror.directory)


def test_a_state_db_of_the_schema_before_staging_is_verified_as_it_is(mirror: Mirror):
    # An operator upgrades and runs verify before the next sync: the state.db is as
    # the older simplemirror left it, and a plain verify only reads.
    as_schema_2(mirror.directory / "state.db")
    stray = mirror.web / "packages/zz/zz" / ("f" * 60) / "stray-1.0.tar.gz"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by someone")

    result = mirror.verify()

    assert result.code == 0, result.out + result.err
    assert "7 file(s)" in result.out and "1 orphan(s)" in result.out
    assert mirror.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]


def test_orphans_exclude_files_state_db_or_a_page_still_holds(mirror: Mirror):
    # Bytes off every page that a sync has not reaped yet: state.db still holds them.
    waiting = "packages/ee/ee/" + "e" * 60 + "/old-1.0.tar.gz"
    (mirror.web / waiting).parent.mkdir(parents=True)
    (mirror.web / waiting).write_bytes(b"old bytes")
    mirror.sql(
        "INSERT INTO files (project, filename, path, size, hashes, url, appeared_gen,"
        " updated_gen, removed_gen) VALUES ('tiny', 'old-1.0.tar.gz', ?, 9, '{}',"
        " 'http://x/old-1.0.tar.gz', 1, 1, 1)",
        (waiting,),
    )
    # A file state.db says is gone from the disk, but a page still links it.
    linked = "tiny-0.1.tar.gz"
    linked_path = mirror.path_of(linked)
    mirror.sql("UPDATE files SET removed_gen = 1, deleted_gen = 1 WHERE filename = ?", (linked,))

    found = mirror.verify("--delete-orphans")

    assert "0 orphan(s)" in found.out, found.out
    assert (mirror.web / waiting).is_file() and linked_path.is_file()

    # Once state.db records the bytes as deleted, what is left is an orphan.
    mirror.sql("UPDATE files SET deleted_gen = 1 WHERE path = ?", (waiting,))
    found = mirror.verify("--delete-orphans")

    assert f"orphan {waiting}" in found.out and "orphans: 1 deleted" in found.out
    assert not (mirror.web / waiting).exists() and linked_path.is_file()


def test_repaired_pages_are_recorded_in_one_transaction_flushed_before_it_commits(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
):
    # As in a sync: no row of a page may reach state.db before its bytes are durable.
    from simplemirror.store import tree as store
    from simplemirror.store.state import State

    events: list[str] = []
    real_record, real_flush = State.record_page, store.flush

    def record_page(self: State, *args: Any) -> None:
        events.append("record" if self.db.conn.in_transaction else "autocommit")
        real_record(self, *args)

    def flush(web: Path | str) -> None:
        events.append("flush")
        real_flush(web)

    monkeypatch.setattr(State, "record_page", record_page)
    monkeypatch.setattr(store, "flush", flush)
    html = mirror.web / "simple/tiny/index.html"
    html.write_text(html.read_text().replace("tiny-0.1.tar.gz", "tiny-0.2.tar.gz"))

    assert mirror.repair().code == 0
    assert "record" in events and "autocommit" not in events, events
    assert events.index("flush") > max(i for i, e in enumerate(events) if e == "record")


def test_broken_page_links_are_reported_and_pages_rewritten(mirror: Mirror, upstream: Upstream):
    html = mirror.web / "simple/tiny/index.html"
    json_page = mirror.web / "simple/tiny/index.v1_json"
    good_html, good_json = html.read_bytes(), json_page.read_bytes()
    sdist_sha = json.loads(mirror.row("tiny-0.1.tar.gz")["hashes"])["sha256"]
    html.write_text(html.read_text().replace(f"#sha256={sdist_sha}", "#sha256=" + "0" * 64))
    doc = json.loads(good_json)
    entry = next(f for f in doc["files"] if f["filename"] == "tiny-0.1.tar.gz")
    entry["url"] = "../../packages/00/00/" + "0" * 60 + "/tiny-0.1.tar.gz"
    json_page.write_text(json.dumps(doc) + "\n")

    found = mirror.verify()

    assert found.code == 1
    assert "broken simple/tiny/index.html" in found.out and "0" * 64 in found.out
    assert "broken simple/tiny/index.v1_json" in found.out and "not on disk" in found.out
    assert "2 broken page link(s)" in found.out

    repaired = mirror.repair()

    assert repaired.code == 0, repaired.out
    assert "repaired simple/tiny/index.html" in repaired.out
    assert "2 page(s) rewritten" in repaired.out
    assert (html.read_bytes(), json_page.read_bytes()) == (good_html, good_json)
    assert upstream.requests == []  # pages come from state.db, not from upstream
    assert mirror.sql("SELECT written_gen FROM pages WHERE path LIKE 'simple/tiny/%'") == [
        (2,), (2,)
    ]
    assert mirror.verify().code == 0


def test_truncated_page_and_missing_root_link(mirror: Mirror):
    html = mirror.web / "simple/foo-bar-baz/index.html"
    html.write_bytes(html.read_bytes()[:200])
    shutil.rmtree(mirror.web / "simple/tiny")
    root = mirror.web / "simple/index.v1_json"
    good_root = root.read_bytes()
    root.write_bytes(good_root[:-10])

    found = mirror.verify()

    assert found.code == 1
    assert "broken simple/foo-bar-baz/index.html: truncated" in found.out
    assert "broken simple/index.html: link 'tiny/'" in found.out
    assert "broken simple/tiny/index.v1_json: missing" in found.out
    assert "broken simple/index.v1_json: not valid JSON" in found.out

    assert mirror.repair().code == 0
    assert root.read_bytes() == good_root
    assert mirror.verify().code == 0
    assert_consistent(mirror.web)


def test_repair_reports_a_file_upstream_no_longer_serves(mirror: Mirror, world: World):
    bad = "foo_bar_baz-1.0.tar.gz"
    flip_byte(mirror.path_of(bad))
    world.remove_file("Foo__Bar.baz", bad)

    result = mirror.repair()

    assert result.code == 1
    assert f"not repaired foo-bar-baz/{bad}" in result.out and "HTTP 404" in result.out
    assert "mirror sync" in result.out  # what to do next
    assert "the mirror is not sound" in result.out
    # The next sync looks at the project again, even if upstream's root had not changed.
    assert mirror.sql("SELECT status FROM projects WHERE name = 'foo-bar-baz'") == [("failed",)]
    assert mirror.sql("SELECT kind FROM failures WHERE filename = ?", (bad,)) == [("failed",)]

    assert mirror.run("sync", "-c", str(mirror.config)).code == 0
    assert mirror.verify().code == 0
    assert bad not in assert_consistent(mirror.web)["foo-bar-baz"]


def test_repair_refuses_a_host_the_config_does_not_allow(mirror: Mirror, upstream: Upstream):
    # The files were recorded on 127.0.0.1; the upstream is now "localhost", and the
    # file hosts are set without 127.0.0.1 (unset, loopback would pass for a loopback
    # upstream).
    flip_byte(mirror.path_of("tiny-0.1.tar.gz"))
    other = mirror.config.with_name("other.toml")
    other.write_text(
        mirror.config.read_text().replace("127.0.0.1", "localhost")
    )

    result = mirror.run(
        "verify", "-c", str(other), "--repair", "--file-host", "files.example"
    )

    assert result.code == 1
    assert "'127.0.0.1'" in result.out and "file-hosts" in result.out
    assert upstream.requests == []


def test_repair_needs_the_upstream_configured(mirror: Mirror, upstream: Upstream):
    result = mirror.verify("--repair")
    assert result.code == 2
    assert "--upstream" in result.err and upstream.url in result.err


def test_no_state_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["verify", "--directory", str(tmp_path)]) == 1
    assert "no state.db" in capsys.readouterr().err
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    "content", [b"\x8f" * 8192, b"SQLite format 3\x00" + b"\x00" * 84, b""],
    ids=["garbage", "torn-header", "empty"],
)
def test_an_unreadable_state_db_is_named_not_taken_for_a_missing_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
):
    (tmp_path / "state.db").write_bytes(content)
    assert main(["verify", "--directory", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'state.db'} cannot be read" in err and "restore it" in err
    assert "upstream" not in err and "Traceback" not in err


def test_verify_waits_for_no_sync(mirror: Mirror):
    with locked(mirror.directory):
        result = mirror.verify()
        repair = mirror.repair()
    # The message names what the user ran, and who holds the lock.
    pid = os.getpid()
    assert result.code == 1
    assert f"mirror verify cannot run while a sync (pid {pid}) is running on" in result.err
    assert repair.code == 1
    assert f"mirror verify --repair cannot run while a sync (pid {pid})" in repair.err
    assert "wait for it to finish" in repair.err


def test_progress_on_a_terminal_and_in_logs(
    mirror: Mirror, caplog: pytest.LogCaptureFixture
):
    cfg = config.load(mirror.config)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with verify.RichVerifyProgress(console) as progress:
        assert verify.verify(cfg, progress=progress).sound
    assert "7/7 files" in out.getvalue()

    with caplog.at_level(logging.INFO, logger="simplemirror"):
        verify.verify(cfg, progress=verify.VerifyProgress(interval=0))
    assert "verify progress: 7/7 files" in caplog.text


def test_pages_a_dead_sync_left_unrecorded_are_orphans_and_deleted_on_request(
    mirror: Mirror, upstream: Upstream, world: World
):
    """A sync killed after writing a new project's pages, before recording them: verify
    used to call the mirror sound, and --delete-orphans removed nothing (the pages
    linked the files)."""
    world.add_project("ghost", ["1.0"])
    as_if_killed_before_commit(
        mirror.directory, lambda: mirror.run("sync", "-c", str(mirror.config))
    )
    ghost_files = sorted(
        p.relative_to(mirror.web).as_posix()
        for p in (mirror.web / "packages").rglob("ghost*") if p.is_file()
    )
    assert ghost_files and (mirror.web / "simple/ghost/index.html").is_file()

    found = mirror.verify()

    assert found.code == 1, found.out
    assert "orphan page simple/ghost/" in found.out
    for rel in ghost_files:
        assert f"orphan {rel}" in found.out
    assert "--delete-orphans" in found.out

    deleted = mirror.verify("--delete-orphans")

    assert deleted.code == 0, deleted.out
    assert "and the pages of 1 project(s)" in deleted.out
    assert not (mirror.web / "simple/ghost").exists()
    assert not any((mirror.web / "packages").rglob("ghost*"))
    assert mirror.verify().code == 0
    assert_mirror_invariants(mirror.directory)
