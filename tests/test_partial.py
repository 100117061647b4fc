"""Partial mirrors on generated worlds: filters that decide per project and per file,
prune what they no longer allow through the removal path, fetch what they now allow,
and a cooldown that publishes a file on a later run without any change upstream."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.filter.rules import parse
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

LINUX = "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64"
TAGS = (LINUX, "cp312-cp312-win_amd64", "cp311-cp311-manylinux_2_17_x86_64",
        "cp312-cp312-macosx_11_0_arm64", "cp39-abi3-manylinux_2_28_aarch64")
DAY = 86400
T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def world() -> World:
    """Pre-releases, yanked releases, wheels for many platforms, requires-python values."""
    w = World()
    w.add_project("plain", ["1.0", "1.1", "2.0rc1"])
    for version in ("1.0", "2.0"):
        w.add_release("native", version, wheel=False, requires_python=">=3.9")
        for tag in TAGS:
            w.add_file("native", f"native-{version}-{tag}.whl",
                       f"native {version} {tag}".encode(), requires_python=">=3.9")
    w.add_project("yanky", ["1.0", "2.0", "3.0"])
    for f in w.project("yanky").files:
        if "-3.0" in f.filename:
            w.yank("yanky", f.filename, "broken")
    w.add_project("preonly", ["0.1a1", "0.2b1"])
    w.add_release("legacy", "0.9", wheel=False, requires_python="<3")
    w.add_release("legacy", "1.0", requires_python=">=3.8")
    return w


def settings(up: Upstream, directory: Path, filters: dict[str, Any] | None = None,
             **overrides: Any) -> config.Config:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "workers": 3, "retries": 0,
        "retry_wait": 0.0, "stale_retries": 0, "download_processes": 0,
    }
    if filters is not None:
        values["filters"] = parse(filters)
    values.update(overrides)
    return config.build({}, values)


def sync(up: Upstream, directory: Path, filters: dict[str, Any] | None = None, *,
         now: float | None = None, dry_run: bool = False, **overrides: Any) -> RunSummary:
    run = Sync(settings(up, directory, filters, **overrides))
    if now is not None:
        run.clock = lambda: now
    return run.run(dry_run=dry_run)


def listed(directory: Path) -> dict[str, list[str]]:
    return {name: sorted(files) for name, files in assert_consistent(directory / "web").items()}


def on_disk(directory: Path) -> set[str]:
    return {p.name for p in (directory / "web/packages").rglob("*")
            if p.is_file() and not p.name.endswith(".metadata")}


def versions(directory: Path, name: str) -> list[str]:
    page = json.loads((directory / "web/simple" / name / "index.v1_json").read_text())
    return list(page["versions"])


def rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "state.db") as db:
        return db.execute(sql).fetchall()


def everything(world: World) -> dict[str, list[str]]:
    return {name: sorted(f.filename for f in p.files) for name, p in world.projects.items()}


LINUX_312 = {"environments": [{"python": "3.12", "platforms": ["manylinux_2_28_x86_64"]}]}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"include-projects": ["pla.*", "native"], "exclude-projects": ["native"]},
         {"plain": "all"}),
        ({"prereleases": False},
         {"plain": ["plain-1.0-py3-none-any.whl", "plain-1.0.tar.gz",
                    "plain-1.1-py3-none-any.whl", "plain-1.1.tar.gz"],
          "preonly": "all"}),
        ({"latest-versions": 1},
         {"plain": ["plain-2.0rc1-py3-none-any.whl", "plain-2.0rc1.tar.gz"],
          "yanky": ["yanky-2.0-py3-none-any.whl", "yanky-2.0.tar.gz",
                    "yanky-3.0-py3-none-any.whl", "yanky-3.0.tar.gz"],
          "legacy": ["legacy-1.0-py3-none-any.whl", "legacy-1.0.tar.gz"],
          "preonly": ["preonly-0.2b1-py3-none-any.whl", "preonly-0.2b1.tar.gz"],
          "native": ["native-2.0.tar.gz", *(f"native-2.0-{t}.whl" for t in TAGS)]}),
        (LINUX_312,
         {"native": sorted(["native-1.0.tar.gz", "native-2.0.tar.gz",
                            f"native-1.0-{LINUX}.whl", f"native-2.0-{LINUX}.whl"]),
          "legacy": ["legacy-1.0-py3-none-any.whl", "legacy-1.0.tar.gz"]}),
        ({"sdists": False, "max-file-size": 100},
         {"native": sorted(f"native-{v}-{t}.whl" for v in ("1.0", "2.0") for t in TAGS),
          "plain": [], "yanky": [], "preonly": [], "legacy": []}),
        ({**LINUX_312, "sdists": False, "prereleases": False, "latest-versions": 1,
          "include-projects": ["native", "plain", "yanky"]},
         {"native": [f"native-2.0-{LINUX}.whl"], "plain": ["plain-1.1-py3-none-any.whl"],
          "yanky": ["yanky-2.0-py3-none-any.whl", "yanky-3.0-py3-none-any.whl"]}),
    ],
    ids=["projects", "prereleases", "latest-versions", "environments", "sdists-size",
         "combined"],
)
def test_each_filter_alone_and_combined(
    upstream: Upstream, world: World, tmp_path: Path, filters: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    summary = sync(upstream, tmp_path, filters)

    assert summary.exit_code == 0
    full = everything(world)
    narrows_projects = any(k in filters for k in ("include-projects", "exclude-projects"))
    want = {} if narrows_projects else dict(full)
    want.update({name: full[name] if files == "all" else sorted(files)
                 for name, files in expected.items()})
    assert listed(tmp_path) == want
    # Only what the pages list is on disk: nothing left out was downloaded.
    assert on_disk(tmp_path) == {f for files in want.values() for f in files}


def test_versions_list_only_versions_with_files_kept(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    sync(upstream, tmp_path, {"prereleases": False, **LINUX_312})
    assert versions(tmp_path, "plain") == ["1.0", "1.1"]
    assert versions(tmp_path, "legacy") == ["1.0"]
    assert versions(tmp_path, "preonly") == ["0.1a1", "0.2b1"]


def test_a_full_mirror_keeps_upstreams_versions_and_pages(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    sync(upstream, tmp_path)
    assert listed(tmp_path) == everything(world)
    assert versions(tmp_path, "plain") == ["1.0", "1.1", "2.0rc1"]
    assert rows(tmp_path, "SELECT DISTINCT filters FROM projects") == [(None,)]


def test_narrowing_prunes_through_the_removal_path_and_widening_fetches_again(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    sync(upstream, tmp_path)
    serial = world.serial

    narrowed = sync(upstream, tmp_path, {"prereleases": False, "latest-versions": 1},
                    allow_mass_delete=True)

    assert narrowed.exit_code == 0 and world.serial == serial
    assert listed(tmp_path)["plain"] == ["plain-1.1-py3-none-any.whl", "plain-1.1.tar.gz"]
    def count(pages: dict[str, list[str]]) -> int:
        return sum(map(len, pages.values()))

    assert narrowed.files_deleted == count(everything(world)) - count(listed(tmp_path)) == 15
    gone = rows(tmp_path, "SELECT filename, removed_gen, deleted_gen FROM files"
                " WHERE project = 'plain' AND removed_gen IS NOT NULL ORDER BY filename")
    assert [f for f, *_ in gone] == ["plain-1.0-py3-none-any.whl", "plain-1.0.tar.gz",
                                     "plain-2.0rc1-py3-none-any.whl", "plain-2.0rc1.tar.gz"]
    assert {(r, d) for _, r, d in gone} == {(2, 2)}  # tombstones, in this generation
    assert "plain-1.0.tar.gz" not in on_disk(tmp_path)

    upstream.reset_requests()
    widened = sync(upstream, tmp_path)

    # Nothing changed upstream, yet what the filters now allow comes back.
    assert widened.exit_code == 0 and world.serial == serial
    assert listed(tmp_path) == everything(world)
    assert widened.files_fetched == narrowed.files_deleted
    assert versions(tmp_path, "plain") == ["1.0", "1.1", "2.0rc1"]


def test_narrowing_past_max_removal_keeps_the_files_until_allowed(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    world.add_project("zzz-many", [f"1.{i}" for i in range(20)])
    sync(upstream, tmp_path)

    refused = sync(upstream, tmp_path, {"sdists": False})

    assert refused.exit_code == 1
    failed = dict(refused.failed)
    assert "the filters leave out 20 file(s)" in failed["zzz-many"]
    assert all("--allow-mass-delete" in why for why in failed.values())
    # Past the cap a project keeps what the filters leave out, listed, every page whole;
    # those before it lost their sdists.
    pages = listed(tmp_path)
    for name, files in everything(world).items():
        held = files if name in failed else [f for f in files if not f.endswith(".gz")]
        assert pages[name] == held
    allowed = sync(upstream, tmp_path, {"sdists": False}, allow_mass_delete=True)
    assert allowed.exit_code == 0
    assert not [f for files in listed(tmp_path).values() for f in files if f.endswith(".gz")]


def test_projects_the_filters_leave_out_are_removed_and_come_back(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    sync(upstream, tmp_path)
    only_two = {"include-projects": ["plain", "native"]}

    with pytest.raises(SyncError, match="the filters leave out 3 of the 5 projects held"):
        sync(upstream, tmp_path, only_two)
    assert sorted(listed(tmp_path)) == sorted(everything(world))

    pruned = sync(upstream, tmp_path, only_two, allow_mass_delete=True)
    assert pruned.exit_code == 0 and pruned.pruned == ["legacy", "preonly", "yanky"]
    assert pruned.removed == []  # upstream removed nothing
    assert sorted(listed(tmp_path)) == ["native", "plain"]
    assert rows(tmp_path, "SELECT status FROM projects WHERE name = 'yanky'") == [("removed",)]
    assert not [f for f in on_disk(tmp_path) if f.startswith("yanky")]

    back = sync(upstream, tmp_path)
    assert back.exit_code == 0 and listed(tmp_path) == everything(world)


def test_a_cooldown_publishes_a_held_back_file_on_a_later_run_without_a_new_serial(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    week = {"min-age": "7d"}
    sync(upstream, tmp_path, week, now=T0)  # every generated file is years old
    world.add_file("plain", "plain-3.0.tar.gz", b"fresh", upload_time=iso(T0 - DAY))
    world.add_file("plain", "plain-3.0-py3-none-any.whl", b"fresher",
                   upload_time=iso(T0 - DAY / 2))
    serial = world.serial

    early = sync(upstream, tmp_path, week, now=T0)

    assert early.exit_code == 0 and early.filtered.held_back == [2, 12]
    assert "plain-3.0.tar.gz" not in listed(tmp_path)["plain"]
    assert "3.0" not in versions(tmp_path, "plain")
    assert not [f for f in on_disk(tmp_path) if "plain-3.0" in f]  # not downloaded early
    assert rows(tmp_path, "SELECT held_until FROM projects WHERE name = 'plain'") == [
        (int(T0 + 6 * DAY) + 1,)]

    upstream.reset_requests()
    still_early = sync(upstream, tmp_path, week, now=T0 + 5 * DAY)
    assert still_early.outcome == "unchanged" and upstream.paths() == ["/simple/"]

    upstream.reset_requests()
    later = sync(upstream, tmp_path, week, now=T0 + 6 * DAY + 60)

    assert world.serial == serial and later.exit_code == 0
    # The root answered 304; the one project due was asked for, nothing else.
    assert [p for p in upstream.paths() if p.startswith("/simple/")] == [
        "/simple/", "/simple/plain/"]
    assert "plain-3.0.tar.gz" in listed(tmp_path)["plain"]
    assert "plain-3.0-py3-none-any.whl" not in listed(tmp_path)["plain"]  # half a day more
    assert "3.0" in versions(tmp_path, "plain")

    last = sync(upstream, tmp_path, week, now=T0 + 7 * DAY)
    assert "plain-3.0-py3-none-any.whl" in listed(tmp_path)["plain"] and last.exit_code == 0
    assert rows(tmp_path, "SELECT held_until FROM projects WHERE name = 'plain'") == [(None,)]


def test_a_cooldown_fails_closed_without_upload_times_unless_exempt(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    world.add_file("plain", "plain-9.0.tar.gz", b"undated", extra={"upload-time": None})
    world.project("plain").file("plain-9.0.tar.gz").upload_time = None
    upstream.json_enabled = False  # and an HTML upstream gives no upload-time at all

    sync(upstream, tmp_path, {"min-age": "1d", "min-age-exempt": ["legacy"]}, now=T0)

    pages = listed(tmp_path)
    assert pages["legacy"] == everything(world)["legacy"]
    assert pages["plain"] == [] and pages["native"] == []


def test_the_dry_run_shows_what_the_filters_keep_and_leave_out(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    filters = {"sdists": False, "prereleases": False}
    forecast = sync(upstream, tmp_path, filters, dry_run=True)
    summary = sync(upstream, tmp_path, filters)

    assert forecast.forecast is not None
    tally = forecast.forecast.filtered
    assert tally.to_data() == summary.filtered.to_data()
    assert tally.left_out["sdists"][0] == 12 and tally.left_out["prereleases"][0] == 1
    assert tally.kept[0] == forecast.forecast.files == summary.files_fetched
    assert tally.kept[1] == forecast.forecast.bytes > 0


def test_a_cooldown_is_not_confirmed_away_by_an_unchanged_page_without_serials(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    upstream.serial_mode = "none"  # every page asked again, conditionally
    world.add_file("plain", "plain-3.0.tar.gz", b"fresh", upload_time=iso(T0 - DAY))
    sync(upstream, tmp_path, {"min-age": "2d"}, now=T0)
    assert "plain-3.0.tar.gz" not in listed(tmp_path)["plain"]

    upstream.reset_requests()
    sync(upstream, tmp_path, {"min-age": "2d"}, now=T0 + 2 * DAY)

    assert "plain-3.0.tar.gz" in listed(tmp_path)["plain"]
    asked = {r.path: r.header("If-None-Match") for r in upstream.requests}
    # The page due is read whole; the others may still be confirmed by a 304.
    assert asked["/simple/plain/"] is None and asked["/simple/yanky/"] is not None


def test_status_the_report_and_the_dry_run_say_which_filters_are_in_force(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simplemirror.cli.main import main

    mirror = tmp_path / "mirror"
    path = tmp_path / "mirror.toml"

    def write(filters: str) -> None:
        path.write_text(f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{mirror}"\n'
                        f'retries = 0\ndownload-processes = 0\n[filters]\n{filters}')

    write('sdists = false\nprereleases = false\nexclude-projects = ["legacy"]\n')
    assert main(["sync", "-c", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'filters: exclude-projects = ["legacy"]; prereleases = false; sdists = false' in out
    assert "left out by sdists: 10 file(s)" in out and "left out by prereleases: 1 file(s)" in out

    assert main(["sync", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "left out by sdists: 10 file(s)" in out
    report = json.loads((mirror / "reports/1.json").read_text())
    assert report["filters"]["in_force"] == {
        "exclude-projects": ["legacy"], "prereleases": False, "sdists": False}
    assert report["filters"]["left_out_by"]["sdists"]["files"] == 10
    assert report["filters"]["files_kept"] == report["counts"]["files_fetched"]

    assert main(["status", "-c", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["filters"] == report["filters"]["in_force"]
    assert info["filters_configured"] is None

    write("")  # every filter dropped: the next sync widens, and status says so till then
    assert main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "filters:       exclude-projects" in out
    assert "the next sync applies them: none (a full mirror)" in out
    assert main(["sync", "-c", str(path)]) == 0
    capsys.readouterr()
    assert main(["status", "--directory", str(mirror), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["filters"] == {}
    assert listed(mirror) == everything(world)


def test_a_subset_costs_its_share_of_the_requests(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    for i in range(95):
        world.add_project(f"filler-{i}", ["1.0"])
    upstream.reset_requests()

    sync(upstream, tmp_path, {"include-projects": ["plain"]})

    asked = upstream.paths()
    # The root, one page, and that project's files: nothing of the 99 others.
    files = [f.path for f in world.project("plain").files]
    assert sorted(asked) == sorted(["/simple/", "/simple/plain/", *files])
    assert list(listed(tmp_path)) == ["plain"]
