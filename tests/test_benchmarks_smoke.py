"""benchmarks/compare.py runs end to end: a tiny world, real nginx, simplemirror only.

The benchmarks are run by hand; this only keeps them from rotting. It checks that the
figures are sane, not that they are fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECTS, CHANGES = 20, 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]


def test_compare_on_a_tiny_world(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.compare",
            "--world", "metadata", "--projects", str(PROJECTS), "--changes", str(CHANGES),
            "--only", "simplemirror", "--workdir", str(tmp_path / "work"),
            "--json-out", str(report_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    phases = {p["phase"]: p for p in report["phases"]}
    assert set(phases) == {"initial", "noop", "incremental"}
    assert all(p["tool"] == "simplemirror" for p in phases.values())

    files, metadata = report["world_files"]["initial"]
    assert (files, metadata) == (PROJECTS, PROJECTS)  # one wheel and its .metadata each
    initial = phases["initial"]
    # The root, a page per project, and every file: at least that many requests.
    assert initial["served"]["requests"] >= 1 + PROJECTS + files + metadata
    assert initial["served"]["bytes"] > 0
    assert initial["wall"] > 0 and initial["cpu"] > 0 and initial["max_rss_mb"] > 0
    assert (initial["files_on_disk"], initial["metadata_on_disk"]) == (files, metadata)

    noop = phases["noop"]
    assert noop["served"]["requests"] >= 1
    assert noop["pages_written"] == 0

    incremental = phases["incremental"]
    files_after, metadata_after = report["world_files"]["after"]
    assert (files_after, metadata_after) == (PROJECTS + CHANGES, PROJECTS + CHANGES)
    assert (incremental["files_on_disk"], incremental["metadata_on_disk"]) == (
        files_after, metadata_after,
    )
    assert incremental["served"]["requests"] >= 1 + CHANGES * 3
    assert incremental["pages_written"] >= CHANGES * 2
    # Nothing of the run is left behind but the report.
    assert not any((tmp_path / "work").iterdir())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_yardsticks_on_a_tiny_file_world(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.compare", "--world", "files", "--projects", "3",
            "--changes", "1", "--only", "simplemirror", "--workdir", str(tmp_path / "work"),
            "--json-out", str(report_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    files, metadata = report["world_files"]["initial"]
    limits = report["limit"]
    assert set(limits) == {"hash only", "limit", "curl"}
    for figures in limits.values():
        assert figures["errors"] == 0
        assert figures["requests"] == files + metadata
        # Each yardstick fetched every file URL once and was timed and charged its CPU.
        assert figures["mb"] > 0 and figures["seconds"] > 0 and figures["cpu"] > 0
    assert "throughput / curl (curl|sha256sum)" in done.stdout


def test_noop_benchmark_on_a_small_synthetic_mirror(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.noop", "--projects", "300",
         "--mirror", str(Path(sys.executable).parent / "mirror"), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("300 projects")
    for case in ("304", "same bytes", "new bytes"):
        row = next(line for line in lines if line.strip().startswith(case))
        assert row.endswith("exit 0")
    assert not any(tmp_path.iterdir())  # its work directory is removed


def test_workers_alone_on_a_tiny_world(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.workers_alone", "--projects", "20",
         "--threads", "1,3", "--tasks", "2", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["1", "threads"], ["3", "threads"], ["2", "tasks"]]
    assert all(float(value) > 0 for row in rows for value in (row[2], row[5]))
    assert not any(tmp_path.iterdir())  # its work directory is removed


def test_airgap_on_a_tiny_world(tmp_path: Path) -> None:
    report_path = tmp_path / "airgap.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.airgap", "--sizes", str(PROJECTS), "--changes",
         str(CHANGES), "--workdir", str(tmp_path / "work"), "--json-out", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(report_path.read_text())
    phases = {p["phase"]: p for p in row["phases"]}
    assert list(phases) == ["sync-initial", "export-full", "import-full", "sync-delta",
                            "export-delta", "import-delta"]
    assert all(p["cpu"] > 0 and p["max_rss_mb"] > 0 for p in phases.values())
    assert phases["export-full"]["bundle_bytes"] > phases["export-delta"]["bundle_bytes"] > 0
    assert row["files"] >= 2 * (PROJECTS + CHANGES)  # wheels and .metadata, at least
