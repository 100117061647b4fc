"""An import that fails or is stopped while it publishes puts web/ back as it was (a first
one leaves no state.db either), and the same import run again finishes; one killed there
(kill -9) is finished by the next attempt.

Faults are injected at a chosen install into the far side's web/: in this process by
patching ``store.install``, in a subprocess (signals, kill -9) by a small wrapper around
``mirror import`` that does the same and then signals itself.
"""

from __future__ import annotations

import errno
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simplemirror.store import tree
from tests.support.bundles import Keys, apply, far_state, make_bundle, published, refused, sync
from tests.support.consistency import assert_mirror_invariants
from tests.support.upstream import Upstream, World

RUN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Bundles:
    key: Keys
    near: Path
    """The near side as of the delta."""
    first: dict[str, str]
    """published(near) as of the full bundle."""
    full: Path
    delta: Path
    later: Path
    """The delta after ``delta``."""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    root = tmp_path_factory.mktemp("interrupted")
    rng = random.Random(3)
    world = World()
    for i in range(8):
        world.add_project(f"proj-{i}", ["1.0"])
        world.add_file(f"proj-{i}", f"proj_{i}-1.1.tar.gz", rng.randbytes(20_000))
    key, near, out = Keys(root / "keys"), root / "near", root / "out"
    with Upstream(world) as up:
        sync(up, near)
        full = make_bundle(near, out, key, full=True)
        first = published(near)
        world.add_release("proj-1", "2.0")
        world.add_project("proj-new", ["1.0"])
        world.yank("proj-2", "proj_2-1.0.tar.gz")
        world.remove_file("proj-3", "proj_3-1.1.tar.gz")
        sync(up, near)
        delta = make_bundle(near, out, key)
        later_near = root / "later"
        shutil.copytree(near, later_near, symlinks=True)
        world.add_project("proj-later", ["1.0"])
        sync(up, later_near)
        later = make_bundle(later_near, out, key)
    yield Bundles(key, near, first, full, delta, later)


def nth_install(web: Path, n: int, kind: str, act: Callable[[], None]) -> Callable[..., None]:
    """``store.install`` that calls ``act`` instead of the ``n``-th install of a ``kind``
    ("file", "page" or "root") into ``web``."""
    real, seen = tree.install, [0]

    def install(name: str, target: Any, rel: str, **kw: Any) -> None:
        if str(target) == str(web) and _kind(rel) == kind:
            seen[0] += 1
            if seen[0] == n:
                act()
        real(name, target, rel, **kw)

    return install


def _kind(rel: str) -> str:
    if rel.startswith("simple/") and rel.count("/") == 1:
        return "root"
    return "page" if rel.startswith("simple/") else "file"


def rerun_publishes(bundle: Path, far: Path, key: Keys, expected: dict[str, str]) -> None:
    """``mirror import`` of ``bundle`` again, in a subprocess: it ends well, and the far
    side publishes ``expected`` (path -> sha256), every link resolving."""
    result = import_command(bundle, far, key)
    assert result.returncode == 0, result.stderr
    assert published(far) == expected
    assert_mirror_invariants(far)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(("kind", "n"), [("file", 3), ("page", 5), ("root", 1), ("root", 2)])
def test_a_first_import_failing_while_it_publishes_leaves_nothing(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, n: int
) -> None:
    far = tmp_path / "far"
    with monkeypatch.context() as m:
        m.setattr(tree, "install", nth_install(far / "web", n, kind, disk_full))
        message = refused(bundles.full, far, bundles.key)
    assert "full" in message and "free some space" in message
    assert not (far / "state.db").exists()
    assert published(far) == {}
    assert not [p for p in (far / "web").rglob("*") if p.is_dir()]  # no empty directories
    # The bodies went back to the staging area: the rerun takes them from there.
    staged = far / "tmp" / "bundle-staging" / "web"
    assert sorted(str(p.relative_to(staged)) for p in (staged / "packages").rglob("*")
                  if p.is_file()) == sorted(p for p in bundles.first if p.startswith("packages/"))

    apply(bundles.full, far, bundles.key)
    assert published(far) == bundles.first
    assert_mirror_invariants(far)


