"""End-to-end runs of the sync against the test upstream on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync, SyncError, locked
from tests.support.tree import assert_consistent, html_links, snapshot
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    w.add_project("tiny", ["0.1"], requires_python=">=3.8")
    w.yank("tiny", "tiny-0.1.tar.gz", 'broken <build> & "quotes"')
    return w


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url,
        "directory": str(directory),
        "workers": 4,
        "retries": 1,
        "retry_wait": 0.0,
        "stale_retries": 1,
        "stale_wait": 0.0,
    }
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def db_rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "state.db") as conn:
        return conn.execute(sql).fetchall()


def test_initial_sync_publishes_a_verified_tree(upstream: Upstream, world: World, tmp_path: Path):
    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 0 and summary.outcome == "ok"
    assert summary.changed == 2
    assert summary.files_fetched == 6
    listed = assert_consistent(tmp_path / "web")
    assert {k: sorted(v) for k, v in listed.items()} == {
        p.normalized: sorted(f.filename for f in p.files) for p in world.projects.values()
    }
    root = json.loads((tmp_path / "web/simple/index.v1_json").read_text())
    assert root["meta"]["_last-serial"] == world.serial
    assert {p["name"]: p["_last-serial"] for p in root["projects"]} == {
        p.name: p.serial for p in world.projects.values()
    }
    page = json.loads((tmp_path / "web/simple/tiny/index.v1_json").read_text())
    by_name = {f["filename"]: f for f in page["files"]}
    sdist = by_name["tiny-0.1.tar.gz"]
    assert sdist["yanked"] == 'broken <build> & "quotes"'
    assert sdist["requires-python"] == ">=3.8"
    assert sdist["upload-time"] == world.project("tiny").file("tiny-0.1.tar.gz").upload_time
    assert by_name["tiny-0.1-py3-none-any.whl"]["core-metadata"] == {
        "sha256": world.project("tiny").file("tiny-0.1-py3-none-any.whl").metadata_sha256
    }
    assert page["versions"] == ["0.1"]
    anchors = html_links((tmp_path / "web/simple/tiny/index.html").read_text())
    yanked = next(a for a in anchors if "tiny-0.1.tar.gz" in str(a["href"]))
    assert yanked["data-yanked"] == 'broken <build> & "quotes"'
    assert yanked["data-requires-python"] == ">=3.8"

    assert db_rows(tmp_path, "SELECT name, status, serial FROM projects ORDER BY name") == [
        ("foo-bar-baz", "ok", world.project("Foo__Bar.baz").serial),
        ("tiny", "ok", world.project("tiny").serial),
    ]
    assert db_rows(tmp_path, "SELECT generation, outcome, files_fetched FROM runs") == [
        (1, "ok", 6)
    ]
    files = db_rows(tmp_path, "SELECT path, size, hashes, appeared_gen FROM files")
    assert len(files) == 6
    for path, size, hashes, gen in files:
        assert (tmp_path / "web" / path).stat().st_size == size
        sha256 = json.loads(hashes)["sha256"]
        assert path.startswith(f"packages/{sha256[:2]}/{sha256[2:4]}/{sha256[4:]}/")
        assert gen == 1
    assert not list((tmp_path / "tmp").iterdir()), "temporary files left behind"


def test_noop_sync_makes_one_conditional_request_and_writes_nothing(
    upstream: Upstream, tmp_path: Path
):
    assert sync(upstream, tmp_path).exit_code == 0
    before = snapshot(tmp_path / "web")
    upstream.reset_requests()

    summary = sync(upstream, tmp_path)

    assert summary.outcome == "unchanged" and summary.exit_code == 0
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", "/simple/")]
    assert upstream.requests[0].header("If-None-Match")
    assert snapshot(tmp_path / "web") == before


def test_incremental_sync_fetches_only_what_changed(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    tiny_pages = snapshot(tmp_path / "web/simple/tiny")
    world.add_release("Foo__Bar.baz", "3.0")
    world.add_project("newcomer", ["0.5"])
    upstream.reset_requests()

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 0 and summary.changed == 2
    new_files = {
        f.path
        for name in ("foo-bar-baz", "newcomer")
        for f in world.projects[name].files
        if name == "newcomer" or "3.0" in f.filename
    }
    fetched = {p for p in upstream.paths("GET") if p.startswith("/packages/")}
    assert {p for p in fetched if not p.endswith(".metadata")} == new_files
    pages = [p for p in upstream.paths("GET") if p.startswith("/simple/")]
    assert sorted(pages) == ["/simple/", "/simple/foo-bar-baz/", "/simple/newcomer/"]
    assert snapshot(tmp_path / "web/simple/tiny") == tiny_pages
    listed = assert_consistent(tmp_path / "web")
    assert "foo_bar_baz-3.0-py3-none-any.whl" in listed["foo-bar-baz"]
    assert listed["newcomer"]
    assert db_rows(tmp_path, "SELECT DISTINCT appeared_gen FROM files WHERE path LIKE '%3.0%'") == [
        (2,)
    ]


def test_stale_page_is_deferred_then_picked_up(upstream: Upstream, world: World, tmp_path: Path):
    upstream.stale["tiny"] = 100

    first = sync(upstream, tmp_path)

    assert first.exit_code == 1
    assert [name for name, _ in first.deferred] == ["tiny"]
    assert "older than the root" in first.deferred[0][1]
    assert list(assert_consistent(tmp_path / "web")) == ["foo-bar-baz"]
    assert db_rows(tmp_path, "SELECT status FROM projects WHERE name = 'tiny'") == [("deferred",)]
    assert db_rows(tmp_path, "SELECT kind FROM failures WHERE project = 'tiny'") == [("deferred",)]

    upstream.stale.clear()
    upstream.reset_requests()
    second = sync(upstream, tmp_path)

    # The root did not change (304), yet the deferred project is fetched.
    assert second.exit_code == 0 and second.changed == 1
    assert upstream.paths("GET")[:2] == ["/simple/", "/simple/tiny/"]
    assert sorted(assert_consistent(tmp_path / "web")) == ["foo-bar-baz", "tiny"]


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_body_is_never_published_and_retried_next_run(
    upstream: Upstream, tmp_path: Path, fault: str
):
    bad = "foo_bar_baz-2.0.tar.gz"
    getattr(upstream, fault).add(bad)

    first = sync(upstream, tmp_path)

    assert first.exit_code == 1 and [n for n, _ in first.failed] == ["foo-bar-baz"]
    assert bad in first.failed[0][1]
    listed = assert_consistent(tmp_path / "web")
    assert bad not in listed["foo-bar-baz"] and len(listed["foo-bar-baz"]) == 3
    assert not list((tmp_path / "web").rglob(bad))
    assert not list((tmp_path / "tmp").iterdir())

    getattr(upstream, fault).clear()
    second = sync(upstream, tmp_path)

    assert second.exit_code == 0
    assert bad in assert_consistent(tmp_path / "web")["foo-bar-baz"]


@pytest.mark.parametrize(
    "knobs",
    [
        {"url_style": "host-relative"},
        {"url_style": "relative"},
        {"serial_as_string": True},
        {"send_serial_header": False},
    ],
)
def test_upstream_variants(upstream: Upstream, world: World, tmp_path: Path, knobs: dict):
    for key, value in knobs.items():
        setattr(upstream, key, value)
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 0
    assert sum(len(v) for v in assert_consistent(tmp_path / "web").values()) == 6
    root = json.loads((tmp_path / "web/simple/index.v1_json").read_text())
    assert root["meta"]["_last-serial"] == world.serial


def test_root_failure_stops_cleanly_and_changes_nothing(upstream: Upstream, tmp_path: Path):
    sync(upstream, tmp_path)
    before = snapshot(tmp_path / "web")
    upstream.fail["/simple/"] = 100

    with pytest.raises(SyncError, match="root index"):
        sync(upstream, tmp_path)

    assert snapshot(tmp_path / "web") == before
    assert db_rows(tmp_path, "SELECT outcome FROM runs ORDER BY generation") == [
        ("ok",),
        ("error",),
    ]


def test_transient_errors_are_retried(upstream: Upstream, world: World, tmp_path: Path):
    upstream.fail["/simple/tiny/"] = 1
    upstream.fail[world.project("tiny").files[1].path] = 1
    assert sync(upstream, tmp_path, retries=2).exit_code == 0
    assert len(assert_consistent(tmp_path / "web")["tiny"]) == 2


def test_vanished_project_is_recorded_as_removed(upstream: Upstream, world: World, tmp_path: Path):
    sync(upstream, tmp_path)
    world.remove_project("tiny")

    summary = sync(upstream, tmp_path)

    assert summary.removed == ["tiny"] and summary.exit_code == 0
    assert db_rows(tmp_path, "SELECT status, removed_gen FROM projects WHERE name='tiny'") == [
        ("removed", 2)
    ]
    assert list(assert_consistent(tmp_path / "web")) == ["foo-bar-baz"]


def test_yank_and_deleted_file_update_the_page(upstream: Upstream, world: World, tmp_path: Path):
    sync(upstream, tmp_path)
    world.yank("Foo__Bar.baz", "foo_bar_baz-1.0.tar.gz", "use 2.0")
    world.remove_file("Foo__Bar.baz", "foo_bar_baz-2.0.tar.gz")

    assert sync(upstream, tmp_path).exit_code == 0

    page = json.loads((tmp_path / "web/simple/foo-bar-baz/index.v1_json").read_text())
    files = {f["filename"]: f for f in page["files"]}
    assert files["foo_bar_baz-1.0.tar.gz"]["yanked"] == "use 2.0"
    assert "foo_bar_baz-2.0.tar.gz" not in files
    assert db_rows(
        tmp_path, "SELECT removed_gen FROM files WHERE filename = 'foo_bar_baz-2.0.tar.gz'"
    ) == [(2,)]
    assert_consistent(tmp_path / "web")


def test_project_filter_limits_the_mirror(upstream: Upstream, tmp_path: Path):
    summary = sync(upstream, tmp_path, projects=["TINY"])
    assert summary.exit_code == 0
    assert list(assert_consistent(tmp_path / "web")) == ["tiny"]


def test_unknown_keys_are_kept_verbatim(upstream: Upstream, world: World, tmp_path: Path):
    world.add_file(
        "tiny", "tiny-0.2.tar.gz", b"sdist bytes", extra={"x-vendor": {"a": [1, "<b>"]}}
    )
    sync(upstream, tmp_path)
    page = json.loads((tmp_path / "web/simple/tiny/index.v1_json").read_text())
    entry = next(f for f in page["files"] if f["filename"] == "tiny-0.2.tar.gz")
    assert entry["x-vendor"] == {"a": [1, "<b>"]}


def test_wrong_declared_hash_is_reported(upstream: Upstream, world: World, tmp_path: Path):
    world.add_file("tiny", "tiny-0.3.tar.gz", b"real bytes", hashes={"sha256": "0" * 64})
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 1
    assert "tiny-0.3.tar.gz" in summary.failed[0][1] and "sha256" in summary.failed[0][1]
    assert "tiny-0.3.tar.gz" not in assert_consistent(tmp_path / "web")["tiny"]


def test_second_run_on_a_locked_directory_refuses(upstream: Upstream, tmp_path: Path):
    with locked(tmp_path), pytest.raises(SyncError, match="another mirror sync"):
        sync(upstream, tmp_path)


def test_dry_run_writes_nothing(upstream: Upstream, tmp_path: Path):
    target = tmp_path / "mirror"
    summary = Sync(
        config.build({}, {"upstream": upstream.url, "directory": str(target)})
    ).run(dry_run=True)
    assert summary.plan is not None
    assert sorted(t.name for t in summary.plan.fetch) == ["foo-bar-baz", "tiny"]
    assert not target.exists()
    # The pages it would fetch are read, to count their files; no file is downloaded.
    assert sorted(upstream.paths("GET")) == ["/simple/", "/simple/foo-bar-baz/", "/simple/tiny/"]
    assert summary.forecast is not None and summary.forecast.files == 6


def test_widening_the_project_filter_does_not_trust_the_old_etag(
    upstream: Upstream, tmp_path: Path
):
    assert sync(upstream, tmp_path, projects=["tiny"]).exit_code == 0
    upstream.reset_requests()

    summary = sync(upstream, tmp_path)

    assert upstream.requests[0].header("If-None-Match") is None
    assert summary.exit_code == 0 and summary.changed == 1
    assert sorted(assert_consistent(tmp_path / "web")) == ["foo-bar-baz", "tiny"]


def test_disk_full_while_writing_pages_stops_cleanly_then_converges(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno

    from simplemirror.store import tree as store

    sync(upstream, tmp_path)
    old_serial = world.project("tiny").serial
    world.add_release("tiny", "0.2")
    real_write = store.write_file

    def full_disk(web: Path, tmp: Path, rel: str, data: bytes, **kwargs: bool) -> str:
        if Path(rel).parent.name == "tiny":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(web, tmp, rel, data, **kwargs)

    monkeypatch.setattr(store, "write_file", full_disk)
    with pytest.raises(SyncError, match="No space left"):
        sync(upstream, tmp_path)
    # The old pages still stand and still point at verified files.
    assert "tiny-0.2.tar.gz" not in assert_consistent(tmp_path / "web")["tiny"]
    # state.db does not claim the copy the disk could not take: the serial is the old one.
    assert db_rows(tmp_path, "SELECT serial FROM projects WHERE name = 'tiny'") == [(old_serial,)]
    assert db_rows(tmp_path, "SELECT outcome FROM runs ORDER BY generation DESC LIMIT 1") == [
        ("error",)
    ]

    monkeypatch.setattr(store, "write_file", real_write)
    assert sync(upstream, tmp_path).exit_code == 0
    assert "tiny-0.2.tar.gz" in assert_consistent(tmp_path / "web")["tiny"]


def test_progress_bars_on_a_terminal(upstream: Upstream, tmp_path: Path):
    import io

    from rich.console import Console

    from simplemirror.report.terminal import RichReporter

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    cfg = config.build({}, {"upstream": upstream.url, "directory": str(tmp_path)})
    with RichReporter(console) as reporter:
        summary = Sync(cfg, reporter).run()
    assert summary.exit_code == 0
    assert (reporter.projects_done, reporter.files_done) == (2, 6)
    text = out.getvalue()
    assert "projects" in text and "2/2" in text and "6/6 files" in text and "kB/s" in text
    assert "+ files" not in text.rsplit("projects", 1)[1]  # the last frame: every page read

    # Nothing changed upstream: the run never makes a plan, and shows no bars at all.
    out.seek(0)
    out.truncate()
    with RichReporter(console) as reporter:
        assert Sync(cfg, reporter).run().outcome == "unchanged"
    assert "projects" not in out.getvalue() and "files" not in out.getvalue()


def test_leftovers_of_a_dead_run_are_cleared(upstream: Upstream, tmp_path: Path):
    (tmp_path / "tmp").mkdir(parents=True)
    (tmp_path / "tmp" / "dl-4242-17").write_bytes(b"half a wheel")
    (tmp_path / "tmp" / "page-4242-18").write_bytes(b"half a page")
    assert sync(upstream, tmp_path).exit_code == 0
    assert not list((tmp_path / "tmp").iterdir())


def test_only_the_mirrors_own_leftovers_are_cleared_and_symlinks_never_followed(
    upstream: Upstream, tmp_path: Path
):
    """tmp/ may be shared, or a symlink to a scratch directory: what the mirror did not
    name is not its to delete (before, tmp/ was emptied whole, directories too)."""
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_bytes(b"not the mirror's")
    (outside / "sub" / "keep").write_bytes(b"nor this")
    tmp = mirror / "tmp"
    (tmp / "dir" / "nested").mkdir(parents=True)
    (tmp / "dir" / "nested" / "dl-1-1").write_bytes(b"half a wheel")
    (tmp / "dir" / "link-inside").symlink_to(outside)
    (tmp / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (tmp / "dl-9-9").symlink_to(outside / "keep")
    (tmp / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp / "dl-9-10").write_bytes(b"half a wheel")

    assert sync(upstream, mirror).exit_code == 0

    assert sorted(p.name for p in tmp.iterdir()) == ["dangling", "dir", "link-to-dir"]
    assert sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*")) == [
        "keep", "sub", "sub/keep",
    ]


def test_a_tmp_symlinked_to_a_scratch_directory_keeps_its_other_files(
    upstream: Upstream, tmp_path: Path
):
    """A tmp/ that is a symlink (to a directory on the same filesystem) works; before,
    every file in its target was deleted at the start of each run."""
    mirror, scratch = tmp_path / "mirror", tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "build-cache.bin").write_bytes(b"someone else's")
    mirror.mkdir()
    (mirror / "tmp").symlink_to(scratch)

    assert sync(upstream, mirror).exit_code == 0
    assert_consistent(mirror / "web")
    assert sorted(p.name for p in scratch.iterdir()) == ["build-cache.bin"]


@pytest.mark.parametrize("where", ["packages", "simple"])
def test_a_symlink_in_the_tree_never_leads_writes_outside(
    upstream: Upstream, world: World, tmp_path: Path, where: str
):
    """A symlink at web/packages/<xx> or web/simple/<name> made files and pages land
    outside the mirror; now the run stops, says which path, and writes nothing there."""

    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    outside.mkdir()
    assert sync(upstream, mirror).exit_code == 0
    world.add_release("tiny", "0.2")
    web = mirror / "web"
    if where == "simple":
        link = web / "simple" / "tiny"
        shutil.rmtree(link)
    else:
        new = [f for f in world.project("tiny").files if "0.2" in f.filename]
        prefixes = [hashlib.sha256(f.content).hexdigest()[:2] for f in new]
        link = next(web / "packages" / p for p in prefixes if not (web / "packages" / p).exists())
    link.symlink_to(outside, target_is_directory=True)

    with pytest.raises(SyncError, match=f"{link} is a symlink"):
        sync(upstream, mirror)
    assert list(outside.rglob("*")) == []


def test_a_directory_swapped_for_a_symlink_between_runs_of_one_process_is_caught(
    upstream: Upstream, world: World, tmp_path: Path
):
    """Under --every one process runs sync after sync: what one run checked (web/simple
    is a real directory) must be checked again by the next."""
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    assert sync(upstream, mirror).exit_code == 0
    simple = mirror / "web" / "simple"
    shutil.move(simple, outside)  # the tree moved elsewhere, and a link left in its place
    simple.symlink_to(outside, target_is_directory=True)
    before = sorted((p, p.stat().st_mtime_ns) for p in outside.rglob("*"))
    world.add_release("tiny", "0.2")

    with pytest.raises(SyncError, match=f"{simple} is a symlink"):
        sync(upstream, mirror)
    assert sorted((p, p.stat().st_mtime_ns) for p in outside.rglob("*")) == before


def test_root_pages_are_not_rendered_again_when_nothing_changed(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from simplemirror.simple import render

    upstream.send_etags = False  # the root comes whole every time, never a 304
    sync(upstream, tmp_path)
    calls: list[int] = []
    real = render.root_json_parts
    monkeypatch.setattr(
        render, "root_json_parts", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    assert sync(upstream, tmp_path).changed == 0
    assert calls == []

    (tmp_path / "web/simple/index.v1_json").unlink()  # unless a root page is missing
    sync(upstream, tmp_path)
    assert calls == [1]
    assert_consistent(tmp_path / "web")


def test_download_processes_publish_the_same_tree(
    upstream: Upstream, world: World, tmp_path: Path
):
    threads, processes = tmp_path / "threads", tmp_path / "processes"
    assert sync(upstream, threads).exit_code == 0
    summary = sync(upstream, processes, download_processes=2)
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert_consistent(processes / "web")

    def contents(directory: Path) -> dict[str, str]:
        return {path: digest for path, (_, digest) in snapshot(directory / "web").items()
                if path != "last-modified"}

    assert contents(processes) == contents(threads)


def test_a_root_resent_byte_for_byte_is_not_parsed_or_compared_again(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from simplemirror.simple import model

    upstream.send_etags = False  # no 304s: the root comes whole every time
    assert sync(upstream, tmp_path).exit_code == 0
    parsed: list[int] = []
    real = model.RootIndex.from_json_data
    monkeypatch.setattr(
        model.RootIndex, "from_json_data",
        classmethod(lambda cls, *a, **k: parsed.append(1) or real(*a, **k)),
    )
    before = len(upstream.requests)
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 0 and summary.changed == 0
    assert parsed == []
    assert [r.path for r in upstream.requests[before:]] == ["/simple/"]

    world.add_release("tiny", "0.2")  # new bytes: read and compared again
    summary = sync(upstream, tmp_path)
    assert parsed == [1] and summary.changed == 1
    assert_consistent(tmp_path / "web")


def test_unset_download_processes_start_only_once_a_run_has_many_files(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from simplemirror.sync import run as sync_module
    from tests.support.process import StartedPool

    submitted: list[str] = []
    started: list[int] = []

    class Counting(StartedPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(1)
            super().__init__(*args, **kwargs)

        def submit_all(self, fn: Any, calls: list[tuple[Any, ...]]) -> Any:
            submitted.extend(args[1].dist.filename for args in calls)
            return super().submit_all(fn, calls)

    monkeypatch.setattr(sync_module, "ProcessPool", Counting)
    monkeypatch.setattr(sync_module, "auto_download_processes", lambda: 2)
    monkeypatch.setattr(sync_module, "PROCESSES_AFTER_FILES", 4)
    summary = sync(upstream, tmp_path / "auto")  # download_processes unset: automatic
    assert summary.exit_code == 0 and summary.files_fetched == 6
    all_files = [f.filename for p in world.projects.values() for f in p.files]
    assert len(all_files) == 6
    # The processes start once more than 4 files were asked for: the project whose files
    # cross that line goes to them, the one before stayed here. Which page comes back
    # first depends on timing: foo-bar-baz's 4 files (then tiny's 2 cross the line) or
    # tiny's 2 (then foo-bar-baz's 4 do).
    assert started == [1]
    assert sorted(submitted) in (
        sorted(f for f in all_files if f.startswith("tiny")),
        sorted(f for f in all_files if f.startswith("foo_bar_baz")),
    )
    assert_consistent(tmp_path / "auto" / "web")

    submitted.clear()
    started.clear()
    assert sync(upstream, tmp_path / "none", download_processes=0).exit_code == 0
    assert submitted == [] and started == []


def test_work_stays_in_the_main_process_until_the_download_processes_have_started(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Their imports take a while; work sent meanwhile would only wait in the pipe. (As
    much as keeps its connections busy: here, all of it.)"""
    from simplemirror.sync import run as sync_module
    from simplemirror.sync.workers import ProcessPool

    submitted: list[str] = []

    class NeverStarted(ProcessPool):
        def _note_started(self, child: int) -> None:
            pass  # as if their imports took longer than the whole run

        def submit_all(self, fn: Any, calls: list[tuple[Any, ...]]) -> Any:
            submitted.append(fn.__name__)
            return super().submit_all(fn, calls)

    monkeypatch.setattr(sync_module, "ProcessPool", NeverStarted)
    summary = sync(upstream, tmp_path, download_processes=1, workers=16)
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert submitted == []
    assert_consistent(tmp_path / "web")


