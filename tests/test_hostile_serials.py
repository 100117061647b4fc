"""Impossible serials and pages that cannot be parsed: one entry's or one project's
problem, never the run's.

A serial of 2**63 or more does not fit SQLite's INTEGER, and int() refuses to read
more than 4300 digits; before these tests, either one in any upstream document ended
every run with a traceback. Each test runs a real sync against the test upstream and
checks the outcome, that the published tree is consistent, and that the other
projects were mirrored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.sync.run import RunSummary, Sync
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

TOO_BIG = str(2**63)  # one past SQLite's largest INTEGER
HUGE = "9" * 5000  # past the 4300 digits int() reads
SERIALS = {"2**63": TOO_BIG, "5000 digits": HUGE}


@pytest.fixture
def world() -> World:
    w = World()
    # Pages are fetched in name order: with one worker, alpha's and beta's in this
    # process, and, once alpha's files have started a download process, the rest there.
    for name in ("alpha", "beta", "poisoned", "zulu"):
        w.add_project(name, ["1.0"])
    return w


@pytest.fixture
def up(world: World) -> Iterator[Upstream]:
    with Upstream(world) as upstream:
        yield upstream
    assert upstream.errors == []


@pytest.fixture
def in_a_process(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The projects whose pages a download process fetched and parsed."""
    from simplemirror.sync import run as sync_module
    from tests.support.process import StartedPool

    pages: list[str] = []

    class Recording(StartedPool):
        def submit(self, fn: Any, *args: Any) -> Any:
            if fn.__name__ == "get_page":
                pages.append(args[0].name)
            return super().submit(fn, *args)

    monkeypatch.setattr(sync_module, "ProcessPool", Recording)
    return pages


WHERE = {"threads": {}, "download-process": {"workers": 1, "download_processes": 1}}


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "retries": 0, "retry_wait": 0.0,
        "stale_retries": 0, "download_processes": 0,
    }
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def mirrored(directory: Path) -> dict[str, list[str]]:
    return assert_consistent(directory / "web")


def published_serial(directory: Path, name: str) -> object:
    page = json.loads((directory / "web/simple" / name / "index.v1_json").read_text())
    return page["meta"].get("_last-serial")


# -- a root entry ----------------------------------------------------------------------------


@pytest.mark.parametrize("as_string", [False, True], ids=["number", "string"])
@pytest.mark.parametrize("serial", SERIALS.values(), ids=SERIALS.keys())
def test_a_root_entry_with_an_impossible_serial_is_rejected(
    up: Upstream, tmp_path: Path, serial: str, as_string: bool
) -> None:
    up.serial_as_string = as_string
    up.entry_serial_text["poisoned"] = serial

    summary = sync(up, tmp_path)

    assert summary.exit_code == 1 and summary.failed == [] and summary.deferred == []
    assert [entry for entry, _ in summary.rejected] == ["poisoned"]
    assert "serial" in summary.rejected[0][1]
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "zulu"]
    assert "/simple/poisoned/" not in up.paths()  # refused before anything was fetched


def test_a_held_project_whose_root_entry_turns_impossible_is_kept_as_it_was(
    up: Upstream, world: World, tmp_path: Path
) -> None:
    assert sync(up, tmp_path).exit_code == 0
    world.add_release("poisoned", "2.0")
    world.add_release("zulu", "2.0")
    up.entry_serial_text["poisoned"] = HUGE

    summary = sync(up, tmp_path)

    # Refused, and not taken for a project upstream removed either.
    assert summary.exit_code == 1 and summary.removed == []
    assert [entry for entry, _ in summary.rejected] == ["poisoned"]
    listed = mirrored(tmp_path)
    assert listed["poisoned"] == ["poisoned-1.0.tar.gz", "poisoned-1.0-py3-none-any.whl"]
    assert "zulu-2.0.tar.gz" in listed["zulu"]

    up.entry_serial_text.clear()  # upstream mends it: the next run catches up
    assert sync(up, tmp_path).exit_code == 0
    assert "poisoned-2.0.tar.gz" in mirrored(tmp_path)["poisoned"]


def test_a_poisoned_root_entry_is_a_clear_run_outcome_from_the_command_line(
    up: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up.entry_serial_text["poisoned"] = TOO_BIG
    code = main([
        "sync", "--upstream", up.url, "--directory", str(tmp_path), "--no-progress",
        "--download-processes", "0",
    ])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert "poisoned" in out + err and "serial" in out + err
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "zulu"]


# -- the root's own serial -------------------------------------------------------------------


