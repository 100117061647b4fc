"""Run reports: one JSON document per generation, written whole, pruned to keep-reports."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest

from simplemirror import __version__
from simplemirror.cli.config import ConfigError, build
from simplemirror.cli.main import main
from simplemirror.report import runreport
from simplemirror.sync.run import RunSummary
from tests.support.upstream import Upstream, World

TIMES = runreport.RunTimes("2025-01-01T00:00:00+00:00", "2025-01-01T00:01:00+00:00", 60.0004)


# -- pure ------------------------------------------------------------------------------

def test_render_carries_every_count_and_every_reason() -> None:
    summary = RunSummary(
        4, "partial", changed=3, deferred=[("late", "page older than the root")],
        failed=[("broken", "a.whl: sha256 mismatch")], removed=["gone"],
        rejected=[("bad name!", "invalid project name")], files_fetched=9,
        bytes_fetched=1000, metadata_from_wheels=5, metadata_fetched=2, files_deleted=2,
        duration=60.0004,
    )
    doc = runreport.render(
        summary, upstream="https://user:secret@mirror.example/simple/", times=TIMES,
        serials=runreport.Serials(upstream=50, held=45),
    )
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all the way down
    assert doc["schema"] == runreport.SCHEMA and doc["simplemirror"] == __version__
    assert doc["upstream"] == "https://mirror.example/simple/"  # never the credentials
    assert (doc["generation"], doc["outcome"], doc["exit_code"]) == (4, "partial", 1)
    assert doc["started"] == TIMES.started and doc["finished"] == TIMES.finished
    assert doc["duration_seconds"] == 60.0
    assert doc["counts"] == {
        "projects_changed": 3, "projects_deferred": 1, "projects_failed": 1,
        "entries_rejected": 1, "projects_removed": 1, "files_fetched": 9,
        "bytes_fetched": 1000, "metadata_from_wheels": 5, "metadata_fetched": 2,
        "files_reused": 0, "bytes_reused": 0, "reuse_hashed": 0, "reuse_rejected": 0,
        "files_deleted": 2,
    }
    assert doc["serial"] == {"upstream": 50, "held": 45, "lag": 5}
    assert doc["deferred"] == [{"project": "late", "reason": "page older than the root"}]
    assert doc["failed"] == [{"project": "broken", "reason": "a.whl: sha256 mismatch"}]
    assert doc["rejected"] == [{"entry": "bad name!", "reason": "invalid project name"}]
    assert doc["removed"] == ["gone"]
    assert doc["error"] is None and doc["stopped_by_signal"] is None


def test_a_stopped_run_reports_the_signal_and_its_exit_status() -> None:
    summary = RunSummary(2, "interrupted", stopped_by=signal.SIGTERM)
    doc = runreport.render(summary, upstream="http://127.0.0.1/simple/", times=TIMES,
                           serials=runreport.Serials(None, None))
    assert (doc["outcome"], doc["exit_code"], doc["stopped_by_signal"]) == (
        "interrupted", 143, signal.SIGTERM)
    assert doc["serial"] == {"upstream": None, "held": None, "lag": None}


def test_error_report() -> None:
    doc = runreport.render_error(9, "could not read the upstream root index: 503",
                                 upstream="http://127.0.0.1/simple/", times=TIMES,
                                 serials=runreport.Serials(10, 10))
    assert (doc["generation"], doc["outcome"], doc["exit_code"]) == (9, "error", 1)
    assert doc["error"] == "could not read the upstream root index: 503"
    assert doc["counts"]["files_fetched"] == 0 and doc["serial"]["lag"] == 0


def test_names_and_pruning() -> None:
    assert runreport.report_name(12) == "12.json"
    assert runreport.generation_of("12.json") == 12
    for other in (".12.json.abc.tmp", "12.json.tmp", "x.json", "12.txt", "-1.json"):
        assert runreport.generation_of(other) is None
    assert runreport.to_prune([3, 10, 1, 2], keep=2) == [1, 2]  # by number, not by name
    assert runreport.to_prune([1, 2], keep=5) == []
    assert runreport.to_prune([1, 2, 3], keep=0) == []  # 0 keeps every one


def test_keep_reports_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="keep-reports"):
        build({}, {"upstream": "http://127.0.0.1/simple/", "directory": "/m",
                   "keep_reports": -1})


# -- end to end ------------------------------------------------------------------------

def _config(tmp_path: Path, up: Upstream, extra: str = "") -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[mirror]\nupstream = "{up.url}"\ndirectory = "{tmp_path / "m"}"\n'
        "retries = 0\nretry-wait = 0.0\nretry-max-wait = 0.0\nstale-retries = 0\n"
        "stale-wait = 0.0\n" + extra
    )
    return path


def _report(tmp_path: Path, generation: int) -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        (tmp_path / "m" / "reports" / f"{generation}.json").read_text()
    )
    return doc


def test_every_run_leaves_a_report(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    world.add_project("beta", ["1.0"])
    with Upstream(world) as up:
        cfg = str(_config(tmp_path, up))
        assert main(["sync", "-c", cfg, "--no-progress"]) == 0
        first = _report(tmp_path, 1)
        assert (first["outcome"], first["exit_code"], first["upstream"]) == ("ok", 0, up.url)
        assert first["counts"]["projects_changed"] == 2  # type: ignore[index]
        assert first["counts"]["files_fetched"] == 4  # type: ignore[index]
        assert first["serial"] == {"upstream": world.serial, "held": world.serial, "lag": 0}
        started = datetime.fromisoformat(str(first["started"]))
        assert started.utcoffset() is not None and started.utcoffset().total_seconds() == 0
        assert datetime.fromisoformat(str(first["finished"])) >= started

        assert main(["sync", "-c", cfg, "--no-progress"]) == 0
        assert _report(tmp_path, 2)["outcome"] == "unchanged"

        world.add_release("beta", "2.0")
        up.stale["beta"] = 10
        assert main(["sync", "-c", cfg, "--no-progress"]) == 1
        third = _report(tmp_path, 3)
        assert (third["outcome"], third["exit_code"]) == ("partial", 1)
        assert [d["project"] for d in third["deferred"]] == ["beta"]  # type: ignore[attr-defined]
        assert third["deferred"][0]["reason"]  # type: ignore[index]
        assert third["serial"]["lag"] == 1  # type: ignore[index]

        up.fail["/simple/"] = 100
        assert main(["sync", "-c", cfg, "--no-progress"]) == 1
    fourth = _report(tmp_path, 4)
    assert (fourth["outcome"], fourth["exit_code"]) == ("error", 1)
    assert "could not read the upstream root index" in str(fourth["error"])
    reports = sorted(os.listdir(tmp_path / "m" / "reports"))
    assert reports == ["1.json", "2.json", "3.json", "4.json"]  # and no temporary files


def test_a_run_refused_by_the_lock_writes_no_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        cfg = str(_config(tmp_path, up))
        assert main(["sync", "-c", cfg, "--no-progress"]) == 0
        fd = os.open(tmp_path / "m" / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another sync would
            assert main(["sync", "-c", cfg, "--no-progress"]) == 1
        finally:
            os.close(fd)
    assert "another mirror sync" in capsys.readouterr().err
    # Generation 1's report stays the only one: the refused run began no generation.
    assert os.listdir(tmp_path / "m" / "reports") == ["1.json"]


def test_keep_reports_prunes_the_oldest(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        cfg = str(_config(tmp_path, up, "keep-reports = 2\n"))
        (tmp_path / "m" / "reports").mkdir(parents=True)
        keep = tmp_path / "m" / "reports" / "notes.txt"  # not a report: never touched
        keep.write_text("mine\n")
        for _ in range(4):
            assert main(["sync", "-c", cfg, "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "m" / "reports")) == ["3.json", "4.json", "notes.txt"]


def test_a_dry_run_writes_no_report(tmp_path: Path) -> None:
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        assert main(["sync", "-c", str(_config(tmp_path, up)), "--dry-run"]) == 0
    assert not (tmp_path / "m" / "reports").exists()
