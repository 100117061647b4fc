"""--reuse-from: files an operator already has, taken only when they are what upstream says."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.state import ReuseIndex
from simplemirror.sync import reuse

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
        candidates, web=web, tmp=tmp, max_file_size=1 << 30,
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
    got, _ = take(tmp_path, [str(link)])
    # Read through, it could only be copied: never published as a link out of the tree.
    assert got is None or not (tmp_path / "web" / got.path).is_symlink()


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