@pytest.mark.parametrize(("kind", "n"), [("file", 2), ("page", 3), ("root", 2)])
def test_a_delta_failing_while_it_publishes_leaves_the_far_side_as_it_was(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, n: int
) -> None:
    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    before = far_state(far)
    with monkeypatch.context() as m:
        m.setattr(tree, "install", nth_install(far / "web", n, kind, disk_full))
        message = refused(bundles.delta, far, bundles.key, allow_mass_delete=True)
    assert "free some space" in message
    assert far_state(far) == before  # bytes, modification times, every row

    apply(bundles.delta, far, bundles.key, allow_mass_delete=True)
    assert published(far) == published(bundles.near)
    assert_mirror_invariants(far)


# -- in a subprocess: signals and kill -9 ---------------------------------------------------------

WRAPPER = textwrap.dedent("""
    import os, sys
    from simplemirror.store import tree
    from simplemirror.cli.main import main
    web, kind, n, signum = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    real, seen = tree.install, [0]

    def kind_of(rel):
        if rel.startswith("simple/") and rel.count("/") == 1:
            return "root"
        return "page" if rel.startswith("simple/") else "file"

    def install(name, target, rel, **kw):
        if str(target) == web and kind_of(rel) == kind:
            seen[0] += 1
            if seen[0] == n:
                os.kill(os.getpid(), signum)
        real(name, target, rel, **kw)

    tree.install = install
    if kind == "reap":  # once generation n committed: the bytes no page lists go
        from simplemirror.sync import reap
        real_reap = reap.reap_files

        def reap_files(web, state, generation):
            if generation == n:
                os.kill(os.getpid(), signum)
            return real_reap(web, state, generation)

        reap.reap_files = reap_files
    sys.exit(main(sys.argv[5:]))
""")


def import_signalled(bundle: Path, far: Path, key: Keys, where: tuple[str, str, int],
                     signum: int) -> subprocess.CompletedProcess[str]:
    """`mirror import`, which sends itself ``signum`` at the ``n``-th install of a ``kind``
    into ``web`` (``where``: web, kind, n)."""
    web, kind, n = where
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, web, kind, str(n), str(int(signum)),
         "import", "--from", str(bundle), "--directory", str(far), "--public-key",
         str(key.public_path), "--allow-mass-delete"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


def import_command(bundle: Path, far: Path, key: Keys) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simplemirror", "import", "--from", str(bundle), "--directory",
         str(far), "--public-key", str(key.public_path), "--allow-mass-delete"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


