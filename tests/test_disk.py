"""A full disk and a read-only directory, for real: the mirror lives on a small tmpfs.

Needs permission to mount (root, as in CI); skipped elsewhere. Injected-error
variants of the same faults live in test_sync.py and test_download.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support.tree import assert_consistent, snapshot
from tests.support.upstream import Upstream, World


def _mount(target: Path, options: str) -> bool:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "disk"
    target.mkdir()
    if not _mount(target, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True)


def sync(up: Upstream, directory: Path) -> RunSummary:
    values = {"upstream": up.url, "directory": str(directory), "retries": 0}
    return Sync(config.build({}, values)).run()


def test_disk_full_during_download(small_disk: Path):
    world = World()
    world.add_project("small", ["1.0"])
    mirror = small_disk / "mirror"
    with Upstream(world) as up:
        assert sync(up, mirror).exit_code == 0
        before = snapshot(mirror / "web")
        world.add_file("small", "small-2.0-big.tar.gz", bytes(range(256)) * 8192)  # 2 MiB

        with pytest.raises(SyncError, match="No space left"):
            sync(up, mirror)

        assert snapshot(mirror / "web") == before
        assert_consistent(mirror / "web")
        assert not list((mirror / "tmp").iterdir()), "partial download left behind"

        remount(small_disk, "size=8m")
        assert sync(up, mirror).exit_code == 0
        assert "small-2.0-big.tar.gz" in assert_consistent(mirror / "web")["small"]


def test_read_only_directory(small_disk: Path):
    world = World()
    world.add_project("small", ["1.0"])
    mirror = small_disk / "mirror"
    with Upstream(world) as up:
        assert sync(up, mirror).exit_code == 0
        before = snapshot(mirror)
        world.add_release("small", "2.0")
        remount(small_disk, "ro")

        with pytest.raises(SyncError, match="Read-only file system"):
            sync(up, mirror)
        assert snapshot(mirror) == before

        remount(small_disk, "rw")
        assert sync(up, mirror).exit_code == 0
        assert len(assert_consistent(mirror / "web")["small"]) == 4


def test_state_db_filling_the_disk_is_one_error_and_status_says_so(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
):
    world = World()
    for i in range(400):  # small files, many rows: state.db is what fills the disk
        world.add_project(f"proj-{i}", ["1.0"])
    mirror = small_disk / "mirror"
    with Upstream(world) as up:
        args = ["--upstream", up.url, "--directory", str(mirror), "--no-progress", "-q",
                "--download-processes", "0"]
        assert main(["sync", *args]) == 1
        err = capsys.readouterr().err
        assert "database or disk is full" in err and "free some space" in err
        assert "Traceback" not in err
        assert main(["status", "--directory", str(mirror)]) == 3  # it did not converge

        remount(small_disk, "size=16m")
        assert main(["sync", *args]) == 0
        assert main(["status", "--directory", str(mirror)]) == 0
        assert len(assert_consistent(mirror / "web")) == 400
