"""benchmarks/compare.py runs end to end: a tiny world, real nginx, simplemirror only.

The benchmarks are run by hand; this only keeps them from rotting. It checks that the
figures are sane, not that they are fast.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from benchmarks import artifacts

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
    # The root, a page per project, and every wheel; its .metadata is read from it.
    assert initial["served"]["requests"] == 1 + PROJECTS + files
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
    assert incremental["served"]["requests"] == 1 + CHANGES * 2
    assert incremental["pages_written"] >= CHANGES * 2
    # Nothing of the run is left behind but the report.
    assert not any((tmp_path / "work").iterdir())


def test_compare_through_the_delaying_proxy(tmp_path: Path) -> None:
    """--rtt-ms puts benchmarks/wanproxy.py between the mirror and nginx: every request
    goes through it, and the mirror it syncs is whole."""
    report_path = tmp_path / "report.json"
    rtt_ms = 5
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.compare",
            "--world", "metadata", "--projects", str(PROJECTS), "--changes", str(CHANGES),
            "--only", "simplemirror", "--mirror-workers", "3", "--rtt-ms", str(rtt_ms),
            "--workdir", str(tmp_path / "work"), "--json-out", str(report_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["rtt_ms"] == rtt_ms and report["connections"] == {"simplemirror": 3}
    phases = {p["phase"]: p for p in report["phases"]}
    files, metadata = report["world_files"]["initial"]
    initial = phases["initial"]
    assert (initial["files_on_disk"], initial["metadata_on_disk"]) == (files, metadata)
    requests = initial["served"]["requests"]
    # The root, a page and a file a project: each .metadata is read from its wheel.
    assert requests == 1 + PROJECTS + files
    assert initial["bound"] == pytest.approx(requests * rtt_ms / 1000 / 3)
    assert initial["of_bound"] == pytest.approx(initial["bound"] / initial["wall"])
    # nginx saw the requests, so they came through the proxy: the mirror had no other way.
    assert 1 <= initial["proxy"]["peak_open"] <= initial["proxy"]["connections"]
    files_after, metadata_after = report["world_files"]["after"]
    incremental = phases["incremental"]
    assert (incremental["files_on_disk"], incremental["metadata_on_disk"]) == (
        files_after, metadata_after,
    )
    assert "bound = requests x RTT / connections" in done.stdout
    assert not any((tmp_path / "work").iterdir())


def test_the_proxy_delays_each_way_and_each_new_connection(tmp_path: Path) -> None:
    """A first request on a new connection waits two round trips (handshake, request), a
    second on the same connection one: a lower bound only, which no slow machine breaks."""
    from benchmarks.wanproxy import Proxy

    body = b"x" * 300_000
    served = tmp_path / "served"
    served.mkdir()
    (served / "f").write_bytes(body)
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--protocol", "HTTP/1.1", "--bind",
         "127.0.0.1", "0"], cwd=served, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        with Proxy(port, 100, tmp_path / "proxy") as proxy:
            connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            timings = []
            for _ in range(2):
                started = time.monotonic()
                connection.request("GET", "/f")
                got = connection.getresponse().read()
                timings.append(time.monotonic() - started)
                assert got == body
            connection.close()
        assert timings[0] >= 0.2 and timings[1] >= 0.1
        assert proxy.stats(0).connections == 1
    finally:
        server.terminate()
        server.wait(10)


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
    # Its wheels carry their .metadata as METADATA, as real ones do: only the root, the
    # pages and the files are asked for.
    initial = next(p for p in report["phases"] if p["phase"] == "initial")
    assert initial["served"]["requests"] == 1 + 3 + files
    assert initial["metadata_on_disk"] == metadata


@pytest.mark.parametrize("kind", artifacts.KINDS)
def test_every_benchmark_wheel_holds_the_metadata_served_beside_it(kind: str) -> None:
    built = artifacts.build_release(kind, 7, "proj-000007", "1.0", 8)
    wheels = [b for b in built if b.dist.filename.endswith(".whl")]
    assert wheels and all(b.metadata is not None for b in wheels)
    for b in wheels:
        assert b.metadata is not None
        assert hashlib.sha256(b.metadata).hexdigest() == b.dist.metadata_sha256
        with zipfile.ZipFile(io.BytesIO(b.data)) as archive:
            member = "proj_000007-1.0.dist-info/METADATA"
            assert [n for n in archive.namelist() if n.endswith("/METADATA")] == [member]
            assert archive.read(member) == b.metadata


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


def test_fullsize_generates_the_rows_a_sync_writes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fullsize", "--check", "--projects", "40",
         "--mirror", str(Path(sys.executable).parent / "mirror"), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith("every row the same")
    assert not any(tmp_path.iterdir())


def test_fullsize_benchmark_on_a_small_mirror(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fullsize", "--projects", "300", "--changes", "20",
         "--mirror", str(Path(sys.executable).parent / "mirror"), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    for run in ("noop 304", "noop resent", "incremental", "status", "log", "log --generation"):
        row = next(line for line in lines if line.startswith(run + " "))
        assert row.endswith("exit 0")
    # Every new file of the 20 changed projects was downloaded and found in place.
    assert any("20 projects changed, 40 files fetched; 40 of 40 new files" in line
               for line in lines)
    assert not any(tmp_path.iterdir())


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
