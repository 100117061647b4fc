"""Crash safety: `mirror sync` killed with SIGKILL at any moment, and two runs at once.

The mirror runs as a real subprocess against the test upstream (served from this process),
so a kill -9 lands wherever the run happens to be: starting up, planning, in the middle of
downloads, writing pages, writing the root. After every kill the directory must be in a
state a client can use (every advertised link resolves to verified bytes) and that the next
run can finish from.

The torture test draws its kill moments from a seeded ``random.Random``; the seed is
printed (shown with the output of a failing test) and can be fixed with the environment
variable SIMPLEMIRROR_CRASH_SEED. Kill moments are chosen by watching what the run does
(how many requests it has made upstream), not by wall-clock guesses, so that they land
early, mid-download and late whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from simplemirror.store import layout
from tests.support.consistency import (
    assert_mirror_invariants,
    assert_packages_content_addressed,
    assert_state_agrees_with_disk,
    file_sha256,
    read_runs,
)
from tests.support.dists import underscore_name
from tests.support.tree import assert_consistent, snapshot
from tests.support.upstream import Upstream, World

pytestmark = pytest.mark.slow

WORKERS = "4"
# Generous: a run of the torture world takes a few seconds on two cores.
RUN_TIMEOUT = 120.0


def mirror_command(*args: str) -> list[str]:
    exe = shutil.which("mirror")
    base = [exe] if exe else [sys.executable, "-m", "simplemirror"]
    return [*base, *args]


def sync_args(up: Upstream, directory: Path, processes: int = 0) -> list[str]:
    return mirror_command(
        "sync", "--upstream", up.url, "--directory", str(directory), "--workers", WORKERS,
        "--no-progress", "--download-processes", str(processes),
    )


def run_sync(up: Upstream, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sync_args(up, directory), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


@contextmanager
def spawned(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess writing stdout and stderr to ``log``; killed if still alive at exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                # It may be stopped (SIGSTOP): SIGKILL works on stopped processes too.
                proc.kill()
            proc.wait(timeout=30)


def wait_until(proc: subprocess.Popen[bytes], cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` until it holds; False if the process exited or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return False


# -- the world ------------------------------------------------------------------------------


def blob(rng: random.Random, low: int = 100_000, high: int = 300_000) -> bytes:
    """Deterministic pseudo-random bytes: incompressible, so a download takes real time."""
    return rng.randbytes(rng.randrange(low, high))


def build_world(rng: random.Random, projects: int) -> World:
    """``projects`` projects of wheels (with PEP 658 metadata) and sdists; every fourth
    also carries a big sdist of pseudo-random bytes."""
    world = World()
    for i in range(projects):
        # A few display names that differ from the normalized name.
        name = f"Crash_Proj.{i:03d}" if i % 10 == 0 else f"crash-proj-{i:03d}"
        world.add_project(name, ["1.0", "1.1"] if i % 3 == 0 else ["1.0"])
        if i % 4 == 0:
            world.add_file(name, f"{underscore_name(name)}-9.0.tar.gz", blob(rng))
    return world


@dataclass
class Mutator:
    """Changes the world between runs, so that later runs are incremental."""

    world: World
    rng: random.Random
    added: int = 0
    big: int = 0

    def _project(self) -> str:
        return self.rng.choice(sorted(self.world.projects))

    def mutate(self) -> str:
        rng, world = self.rng, self.world
        yanked = [
            (p.name, f.filename)
            for p in world.projects.values()
            for f in p.files
            if f.yanked is not False
        ]
        kind = rng.choice(
            ["release", "yank", "unyank", "unyank", "project", "bigfile", "touch", "remove"]
        )
        if kind == "unyank" and yanked:
            # Undo an earlier yank: the page goes back to bytes an earlier run wrote.
            name, filename = rng.choice(sorted(yanked))
            world.unyank(name, filename)
            return f"unyank {filename}"
        if kind in {"yank", "unyank"}:
            project = world.projects[self._project()]
            filename = rng.choice(project.files).filename
            world.yank(project.name, filename, rng.choice(["", "broken build"]))
            return f"yank {filename}"
        if kind == "release":
            name = self._project()
            version = f"{2 + self.added}.0"
            self.added += 1
            world.add_release(world.projects[name].name, version)
            return f"release {name} {version}"
        if kind == "project":
            name = f"crash-new-{self.added:03d}"
            self.added += 1
            world.add_project(name, ["0.1"])
            world.add_file(name, f"{underscore_name(name)}-0.2.tar.gz", blob(rng))
            return f"project {name}"
        if kind == "bigfile":
            return self._bigfile()
        if kind == "touch":
            name = self._project()
            world.touch(world.projects[name].name)
            return f"touch {name}"
        if kind == "remove":
            project = world.projects[self._project()]
            if len(project.files) > 1:
                filename = rng.choice(project.files).filename
                world.remove_file(project.name, filename)
                return f"remove {filename}"
            return "none"
        return self.bulk()

    def bulk(self) -> str:
        """Many changed pages and downloads, so that the next run is long again."""
        for name in self.rng.sample(sorted(self.world.projects), 40):
            self.world.touch(self.world.projects[name].name)
        for _ in range(6):
            self._bigfile()
        return "bulk"

    def _bigfile(self) -> str:
        name = self._project()
        display = self.world.projects[name].name
        filename = f"{underscore_name(display)}-50.{self.big}.tar.gz"
        self.big += 1
        self.world.add_file(display, filename, blob(self.rng))
        return f"bigfile {filename}"


def expected_requests(directory: Path, world: World) -> int:
    """About how many requests the next run makes: the root, each page not yet mirrored at
    its current serial, each file not yet held (the .metadata of these wheels is read
    from them, never asked for)."""
    held: dict[str, tuple[str, int | None]] = {}
    files: dict[str, dict[str, str]] = {}
    db = directory / "state.db"
    if db.exists():
        conn = sqlite3.connect(db, timeout=30)
        try:
            for name, status, serial in conn.execute(
                "SELECT name, status, serial FROM projects"
            ):
                held[name] = (status, serial)
            for project, filename, hashes in conn.execute(
                "SELECT project, filename, hashes FROM files WHERE removed_gen IS NULL"
            ):
                files.setdefault(project, {})[filename] = json.loads(hashes)["sha256"]
        finally:
            conn.close()
    total = 1
    with world.lock:
        for name, project in world.projects.items():
            if held.get(name) == ("ok", project.serial):
                continue
            total += 1
            have = files.get(name, {})
            total += sum(1 for f in project.files if have.get(f.filename) != f.sha256)
    return total


# -- checks ---------------------------------------------------------------------------------


def assert_mirrors_world(directory: Path, world: World) -> None:
    """The tree holds exactly what the world holds: projects, files, bytes, yanks, serials."""
    web = directory / "web"
    tree = assert_consistent(web)
    with world.lock:
        assert sorted(tree) == sorted(world.projects)
        root = json.loads((web / "simple" / "index.v1_json").read_text())
        assert {p["name"]: p["_last-serial"] for p in root["projects"]} == {
            p.name: p.serial for p in world.projects.values()
        }
        for name, project in world.projects.items():
            assert tree[name] == [f.filename for f in project.files], name
            doc = json.loads((web / "simple" / name / "index.v1_json").read_text())
            assert doc["meta"]["_last-serial"] == project.serial, name
            for got, want in zip(doc["files"], project.files, strict=True):
                where = f"{name}/{want.filename}"
                assert got["hashes"]["sha256"] == want.sha256, where
                assert got["size"] == len(want.content), where
                assert got["yanked"] == want.yanked, f"{where}: yanked"
                expected_meta = (
                    {"sha256": want.metadata_sha256} if want.metadata is not None else False
                )
                assert got["core-metadata"] == expected_meta, where
    conn = sqlite3.connect(directory / "state.db", timeout=30)
    try:
        rows = conn.execute("SELECT name, status, serial FROM projects").fetchall()
    finally:
        conn.close()
    with world.lock:
        assert {n: (s, serial) for n, s, serial in rows} == {
            n: ("ok", p.serial) for n, p in world.projects.items()
        }


# -- 1. kill -9 torture ---------------------------------------------------------------------

KILLS = 16


def test_kill_9_at_random_moments_never_leaves_a_broken_mirror(tmp_path: Path) -> None:
    seed = int(os.environ.get("SIMPLEMIRROR_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    print(f"crash torture seed: {seed} (rerun with SIMPLEMIRROR_CRASH_SEED={seed})")
    rng = random.Random(seed)
    world = build_world(random.Random(seed), projects=130)
    mutator = Mutator(world, rng)
    directory = tmp_path / "mirror"
    history: list[str] = []
    killed = 0

    with Upstream(world) as up:
        for k in range(KILLS):
            mutation = mutator.mutate() if k and rng.random() < 0.7 else "none"
            if expected_requests(directory, world) < 150:
                mutation += "; " + mutator.bulk()
            expected = expected_requests(directory, world)
            start = len(up.requests)

            def made(n: int, start: int = start) -> Callable[[], bool]:
                return lambda: len(up.requests) - start >= n

            strategy = "requests" if k == 0 else rng.choice(
                ["early", "requests", "requests", "requests", "late"]
            )
            # Every other run downloads in child processes, which must not outlive a
            # killed parent's run in any way that shows.
            processes = 2 * (k % 2)
            command = sync_args(up, directory, processes)
            with spawned(command, tmp_path / f"run-{k}.log") as proc:
                if strategy == "early":
                    # Starting up, taking the lock, opening state.db, reading the root.
                    moment = rng.uniform(0.0, 0.6)
                    time.sleep(moment)
                    detail = f"{moment:.3f}s"
                elif strategy == "requests":
                    # In the middle of page fetches and downloads; pages are being written
                    # all along, as each project's files complete.
                    n = rng.randint(1, max(1, expected))
                    wait_until(proc, made(n), RUN_TIMEOUT)
                    pause = rng.choice([0.0, rng.uniform(0.0, 0.05)])
                    time.sleep(pause)
                    detail = f"after {n}/{expected} requests +{pause:.3f}s"
                else:
                    # Downloads over: the last project pages, then the root pages.
                    wait_until(proc, made(expected), RUN_TIMEOUT)
                    pause = rng.uniform(0.0, 0.25)
                    time.sleep(pause)
                    detail = f"after all {expected} requests +{pause:.3f}s"
                proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=30)
            if code == -signal.SIGKILL:
                killed += 1
                outcome = "killed"
            else:
                outcome = f"exited {code}"
                assert code == 0, (
                    f"seed {seed} run {k}: exit {code}: "
                    + (tmp_path / f"run-{k}.log").read_text()[-2000:]
                )
            made_requests = len(up.requests) - start
            history.append(
                f"run {k} ({processes} processes): mutation {mutation}; "
                f"kill {strategy} {detail}; {outcome}; "
                f"{made_requests} requests"
            )
            print(history[-1])
            try:
                assert_mirror_invariants(directory, killed=True)
            except AssertionError as exc:
                raise AssertionError(
                    f"seed {seed}, after run {k} ({history[-1]}), in {directory}: {exc!r}\n"
                    + "\n".join(history)
                ) from exc

        # Most kills must have hit a running process, or this test proves little.
        assert killed >= KILLS // 2, "\n".join(history)
        assert not up.errors, up.errors[0]

        # One plain run finishes the job.
        final = run_sync(up, directory)
        assert final.returncode == 0, f"seed {seed}: {final.stdout}\n{final.stderr}"
        assert_mirror_invariants(directory)
        assert_mirrors_world(directory, world)
        assert list((directory / "tmp").iterdir()) == []

        # And the mirror knows it is done: one conditional request, answered 304.
        before = snapshot(directory / "web")
        up.reset_requests()
        again = run_sync(up, directory)
        assert again.returncode == 0, again.stderr
        assert [(r.method, r.path) for r in up.requests] == [("GET", "/simple/")], (
            f"seed {seed}: {[(r.method, r.path) for r in up.requests][:20]}"
        )
        assert up.requests[0].header("if-none-match"), "the root was not asked conditionally"
        assert "sync unchanged" in again.stdout, again.stdout
        assert snapshot(directory / "web") == before
        assert not up.errors, up.errors[0]


# -- 2. two runs at once --------------------------------------------------------------------

ANOTHER_RUN = re.compile(r"another .*sync.*running", re.IGNORECASE | re.DOTALL)


def _lock_holder(directory: Path) -> str:
    try:
        return (directory / ".lock").read_text().strip()
    except FileNotFoundError:
        return ""


def test_second_run_refuses_while_one_is_running(tmp_path: Path) -> None:
    world = build_world(random.Random(2), projects=60)
    directory = tmp_path / "mirror"
    with Upstream(world) as up:
        # A first run, to have a published tree the second one could damage.
        initial = run_sync(up, directory)
        assert initial.returncode == 0, initial.stderr
        for i in range(0, 60, 3):
            name = sorted(world.projects)[i]
            world.add_file(
                world.projects[name].name, f"{name.replace('-', '_')}-7.0.tar.gz",
                blob(random.Random(i)),
            )

        with spawned(sync_args(up, directory), tmp_path / "first.log") as first:
            # Wait until the first run is downloading (it holds the lock and its run row
            # exists), then freeze it there so the check cannot race its end.
            start = len(up.requests)

            def downloading() -> bool:
                return any(r.path.startswith("/packages/") for r in up.requests[start:])

            assert wait_until(first, downloading, RUN_TIMEOUT), "the first run never downloaded"
            first.send_signal(signal.SIGSTOP)
            try:
                assert _lock_holder(directory) == str(first.pid)
                web_before = snapshot(directory / "web")
                runs_before = read_runs(directory)
                assert runs_before[-1][5] == "running", runs_before[-1]

                began = time.monotonic()
                second = run_sync(up, directory)
                elapsed = time.monotonic() - began

                assert second.returncode == 1, (second.returncode, second.stderr)
                assert elapsed < 5.0, f"the second run took {elapsed:.1f}s to give up"
                assert ANOTHER_RUN.search(second.stderr), second.stderr
                assert str(first.pid) in second.stderr, second.stderr
                assert "Traceback" not in second.stderr, second.stderr
                assert snapshot(directory / "web") == web_before
                assert read_runs(directory) == runs_before
                assert _lock_holder(directory) == str(first.pid)
                assert first.poll() is None
            finally:
                first.send_signal(signal.SIGCONT)
            assert first.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "first.log").read_text()

        runs = read_runs(directory)
        assert runs[-1][5] == "ok", runs[-1]
        # After the first finished, a run goes through.
        third = run_sync(up, directory)
        assert third.returncode == 0, third.stderr
        assert_mirrors_world(directory, world)
        assert_state_agrees_with_disk(directory)
        assert_packages_content_addressed(directory / "web")


# -- 3. a lock whose holder died ------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_of_a_killed_process_does_not_block_the_next_run(tmp_path: Path) -> None:
    world = build_world(random.Random(3), projects=30)
    directory = tmp_path / "mirror"
    directory.mkdir()
    with Upstream(world) as up:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(directory / ".lock")],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            # While the holder lives, the lock is honoured...
            refused = run_sync(up, directory)
            assert refused.returncode == 1, refused.stderr
            assert ANOTHER_RUN.search(refused.stderr), refused.stderr
            assert not (directory / "web" / "simple").exists()
        finally:
            holder.kill()
            holder.wait(timeout=30)
            assert holder.stdout is not None
            holder.stdout.close()
        assert holder.returncode == -signal.SIGKILL
        # ...and once it is dead, although its pid is still written in .lock, not any more.
        assert _lock_holder(directory) == str(holder.pid)
        done = run_sync(up, directory)
        assert done.returncode == 0, done.stderr
        assert_mirrors_world(directory, world)

        # The same with a real run killed in the middle of its downloads.
        world.add_file(
            world.projects["crash-proj-001"].name, "crash_proj_001-8.0.tar.gz",
            blob(random.Random(4)),
        )
        for name in sorted(world.projects)[::2]:
            world.touch(world.projects[name].name)
        start = len(up.requests)
        with spawned(sync_args(up, directory), tmp_path / "killed.log") as victim:
            wait_until(victim, lambda: len(up.requests) - start >= 5, RUN_TIMEOUT)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        assert_mirror_invariants(directory)
        after = run_sync(up, directory)
        assert after.returncode == 0, after.stderr
        assert_mirrors_world(directory, world)
        assert list((directory / "tmp").iterdir()) == []


# -- 4. a page written by a run killed before its commit ------------------------------------


def test_page_written_before_a_kill_is_rewritten_when_upstream_reverts(tmp_path: Path) -> None:
    """A killed run may leave a page on disk that state.db, rolled back, does not know of.

    Here the HTML page of a project shows a yank that upstream then takes back. The HTML
    carries no serial, so the next run renders exactly the bytes state.db remembers from
    before the kill; it must still notice that the file on disk holds other bytes.
    """
    world = build_world(random.Random(5), projects=60)
    world.add_project("aaa-yank", ["1.0"])  # sorts first: fetched and published first
    directory = tmp_path / "mirror"
    page = directory / "web" / "simple" / "aaa-yank" / "index.html"
    json_page = page.with_name("index.v1_json")
    with Upstream(world) as up:
        initial = run_sync(up, directory)
        assert initial.returncode == 0, initial.stderr
        wheel = world.project("aaa-yank").files[-1].filename
        world.yank("aaa-yank", wheel, "oops")
        # Plenty of other work, so the run is still busy (its transaction open) after
        # the yanked page is written.
        for name in sorted(world.projects):
            if name != "aaa-yank":
                world.touch(world.projects[name].name)
        for i, name in enumerate(sorted(world.projects)[1:10]):
            world.add_file(
                world.projects[name].name, f"{name.replace('-', '_')}-7.0.tar.gz",
                blob(random.Random(i)),
            )
        with spawned(sync_args(up, directory), tmp_path / "killed.log") as proc:
            # Both pages written (the JSON one goes second), then kill at once.
            written = wait_until(
                proc, lambda: b'"yanked":"oops"' in json_page.read_bytes(), RUN_TIMEOUT
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert written, "the run never wrote the yanked page"
        assert b"data-yanked" in page.read_bytes()
        assert_mirror_invariants(directory)
        conn = sqlite3.connect(directory / "state.db", timeout=30)
        try:
            (recorded,) = conn.execute(
                "SELECT sha256 FROM pages WHERE path = 'simple/aaa-yank/index.html'"
            ).fetchone()
        finally:
            conn.close()
        # The scenario under test: the kill came before the run committed that page.
        assert recorded != file_sha256(page), "the run committed before it was killed"

        world.unyank("aaa-yank", wheel)
        done = run_sync(up, directory)
        assert done.returncode == 0, done.stderr
        assert b"data-yanked" not in page.read_bytes(), page.read_text()
        assert_mirrors_world(directory, world)


# -- 5. a project deleted upstream after a kill leaves nothing behind ---------------------

LINGER_KILLS = 20
LINGER_SECONDS = 60.0


def assert_nothing_lingers(directory: Path, world: World) -> None:
    """web/ holds exactly the world's projects and files: no page of a project upstream
    deleted, no file (or .metadata) no project offers."""
    web = directory / "web"
    with world.lock:
        wanted = set()
        for project in world.projects.values():
            for f in project.files:
                wanted.add(layout.file_path(f.sha256, f.filename))
                if f.metadata is not None:
                    wanted.add(layout.file_path(f.sha256, f.filename) + ".metadata")
        names = set(world.projects)
    pages = sorted(p.name for p in (web / "simple").iterdir() if p.is_dir())
    assert sorted(names) == pages, f"pages linger: {sorted(set(pages) - names)}"
    held = {
        p.relative_to(web).as_posix() for p in (web / "packages").rglob("*") if p.is_file()
    }
    assert held == wanted, f"files linger: {sorted(held - wanted)[:5]}"


def test_a_project_deleted_after_a_kill_never_lingers(tmp_path: Path) -> None:
    """Kill a sync at random moments (some right after a new project's pages are written,
    before the rows recording them commit), delete that project upstream, and a normal
    run must converge with nothing of it left: before, its pages and files stayed for
    good, and verify called the mirror sound."""
    seed = int(os.environ.get("SIMPLEMIRROR_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    print(f"linger seed: {seed} (rerun with SIMPLEMIRROR_CRASH_SEED={seed})")
    rng = random.Random(seed)
    world = World()
    for i in range(30):
        world.add_project(f"stay-{i:02d}", ["1.0"])
    directory = tmp_path / "mirror"
    deadline = time.monotonic() + LINGER_SECONDS
    history: list[str] = []
    with Upstream(world) as up:
        assert run_sync(up, directory).returncode == 0
        k = 0
        while k < LINGER_KILLS and time.monotonic() < deadline:
            # New projects sort first (fetched, downloaded, published first); the old
            # ones touched, so the run goes on past their pages.
            new = [f"aaa-{k:02d}-{j}" for j in range(3)]
            for name in new:
                world.add_project(name, ["0.1"])
                world.add_file(name, f"{name.replace('-', '_')}-0.2.tar.gz", blob(rng, 20_000,
                                                                                   60_000))
            for name in rng.sample(sorted(n for n in world.projects if n.startswith("stay")), 10):
                world.touch(name)
            expected = expected_requests(directory, world)
            start = len(up.requests)
            n = rng.randint(2, max(2, expected))
            with spawned(sync_args(up, directory, 2 * (k % 2)), tmp_path / f"k{k}.log") as proc:
                wait_until(proc, lambda n=n, start=start: len(up.requests) - start >= n,
                           RUN_TIMEOUT)
                time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.05)]))
                proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=30)
            published = [name for name in new if (directory / "web/simple" / name).exists()]
            for name in new:
                world.remove_project(name)
            done = run_sync(up, directory)
            history.append(
                f"run {k}: kill after {n}/{expected} requests (exit {code}), pages of "
                f"{published} on disk; next run exit {done.returncode}"
            )
            assert done.returncode == 0, "\n".join(history) + "\n" + done.stderr
            try:
                assert_nothing_lingers(directory, world)
                assert_mirror_invariants(directory)
            except AssertionError as exc:
                raise AssertionError(
                    f"seed {seed}, in {directory}: {exc}\n" + "\n".join(history)
                ) from exc
            k += 1
        print("\n".join(history))
        assert k >= 5, "too few kills within the time allowed:\n" + "\n".join(history)
        assert any("pages of ['" in line for line in history), (
            "no kill landed after a new project's pages were written:\n" + "\n".join(history)
        )
        assert not up.errors, up.errors[0]
