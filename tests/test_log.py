"""`mirror log`: what each run changed, read from state.db after real syncs against the
test upstream, with the world changed between them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli.main import main
from simplemirror.report.history import _human_duration
from simplemirror.report.units import human_bytes
from tests.support.process import run
from tests.support.upstream import Upstream, World


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("keeper", ["1.0"])
    w.add_project("doomed", ["1.0", "2.0"])
    w.add_project("tweak", ["1.0"])
    return w


def sync(capsys: pytest.CaptureFixture[str], upstream: Upstream, directory: Path,
         *extra: str) -> int:
    cfg = directory.with_name("mirror.toml")
    cfg.write_text(
        f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{directory}"\n'
        "retries = 0\nretry-wait = 0.0\nstale-retries = 0\nstale-wait = 0.0\n"
    )
    return run(capsys, "sync", "-c", str(cfg), *extra)[0]


def log_json(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "log", "--directory", str(directory), "--json", *args)
    assert code == 0, err
    return json.loads(out)


def log_text(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> str:
    code, out, err = run(capsys, "log", "--directory", str(directory), *args)
    assert code == 0, err
    return out


def upfiles(world: World, name: str, *versions: str) -> set[tuple[str, str, int]]:
    return {
        (name, f.filename, f.size)
        for f in world.project(name).files
        if not versions or f.version in versions
    }


def files(change: dict[str, Any], which: str) -> set[tuple[str, str, int]]:
    listed = change["files"][which]
    assert [(f["project"], f["filename"]) for f in listed] == sorted(
        (f["project"], f["filename"]) for f in listed)
    found = {(f["project"], f["filename"], f["size"]) for f in listed}
    assert len(found) == len(listed)
    assert change["files"][f"bytes_{which}"] == sum(size for _, _, size in found)
    return found


def sections(text: str) -> list[str]:
    """The text of --generation without its first two lines (times, fetched counts)."""
    return text.splitlines()[2:]


def expected_sections(projects: dict[str, list[str]],
                      added: set[tuple[str, str, int]],
                      removed: set[tuple[str, str, int]]) -> list[str]:
    lines = []
    for change in ("added", "changed", "removed"):
        names = projects.get(change, [])
        lines.append(f"projects {change} ({len(names)}){':' if names else ''}")
        lines += [f"  {name}" for name in names]
    for change, held in (("added", added), ("removed", removed)):
        total = human_bytes(sum(size for _, _, size in held))
        lines.append(f"files {change} ({len(held)}, {total}){':' if held else ''}")
        width = max((len(p) + len(f) + 1 for p, f, _ in held), default=0)
        lines += [f"  {p + '/' + f:<{width}}  {human_bytes(s):>9}" for p, f, s in sorted(held)]
    return lines


def test_log_reports_exactly_what_each_run_changed(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    expected: dict[int, tuple[dict[str, list[str]], set[Any], set[Any]]] = {}

    # 1: the first run adds everything.
    assert sync(capsys, upstream, directory) == 0
    first = upfiles(world, "keeper") | upfiles(world, "doomed") | upfiles(world, "tweak")
    expected[1] = ({"added": ["doomed", "keeper", "tweak"]}, first, set())

    # 2: a new project, a new release, a file deleted, a project touched (no file change).
    world.add_project("fresh", ["1.0"])
    world.add_release("keeper", "2.0")
    gone = upfiles(world, "doomed", "1.0")
    gone = {f for f in gone if f[1].endswith(".tar.gz")}
    world.remove_file("doomed", next(iter(gone))[1])
    world.touch("tweak")
    assert sync(capsys, upstream, directory) == 0
    expected[2] = (
        {"added": ["fresh"], "changed": ["doomed", "keeper", "tweak"]},
        upfiles(world, "fresh") | upfiles(world, "keeper", "2.0"),
        gone,
    )

    # 3: a project removed (its files go with it), a file replaced under the same name.
    doomed_left = upfiles(world, "doomed")
    world.remove_project("doomed")
    sdist = next(f for f in world.project("keeper").files if f.filename == "keeper-1.0.tar.gz")
    old_sdist = ("keeper", sdist.filename, sdist.size)
    world.remove_file("keeper", sdist.filename)
    world.add_file("keeper", sdist.filename, b"the same name, other bytes")
    assert sync(capsys, upstream, directory) == 0
    expected[3] = (
        {"changed": ["keeper"], "removed": ["doomed"]},
        {("keeper", "keeper-1.0.tar.gz", len(b"the same name, other bytes"))},
        doomed_left | {old_sdist},
    )

    # 4: the removed project comes back.
    world.add_project("doomed", ["3.0"])
    assert sync(capsys, upstream, directory) == 0
    expected[4] = ({"added": ["doomed"]}, upfiles(world, "doomed"), set())

    # 5: nothing changed upstream; a dry run records no generation at all.
    assert sync(capsys, upstream, directory) == 0
    expected[5] = ({}, set(), set())
    assert sync(capsys, upstream, directory, "--dry-run") == 0
    upstream.reset_requests()

    listing = log_json(capsys, directory)
    assert listing["directory"] == str(directory)
    assert [r["generation"] for r in listing["runs"]] == [5, 4, 3, 2, 1]
    assert [r["outcome"] for r in listing["runs"]] == ["unchanged", "ok", "ok", "ok", "ok"]
    assert [(r["projects_changed"], r["projects_removed"]) for r in listing["runs"]] == [
        (0, 0), (1, 0), (1, 1), (4, 0), (3, 0)]
    assert [r["files_fetched"] for r in listing["runs"]] == [0, 2, 1, 4, 8]
    for r in listing["runs"]:
        assert r["upstream"] == upstream.url and r["finished"] and r["duration_seconds"] >= 0
        assert r["projects_deferred"] == r["projects_failed"] == 0 and r["error"] is None
    assert listing["runs"][0]["bytes_fetched"] == 0 < listing["runs"][1]["bytes_fetched"]

    text = log_text(capsys, directory).splitlines()
    assert text[0].split() == ["generation", "started", "(UTC)", "duration", "outcome",
                               "changed", "removed", "files", "fetched"]
    assert len(text) == 6
    for line, r in zip(text[1:], listing["runs"], strict=True):
        cells = line.split()
        assert cells[:2] == [str(r["generation"]), r["started"]]
        assert cells[2:] == [*_human_duration(r["duration_seconds"]).split(), r["outcome"],
                              str(r["projects_changed"]), str(r["projects_removed"]),
                              str(r["files_fetched"]), *human_bytes(r["bytes_fetched"]).split()]

    assert [r["generation"] for r in log_json(capsys, directory, "--limit", "2")["runs"]] == [5, 4]
    assert len(log_text(capsys, directory, "--limit", "2").splitlines()) == 3

    for generation, (projects, added, removed) in expected.items():
        change = log_json(capsys, directory, "--generation", str(generation))
        assert change["run"] == listing["runs"][5 - generation]
        assert change["projects"] == {
            c: projects.get(c, []) for c in ("added", "changed", "removed")}, generation
        assert files(change, "added") == added, generation
        assert files(change, "removed") == removed, generation
        if generation == 4:  # what it added is still there, at the path given
            for f in change["files"]["added"]:
                assert (directory / "web" / f["path"]).stat().st_size == f["size"]

        text = log_text(capsys, directory, "--generation", str(generation))
        assert text.startswith(f"generation {generation}, {change['run']['outcome']}, started ")
        assert sections(text) == expected_sections(projects, added, removed), generation
    assert upstream.requests == []  # the log never goes to the network


def test_log_of_runs_that_did_not_finish_cleanly(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    # 1: one project fails: the others are published, the failed one is not.
    upstream.fail["/simple/doomed/"] = 10
    assert sync(capsys, upstream, directory) == 1
    upstream.fail.clear()
    # 2: upstream's root fails: an error run, which changed nothing.
    upstream.fail["/simple/"] = 10
    assert sync(capsys, upstream, directory) == 1
    upstream.fail.clear()
    # 3: the failed project arrives.
    assert sync(capsys, upstream, directory) == 0

    runs = log_json(capsys, directory)["runs"]
    assert [(r["generation"], r["outcome"]) for r in runs] == [(3, "ok"), (2, "error"),
                                                               (1, "partial")]
    assert "503" in runs[1]["error"] and runs[2]["projects_failed"] == 1

    partial = log_json(capsys, directory, "--generation", "1")
    assert partial["projects"] == {"added": ["keeper", "tweak"], "changed": [], "removed": []}
    assert files(partial, "added") == upfiles(world, "keeper") | upfiles(world, "tweak")
    error = log_json(capsys, directory, "--generation", "2")
    assert error["projects"] == {"added": [], "changed": [], "removed": []}
    assert error["files"]["added"] == error["files"]["removed"] == []
    text = log_text(capsys, directory, "--generation", "2")
    assert text.startswith("generation 2, error, started ") and "503" in text.splitlines()[0]
    later = log_json(capsys, directory, "--generation", "3")
    assert later["projects"]["added"] == ["doomed"]
    assert files(later, "added") == upfiles(world, "doomed")


def test_a_removal_noticed_by_an_interrupted_run_is_logged_when_the_pages_go(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from simplemirror.cli import config
    from simplemirror.report.progress import Reporter
    from simplemirror.sync.run import Sync

    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    doomed = upfiles(world, "doomed")
    world.remove_project("doomed")
    world.add_project("fresh")

    class StopAtOnce(Reporter):
        def start(self, projects: int) -> None:
            run.request_stop(15)  # SIGTERM, as systemd stopping the service sends

    cfg = config.build({}, {"upstream": upstream.url, "directory": str(directory)})
    run = Sync(cfg, StopAtOnce())
    assert run.run().outcome == "interrupted"
    # Generation 2 noticed the removal but deleted nothing: doomed is still published.
    stopped = log_json(capsys, directory, "--generation", "2")
    assert stopped["run"]["outcome"] == "interrupted"
    assert stopped["projects"] == {"added": [], "changed": [], "removed": []}
    assert stopped["files"]["added"] == stopped["files"]["removed"] == []
    assert (directory / "web/simple/doomed/index.html").exists()

    assert sync(capsys, upstream, directory) == 0
    resumed = log_json(capsys, directory, "--generation", "3")
    assert resumed["projects"] == {"added": ["fresh"], "changed": [], "removed": ["doomed"]}
    assert files(resumed, "removed") == doomed
    assert files(resumed, "added") == upfiles(world, "fresh")
    assert not (directory / "web/simple/doomed").exists()


def test_log_of_a_generation_that_does_not_exist(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    for missing in ("2", "0", "-1", "9" * 30, "-" + "9" * 30):
        code, out, err = run(capsys, "log", "--directory", str(directory), "--generation", missing)
        assert code == 1 and out == ""
        assert err == (f"mirror: there is no generation {missing} in {directory / 'state.db'}"
                       " (it holds 1 to 1); `mirror log` lists the runs\n")
    for limit in ("0", "9" * 30):
        with pytest.raises(SystemExit) as exited:
            main(["log", "--directory", str(directory), "--limit", limit])
        assert exited.value.code == 2 and "--limit" in capsys.readouterr().err


def test_log_of_a_state_db_with_no_run_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from simplemirror.store.state import State

    State(tmp_path / "state.db").close()
    assert log_text(capsys, tmp_path) == f"no run is recorded in {tmp_path} yet\n"
    assert log_json(capsys, tmp_path) == {"directory": str(tmp_path), "runs": []}
    code, _, err = run(capsys, "log", "--directory", str(tmp_path), "--generation", "1")
    assert code == 1 and "no run is recorded" in err and "\n" not in err.rstrip("\n")


def test_log_without_state_db_says_what_status_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    where = str(tmp_path / "nothing")
    code, out, err = run(capsys, "log", "--directory", where)
    assert code == 1 and out == ""
    assert (code, err) == run(capsys, "status", "--directory", where)[::2]
    assert "no state.db" in err
    assert run(capsys, "log", "--directory", where, "--generation", "1")[::2] == (1, err)
    assert not (tmp_path / "nothing").exists()
    code, _, err = run(capsys, "log")
    assert code == 2 and "--directory" in err


def test_log_reads_while_a_sync_holds_a_write_transaction(
    upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    cfg = directory.with_name("mirror.toml")
    held = [directory / "state.db", directory / "state.db-wal"]
    before = [p.read_bytes() if p.exists() else None for p in held]
    log_json(capsys, directory)
    log_json(capsys, directory, "--generation", "1")
    assert [p.read_bytes() if p.exists() else None for p in held] == before  # wrote nothing
    writer = sqlite3.connect(directory / "state.db", timeout=0.1)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO runs (started, upstream, outcome) VALUES ('2030-01-01', 'x', 'running')"
        )
        # Not blocked by the writer's lock, and it sees the last committed state.
        assert [r["generation"] for r in log_json(capsys, directory)["runs"]] == [1]
        code, out, _ = run(capsys, "log", "-c", str(cfg), "--generation", "1")
        assert code == 0 and "projects added (3):" in out
        writer.commit()
        runs = log_json(capsys, directory)["runs"]
        assert runs[0]["generation"] == 2 and runs[0]["outcome"] == "running"
        assert runs[0]["duration_seconds"] is None
        line = log_text(capsys, directory).splitlines()[1].split()
        assert line[:5] == ["2", "2030-01-01", "-", "running", "0"]
    finally:
        writer.close()


def test_a_state_db_from_before_the_log_shows_files_and_project_changes_from_then_on(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    directory = tmp_path / "mirror"
    assert sync(capsys, upstream, directory) == 0
    # What an older simplemirror leaves: no project_changes table, schema 2.
    with sqlite3.connect(directory / "state.db") as db:
        db.execute("DROP TABLE project_changes")
        db.execute("DELETE FROM meta WHERE key = 'changes_since'")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()

    # Read as it stands (read-only: no migration): files yes, projects unknown.
    old = log_json(capsys, directory, "--generation", "1")
    assert old["projects"] is None and files(old, "added")
    assert "projects: not recorded" in log_text(capsys, directory, "--generation", "1")

    world.add_project("fresh")
    assert sync(capsys, upstream, directory) == 0  # migrates; records from generation 2 on
    assert log_json(capsys, directory, "--generation", "1")["projects"] is None
    new = log_json(capsys, directory, "--generation", "2")
    assert new["projects"] == {"added": ["fresh"], "changed": [], "removed": []}
    assert files(new, "added") == upfiles(world, "fresh")


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0.2, "0 s"), (59.4, "59 s"), (65, "1 min 05 s"), (3600, "1 h 00 min"),
    (7384, "2 h 03 min"),
])
def test_human_duration(seconds: float | None, text: str):
    assert _human_duration(seconds) == text
