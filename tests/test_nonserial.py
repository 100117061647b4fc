"""Upstreams without usable serials (devpi, Artifactory, Pulp, plain static trees):
one conditional request per project tells what changed; HTML-only upstreams work too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync
from tests.support.static import StaticServer
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("alpha", ["1.0"])
    w.add_project("beta", ["1.0", "2.0"])
    w.add_project("gamma", ["0.1"])
    return w


def sync(url: str, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": url, "directory": str(directory), "retries": 0, "retry_wait": 0.0}
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def page_requests(up: Upstream) -> list[tuple[str, str | None]]:
    return sorted(
        (r.path, r.header("If-None-Match"))
        for r in up.requests
        if r.path.startswith("/simple/") and r.path != "/simple/"
    )


MODES = {
    "no serials, JSON": {"serial_mode": "none"},
    "constant fake serial": {"serial_mode": "constant"},
    "no serials, HTML only": {"serial_mode": "none", "json_enabled": False},
    "no serials, no ETags": {"serial_mode": "none", "send_etags": False},
}


@pytest.mark.parametrize("knobs", MODES.values(), ids=MODES.keys())
def test_changes_are_found_without_serials(
    upstream: Upstream, world: World, tmp_path: Path, knobs: dict[str, Any]
):
    for key, value in knobs.items():
        setattr(upstream, key, value)
    assert sync(upstream.url, tmp_path).exit_code == 0
    assert sum(len(v) for v in assert_consistent(tmp_path / "web").values()) == 8

    # Nothing changed: one request per project, conditional when upstream gave ETags,
    # no download and no page written.
    upstream.reset_requests()
    pages_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "web/simple").rglob("*")}
    quiet = sync(upstream.url, tmp_path)
    assert quiet.exit_code == 0 and quiet.changed == 0 and quiet.files_fetched == 0
    requested = page_requests(upstream)
    assert [path for path, _ in requested] == ["/simple/alpha/", "/simple/beta/", "/simple/gamma/"]
    if upstream.send_etags:
        assert all(etag for _, etag in requested)
    assert not [r for r in upstream.requests if r.path.startswith("/packages/")]
    assert pages_before == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "web/simple").rglob("*")
    }

    # A change the root does not reveal (no serials) is still found.
    world.add_release("beta", "3.0")
    world.yank("gamma", "gamma-0.1.tar.gz", "broken")
    changed = sync(upstream.url, tmp_path)
    assert changed.exit_code == 0 and changed.changed == 2
    listed = assert_consistent(tmp_path / "web")
    assert "beta-3.0.tar.gz" in listed["beta"]
    gamma = json.loads((tmp_path / "web/simple/gamma/index.v1_json").read_text())
    assert {f["filename"]: f["yanked"] for f in gamma["files"]}["gamma-0.1.tar.gz"] == "broken"


def test_html_only_upstream_keeps_what_html_carries(
    upstream: Upstream, world: World, tmp_path: Path
):
    upstream.json_enabled = False
    world.yank("beta", "beta-1.0.tar.gz", "use 2.0")
    assert sync(upstream.url, tmp_path).exit_code == 0
    page = json.loads((tmp_path / "web/simple/beta/index.v1_json").read_text())
    files = {f["filename"]: f for f in page["files"]}
    assert files["beta-1.0.tar.gz"]["yanked"] == "use 2.0"
    assert files["beta-2.0-py3-none-any.whl"]["core-metadata"]  # metadata mirrored from HTML
    assert page["versions"] == ["1.0", "2.0"]  # derived: HTML carries none
    assert all(f["size"] > 0 for f in page["files"])  # measured: HTML carries none


def test_chain_through_a_plain_static_html_tree(upstream: Upstream, tmp_path: Path):
    """Mirror B syncs from A's tree served as plain files: index.html only, no negotiation."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert sync(upstream.url, a).exit_code == 0
    for json_page in (a / "web/simple").rglob("index.v1_json"):
        json_page.unlink()  # what a server without negotiation offers: HTML alone
    with StaticServer(a / "web") as served:
        assert sync(f"{served.url}simple/", b).exit_code == 0
    a_files = {k: sorted(v) for k, v in assert_consistent_html(a / "web").items()}
    assert {k: sorted(v) for k, v in assert_consistent(b / "web").items()} == a_files


def assert_consistent_html(web: Path) -> dict[str, list[str]]:
    from tests.support.tree import html_links

    return {
        page.parent.name: [str(a["href"]).split("#")[0].rsplit("/", 1)[-1]
                           for a in html_links(page.read_text())]
        for page in (web / "simple").glob("*/index.html")
    }
