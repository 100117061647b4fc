"""The `mirror sync` command as an operator runs it: a process, a config file, an exit status."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World


def mirror(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The console script when installed; the module otherwise (same entry point).
    command = [shutil.which("mirror") or "", *args]
    if not command[0]:
        command = [sys.executable, "-m", "simplemirror", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_sync_with_config_file_then_partial_run_exits_1(tmp_path: Path):
    world = World()
    world.add_project("alpha", ["1.0"])
    world.add_project("beta", ["1.0"])
    with Upstream(world) as up:
        cfg = tmp_path / "mirror.toml"
        cfg.write_text(
            f'[mirror]\nupstream = "{up.url}"\ndirectory = "{tmp_path / "m"}"\nworkers = 2\n'
            "retries = 0\nstale-retries = 0\nretry-wait = 0.0\n"
        )
        first = mirror("sync", "-c", str(cfg))
        assert first.returncode == 0, first.stderr
        assert "sync ok: 2 project(s) changed" in first.stdout
        assert sorted(assert_consistent(tmp_path / "m" / "web")) == ["alpha", "beta"]

        world.add_release("beta", "2.0")
        up.stale["beta"] = 10
        second = mirror("sync", "-c", str(cfg))
        assert second.returncode == 1
        assert "deferred beta" in second.stdout and "next run retries" in second.stdout

        # Command-line options override the file: a missing upstream is still an error.
        third = mirror("sync", "--directory", str(tmp_path / "other"))
        assert third.returncode == 2
        assert "--upstream" in third.stderr


def test_dry_run_prints_the_plan(tmp_path: Path):
    world = World()
    world.add_project("alpha", ["1.0"])
    with Upstream(world) as up:
        result = mirror("sync", "--dry-run", "--upstream", up.url, "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "would fetch 1 project(s)" in result.stdout and "fetch alpha" in result.stdout
    assert not (tmp_path / "web").exists()


def test_the_readme_first_command_mirrors_files_kept_on_a_second_host(tmp_path: Path):
    # As most indexes do, this one serves its pages from one host and its files from
    # another: "localhost", the same server under a second name. Both are loopback
    # addresses, like the upstream's own, so the private-address guard lets them through
    # (a public upstream could not send the mirror to loopback); nothing is configured.
    world = World()
    world.add_project("sampleproject", ["1.0", "2.0"])
    with Upstream(world) as up:
        up.files_host = "localhost"
        result = mirror(
            "sync", "--upstream", up.url, "--directory", "./mirror", "--project", "sampleproject",
            cwd=tmp_path,
        )
        asked = {r.header("host") for r in up.requests if r.path.startswith("/packages/")}
        files_host = f"localhost:{up.port}"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 project(s) changed, 0 deferred, 0 failed" in result.stdout
    held = assert_consistent(tmp_path / "mirror" / "web")["sampleproject"]
    assert sorted(held) == sorted(f.filename for f in world.project("sampleproject").files)
    assert held and asked == {files_host}


def test_refused_files_are_reported_with_what_to_do_not_a_retry(tmp_path: Path):
    # Set, --file-host is the whole list besides the upstream's host: "localhost" is
    # not on it, so every file is refused and the project's page is not written.
    world = World()
    world.add_project("sampleproject", ["1.0"])
    with Upstream(world) as up:
        up.files_host = "localhost"
        result = mirror(
            "sync", "--upstream", up.url, "--directory", str(tmp_path / "m"),
            "--file-host", "files.example", "--project", "sampleproject",
        )
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "failed sampleproject" in line]
    assert len(failed) == 1 and "'localhost'" in failed[0]
    assert "next run retries" not in result.stdout
    assert "--file-host" in failed[0] and "running again changes nothing" in failed[0]
    assert assert_consistent(tmp_path / "m" / "web") == {}


def test_the_quick_start_mirror_is_ignored_by_git() -> None:
    """The README's first command writes a mirror inside the clone: git must not see it."""
    root = Path(__file__).parent.parent
    written = re.findall(r"--directory \./(\S+)", (root / "README.md").read_text())
    ignored = (root / ".gitignore").read_text().splitlines()
    assert written and all(f"/{name}/" in ignored for name in written)
