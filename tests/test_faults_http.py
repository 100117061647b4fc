"""HTTP faults between the mirror and its upstream: what is retried, what is reported.

Every test runs a real sync against the test upstream on 127.0.0.1 with one fault switched
on, then checks the outcome (retried and recovered, or failed and named), that the published
tree is consistent, that nothing is left in tmp/ and no unverified byte sits under
web/packages, and that a following plain run converges to exit 0 with the complete tree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support.tree import assert_consistent, snapshot
from tests.support.upstream import Upstream, World

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
ROOT = "/simple/"
PAGE = "/simple/tiny/"
WHEEL = "tiny-0.1-py3-none-any.whl"
SDIST = "tiny-0.1.tar.gz"


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    w.add_project("tiny", ["0.1"])
    # tiny's .metadata is not the METADATA inside its wheel (as an index that edits
    # metadata may serve it), so the mirror downloads it: the faults below hit that request.
    w.project("tiny").file(WHEEL).metadata += b"Description: served apart\n"
    return w


@pytest.fixture
def up(world: World) -> Iterator[Upstream]:
    with Upstream(world) as upstream:
        yield upstream
    assert upstream.errors == []


# -- helpers ---------------------------------------------------------------------------------


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url,
        "directory": str(directory),
        "workers": 4,
        "retries": 2,
        "retry_wait": 0.0,
        "retry_max_wait": 0.05,
        "stale_retries": 0,
        "stale_wait": 0.0,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def db_rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "state.db") as conn:
        return conn.execute(sql).fetchall()


def gets(up: Upstream, path: str) -> int:
    """How many GET requests upstream saw for ``path`` (query ignored)."""
    return sum(1 for p in up.paths("GET") if urlsplit(p).path == path)


def file_path(world: World, filename: str, *, metadata: bool = False) -> str:
    """The URL path upstream serves ``filename`` (or its PEP 658 metadata) under."""
    for project in world.projects.values():
        for f in project.files:
            if f.filename == filename:
                return f.path + (".metadata" if metadata else "")
    raise KeyError(filename)


def target_path(world: World, target: str) -> str:
    return {
        "root": ROOT,
        "page": PAGE,
        "file": file_path(world, WHEEL),
        "metadata": file_path(world, WHEEL, metadata=True),
    }[target]


def complete_tree(world: World) -> dict[str, list[str]]:
    return {p.normalized: sorted(f.filename for f in p.files) for p in world.projects.values()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_no_unverified(web: Path, world: World) -> None:
    """Every file under web/packages is at its content address (metadata: next to a verified
    file, with the bytes upstream declared for it)."""
    declared_metadata = {
        f.sha256: f.metadata_sha256 for p in world.projects.values() for f in p.files
    }
    packages = web / "packages"
    for path in packages.rglob("*") if packages.exists() else ():
        if not path.is_file():
            continue
        parts = path.relative_to(packages).parts
        assert len(parts) == 4, f"stray file {path}"
        address = "".join(parts[:3])
        if path.name.endswith(".metadata"):
            dist = path.with_name(path.name.removesuffix(".metadata"))
            assert dist.is_file(), f"metadata without its file: {path}"
            assert _sha256(path) == declared_metadata.get(address), f"unverified {path}"
        else:
            assert _sha256(path) == address, f"unverified file published: {path}"


def assert_clean(directory: Path, world: World) -> dict[str, list[str]]:
    """Consistent tree, empty tmp/, no unverified file; returns the sorted listing."""
    listed = assert_consistent(directory / "web")
    assert list((directory / "tmp").iterdir()) == [], "temporary files left behind"
    assert_no_unverified(directory / "web", world)
    return {name: sorted(files) for name, files in listed.items()}


def clear_faults(up: Upstream) -> None:
    with up.knob_lock:
        for knob in (up.fail, up.status, up.reset, up.reset_mid_body, up.delay, up.slow_body,
                     up.stale):
            knob.clear()
        for names in (up.oversize, up.corrupt, up.truncate):
            names.clear()
        up.page_body.clear()
        up.root_body = None
        up.root_content_type = None
        up.api_version = "1.1"
        up.json_enabled = True


def assert_converges(up: Upstream, directory: Path, world: World, **overrides: Any) -> None:
    """With every fault cleared, a plain run ends at exit 0 with the complete tree."""
    clear_faults(up)
    summary = sync(up, directory, **overrides)
    assert summary.exit_code == 0, (summary.failed, summary.deferred)
    assert assert_clean(directory, world) == complete_tree(world)
    assert db_rows(directory, "SELECT DISTINCT status FROM projects") == [("ok",)]


def failed_names(summary: RunSummary) -> list[str]:
    return sorted(name for name, _ in summary.failed)


def why(summary: RunSummary, name: str) -> str:
    return dict(summary.failed)[name]


# -- transient errors, retried and recovered -------------------------------------------------


@pytest.mark.parametrize("target", ["page", "file", "metadata"])
@pytest.mark.parametrize("code", [500, 502, 503])
def test_server_error_is_retried_then_succeeds(
    up: Upstream, world: World, tmp_path: Path, code: int, target: str
) -> None:
    path = target_path(world, target)
    up.status[path] = (code, {}, 1)

    summary = sync(up, tmp_path)

    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2
    assert assert_clean(tmp_path, world) == complete_tree(world)
    assert_converges(up, tmp_path, world)


def test_persistent_503_on_a_file_fails_only_its_project(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    path = file_path(world, WHEEL)
    up.status[path] = (503, {}, 100)

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert WHEEL in why(summary, "tiny") and "503" in why(summary, "tiny")
    assert gets(up, path) == 3  # retries=2
    listed = assert_clean(tmp_path, world)
    assert listed == {**complete_tree(world), "tiny": [SDIST]}
    assert not list((tmp_path / "web").rglob(WHEEL))
    assert db_rows(tmp_path, "SELECT name, status FROM projects ORDER BY name") == [
        ("foo-bar-baz", "ok"),
        ("tiny", "failed"),
    ]
    assert db_rows(tmp_path, "SELECT project, filename FROM failures") == [("tiny", WHEEL)]
    assert_converges(up, tmp_path, world)


def test_persistent_503_on_a_page_fails_only_its_project(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    up.status[PAGE] = (503, {}, 100)

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert "503" in why(summary, "tiny")
    assert gets(up, PAGE) == 3
    assert assert_clean(tmp_path, world) == {"foo-bar-baz": complete_tree(world)["foo-bar-baz"]}
    assert_converges(up, tmp_path, world)


def test_persistent_failure_of_metadata_publishes_the_file_without_it(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    path = target_path(world, "metadata")
    up.status[path] = (503, {}, 100)

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert WHEEL in why(summary, "tiny") and "metadata" in why(summary, "tiny")
    assert gets(up, path) == 3
    assert assert_clean(tmp_path, world) == complete_tree(world)
    page = json.loads((tmp_path / "web/simple/tiny/index.v1_json").read_text())
    assert {f["filename"]: f["core-metadata"] for f in page["files"]}[WHEEL] is False
    assert not list((tmp_path / "web").rglob(WHEEL + ".metadata"))

    up.reset_requests()
    assert_converges(up, tmp_path, world)
    # Only the missing metadata is fetched again, not the file it describes.
    assert gets(up, path) == 1 and gets(up, file_path(world, WHEEL)) == 0


@pytest.mark.parametrize("target", ["page", "file"])
@pytest.mark.parametrize(
    ("max_wait", "expected"), [(0.2, 0.2), (5.0, 1.0)], ids=["capped", "honoured"]
)
def test_429_waits_for_retry_after_up_to_the_cap(
    up: Upstream,
    world: World,
    tmp_path: Path,
    target: str,
    max_wait: float,
    expected: float,
    sleeps: list[float],
) -> None:
    path = target_path(world, target)
    up.status[path] = (429, {"Retry-After": "1"}, 1)

    summary = sync(up, tmp_path, retry_wait=0.0, retry_max_wait=max_wait)

    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2
    # retry_wait is 0: the one pause comes from Retry-After, capped at retry_max_wait.
    # The pauses are recorded, not slept: a wall-clock bound failed on a loaded machine.
    assert sleeps == [pytest.approx(expected)]
    assert assert_clean(tmp_path, world) == complete_tree(world)
    assert_converges(up, tmp_path, world)


@pytest.mark.parametrize("target", ["root", "page", "file", "metadata"])
def test_connection_reset_is_retried(
    up: Upstream, world: World, tmp_path: Path, target: str
) -> None:
    path = target_path(world, target)
    up.reset[path] = 1

    summary = sync(up, tmp_path)

    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2
    assert assert_clean(tmp_path, world) == complete_tree(world)
    assert_converges(up, tmp_path, world)


@pytest.mark.parametrize("target", ["page", "file"])
def test_read_timeout_is_retried(up: Upstream, world: World, tmp_path: Path, target: str) -> None:
    path = target_path(world, target)
    up.delay[path] = (0.6, 1)

    summary = sync(up, tmp_path, read_timeout=0.3)

    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2
    assert 0.3 <= summary.duration < 3
    assert assert_clean(tmp_path, world) == complete_tree(world)
    assert_converges(up, tmp_path, world)


def test_persistent_read_timeout_on_a_file_is_reported(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    path = file_path(world, WHEEL)
    up.delay[path] = (0.5, 100)

    summary = sync(up, tmp_path, read_timeout=0.2)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert WHEEL in why(summary, "tiny") and "timed out" in why(summary, "tiny").lower()
    assert gets(up, path) == 3
    assert summary.duration < 10
    assert assert_clean(tmp_path, world) == {**complete_tree(world), "tiny": [SDIST]}
    assert_converges(up, tmp_path, world)


def test_slow_but_complete_body_succeeds(up: Upstream, world: World, tmp_path: Path) -> None:
    # 64-byte pieces every 40 ms: each read is well inside the 0.3 s read timeout, while the
    # whole body takes longer than it (the timeout is per read, not per response).
    up.slow_chunk, up.slow_pause = 64, 0.04
    wheel = file_path(world, WHEEL)
    up.slow_body[PAGE] = 1
    up.slow_body[wheel] = 1

    summary = sync(up, tmp_path, read_timeout=0.3)

    assert summary.exit_code == 0, summary.failed
    assert gets(up, PAGE) == 1 and gets(up, wheel) == 1
    assert summary.duration >= 2 * 0.5  # the knob did slow both bodies down
    assert assert_clean(tmp_path, world) == complete_tree(world)
    assert_converges(up, tmp_path, world)


def test_oversize_body_is_rejected_and_never_published(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    up.oversize.add(WHEEL)
    path = file_path(world, WHEEL)
    declared = world.project("tiny").file(WHEEL).size

    summary = sync(up, tmp_path, retries=1)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert WHEEL in why(summary, "tiny") and str(declared) in why(summary, "tiny")
    assert gets(up, path) == 2
    assert assert_clean(tmp_path, world) == {**complete_tree(world), "tiny": [SDIST]}
    assert not list((tmp_path / "web").rglob(WHEEL))
    assert_converges(up, tmp_path, world)


def test_persistent_faults_give_up_within_bounded_time(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    """Safety net, not a performance test: every kind of persistent fault ends the run."""
    foo = world.project("Foo__Bar.baz")
    paths = [f.path for f in foo.files]
    up.status[paths[0]] = (503, {}, 1000)
    up.reset[paths[1]] = 1000
    up.delay[paths[2]] = (0.5, 1000)
    up.status[paths[3]] = (429, {"Retry-After": "3600"}, 1000)

    started = time.monotonic()
    summary = sync(up, tmp_path, retries=2, retry_wait=0.01, retry_max_wait=0.05, read_timeout=0.2)
    elapsed = time.monotonic() - started

    assert elapsed < 10
    assert summary.exit_code == 1 and failed_names(summary) == ["foo-bar-baz"]
    for f in foo.files:
        assert f.filename in why(summary, "foo-bar-baz")
    # A reset GET is sent once more at once by aiohttp (RFC 9112 9.3.1.1): two a try.
    assert [gets(up, p) for p in paths] == [3, 6, 3, 3]
    # Files that failed are never advertised; with all of them failed, a page would say
    # the project has none, so none is written (it was new: not listed in the root).
    held = complete_tree(world)
    del held["foo-bar-baz"]
    assert assert_clean(tmp_path, world) == held
    assert "page was not written" in why(summary, "foo-bar-baz")
    assert_converges(up, tmp_path, world)


# -- the same faults in a download process (the same coroutines, on its event loop) --

IN_A_PROCESS: dict[str, Any] = {"download_processes": 1}
"""Files, and the pages asked for once the process runs, go through it from the first file."""


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """What the run handed its download process: (function, project) pairs."""
    from simplemirror.sync import run as sync_module
    from tests.support.process import StartedPool

    handed: set[tuple[str, str]] = set()

    def note(fn: Any, args: tuple[Any, ...]) -> None:
        # fetch_page(todo, etag), download_todo(name, todo)
        handed.add((fn.__qualname__, getattr(args[0], "name", args[0])))

    class Recording(StartedPool):
        def submit(self, fn: Any, *args: Any) -> Any:
            note(fn, args)
            return super().submit(fn, *args)

        def submit_all(self, fn: Any, calls: list[tuple[Any, ...]]) -> Any:
            for args in calls:
                note(fn, args)
            return super().submit_all(fn, calls)

    monkeypatch.setattr(sync_module, "ProcessPool", Recording)
    return handed


@pytest.mark.parametrize(
    ("fault", "message"), [("truncate", "still to come"), ("corrupt", "sha256")],
    ids=["truncated", "wrong-hash"],
)
def test_a_bad_body_in_a_download_process_fails_only_its_project(
    up: Upstream, world: World, tmp_path: Path, fault: str, message: str,
    submitted: set[tuple[str, str]],
) -> None:
    getattr(up, fault).add(WHEEL)
    path = file_path(world, WHEEL)

    summary = sync(up, tmp_path, **IN_A_PROCESS)

    assert ("download_todo", "tiny") in submitted
    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert WHEEL in why(summary, "tiny") and message in why(summary, "tiny")
    assert gets(up, path) == 3  # retries=2
    assert assert_clean(tmp_path, world) == {**complete_tree(world), "tiny": [SDIST]}
    assert not list((tmp_path / "web").rglob(WHEEL))
    assert_converges(up, tmp_path, world, **IN_A_PROCESS)


@pytest.mark.parametrize("target", ["file", "metadata"])
@pytest.mark.parametrize("knob", ["reset", "reset_mid_body"])
def test_a_reset_in_a_download_process_is_retried(
    up: Upstream, world: World, tmp_path: Path, target: str, knob: str,
    submitted: set[tuple[str, str]],
) -> None:
    path = target_path(world, target)
    getattr(up, knob)[path] = 1

    summary = sync(up, tmp_path, **IN_A_PROCESS)

    assert ("download_todo", "tiny") in submitted
    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2
    assert assert_clean(tmp_path, world) == complete_tree(world)


@pytest.mark.parametrize("target", ["page", "file"])
def test_429_in_a_download_process_waits_for_retry_after_up_to_the_cap(
    up: Upstream, world: World, tmp_path: Path, target: str,
    submitted: set[tuple[str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three more projects, asked for after tiny's first file has started the
    # download process: with one worker, pages come two at a time.
    for name in ("late-a", "late-b", "late-c"):
        world.add_project(name, ["1.0"], wheel=False)
    late = world.project("late-c")
    path = {"page": "/simple/late-c/", "file": late.files[0].path}[target]
    up.status[path] = (429, {"Retry-After": "2"}, 1)
    seen: list[float] = []
    take_status = up.take_status

    def timed(key: str) -> tuple[int, dict[str, str]] | None:
        if key == path:
            seen.append(time.monotonic())
        return take_status(key)

    monkeypatch.setattr(up, "take_status", timed)

    summary = sync(up, tmp_path, workers=1, retry_wait=0.0, retry_max_wait=0.25,
                   **IN_A_PROCESS)

    how = "Client.get_page" if target == "page" else "download_todo"
    assert (how, "late-c") in submitted
    assert summary.exit_code == 0, summary.failed
    assert gets(up, path) == 2 and len(seen) == 2
    # retry_wait is 0: the wait comes from Retry-After (2 s), capped at retry_max_wait.
    assert 0.2 <= seen[1] - seen[0] < 1.5
    assert assert_clean(tmp_path, world) == complete_tree(world)


# -- an unusable root index ------------------------------------------------------------------

ROOT_FAULTS: dict[str, dict[str, Any]] = {
    "503": {"status": (503, {}, 1000)},
    "malformed-json": {"root_body": b'{"meta": {"api-version": "1.1"}, "projects": ['},
    # The real root with one byte that is not UTF-8 (PEP 691 JSON is UTF-8): set below.
    "not-utf8": {},
    "html": {
        # HTML is a real index format now; a page without a single link is an error page.
        "root_body": b"<!DOCTYPE html><html><body><h1>Down for maintenance</h1></body></html>",
        "root_content_type": "text/html",
    },
    "wrong-content-type": {"root_content_type": "text/plain"},
    "no-projects": {"root_body": b'{"meta": {"api-version": "1.1"}}'},
    "projects-not-a-list": {"root_body": b'{"meta": {"api-version": "1.1"}, "projects": {}}'},
    "json-array": {"root_body": b"[]"},
    # PEP 629: a major version this mirror does not know is refused, in either format.
    "api-version-2.0": {"api_version": "2.0"},
    "html-api-version-2.0": {"api_version": "2.0", "json_enabled": False},
}


def apply_root_fault(up: Upstream, fault: str) -> None:
    if fault == "not-utf8":
        real = up.render_root(JSON_V1).body
        assert real.count(b'"name": "tiny"') == 1
        up.root_body = real.replace(b'"name": "tiny"', b'"name": "tiny\xff"')
    for knob, value in ROOT_FAULTS[fault].items():
        if knob == "status":
            up.status[ROOT] = value
        else:
            setattr(up, knob, value)


@pytest.mark.parametrize("fault", sorted(ROOT_FAULTS))
def test_unusable_root_stops_the_run_and_changes_nothing(
    up: Upstream, world: World, tmp_path: Path, fault: str
) -> None:
    assert sync(up, tmp_path).exit_code == 0
    before = snapshot(tmp_path / "web")
    projects_sql = "SELECT name, status, serial, upstream_serial, error FROM projects"
    held = db_rows(tmp_path, projects_sql)
    files = db_rows(tmp_path, "SELECT project, filename, path, removed_gen FROM files")
    world.add_release("tiny", "0.2")  # something for the run to do, were the root usable
    apply_root_fault(up, fault)
    up.reset_requests()

    with pytest.raises(SyncError, match="root index"):
        sync(up, tmp_path)

    assert gets(up, ROOT) == (3 if fault == "503" else 1)
    assert [r.path for r in up.requests if r.path != ROOT] == []
    assert snapshot(tmp_path / "web") == before
    assert db_rows(tmp_path, projects_sql) == held
    assert db_rows(tmp_path, "SELECT project, filename, path, removed_gen FROM files") == files
    assert db_rows(tmp_path, "SELECT outcome FROM runs ORDER BY generation") == [
        ("ok",),
        ("error",),
    ]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert_converges(up, tmp_path, world)
    assert "tiny-0.2.tar.gz" in assert_consistent(tmp_path / "web")["tiny"]


def test_unusable_root_exits_1_from_the_command_line(
    up: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(
        f'[mirror]\nupstream = "{up.url}"\ndirectory = "{tmp_path / "m"}"\n'
        "retries = 0\nretry-wait = 0.0\nread-timeout = 2.0\n"
    )
    assert main(["sync", "-c", str(cfg), "--no-progress", "-q"]) == 0
    before = snapshot(tmp_path / "m" / "web")
    world.add_release("tiny", "0.2")
    up.root_body = b"<html>maintenance</html>"
    up.root_content_type = "text/html"
    capsys.readouterr()

    assert main(["sync", "-c", str(cfg), "--no-progress", "-q"]) == 1

    err = capsys.readouterr().err
    assert "root index" in err and "text/html" in err and "Traceback" not in err
    assert snapshot(tmp_path / "m" / "web") == before
    clear_faults(up)
    assert main(["sync", "-c", str(cfg), "--no-progress", "-q"]) == 0
    assert assert_clean(tmp_path / "m", world) == complete_tree(world)


# -- a garbage project page ------------------------------------------------------------------


def page_garbage(up: Upstream, world: World, kind: str) -> tuple[bytes, str]:
    if kind == "not-utf8":
        # The real page, with a byte that is not UTF-8 (PEP 691 JSON is UTF-8) in a text
        # the mirror republishes verbatim: a yank reason.
        world.yank("tiny", "tiny-0.2.tar.gz", "REASON")
        tiny = world.project("tiny")
        real = up.render_project(tiny, JSON_V1, tiny.serial).body
        assert real.count(b'"REASON"') == 1
        return real.replace(b'"REASON"', b'"caf\xe9 broke"'), JSON_V1
    if kind.endswith("api-version-2.0"):
        # The real page, declaring a major version this mirror does not know.
        media = HTML_V1 if kind.startswith("html") else JSON_V1
        tiny = world.project("tiny")
        real = up.render_project(tiny, media, tiny.serial).body
        said = b'content="1.1"' if media == HTML_V1 else b'"api-version": "1.1"'
        assert real.count(said) == 1
        return real.replace(said, said.replace(b"1.1", b"2.0")), media
    if kind == "other-project":
        other = world.project("Foo__Bar.baz")
        return up.render_project(other, JSON_V1, world.serial).body, JSON_V1
    return {
        "malformed-json": (b'{"meta": {"api-version": "1.1"}, "name": "tiny", "files": [', JSON_V1),
        "html": (
            b"<!DOCTYPE html><html><body><h1>Down for maintenance</h1></body></html>",
            "text/html",
        ),
        "no-name": (b'{"meta": {"api-version": "1.1"}, "files": []}', JSON_V1),
        "files-not-a-list": (
            b'{"meta": {"api-version": "1.1"}, "name": "tiny", "files": {}}',
            JSON_V1,
        ),
    }[kind]


PAGE_FAULTS = [
    "malformed-json", "html", "other-project", "no-name", "files-not-a-list", "not-utf8",
    "api-version-2.0", "html-api-version-2.0",
]


@pytest.mark.parametrize("kind", PAGE_FAULTS)
def test_garbage_page_fails_that_project_and_keeps_its_old_copy(
    up: Upstream, world: World, tmp_path: Path, kind: str
) -> None:
    assert sync(up, tmp_path).exit_code == 0
    old_pages = snapshot(tmp_path / "web/simple/tiny")
    world.add_release("tiny", "0.2")
    world.add_release("Foo__Bar.baz", "3.0")
    up.page_body["tiny"] = page_garbage(up, world, kind)

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert "tiny" in why(summary, "tiny")  # names the page it could not use
    assert snapshot(tmp_path / "web/simple/tiny") == old_pages
    listed = assert_clean(tmp_path, world)
    assert listed["foo-bar-baz"] == complete_tree(world)["foo-bar-baz"]
    assert listed["tiny"] == [WHEEL, SDIST]
    assert not list((tmp_path / "web").rglob("tiny-0.2*"))
    assert db_rows(tmp_path, "SELECT name, status FROM projects ORDER BY name") == [
        ("foo-bar-baz", "ok"),
        ("tiny", "failed"),
    ]
    assert_converges(up, tmp_path, world)


def test_garbage_page_on_a_fresh_mirror_is_not_published(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    up.page_body["tiny"] = page_garbage(up, world, "malformed-json")

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and failed_names(summary) == ["tiny"]
    assert "malformed JSON" in why(summary, "tiny")
    assert assert_clean(tmp_path, world) == {"foo-bar-baz": complete_tree(world)["foo-bar-baz"]}
    assert not (tmp_path / "web/simple/tiny").exists()
    assert_converges(up, tmp_path, world)


# -- retries, as `-v` shows them -------------------------------------------------------------


@pytest.mark.parametrize("where", ["here", "in a process"])
@pytest.mark.parametrize("target", ["page", "file"])
def test_each_retry_is_logged_at_debug_with_what_failed_and_the_wait(
    up: Upstream, world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    target: str, where: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="simplemirror")
    path = target_path(world, target)
    up.status[path] = (503, {}, 1)

    summary = sync(up, tmp_path, retry_wait=0.01, retry_max_wait=0.01,
                   **(IN_A_PROCESS if where == "in a process" else {}))

    assert summary.exit_code == 0, summary.failed
    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.DEBUG]
    assert re.fullmatch(
        rf"attempt 1 failed, trying again in 0\.0 s: {re.escape(up.base + path)}: HTTP 503",
        retries[0].getMessage(),
    ), retries[0].getMessage()


def test_retries_show_with_verbose_and_not_without(
    up: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = file_path(world, WHEEL)
    for verbose, directory in ((False, tmp_path / "quiet"), (True, tmp_path / "verbose")):
        up.status[path] = (503, {}, 1)
        capsys.readouterr()
        argv = ["sync", "--upstream", up.url, "--directory", str(directory), "--no-progress",
                "--download-processes", "0", "-c", str(retry_config(tmp_path))]
        assert main(argv + (["-v"] if verbose else [])) == 0
        err = capsys.readouterr().err
        assert ("DEBUG attempt 1 failed, trying again in" in err) is verbose, err
        assert (f"{path}: HTTP 503" in err) is verbose


def retry_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[mirror]\nretry-wait = 0.0\nretry-max-wait = 0.01\n")
    return cfg


def test_a_stale_page_asked_again_is_logged_at_debug(
    up: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="simplemirror")
    up.stale["tiny"] = 1

    assert sync(up, tmp_path, stale_retries=1).exit_code == 0
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 1 and f"{up.base}{PAGE}: page serial" in retries[0], retries


# -- the Simple API version upstream speaks (PEP 629) ------------------------------------------


@pytest.mark.parametrize("json_enabled", [True, False], ids=["json", "html"])
def test_an_unknown_major_api_version_of_the_root_is_a_clear_run_error(
    up: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    json_enabled: bool,
) -> None:
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(f'[mirror]\nupstream = "{up.url}"\ndirectory = "{tmp_path / "m"}"\n')
    up.api_version, up.json_enabled = "2.0", json_enabled

    assert main(["sync", "-c", str(cfg), "--no-progress", "-q"]) == 1

    err = capsys.readouterr().err
    assert "upstream speaks Simple API version 2.0, which this simplemirror does not know" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert [r.path for r in up.requests] == [ROOT]
    assert not (tmp_path / "m" / "web" / "simple" / "tiny").exists()


@pytest.mark.parametrize("json_enabled", [True, False], ids=["json", "html"])
def test_a_newer_minor_api_version_is_warned_about_once_and_mirrored(
    up: Upstream, world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    json_enabled: bool,
) -> None:
    # PEP 629: a newer minor version only adds what an older client may ignore.
    up.api_version, up.json_enabled = "1.99", json_enabled
    caplog.set_level(logging.WARNING, logger="simplemirror")

    summary = sync(up, tmp_path)

    assert summary.exit_code == 0, summary.failed
    assert assert_clean(tmp_path, world) == complete_tree(world)
    warnings = [r.getMessage() for r in caplog.records if "Simple API version" in r.getMessage()]
    assert len(warnings) == 1  # the root and both pages say so; one warning says it all
    assert "upstream speaks Simple API version 1.99, newer than the 1.4" in warnings[0]