def test_pages_are_fetched_in_the_download_processes_once_they_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from concurrent.futures import Future

    from simplemirror.sync import run as sync_module
    from simplemirror.sync.workers import ChildLost
    from simplemirror.upstream.client import Client
    from tests.support.process import StartedPool

    w = World()
    for i in range(8):
        w.add_project(f"p{i}", ["1.0"], wheel=False)
    submitted: list[str] = []

    class Counting(StartedPool):
        def submit_all(self, fn: Any, calls: list[tuple[Any, ...]]) -> Any:
            submitted.append(fn.__name__)
            if fn is Client.get_page and calls[0][0].name == "p7":
                lost: Future[Any] = Future()  # as if the process died with it
                lost.set_exception(ChildLost("a download process ended before its task"))
                return [lost]
            return super().submit_all(fn, calls)

    monkeypatch.setattr(sync_module, "ProcessPool", Counting)
    with Upstream(w) as up:
        # One worker: pages are asked for two at a time, so most come after the
        # first file has started the download process.
        summary = sync(up, tmp_path, workers=1, download_processes=1)
        assert "get_page" in submitted and "download_todo" in submitted
        assert summary.failed == [("p7", "a download process ended before its task")]
        assert summary.changed == 7 and summary.exit_code == 1
        assert_consistent(tmp_path / "web")

        summary = sync(up, tmp_path, workers=1, download_processes=1)  # p7 asked again
        assert summary.exit_code == 0 and summary.changed == 1
    assert_consistent(tmp_path / "web")
    assert (tmp_path / "web/simple/p7/index.v1_json").is_file()


