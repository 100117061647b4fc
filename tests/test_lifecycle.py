"""Lifecycle: what upstream deletes leaves the mirror (pages, then disk), with tombstones,
and a mass removal stops unless an operator allows it."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support.tree import assert_consistent, snapshot
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("keeper", ["1.0"])
    w.add_project("doomed", ["1.0", "2.0"])
    return w


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": up.url, "directory": str(directory), "retries": 0, "retry_wait": 0.0}
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "state.db") as db:
        return db.execute(sql).fetchall()


def package_files(directory: Path) -> set[str]:
    return {p.name for p in (directory / "web/packages").rglob("*") if p.is_file()}


def test_deleted_file_leaves_the_page_then_the_disk(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    world.remove_file("doomed", "doomed-1.0.tar.gz")

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 0 and summary.files_deleted == 1
    assert "doomed-1.0.tar.gz" not in assert_consistent(tmp_path / "web")["doomed"]
    assert "doomed-1.0.tar.gz" not in package_files(tmp_path)
    assert rows(tmp_path, "SELECT removed_gen, deleted_gen FROM files"
                " WHERE filename = 'doomed-1.0.tar.gz'") == [(2, 2)]


def test_deleted_release_takes_its_metadata_along(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    for f in list(world.project("doomed").files):
        if "-1.0" in f.filename:
            world.remove_file("doomed", f.filename)

    assert sync(upstream, tmp_path).exit_code == 0

    remaining = package_files(tmp_path)
    assert not [name for name in remaining if name.startswith("doomed-1.0")]
    assert "doomed-1.0-py3-none-any.whl.metadata" not in remaining
    page = json.loads((tmp_path / "web/simple/doomed/index.v1_json").read_text())
    assert page["versions"] == ["2.0"]
    assert_consistent(tmp_path / "web")


def test_deleted_project_loses_pages_files_and_root_entry(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    world.remove_project("doomed")

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 0 and summary.removed == ["doomed"]
    assert not (tmp_path / "web/simple/doomed").exists()
    assert list(assert_consistent(tmp_path / "web")) == ["keeper"]
    assert not [n for n in package_files(tmp_path) if n.startswith("doomed")]
    # Tombstones: the project, its pages and its files, all with generation 2.
    assert rows(tmp_path, "SELECT status, removed_gen FROM projects WHERE name = 'doomed'") == [
        ("removed", 2)
    ]
    assert rows(tmp_path, "SELECT DISTINCT removed_gen FROM pages"
                " WHERE path LIKE 'simple/doomed/%'") == [(2,)]
    assert rows(tmp_path, "SELECT DISTINCT removed_gen, deleted_gen FROM files"
                " WHERE project = 'doomed'") == [(2, 2)]


def test_a_project_that_comes_back_is_mirrored_again(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    saved = world.projects.pop("doomed")
    world.touch("keeper")
    sync(upstream, tmp_path)
    world.projects["doomed"] = saved
    world.touch("doomed")

    assert sync(upstream, tmp_path).exit_code == 0

    assert sorted(assert_consistent(tmp_path / "web")) == ["doomed", "keeper"]
    assert rows(tmp_path, "SELECT status, removed_gen FROM projects WHERE name = 'doomed'") == [
        ("ok", None)
    ]


def test_same_file_in_two_projects_stays_while_one_still_lists_it(
    upstream: Upstream, world: World, tmp_path: Path
):
    for name in ("keeper", "doomed"):
        world.add_file(name, "shared-1.0.tar.gz", b"the very same bytes")
    sync(upstream, tmp_path)
    world.remove_project("doomed")

    assert sync(upstream, tmp_path).exit_code == 0

    assert "shared-1.0.tar.gz" in assert_consistent(tmp_path / "web")["keeper"]


def test_vanishing_root_is_a_glitch_not_an_instruction(
    upstream: Upstream, world: World, tmp_path: Path
):
    for i in range(8):
        world.add_project(f"extra-{i}", ["1.0"])
    sync(upstream, tmp_path)
    before = snapshot(tmp_path / "web")
    upstream.root_body = json.dumps({"meta": {"api-version": "1.1"}, "projects": []}).encode()

    with pytest.raises(SyncError, match="allow-mass-delete"):
        sync(upstream, tmp_path)

    assert snapshot(tmp_path / "web") == before
    assert rows(tmp_path, "SELECT count(*) FROM projects WHERE status = 'removed'") == [(0,)]


def test_mass_project_removal_needs_the_flag(upstream: Upstream, world: World, tmp_path: Path):
    for i in range(8):
        world.add_project(f"extra-{i}", ["1.0"])
    sync(upstream, tmp_path)
    for i in range(3):
        world.remove_project(f"extra-{i}")

    with pytest.raises(SyncError, match="3 of the 10 projects"):
        sync(upstream, tmp_path)
    summary = sync(upstream, tmp_path, allow_mass_delete=True)

    assert summary.exit_code == 0 and len(summary.removed) == 3
    assert len(assert_consistent(tmp_path / "web")) == 7


def test_mass_file_removal_keeps_the_files_and_says_why(
    upstream: Upstream, world: World, tmp_path: Path
):
    for i in range(30):
        world.add_file("doomed", f"doomed-0.{i}.tar.gz", f"old {i}".encode())
    sync(upstream, tmp_path)
    for i in range(30):
        world.remove_file("doomed", f"doomed-0.{i}.tar.gz")
    world.add_release("doomed", "3.0")

    held_back = sync(upstream, tmp_path)

    assert held_back.exit_code == 1 and "max-removal" in held_back.failed[0][1]
    listed = assert_consistent(tmp_path / "web")["doomed"]
    assert "doomed-0.7.tar.gz" in listed  # kept
    assert "doomed-3.0.tar.gz" in listed  # and the new release still arrives

    allowed = sync(upstream, tmp_path, allow_mass_delete=True)
    assert allowed.exit_code == 0 and allowed.files_deleted == 30
    assert not [n for n in assert_consistent(tmp_path / "web")["doomed"] if "-0." in n]


def test_metadata_added_later_is_fetched_alone(upstream: Upstream, world: World, tmp_path: Path):
    world.add_file("keeper", "keeper-1.1-py3-none-any.whl", b"not really a wheel")
    sync(upstream, tmp_path)
    late = world.project("keeper").file("keeper-1.1-py3-none-any.whl")
    late.metadata = b"Metadata-Version: 2.1\nName: keeper\nVersion: 1.1\n"
    world.touch("keeper")
    upstream.reset_requests()

    assert sync(upstream, tmp_path).exit_code == 0

    fetched = [p for p in upstream.paths("GET") if p.startswith("/packages/")]
    assert fetched == [late.path + ".metadata"]
    page = json.loads((tmp_path / "web/simple/keeper/index.v1_json").read_text())
    entry = next(f for f in page["files"] if f["filename"] == late.filename)
    assert entry["core-metadata"] == {"sha256": late.metadata_sha256}
    assert_consistent(tmp_path / "web")


def test_last_modified_reflects_the_last_complete_change(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    stamp = (tmp_path / "web/last-modified").read_text()
    assert re.fullmatch(r"\d{8}T\d\d:\d\d:\d\d\n", stamp)
    upstream.stale["doomed"] = 99
    world.touch("doomed")
    assert sync(upstream, tmp_path, stale_retries=0).exit_code == 1
    assert (tmp_path / "web/last-modified").read_text() == stamp  # partial: unchanged


@pytest.mark.parametrize("killed_in", ["reap_files", "last_modified"])
def test_a_run_killed_after_its_root_is_finished_by_the_next_even_with_a_304(
    upstream: Upstream, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    killed_in: str,
):
    """A run that dies once the root is written, before its removals or last-modified:
    the next run sees the same root (304) and has nothing to fetch, yet it finishes
    them, or the mirror would keep dead files and claim an older change until upstream
    next moved."""
    sync(upstream, tmp_path)
    (tmp_path / "web/last-modified").write_text("20000101T00:00:00\n")
    world.remove_file("doomed", "doomed-1.0.tar.gz")
    from simplemirror.sync import publish

    target = publish.reap if killed_in == "reap_files" else publish.Publisher

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # as good as a kill: nothing after it runs

    with monkeypatch.context() as patched:
        patched.setattr(target, killed_in, killed)
        with pytest.raises(KeyboardInterrupt):
            sync(upstream, tmp_path)
    assert "doomed-1.0.tar.gz" not in assert_consistent(tmp_path / "web")["doomed"]
    assert sync(upstream, tmp_path).exit_code == 0
    assert "doomed-1.0.tar.gz" not in package_files(tmp_path)
    assert (tmp_path / "web/last-modified").read_text() != "20000101T00:00:00\n"
    assert_consistent(tmp_path / "web")


def test_a_project_that_does_not_converge_deletes_nothing(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    held = sorted(f.filename for f in world.project("doomed").files)
    # Upstream now lists only a file the mirror must refuse: that is no reason to delete.
    for filename in held:
        world.remove_file("doomed", filename)
    world.add_file("doomed", "doomed-3.0.tar.gz", b"x", hashes={"sha256": "zz" * 32})

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 1 and summary.files_deleted == 0
    assert sorted(assert_consistent(tmp_path / "web")["doomed"]) == held


def test_yank_reason_change_and_unyank_reach_both_formats(
    upstream: Upstream, world: World, tmp_path: Path
):
    def yanked_in_both() -> tuple[object, str | None]:
        page = json.loads((tmp_path / "web/simple/keeper/index.v1_json").read_text())
        entry = next(f for f in page["files"] if f["filename"] == "keeper-1.0.tar.gz")
        html = (tmp_path / "web/simple/keeper/index.html").read_text()
        found = re.search(r'keeper-1\.0\.tar\.gz#[^"]*"[^>]*?data-yanked="([^"]*)"', html)
        return entry["yanked"], found.group(1) if found else None

    world.yank("keeper", "keeper-1.0.tar.gz", "first reason")
    sync(upstream, tmp_path)
    assert yanked_in_both() == ("first reason", "first reason")

    world.yank("keeper", "keeper-1.0.tar.gz", "second reason")
    sync(upstream, tmp_path)
    assert yanked_in_both() == ("second reason", "second reason")

    world.unyank("keeper", "keeper-1.0.tar.gz")
    sync(upstream, tmp_path)
    assert yanked_in_both() == (False, None)
