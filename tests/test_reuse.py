"""--reuse-from: files an operator already has, taken only when they are what upstream says."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Local
from simplemirror.store.state import ReuseIndex
from simplemirror.sync import reuse
from tests.support.consistency import assert_mirror_invariants
from tests.support.process import run
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

BODY = b"a wheel's bytes\n" * 1000


def _never_stop() -> None:
    pass


def take(tmp_path: Path, candidates: list[str], body: bytes = BODY, **kw: object) -> tuple[
    reuse.Taken | None, reuse.Tally
]:
    web, tmp = tmp_path / "web", tmp_path / "tmp"
    web.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    tally = reuse.Tally()
    sha = hashlib.sha256(body).hexdigest()
    options: dict[str, object] = {
        "expected_hashes": {"sha256": sha}, "expected_size": len(body),
    }
    options.update(kw)
    got = reuse.take(
        candidates, storage=Local(web), tmp=tmp, max_file_size=1 << 30,
        path_for_sha256=lambda s: layout.file_path(s, "x-1.0-py3-none-any.whl"),
        check_stop=_never_stop, tally=tally, **options,  # type: ignore[arg-type]
    )
    return got, tally


def test_a_matching_file_on_the_same_filesystem_is_hard_linked(tmp_path: Path) -> None:
    source = tmp_path / "other" / "x-1.0-py3-none-any.whl"
    source.parent.mkdir()
    source.write_bytes(BODY)
    source.chmod(0o644)
    got, tally = take(tmp_path, [str(source)])
    assert got is not None and got.how == "link"
    published = tmp_path / "web" / got.path
    assert published.read_bytes() == BODY
    assert os.stat(published).st_ino == os.stat(source).st_ino
    assert (tally.taken, tally.bytes, tally.hashed, tally.rejected) == (1, len(BODY), 1, 0)
    assert not list((tmp_path / "tmp").iterdir())


def test_a_file_others_cannot_read_is_copied_not_linked(tmp_path: Path) -> None:
    # Linked, it would be published with its 0600 mode: the web server could not read it.
    source = tmp_path / "x-1.0-py3-none-any.whl"
    source.write_bytes(BODY)
    source.chmod(0o600)
    got, _ = take(tmp_path, [str(source)])
    assert got is not None and got.how in {"copy", "reflink"}
    published = tmp_path / "web" / got.path
    assert os.stat(published).st_ino != os.stat(source).st_ino
    assert published.stat().st_mode & 0o777 == store.PUBLISHED_MODE


def test_a_reuse_directory_on_another_filesystem_is_copied_not_linked(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    source = other / f"reuse-test-{os.getpid()}.whl"
    source.write_bytes(BODY)
    try:
        got, tally = take(tmp_path, [str(source)])
    finally:
        source.unlink()
    assert got is not None and got.how in {"copy", "reflink"}
    published = tmp_path / "web" / got.path
    assert published.read_bytes() == BODY and published.stat().st_nlink == 1
    assert tally.taken == 1


@pytest.mark.parametrize("damage", ["flipped", "short", "long"])
def test_a_corrupted_candidate_is_not_taken_and_the_next_one_is(
    tmp_path: Path, damage: str
) -> None:
    bad = tmp_path / "bad" / "x-1.0-py3-none-any.whl"
    bad.parent.mkdir()
    bad.write_bytes({"flipped": b"A" + BODY[1:], "short": BODY[:-1], "long": BODY + b"!"}[damage])
    bad.chmod(0o644)
    good = tmp_path / "good" / "x-1.0-py3-none-any.whl"
    good.parent.mkdir()
    good.write_bytes(BODY)
    got, tally = take(tmp_path, [str(bad), str(good)])
    assert got is not None and (tmp_path / "web" / got.path).read_bytes() == BODY
    assert (tally.rejected, tally.taken) == (1, 1)
    assert bad.read_bytes() != BODY  # left alone
    assert not list((tmp_path / "tmp").iterdir())


def test_every_hash_upstream_gives_must_match(tmp_path: Path) -> None:
    source = tmp_path / "x-1.0-py3-none-any.whl"
    source.write_bytes(BODY)
    sha = hashlib.sha256(BODY).hexdigest()
    got, tally = take(tmp_path, [str(source)],
                      expected_hashes={"sha256": sha, "md5": "0" * 32})
    assert got is None and tally.rejected == 1
    assert not (tmp_path / "web" / "packages").exists()


def test_a_symlink_is_never_taken(tmp_path: Path) -> None:
    real = tmp_path / "real.whl"
    real.write_bytes(BODY)
    link = tmp_path / "x-1.0-py3-none-any.whl"
    link.symlink_to(real)
    assert [name for name, _, _ in reuse.walk([tmp_path])] == ["real.whl"]
    got, tally = take(tmp_path, [str(link)])
    # Neither linked nor read through: a symlink swapped in after the walk is refused.
    assert got is None and tally.rejected == 1
    assert not list((tmp_path / "tmp").iterdir())


def test_a_fifo_swapped_in_after_the_walk_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "x-1.0-py3-none-any.whl"
    os.mkfifo(fifo)
    got, tally = take(tmp_path, [str(fifo)])
    assert got is None and tally.rejected == 1


def test_a_file_others_may_write_is_copied_not_linked(tmp_path: Path) -> None:
    # Linked, the bytes checked could be rewritten in place under the published name.
    source = tmp_path / "other" / "x-1.0-py3-none-any.whl"
    source.parent.mkdir()
    source.write_bytes(BODY)
    source.chmod(0o666)
    got, _ = take(tmp_path, [str(source)])
    assert got is not None and got.how in {"copy", "reflink"}
    published = tmp_path / "web" / got.path
    source.write_bytes(b"EVIL" + BODY[4:])
    assert published.read_bytes() == BODY


def test_the_walk_streams_names_paths_and_sizes_and_skips_what_it_cannot_read(
    tmp_path: Path
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "one.whl").write_bytes(b"1")
    (tmp_path / "a" / "two.tar.gz").write_bytes(b"22")
    (tmp_path / "shut").mkdir()
    (tmp_path / "shut" / "hidden.whl").write_bytes(b"333")
    (tmp_path / "shut").chmod(0)
    try:
        found = sorted(reuse.walk([tmp_path / "a", tmp_path / "shut"]))
    finally:
        (tmp_path / "shut").chmod(0o755)
    readable = [("one.whl", str(tmp_path / "a/b/one.whl"), 1),
                ("two.tar.gz", str(tmp_path / "a/two.tar.gz"), 2)]
    hidden = ("hidden.whl", str(tmp_path / "shut/hidden.whl"), 3)
    # Root reads the shut directory all the same; anyone else is refused, and goes on.
    assert found == sorted([*readable, hidden] if os.geteuid() == 0 else readable)


def test_the_index_finds_by_name_and_size_and_goes_with_the_run(tmp_path: Path) -> None:
    index = ReuseIndex(tmp_path / "reuse-1.db")
    assert index.add([("a.whl", "/x/a.whl", 10), ("a.whl", "/y/a.whl", 11),
                      ("b.whl", "/x/b.whl", 5)]) == 3
    assert index.candidates("a.whl", 10) == ["/x/a.whl"]
    assert sorted(index.candidates("a.whl", None)) == ["/x/a.whl", "/y/a.whl"]
    assert index.candidates("c.whl", None) == []
    index.close()
    assert not (tmp_path / "reuse-1.db").exists()


def test_a_leftover_index_is_cleared_with_the_runs_other_leftovers(tmp_path: Path) -> None:
    (tmp_path / "reuse-123.db").write_bytes(b"")
    (tmp_path / "someone-elses.db").write_bytes(b"")
    store.clear_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses.db"]


# -- through a whole sync ---------------------------------------------------------------


def _bandersnatch_tree(root: Path, world: World, *, skip: set[str] = frozenset()) -> Path:
    """A tree laid out as bandersnatch lays out web/packages/: each file below a
    directory named for its hash, its .metadata beside it."""
    packages = root / "web" / "packages"
    for project in world.projects.values():
        for f in project.files:
            if f.filename in skip:
                continue
            h = hashlib.blake2b(f.content, digest_size=32).hexdigest()
            where = packages / h[:2] / h[2:4] / h[4:]
            where.mkdir(parents=True, exist_ok=True)
            (where / f.filename).write_bytes(f.content)
            (where / f.filename).chmod(0o644)
            if f.metadata is not None:
                (where / (f.filename + ".metadata")).write_bytes(f.metadata)
    return packages


def _world() -> World:
    world = World()
    for i in range(4):
        world.add_project(f"proj-{i}", ["1.0", "2.0"])
    # One .metadata that is not its wheel's METADATA: read from the wheel it could not be.
    apart = next(f for f in world.project("proj-0").files if f.metadata)
    apart.metadata = (apart.metadata or b"") + b"Description: not the wheel's\n"
    return world


def _published(web: Path) -> dict[str, bytes]:
    return {str(p.relative_to(web)): p.read_bytes() for p in sorted(web.rglob("*"))
            if p.is_file() and p.name != "last-modified"}


@pytest.mark.parametrize("processes", ["0", "2"])
def test_a_first_sync_takes_every_file_another_mirror_holds_and_asks_only_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], processes: str
) -> None:
    world = _world()
    lacking = next(f for f in world.project("proj-3").files if f.filename.endswith(".tar.gz"))
    packages = _bandersnatch_tree(tmp_path / "bs", world, skip={lacking.filename})
    with Upstream(world) as up:
        code, out, _ = run(capsys, "sync", "--upstream", up.url, "--directory",
                           str(tmp_path / "m"), "--reuse-from", str(packages),
                           "--download-processes", processes)
        asked = Counter(r.path for r in up.requests if r.method == "GET")
        fresh = tmp_path / "fresh"
        assert run(capsys, "sync", "--upstream", up.url, "--directory", str(fresh))[0] == 0
    assert code == 0, out
    bodies = {f.path: f for p in world.projects.values() for f in p.files}
    # No file body bandersnatch held; the one it lacked, once.
    assert {path: n for path, n in asked.items() if path in bodies} == {lacking.path: 1}
    # No .metadata either: each was read from its wheel, or taken from beside it.
    assert not [path for path in asked if path.endswith(".metadata")]
    web = tmp_path / "m" / "web"
    assert _published(web) == _published(fresh / "web")
    assert_consistent(web)
    assert_mirror_invariants(tmp_path / "m")
    assert "reused 16 file(s)" in out  # 15 files and 1 .metadata
    report = json.loads((tmp_path / "m" / "reports" / "1.json").read_text())
    assert report["counts"]["files_reused"] == 16 and report["counts"]["files_fetched"] == 1
    assert report["counts"]["reuse_rejected"] == 0
    assert run(capsys, "verify", "--directory", str(tmp_path / "m"))[0] == 0
    assert not [p for p in (tmp_path / "m" / "tmp").iterdir()]  # the index went too


def test_a_corrupted_file_in_the_reuse_directory_is_downloaded_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world()
    packages = _bandersnatch_tree(tmp_path / "bs", world)
    victim = next(f for f in world.project("proj-1").files if f.filename.endswith(".whl"))
    (damaged,) = packages.rglob(victim.filename)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")  # same size, other bytes
    with Upstream(world) as up:
        code, out, _ = run(capsys, "sync", "--upstream", up.url, "--directory",
                           str(tmp_path / "m"), "--reuse-from", str(packages))
        asked = Counter(r.path for r in up.requests if r.method == "GET")
    assert code == 0, out
    assert asked[victim.path] == 1
    (published,) = (tmp_path / "m" / "web" / "packages").rglob(victim.filename)
    assert published.read_bytes() == victim.content
    assert os.stat(published).st_ino != os.stat(damaged).st_ino
    report = json.loads((tmp_path / "m" / "reports" / "1.json").read_text())
    assert report["counts"]["reuse_rejected"] == 1
    assert run(capsys, "verify", "--directory", str(tmp_path / "m"))[0] == 0


def test_a_missing_reuse_directory_is_one_clear_error_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world()
    with Upstream(world) as up:
        code, _, err = run(capsys, "sync", "--upstream", up.url, "--directory",
                             str(tmp_path / "m"), "--reuse-from", str(tmp_path / "unmounted"))
    assert code == 1
    assert err.strip() == (f"mirror: reuse-from: {tmp_path / 'unmounted'} is not a directory "
                           "(is its disk mounted?); fix the path or leave it out")
    assert not (tmp_path / "m" / "web" / "packages").exists()


@pytest.mark.parametrize("how", ["inside", "dotdot", "symlink"])
def test_the_mirrors_own_directory_cannot_be_a_reuse_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    (tmp_path / "m" / "web" / "packages").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m" / "web")
    given = {
        "inside": tmp_path / "m" / "web" / "packages",
        "dotdot": tmp_path / "elsewhere" / ".." / "m" / "web",
        "symlink": tmp_path / "link" / "packages",
    }[how]
    code, _, err = run(capsys, "sync", "--upstream", "http://127.0.0.1:9/simple/",
                       "--directory", str(tmp_path / "m"), "--reuse-from", str(given))
    assert code == 2 and "is the mirror's own directory" in err