@pytest.mark.parametrize(
    ("workers", "processes", "expected"),
    [(10, 2, [5, 5]), (5, 2, [3, 2]), (10, 4, [3, 3, 2, 2]), (1, 4, [1]), (3, 3, [1, 1, 1])],
)
def test_workers_are_the_connection_budget_across_the_download_processes(
    workers: int, processes: int, expected: list[int]
) -> None:
    from simplemirror.sync.run import shares

    assert shares(workers, processes) == expected
    assert sum(expected) == workers  # never more connections than workers, in total


def test_automatic_download_processes_follow_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch
):
    from simplemirror.sync import run as sync_module

    for cores, expected in ((1, 0), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(sync_module.os, "sched_getaffinity", lambda _pid, n=cores: set(
            range(n)))
        assert sync_module.auto_download_processes() == expected


def test_the_same_root_bytes_after_a_run_limited_to_some_projects_are_read_again(
    upstream: Upstream, world: World, tmp_path: Path
):
    upstream.send_etags = False
    assert sync(upstream, tmp_path, projects=["tiny"]).changed == 1
    # Byte for byte the same root, but the last run looked at one project only.
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 0 and summary.changed == 1  # Foo__Bar.baz, now mirrored
    assert_consistent(tmp_path / "web")


def record_process_pools(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(client class, function) of each batch of downloads sent to the download processes."""
    from simplemirror.sync import run as sync_module
    from tests.support.process import StartedPool

    used: list[tuple[str, str]] = []

    class Recording(StartedPool):
        def __init__(self, shares: Any, make_context: Any, config: Any):
            self.make_context = make_context
            super().__init__(shares, make_context, config)

        def submit_all(self, fn: Any, calls: list[tuple[Any, ...]]) -> Any:
            # A partial of the class, when it is given a start (max-requests-per-second).
            context = getattr(self.make_context, "func", self.make_context)
            used.append((context.__name__, fn.__qualname__))
            return super().submit_all(fn, calls)

    monkeypatch.setattr(sync_module, "ProcessPool", Recording)
    return used


ONE_PIPELINE = {("Client", "Client.get_page"), ("Client", "download_todo")}


def test_download_processes_run_the_one_pipeline_where_the_environment_sets_a_proxy(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # With a proxy set, the download processes run the same coroutines as without one
    # (the client applies the environment itself); this upstream is not behind it.
    used = record_process_pools(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    summary = sync(upstream, tmp_path, download_processes=1)
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert ("Client", "download_todo") in used
    assert set(used) <= ONE_PIPELINE
    assert_consistent(tmp_path / "web")


def test_no_proxy_alone_is_no_proxy_and_keeps_the_event_loop(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # NO_PROXY only says which hosts bypass a proxy; with no proxy set it changes nothing.
    used = record_process_pools(monkeypatch)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # and no ~/.netrc
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,.example")
    monkeypatch.setenv("no_proxy", "127.0.0.1,.example")
    summary = sync(upstream, tmp_path / "mirror", download_processes=1)
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert used and set(used) <= ONE_PIPELINE
    assert_consistent(tmp_path / "mirror" / "web")


@pytest.mark.parametrize("processes", [None, 1], ids=["threads", "download-process"])
def test_an_ipv6_literal_upstream_is_mirrored(
    world: World, tmp_path: Path, processes: int | None
):
    with Upstream(world, host="::1") as up:
        assert up.url.startswith("http://[::1]:")
        summary = sync(up, tmp_path, download_processes=processes)
    assert summary.exit_code == 0 and summary.files_fetched == 6
    assert sorted(assert_consistent(tmp_path / "web")) == ["foo-bar-baz", "tiny"]


def test_a_sync_after_one_that_died_removes_what_it_left_unrecorded(
    upstream: Upstream, world: World, tmp_path: Path
):
    """Pages and files a killed run wrote before its rows committed: a project upstream
    then deletes used to keep them for good (no row said they were published)."""
    from tests.support.consistency import as_if_killed_before_commit

    sync(upstream, tmp_path)
    world.add_project("ghost", ["1.0"])
    world.add_release("tiny", "0.3")
    as_if_killed_before_commit(tmp_path, lambda: sync(upstream, tmp_path))
    web = tmp_path / "web"
    assert (web / "simple/ghost/index.html").is_file()
    assert "tiny-0.3.tar.gz" in html_links_of(web, "tiny")  # newer than state.db
    world.remove_project("ghost")

    assert sync(upstream, tmp_path).exit_code == 0

    assert not (web / "simple/ghost").exists()
    assert not any((web / "packages").rglob("ghost*"))
    assert "tiny-0.3.tar.gz" in assert_consistent(web)["tiny"]
    # Nothing left to recover: the next run after a clean one does no such work.
    assert db_rows(tmp_path, "SELECT value FROM meta WHERE key = 'recovered_through'") != []


def html_links_of(web: Path, name: str) -> str:
    return (web / "simple" / name / "index.html").read_text()


def test_files_and_pages_are_flushed_before_the_rows_recording_them_commit(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The fsync policy (store/tree.py): one syncfs of the tree before each commit that records
    what was written, so that after a power cut no row claims bytes the disk lost."""
    from simplemirror.store import tree as store
    from simplemirror.store.state import State
    from simplemirror.sync import run as sync_module

    events: list[str] = []
    real_flush, real_record = store.flush, State.record_project

    def flush(web: Path | str) -> None:
        events.append("flush")
        real_flush(web)

    def record(self: State, *args: Any, **kwargs: Any) -> None:
        events.append("record")
        real_record(self, *args, **kwargs)

    monkeypatch.setattr(store, "flush", flush)
    monkeypatch.setattr(State, "record_project", record)
    monkeypatch.setattr(sync_module, "COMMIT_EVERY", 0.0)  # a commit after every event
    assert sync(upstream, tmp_path).exit_code == 0
    assert events.count("record") == 2, events
    # Every recorded project is followed by a flush before its batch commits.
    compact = "".join("r" if e == "record" else "f" for e in events)
    assert "rr" not in compact and compact.endswith("f"), events


def test_what_a_stop_keeps_is_recorded_in_the_batch_so_flushed_before_it_commits(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The files a stopped run finished are staged (or published) after the loop: their
    rows must join the run's batch, whose commit comes after a flush, not autocommit."""
    from simplemirror.report.progress import Reporter
    from simplemirror.store.state import State

    world.add_project("pair", [])
    world.add_file("pair", "pair-1.0.tar.gz", b"quick" * 100)
    slow = world.add_file("pair", "pair-1.0-py3-none-any.whl", bytes(range(256)) * 200)
    upstream.slow_body[slow.path] = 1
    upstream.slow_chunk, upstream.slow_pause = 512, 0.05
    in_batch: list[bool] = []
    real_stage = State.stage_files

    def stage_files(self: State, *args: Any, **kwargs: Any) -> None:
        in_batch.append(self.db.conn.in_transaction)
        real_stage(self, *args, **kwargs)

    class StopAtFirstFile(Reporter):
        def file_done(self, nbytes: int) -> None:
            super().file_done(nbytes)
            run.request_stop(15)

    monkeypatch.setattr(State, "stage_files", stage_files)
    cfg = config.build({}, {"upstream": upstream.url, "directory": str(tmp_path),
                            "workers": 4, "download_processes": 0})
    run = Sync(cfg, StopAtFirstFile())
    assert run.run().outcome == "interrupted"
    assert in_batch == [True]