@pytest.mark.parametrize("json_enabled", [True, False], ids=["json", "html"])
@pytest.mark.parametrize("serial", SERIALS.values(), ids=SERIALS.keys())
@pytest.mark.parametrize("where", ["root-meta", "header"])
def test_an_impossible_root_or_header_serial_counts_as_none(
    up: Upstream, world: World, tmp_path: Path, where: str, serial: str, json_enabled: bool
) -> None:
    up.json_enabled = json_enabled
    if where == "root-meta":
        up.root_serial_text = serial
    else:
        # The only serial there is, on the root and every page, 304s included.
        up.serial_mode, up.header_serial_text = "none", serial

    assert sync(up, tmp_path).exit_code == 0
    world.add_release("zulu", "2.0")
    summary = sync(up, tmp_path)  # with ETags, and pages asked conditionally over HTML

    assert summary.exit_code == 0
    root = json.loads((tmp_path / "web/simple/index.v1_json").read_text())
    assert root["meta"].get("_last-serial") != int(TOO_BIG)
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "poisoned", "zulu"]
    assert "zulu-2.0.tar.gz" in mirrored(tmp_path)["zulu"]


# -- a project page --------------------------------------------------------------------------

PAGE_CASES = {
    # (serial, as a JSON string, served as JSON)
    "json-2**63": (TOO_BIG, False, True),
    "json-string-2**63": (TOO_BIG, True, True),
    "json-string-5000-digits": (HUGE, True, True),
    "html-comment-2**63": (TOO_BIG, False, False),
    "html-comment-5000-digits": (HUGE, False, False),
}


@pytest.mark.parametrize("where", WHERE.values(), ids=WHERE.keys())
@pytest.mark.parametrize(("serial", "as_string", "json_enabled"), PAGE_CASES.values(),
                         ids=PAGE_CASES.keys())
def test_a_page_with_an_impossible_serial_is_mirrored_with_its_header_serial(
    up: Upstream, world: World, tmp_path: Path, serial: str, as_string: bool,
    json_enabled: bool, where: dict[str, int], in_a_process: list[str],
) -> None:
    up.serial_as_string, up.json_enabled = as_string, json_enabled
    up.page_serial_text["poisoned"] = serial

    summary = sync(up, tmp_path, **where)

    assert summary.exit_code == 0, summary.failed
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "poisoned", "zulu"]
    # The page's serial is ignored; X-PyPI-Last-Serial gives the real one.
    assert published_serial(tmp_path, "poisoned") == world.project("poisoned").serial
    assert ("poisoned" in in_a_process) == bool(where)


@pytest.mark.parametrize("where", WHERE.values(), ids=WHERE.keys())
def test_a_page_with_an_impossible_serial_and_no_header_is_mirrored_without_one(
    up: Upstream, tmp_path: Path, where: dict[str, int], in_a_process: list[str]
) -> None:
    up.page_serial_text["poisoned"] = TOO_BIG
    up.send_serial_header = False

    summary = sync(up, tmp_path, **where)

    assert summary.exit_code == 0, summary.failed
    assert published_serial(tmp_path, "poisoned") is None
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "poisoned", "zulu"]
    assert ("poisoned" in in_a_process) == bool(where)


@pytest.mark.parametrize("where", WHERE.values(), ids=WHERE.keys())
def test_a_page_with_a_5000_digit_json_number_fails_only_its_project(
    up: Upstream, tmp_path: Path, where: dict[str, int], in_a_process: list[str]
) -> None:
    # JSON that json.loads will not read at all: the page is unusable.
    up.page_serial_text["poisoned"] = HUGE

    summary = sync(up, tmp_path, **where)

    assert summary.exit_code == 1 and [name for name, _ in summary.failed] == ["poisoned"]
    assert "malformed JSON (a number of more digits than this mirror reads)" in (
        summary.failed[0][1]
    )
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "zulu"]
    assert ("poisoned" in in_a_process) == bool(where)


@pytest.mark.parametrize("where", WHERE.values(), ids=WHERE.keys())
def test_a_page_the_parser_chokes_on_fails_only_its_project(
    up: Upstream, world: World, tmp_path: Path, where: dict[str, int], in_a_process: list[str]
) -> None:
    # urllib's URL parsing raises ValueError on an unclosed IPv6 bracket: not a
    # failure the page parser expects, and still only this project's.
    world.add_file("poisoned", "bad-1.0.tar.gz", b"x", extra={"url": "http://[::1/bad-1.0.tar.gz"})

    summary = sync(up, tmp_path, **where)

    assert summary.exit_code == 1 and [name for name, _ in summary.failed] == ["poisoned"]
    assert "/simple/poisoned/" in summary.failed[0][1]
    assert sorted(mirrored(tmp_path)) == ["alpha", "beta", "zulu"]
    assert ("poisoned" in in_a_process) == bool(where)
