"""Fidelity over time: project status (PEP 792), quarantine, signatures, provenance (PEP 740)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync
from tests.support.tree import assert_consistent, html_links
from tests.support.upstream import Upstream, World

PUBLIC = "https://mirror.example/"


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("stable", ["1.0"])
    w.add_project("risky", ["1.0", "2.0"])
    return w


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": up.url, "directory": str(directory), "retries": 0, "retry_wait": 0.0}
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def json_page(directory: Path, name: str) -> dict[str, Any]:
    return json.loads((directory / f"web/simple/{name}/index.v1_json").read_text())


def html_metas(directory: Path, name: str) -> dict[str, str]:
    import re

    text = (directory / f"web/simple/{name}/index.html").read_text()
    return dict(re.findall(r'<meta name="([^"]+)" content="([^"]*)">', text))


@pytest.mark.parametrize("json_enabled", [True, False], ids=["json", "html"])
def test_status_changes_reach_both_formats(
    upstream: Upstream, world: World, tmp_path: Path, json_enabled: bool
):
    upstream.json_enabled = json_enabled
    sync(upstream, tmp_path)
    assert "project-status" not in json_page(tmp_path, "risky")

    project = world.project("risky")
    project.status, project.status_reason = "archived", "moved to <new-risky>"
    world.touch("risky")
    assert sync(upstream, tmp_path).exit_code == 0
    assert json_page(tmp_path, "risky")["project-status"] == {
        "status": "archived", "reason": "moved to <new-risky>",
    }
    metas = html_metas(tmp_path, "risky")
    assert metas["pypi:project-status"] == "archived"
    assert metas["pypi:project-status-reason"] == "moved to &lt;new-risky&gt;"
    assert len(assert_consistent(tmp_path / "web")["risky"]) == 4  # archived still offers

    project.status = project.status_reason = None
    world.touch("risky")
    assert sync(upstream, tmp_path).exit_code == 0
    assert "project-status" not in json_page(tmp_path, "risky")
    assert "pypi:project-status" not in html_metas(tmp_path, "risky")


def test_quarantine_offers_no_files_and_unquarantine_restores_them(
    upstream: Upstream, world: World, tmp_path: Path
):
    sync(upstream, tmp_path)
    project = world.project("risky")
    project.status = "quarantined"
    world.touch("risky")  # upstream still lists the files: the mirror must not offer them

    assert sync(upstream, tmp_path).exit_code == 0

    page = json_page(tmp_path, "risky")
    assert page["files"] == [] and page["project-status"] == {"status": "quarantined"}
    assert html_links((tmp_path / "web/simple/risky/index.html").read_text()) == []
    assert not list((tmp_path / "web/packages").rglob("risky-*"))
    assert_consistent(tmp_path / "web")

    project.status = None
    world.touch("risky")
    assert sync(upstream, tmp_path).exit_code == 0
    assert len(assert_consistent(tmp_path / "web")["risky"]) == 4


def test_signatures_are_mirrored_and_advertised_only_when_held(
    upstream: Upstream, world: World, tmp_path: Path
):
    signed = world.project("stable").files[0]
    signed.signature = b"-----BEGIN PGP SIGNATURE-----\nfake\n-----END PGP SIGNATURE-----\n"
    world.touch("stable")

    assert sync(upstream, tmp_path).exit_code == 0

    entries = {f["filename"]: f for f in json_page(tmp_path, "stable")["files"]}
    assert entries[signed.filename]["gpg-sig"] is True
    others = [f for name, f in entries.items() if name != signed.filename]
    assert others and all("gpg-sig" not in f for f in others)
    held = next((tmp_path / "web/packages").rglob(signed.filename + ".asc"))
    assert held.read_bytes() == signed.signature
    anchors = html_links((tmp_path / "web/simple/stable/index.html").read_text())
    assert [a.get("data-gpg-sig") for a in anchors if signed.filename in str(a["href"])] == [
        "true"
    ]


def test_a_missing_signature_is_not_advertised(upstream: Upstream, world: World, tmp_path: Path):
    signed = world.project("stable").files[0]
    signed.signature = b"sig"
    world.touch("stable")
    upstream.status[signed.path + ".asc"] = (404, {}, 100)

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 1 and "signature" in summary.failed[0][1]
    entry = next(f for f in json_page(tmp_path, "stable")["files"]
                 if f["filename"] == signed.filename)
    assert "gpg-sig" not in entry  # the file itself is published, its signature is not


def test_provenance_needs_a_public_url(upstream: Upstream, world: World, tmp_path: Path):
    attested = world.project("stable").files[0]
    attested.provenance = b'{"attestation_bundles": []}'
    world.touch("stable")

    without = sync(upstream, tmp_path / "a")
    with_url = sync(upstream, tmp_path / "b", public_url=PUBLIC)

    assert without.exit_code == 0 and with_url.exit_code == 0
    a_entry = next(f for f in json_page(tmp_path / "a", "stable")["files"]
                   if f["filename"] == attested.filename)
    assert "provenance" not in a_entry
    assert not list((tmp_path / "a/web").rglob("*.provenance"))

    b_entry = next(f for f in json_page(tmp_path / "b", "stable")["files"]
                   if f["filename"] == attested.filename)
    url = b_entry["provenance"]
    assert url.startswith(PUBLIC) and url.endswith(".provenance")
    local = tmp_path / "b/web" / url[len(PUBLIC):]
    assert local.read_bytes() == attested.provenance
    anchors = html_links((tmp_path / "b/web/simple/stable/index.html").read_text())
    assert url in [a.get("data-provenance") for a in anchors]


def test_no_pep_708_keys_are_emitted(upstream: Upstream, world: World, tmp_path: Path):
    project = world.project("stable")
    project.extra["tracks"] = ["https://elsewhere.example/simple/stable/"]
    project.extra["alternate-locations"] = ["https://elsewhere.example/simple/stable/"]
    world.touch("stable")
    sync(upstream, tmp_path)
    page = json_page(tmp_path, "stable")
    assert "tracks" not in page and "alternate-locations" not in page
    assert page["meta"]["api-version"] == "1.4"
