"""Hostile or broken upstream data: refused, reported, nothing written outside the mirror."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("good", ["1.0"])
    w.add_project("victim", ["1.0"])
    return w


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": up.url, "directory": str(directory), "retries": 0, "retry_wait": 0.0}
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def everything_outside(mirror: Path, top: Path) -> set[str]:
    return {str(p) for p in top.rglob("*") if p != mirror and mirror not in p.parents}


def escaped_above(tmp_path: Path) -> list[str]:
    """Files named escaped* two levels above the test's directory, where other pytest
    runs come and go: a directory that vanishes mid-walk is skipped, not an error."""
    return [
        os.path.join(where, name)
        for where, dirs, files in os.walk(tmp_path.parent.parent)
        for name in (*dirs, *files)
        if name.startswith("escaped")
    ]


HOSTILE_ENTRIES = {
    "parent traversal": {"filename": "../../../escaped-1.0.tar.gz"},
    "absolute path": {"filename": "/tmp/escaped-1.0.tar.gz"},
    "backslashes": {"filename": "..\\..\\escaped-1.0.tar.gz"},
    "NUL": {"filename": "escaped\x00-1.0.tar.gz"},
    "percent-encoded traversal": {
        "filename": "escaped-1.0.tar.gz",
        "url": "/packages/%2e%2e/%2e%2e/%2e%2e/escaped-1.0.tar.gz/..%2f..%2fx",
    },
    "overlong name": {"filename": "e" * 300 + "-1.0.tar.gz"},
    "name differs from URL": {"filename": "innocent-1.0.tar.gz"},
    "non-hex hash": {"hashes": {"sha256": "zz" * 32}},
    "no hashes": {"hashes": {}},
    "only unknown algorithm": {"hashes": {"rot13": "abc"}},
    "negative size": {"size": -5},
    "string size": {"size": "many"},
    # Names whose URL names the same file: the name checks alone refuse them.
    "parent traversal, its URL agreeing": {
        "filename": "../../../escaped-1.0.tar.gz",
        "url": "/packages/" + quote("../../../escaped-1.0.tar.gz", safe=""),
    },
    "NUL, its URL agreeing": {
        "filename": "escaped\x00-1.0.tar.gz", "url": "/packages/escaped%00-1.0.tar.gz",
    },
    "right-to-left override": {
        "filename": "escaped-1.0\u202ezg.rat.whl",
        "url": "/packages/" + quote("escaped-1.0\u202ezg.rat.whl"),
    },
}


@pytest.mark.parametrize("override", HOSTILE_ENTRIES.values(), ids=HOSTILE_ENTRIES.keys())
def test_hostile_file_entry_is_refused_and_reported(
    upstream: Upstream, world: World, tmp_path: Path, override: dict[str, Any]
):
    world.add_file("victim", "escaped-1.0.tar.gz", b"payload", extra=override)
    mirror = tmp_path / "mirror"
    outside_before = everything_outside(mirror, tmp_path)

    summary = sync(upstream, mirror)

    assert summary.exit_code == 1
    assert [name for name, _ in summary.failed] == ["victim"]
    assert "refused" in summary.failed[0][1]
    # Nothing lands outside the mirror directory, and nothing hostile inside it.
    assert everything_outside(mirror, tmp_path) == outside_before
    assert not escaped_above(tmp_path)
    assert not Path("/tmp/escaped-1.0.tar.gz").exists()
    listed = assert_consistent(mirror / "web")
    assert listed["good"] and len(listed["victim"]) == 2  # the real files still mirrored


def test_hostile_file_entries_are_refused_in_a_run_with_a_download_process(
    upstream: Upstream, world: World, tmp_path: Path
):
    # The good files are fetched in the process; nothing hostile gets that far.
    chosen = ("parent traversal", "absolute path", "percent-encoded traversal",
              "name differs from URL", "non-hex hash")
    for i, what in enumerate(chosen):
        world.add_file("victim", f"escaped{i}-1.0.tar.gz", b"payload", extra=HOSTILE_ENTRIES[what])
    mirror = tmp_path / "mirror"
    outside_before = everything_outside(mirror, tmp_path)

    summary = sync(upstream, mirror, download_processes=1)

    assert summary.exit_code == 1 and summary.files_fetched == 4
    assert [name for name, _ in summary.failed] == ["victim"]
    assert summary.failed[0][1].count("refused") == len(chosen)
    assert everything_outside(mirror, tmp_path) == outside_before
    assert not escaped_above(tmp_path)
    assert not Path("/tmp/escaped-1.0.tar.gz").exists()
    listed = assert_consistent(mirror / "web")
    assert listed["good"] and len(listed["victim"]) == 2
    assert list((mirror / "tmp").iterdir()) == []


def test_file_on_a_foreign_host_is_refused(upstream: Upstream, world: World, tmp_path: Path):
    world.add_file(
        "victim", "foreign-1.0.tar.gz", b"payload",
        extra={"url": "http://192.0.2.1/packages/foreign-1.0.tar.gz"},
    )
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 1
    assert "192.0.2.1" in summary.failed[0][1] and "file-hosts" in summary.failed[0][1]
    # Refused before any request: the address is never contacted.
    assert "foreign-1.0.tar.gz" not in assert_consistent(tmp_path / "web")["victim"]


@pytest.mark.parametrize("processes", [None, 1], ids=["threads", "download-process"])
def test_listed_file_host_is_allowed(
    upstream: Upstream, world: World, tmp_path: Path, processes: int | None
):
    # "localhost" is the same server under another name. Set, file-hosts is the whole
    # list besides the upstream's host: one without it refuses it unasked.
    url = upstream.file_url("victim", "victim-1.0.tar.gz").replace("127.0.0.1", "localhost")
    world.project("victim").file("victim-1.0.tar.gz").extra["url"] = url
    world.touch("victim")
    refused = sync(upstream, tmp_path / "a", file_hosts=["files.example"],
                   download_processes=processes)
    asked = [r for r in upstream.requests if r.header("host", "").startswith("localhost")]
    allowed = sync(upstream, tmp_path / "b", file_hosts=["localhost"],
                   download_processes=processes)
    assert refused.exit_code == 1 and allowed.exit_code == 0 and asked == []
    assert "'localhost'" in refused.failed[0][1] and "file-hosts" in refused.failed[0][1]
    assert "victim-1.0.tar.gz" in assert_consistent(tmp_path / "b" / "web")["victim"]
    # Unset, any host passes but for the address guard; loopback files are fine for a
    # loopback upstream.
    assert sync(upstream, tmp_path / "c", download_processes=processes).exit_code == 0


def project_row(mirror: Path, name: str) -> tuple[str, str, int | None]:
    db = sqlite3.connect(mirror / "state.db")
    try:
        return db.execute(
            "SELECT status, error, published_gen FROM projects WHERE name = ?", [name]
        ).fetchone()
    finally:
        db.close()


def test_a_new_project_whose_files_are_all_refused_is_not_published(
    upstream: Upstream, world: World, tmp_path: Path
):
    # Every file of the index is on "localhost"; the operator's list names another host.
    upstream.files_host = "localhost"
    summary = sync(upstream, tmp_path, file_hosts=["files.example"])

    assert summary.exit_code == 1
    assert sorted(name for name, _ in summary.failed) == ["good", "victim"]
    assert summary.blocked == {"good", "victim"}
    assert "page was not written" in summary.failed[0][1]
    assert "'localhost'" in summary.failed[0][1]
    # No page saying "no files", and no root entry leading to a missing page.
    assert assert_consistent(tmp_path / "web") == {}
    assert not (tmp_path / "web/simple/good").exists()
    status, error, published = project_row(tmp_path, "good")
    assert (status, published) == ("failed", None) and "'localhost'" in error

    # Once the operator allows the host, the next run mirrors them.
    again = sync(upstream, tmp_path, file_hosts=["localhost"])
    assert again.exit_code == 0
    assert {n: len(f) for n, f in assert_consistent(tmp_path / "web").items()} == {
        "good": 2, "victim": 2,
    }


def test_a_published_project_keeps_its_page_when_every_new_file_is_refused(
    upstream: Upstream, world: World, tmp_path: Path
):
    world.add_project("empty", [])  # published with no files: that was the truth
    assert sync(upstream, tmp_path).exit_code == 0
    page = (tmp_path / "web/simple/empty/index.v1_json").read_bytes()
    world.add_file("empty", "empty-1.0.tar.gz", b"payload",
                   extra={"url": "http://169.254.169.254/empty-1.0.tar.gz"})

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 1 and summary.blocked == {"empty"}
    assert "link-local" in dict(summary.failed)["empty"]
    assert (tmp_path / "web/simple/empty/index.v1_json").read_bytes() == page
    assert assert_consistent(tmp_path / "web")["empty"] == []
    status, error, published = project_row(tmp_path, "empty")
    assert status == "failed" and published == 1 and "169.254.169.254" in error


def test_invalid_project_names_are_refused_and_reported(
    upstream: Upstream, world: World, tmp_path: Path
):
    for name in ("../../etc", "spaces in name", "-leading", "ünïcode", ""):
        world.add_project(name, ["1.0"]) if name else None
    summary = sync(upstream, tmp_path)
    refused = {entry for entry, _ in summary.rejected}
    assert {"../../etc", "spaces in name", "-leading", "ünïcode"} <= refused
    assert summary.exit_code == 1
    assert sorted(assert_consistent(tmp_path / "web")) == ["good", "victim"]
    assert sorted(os.listdir(tmp_path / "web/simple")) == [
        "good", "index.html", "index.v1_json", "victim",
    ]


def test_markup_is_escaped_in_html_and_kept_in_json(
    upstream: Upstream, world: World, tmp_path: Path
):
    evil = '<script>alert("x")</script>&amp;'
    world.add_file(
        "victim", "victim-2.0.tar.gz", b"v2", requires_python=f">=3.8{evil}",
        yanked=evil,
    )
    assert sync(upstream, tmp_path).exit_code == 0
    html = (tmp_path / "web/simple/victim/index.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    page = json.loads((tmp_path / "web/simple/victim/index.v1_json").read_text())
    entry = next(f for f in page["files"] if f["filename"] == "victim-2.0.tar.gz")
    assert entry["yanked"] == evil and entry["requires-python"] == f">=3.8{evil}"
    assert_consistent(tmp_path / "web")


def test_duplicate_file_entries_keep_the_first(upstream: Upstream, world: World, tmp_path: Path):
    first = world.project("victim").files[0]
    world.add_file("victim", "dup-1.0.tar.gz", b"dup", extra={"filename": first.filename,
                                                              "url": upstream.file_url(
                                                                  "victim", first.filename)})
    summary = sync(upstream, tmp_path)
    assert summary.exit_code == 1 and "listed twice" in summary.failed[0][1]
    assert assert_consistent(tmp_path / "web")["victim"].count(first.filename) == 1
