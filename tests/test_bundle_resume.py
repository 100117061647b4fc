"""kill -9: an import killed anywhere, run again, finishes the job (reusing what it staged);
an export killed midway leaves nothing import accepts, and the next one continues it.

The commands run as real subprocesses. Kill moments are drawn from a seeded
``random.Random`` (the seed is printed; SIMPLEMIRROR_CRASH_SEED fixes it) over the time an
unkilled run takes, measured first, so that they land early, mid-staging and while
publishing whatever the machine's speed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.bundles import Keys, apply, far_state, make_bundle, published, refused, sync
from tests.support.consistency import assert_mirror_invariants
from tests.support.upstream import Upstream, World

pytestmark = pytest.mark.slow

KILLS = 4
RUN_TIMEOUT = 120.0


def mirror(*args: str) -> list[str]:
    return [sys.executable, "-m", "simplemirror", *args]


def import_command(bundle: Path, far: Path, key: Keys) -> list[str]:
    return mirror("import", "--from", str(bundle), "--directory", str(far), "--public-key",
                  str(key.public_path), "--allow-mass-delete")


def timed(command: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def killed_at(command: list[str], delay: float) -> int:
    """Run ``command``, SIGKILL it after ``delay`` seconds; its exit status."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=RUN_TIMEOUT)


@pytest.fixture
def world() -> World:
    rng = random.Random(7)
    w = World()
    for i in range(24):
        w.add_project(f"Res_{i}", ["1.0"])
        w.add_file(f"Res_{i}", f"res_{i}-2.0.tar.gz", rng.randbytes(rng.randrange(100_000,
                                                                                   300_000)))
    return w


def test_an_import_killed_anywhere_finishes_when_run_again(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SIMPLEMIRROR_CRASH_SEED", random.randrange(2**32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    near, out, key = tmp_path / "near", tmp_path / "out", Keys(tmp_path / "keys")
    sync(upstream, near)
    bundles = [make_bundle(near, out, key, full=True, volume_size=1 << 20)]
    for name in ("res-1", "res-2"):
        world.remove_project(name)
    world.remove_file("res-3", "res_3-2.0.tar.gz")
    world.yank("res-4", "res_4-1.0.tar.gz")
    for i in range(6):
        world.add_file(f"Res_{i + 10}", f"res_{i + 10}-3.0.tar.gz", rng.randbytes(200_000))
    sync(upstream, near)
    bundles.append(make_bundle(near, out, key, volume_size=1 << 20))

    reference, far = tmp_path / "reference", tmp_path / "far"
    history = []
    kills = 0
    for bundle in bundles:
        took = timed(import_command(bundle, reference, key))
        for attempt in range(KILLS):
            delay = rng.uniform(0.05, took)
            code = killed_at(import_command(bundle, far, key), delay)
            kills += code == -signal.SIGKILL
            history.append(f"{bundle.name} attempt {attempt}: killed after {delay:.2f}s of "
                           f"{took:.2f}s, exit {code}")
            if (far / "state.db").exists():
                assert_mirror_invariants(far, killed=True)
        result = subprocess.run(import_command(bundle, far, key), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT)
        assert result.returncode == 0, "\n".join([*history, result.stderr])
        assert published(far) == published(reference), "\n".join(history)
        assert_mirror_invariants(far)
    assert published(far) == published(near)
    assert kills >= KILLS, "\n".join(history)  # most kills must land, or this proves little


def test_an_export_killed_midway_is_continued(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    near, out, far, key = tmp_path / "near", tmp_path / "out", tmp_path / "far", Keys(
        tmp_path / "keys")
    sync(upstream, near)
    command = mirror("export", "--directory", str(near), "--to", str(out), "--secret-key",
                     str(key.secret_path), "--full", "--volume-size", "512k")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not list(out.glob("*.partial/volume-0003.bin")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=RUN_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, "the export ended before it was killed"
    (partial,) = out.glob("*.partial")
    kept = (partial / "volume-0001.bin").stat().st_ino
    assert "an export that did not finish" in refused(partial, far, key)
    assert not (far / "state.db").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "continued" in result.stderr
    bundle = Path(result.stdout.strip())
    assert bundle == partial.with_name(partial.name.removesuffix(".partial"))
    assert (bundle / "volume-0001.bin").stat().st_ino == kept
    assert not list(bundle.glob("*.sha256")) and not (bundle / "EXPORT.json").exists()
    apply(bundle, far, key)
    assert published(far) == published(near)
    before = far_state(far)
    apply(bundle, far, key)  # a replay
    assert far_state(far) == before
    shutil.rmtree(out)