@pytest.mark.parametrize("n", [1, 6])
def test_a_first_import_killed_while_it_publishes_is_finished_by_the_next(
    bundles: Bundles, tmp_path: Path, n: int
) -> None:
    far = tmp_path / "far"
    killed = import_signalled(bundles.full, far, bundles.key, (str(far / "web"), "page", n),
                              signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert any((far / "web" / "packages").rglob("*.tar.gz"))  # it was publishing
    assert_mirror_invariants(far, killed=True)

    rerun_publishes(bundles.full, far, bundles.key, bundles.first)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("where", ["staging", "publishing"])
def test_a_signal_stops_a_first_import_and_leaves_nothing(
    bundles: Bundles, tmp_path: Path, signum: signal.Signals, where: str
) -> None:
    far = tmp_path / "far"
    at = ((str(far / "tmp" / "bundle-staging" / "web"), "file", 2) if where == "staging"
          else (str(far / "web"), "page", 5))
    result = import_signalled(bundles.full, far, bundles.key, at, signum)

    assert result.returncode == 128 + signum, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mirror: import stopped by {signum.name}:"), result.stderr
    assert "run the same import again" in last and "Traceback" not in result.stderr
    assert not (far / "state.db").exists()
    assert published(far) == {}

    result = import_command(bundles.full, far, bundles.key)
    assert result.returncode == 0, result.stderr
    assert published(far) == bundles.first


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_delta_and_leaves_the_far_side_as_it_was(
    bundles: Bundles, tmp_path: Path, signum: signal.Signals
) -> None:
    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    before = far_state(far)
    result = import_signalled(bundles.delta, far, bundles.key, (str(far / "web"), "page", 2),
                              signum)

    assert result.returncode == 128 + signum, result.stderr
    assert f"import stopped by {signum.name}" in result.stderr.strip().splitlines()[-1]
    assert far_state(far) == before

    rerun_publishes(bundles.delta, far, bundles.key, published(bundles.near))


def test_a_delta_killed_while_it_publishes_is_finished_by_the_next(
    bundles: Bundles, tmp_path: Path
) -> None:
    """web/ is then between the bundle's base and its target: the rerun finishes it, though
    the base digest of the tree is the bundle's no more."""
    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    before = published(far)
    killed = import_signalled(bundles.delta, far, bundles.key, (str(far / "web"), "page", 3),
                              signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert published(far) != before
    assert_mirror_invariants(far, killed=True)

    rerun_publishes(bundles.delta, far, bundles.key, published(bundles.near))


def test_what_a_kill_after_the_commit_left_is_removed_before_the_next_bundle(
    bundles: Bundles, tmp_path: Path
) -> None:
    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    killed = import_signalled(bundles.delta, far, bundles.key, ("", "reap", 2), signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert published(far) != published(bundles.near)  # the removed file is still there

    # Not the same bundle again, the next one: its base is the tree once that file went.
    result = import_command(bundles.later, far, bundles.key)
    assert result.returncode == 0, result.stderr
    assert (far / "web" / "simple" / "proj-later").is_dir()
    assert_mirror_invariants(far)


def test_a_failure_after_a_kill_while_publishing_leaves_it_finishable(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Putting back what the second attempt published does not put back what the killed
    first one did: the third must still know web/ is between base and target."""
    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    killed = import_signalled(bundles.delta, far, bundles.key, (str(far / "web"), "page", 2),
                              signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    with monkeypatch.context() as m:
        m.setattr(tree, "install", nth_install(far / "web", 2, "root", disk_full))
        assert "free some space" in refused(bundles.delta, far, bundles.key,
                                            allow_mass_delete=True)

    apply(bundles.delta, far, bundles.key, allow_mass_delete=True)
    assert published(far) == published(bundles.near)
    assert_mirror_invariants(far)


def test_a_first_import_put_back_never_walks_a_symlinked_packages_directory(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """web/packages made a symlink to a bigger disk while the import publishes: the
    install refuses it (the tree holds no symlink), and putting back removes no
    directory over there."""
    far, elsewhere = tmp_path / "far", tmp_path / "bigger-disk"
    (elsewhere / "empty" / "dirs").mkdir(parents=True)

    def swap() -> None:
        packages = far / "web" / "packages"
        if packages.is_dir():
            shutil.rmtree(packages)
        packages.parent.mkdir(parents=True, exist_ok=True)
        packages.symlink_to(elsewhere)

    with monkeypatch.context() as m:
        m.setattr(tree, "install", nth_install(far / "web", 1, "file", swap))
        message = refused(bundles.full, far, bundles.key)
    assert "symlink" in message
    assert (elsewhere / "empty" / "dirs").is_dir()
    assert not (far / "state.db").exists()


def test_a_delta_put_back_where_the_file_system_has_no_hard_links(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages a delta replaces are kept as copies where os.link fails (vfat, exFAT)."""
    import os

    far = tmp_path / "far"
    apply(bundles.full, far, bundles.key)
    before = far_state(far)

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    with monkeypatch.context() as m:
        m.setattr(os, "link", no_links)
        m.setattr(tree, "install", nth_install(far / "web", 2, "root", disk_full))
        message = refused(bundles.delta, far, bundles.key, allow_mass_delete=True)
    assert "free some space" in message
    assert far_state(far) == before


def test_an_import_that_cannot_put_web_back_says_so_and_keeps_its_rows(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "nothing was changed": a page the put-back cannot remove leaves web/ part-way,
    and state.db stays, so that the same import run again finishes the job."""
    import os

    far = tmp_path / "far"
    real_unlink = os.unlink

    def stuck(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).startswith(str(far / "web" / "simple")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)

    def fail_then_stick() -> None:
        monkeypatch.setattr(os, "unlink", stuck)
        disk_full()

    with monkeypatch.context() as m:
        m.setattr(tree, "install", nth_install(far / "web", 1, "root", fail_then_stick))
        message = refused(bundles.full, far, bundles.key)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert "left part-way" in message and "run the same import again" in message
    assert "nothing was changed" not in message
    assert (far / "state.db").exists()

    apply(bundles.full, far, bundles.key)
    assert published(far) == bundles.first
    assert_mirror_invariants(far)
