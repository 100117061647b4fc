"""SIGTERM and SIGINT: stop within seconds, publish nothing half done, resume next run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.consistency import assert_mirror_invariants
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("signum", "processes"), [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGTERM, 2)]
)
def test_signal_stops_the_run_and_the_next_run_resumes(
    tmp_path: Path, signum: int, processes: int
):
    world = World()
    for i in range(12):
        world.add_project(f"proj-{i}", ["1.0"])
        world.add_file(f"proj-{i}", f"proj_{i}-1.0-data.tar.gz", bytes(range(256)) * 400)
    with Upstream(world) as up:
        # Every big file trickles in for seconds: the signal lands mid-download.
        for project in world.projects.values():
            for f in project.files:
                if f.filename.endswith("-data.tar.gz"):
                    up.slow_body[f.path] = 1
        up.slow_chunk, up.slow_pause = 1024, 0.05
        command = [sys.executable, "-m", "simplemirror", "sync", "--upstream", up.url,
                   "--directory", str(tmp_path), "--workers", "4",
                   "--download-processes", str(processes)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 20
        while not any(r.path.endswith("-data.tar.gz") for r in up.requests):
            assert time.monotonic() < deadline, "the sync never started downloading"
            time.sleep(0.05)
        time.sleep(0.3)
        children = _descendants_of(process.pid)
        # The download processes, and with them multiprocessing's resource tracker and
        # the fork server they were forked from.
        assert len(children) == (processes + 2 if processes else 0)
        signalled = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
        stopped_after = time.monotonic() - signalled

        assert process.returncode == 128 + signum, err
        assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
        assert "stopped before the end" in out
        with sqlite3.connect(tmp_path / "state.db") as db:
            assert db.execute("SELECT outcome FROM runs").fetchall() == [("interrupted",)]
        for page in (tmp_path / "web/simple").glob("*/index.v1_json"):
            assert page.read_text().endswith("}\n")  # complete, never half written
        # No partial download was published.
        published = [p for p in (tmp_path / "web").rglob("*-data.tar.gz")]
        assert all(p.stat().st_size == 256 * 400 for p in published)

        up.slow_body.clear()
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        listed = assert_consistent(tmp_path / "web")
        assert len(listed) == 12 and all(len(files) == 3 for files in listed.values())
        assert not list((tmp_path / "tmp").iterdir())
        # No download process outlived the stopped run.
        assert not [pid for pid in children if _alive(pid)]


@pytest.mark.parametrize(
    ("signum", "processes"), [(signal.SIGINT, 0), (signal.SIGTERM, 2)]
)
def test_a_stopped_first_sync_serves_a_root_and_never_fetches_a_finished_file_twice(
    tmp_path: Path, signum: int, processes: int
):
    world = World()
    for i in range(3):
        world.add_project(f"quick-{i}", ["1.0"])  # complete well before the signal
    # One .metadata that is not its wheel's METADATA, so downloaded; the others are read
    # from their wheels.
    apart = next(f for f in world.project("quick-0").files if f.metadata)
    apart.metadata = (apart.metadata or b"") + b"Description: not the wheel's\n"
    for i in range(3):
        # Two quick files (and a .metadata) finish; the big one is still arriving.
        world.add_project(f"slow-{i}", ["1.0"])
        world.add_file(f"slow-{i}", f"slow_{i}-1.0-data.tar.gz", bytes(range(256)) * 400)
    files = [f for project in world.projects.values() for f in project.files]
    big = [f for f in files if f.filename.endswith("-data.tar.gz")]
    quick = [f for f in files if f not in big]
    web = tmp_path / "web"
    with Upstream(world) as up:
        for f in big:
            up.slow_body[f.path] = 1
        up.slow_chunk, up.slow_pause = 1024, 0.05  # 5 s for each big file
        command = [sys.executable, "-m", "simplemirror", "sync", "--upstream", up.url,
                   "--directory", str(tmp_path), "--workers", "8",
                   "--download-processes", str(processes)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 20
        # Every quick file verified and in place (the tree names files by their sha256).
        while not all((web / f.path.lstrip("/")).is_file() for f in quick):
            assert time.monotonic() < deadline, "the quick files never arrived"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 128 + signum, err

        # /simple/ is served, listing exactly the complete projects, each whole.
        listed = assert_consistent(web)
        assert sorted(listed) == ["quick-0", "quick-1", "quick-2"]
        assert not list((web / "simple").glob("slow-*"))
        root = json.loads((web / "simple/index.v1_json").read_text())
        assert "_last-serial" not in root["meta"]  # no complete copy yet
        with sqlite3.connect(tmp_path / "state.db") as db:
            # The next run must read the whole root again, not get a 304.
            assert db.execute("SELECT value FROM meta WHERE key = 'root_etag'").fetchall() == []
        assert_mirror_invariants(tmp_path)
        # The finished files of the slow projects are kept for the next run: no orphans.
        checked = subprocess.run(
            [sys.executable, "-m", "simplemirror", "verify", "--directory", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert checked.returncode == 0 and " 0 orphan(s)" in checked.stdout, checked.stdout

        up.slow_body.clear()
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        listed = assert_consistent(web)
        assert len(listed) == 6 and all(len(files) in (2, 3) for files in listed.values())
        with sqlite3.connect(tmp_path / "state.db") as db:
            assert db.execute("SELECT count(*) FROM staged_files").fetchall() == [(0,)]

    # Each finished file was downloaded once over both runs; only the big files that the
    # stop cut short were asked for again.
    fetched = Counter(r.path for r in up.requests if r.method == "GET")
    assert {f.filename: fetched[f.path] for f in quick} == {f.filename: 1 for f in quick}
    assert {f.filename: fetched[f.path + ".metadata"] for f in quick if f.metadata} == {
        f.filename: int(f is apart) for f in quick if f.metadata
    }
    assert all(fetched[f.path] == 2 for f in big)

def _descendants_of(pid: int) -> list[int]:
    """Live child processes of ``pid``, and theirs, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(") ", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if state != "Z":
            parents[int(stat.parent.name)] = int(parent)
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_root_is_awaited_does_not_wait_for_it(tmp_path: Path, signum: int):
    # The root may take up to request-timeout (600 s by default) to come whole: a stop
    # must not wait that out.
    world = World()
    world.add_project("proj", ["1.0"])
    with Upstream(world) as up:
        up.delay["/simple/"] = (30.0, 1)
        command = [sys.executable, "-m", "simplemirror", "sync", "--upstream", up.url,
                   "--directory", str(tmp_path)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 20
        while not any(r.path == "/simple/" for r in up.requests):
            assert time.monotonic() < deadline, "the sync never asked for the root"
            time.sleep(0.05)
        signalled = time.monotonic()
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        stopped_after = time.monotonic() - signalled
        assert process.returncode == 128 + signum, err
        assert stopped_after < 15, f"took {stopped_after:.1f} s to stop"
        assert "Traceback" not in err
        with sqlite3.connect(tmp_path / "state.db") as db:
            assert db.execute("SELECT outcome FROM runs").fetchall() == [("interrupted",)]
