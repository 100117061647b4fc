"""The storage layer: temporary files readable by the web server whatever the umask, never
clobbering; nothing written, removed or read through a symlink; only its own leftovers cleared."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from simplemirror.store import tree as store


def test_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fd, name = store.create(tmp_path, "dl-", 0o644)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o644
    assert Path(name).parent == tmp_path and Path(name).name.startswith("dl-")


def test_names_are_unique_and_an_existing_file_is_left_alone(tmp_path: Path) -> None:
    fd, first = store.create(tmp_path, "x-", 0o644)
    os.close(fd)
    # Put a file where the next names would go: create must step past it untouched.
    pid = os.getpid()
    following = int(first.rsplit("-", 1)[1]) + 1
    squatter = tmp_path / f"x-{pid}-{following}"
    squatter.write_bytes(b"keep me")
    fd, second = store.create(tmp_path, "x-", 0o644)
    os.close(fd)
    assert second not in (first, str(squatter))
    assert squatter.read_bytes() == b"keep me"


def test_write_all_finishes_what_a_short_write_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def three_at_a_time(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))

    fd, name = store.create(tmp_path, "w-", 0o644)
    monkeypatch.setattr(store.os, "write", three_at_a_time)
    try:
        store.write_all(fd, b"0123456789")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert Path(name).read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


@pytest.mark.parametrize("new_dir", [True, False])
def test_install_makes_the_directories_it_needs(tmp_path: Path, new_dir: bool) -> None:
    fd, name = store.create(tmp_path, "i-", 0o644)
    os.close(fd)
    target = tmp_path / "web" / "a" / "b" / "file"
    store.install(name, tmp_path / "web", "a/b/file", new_dir=new_dir)
    assert target.exists() and not Path(name).exists()
    # Into a directory that is there already, either way.
    fd, again = store.create(tmp_path, "i-", 0o644)
    os.close(fd)
    store.install(again, tmp_path / "web", "a/b/other", new_dir=new_dir)
    assert target.with_name("other").exists()


def test_install_that_fails_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, name = store.create(tmp_path, "i-", 0o644)
    os.close(fd)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.install(name, tmp_path / "web", "f", new_dir=True)
    monkeypatch.undo()
    assert not Path(name).exists()


def test_install_of_a_temporary_file_that_is_gone_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.install(str(tmp_path / "never-made"), tmp_path / "web", "a/f")
    assert not (tmp_path / "web" / "a").exists()  # no directories made for nothing


def test_clear_leftovers_removes_only_its_own_files_and_follows_no_symlink(
    tmp_path: Path,
) -> None:
    """tmp/ may be shared, or a symlink to a scratch directory: only the files the mirror
    names (dl-<pid>-<n>, page-<pid>-<n>) are its own to delete. (Before: everything
    in tmp/, directories too, went.)"""
    tmp, outside = tmp_path / "tmp", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "file").write_bytes(b"x")
    (tmp / "a" / "b").mkdir(parents=True)
    (tmp / "a" / "b" / "dl-3-1").write_bytes(b"x")
    (tmp / "a" / "out").symlink_to(outside)
    (tmp / "out").symlink_to(outside)
    (tmp / "dl-4-2").write_bytes(b"x")
    (tmp / "page-4-3").write_bytes(b"x")
    (tmp / "dl-5-4").symlink_to(outside / "deep" / "file")
    (tmp / "someone-elses.iso").write_bytes(b"x")
    (tmp / "dl-notours").write_bytes(b"x")

    assert sorted(store.clear_leftovers(tmp)) == ["dl-4-2", "dl-5-4", "page-4-3"]

    assert sorted(p.name for p in tmp.iterdir()) == ["a", "dl-notours", "out", "someone-elses.iso"]
    assert (tmp / "a" / "b" / "dl-3-1").exists()  # not at the top: not ours
    assert (outside / "deep" / "file").read_bytes() == b"x"


def test_clear_leftovers_through_a_symlinked_tmp_spares_what_is_not_the_mirrors(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "build.log").write_bytes(b"someone else's")
    (scratch / "dl-7-7").write_bytes(b"half a wheel")
    (tmp_path / "tmp").symlink_to(scratch)

    store.clear_leftovers(tmp_path / "tmp")

    assert sorted(p.name for p in scratch.iterdir()) == ["build.log"]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Path]:
    store.forget_dirs()
    (tmp_path / "web").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "outside").mkdir()
    yield tmp_path / "web"
    store.forget_dirs()


@pytest.mark.parametrize("new_dir", [True, False])
def test_a_file_is_never_installed_through_a_symlinked_directory(
    web: Path, new_dir: bool
) -> None:
    outside = web.parent / "outside"
    (web / "packages").mkdir()
    (web / "packages" / "ab").symlink_to(outside)
    fd, name = store.create(web.parent / "tmp", store.DOWNLOAD_PREFIX)
    os.close(fd)
    with pytest.raises(store.UnsafePath, match="packages/ab is a symlink"):
        store.install(name, web, "packages/ab/cd/ef/file.whl", new_dir=new_dir)
    assert list(outside.iterdir()) == []
    assert not Path(name).exists()


def test_a_page_is_never_written_through_a_symlinked_project_directory(web: Path) -> None:
    outside = web.parent / "outside"
    (web / "simple").mkdir()
    (web / "simple" / "evil").symlink_to(outside)
    with pytest.raises(store.UnsafePath, match="simple/evil is a symlink"):
        store.make_dir(web, "simple/evil")
    with pytest.raises(store.UnsafePath):
        store.write_file(web, web.parent / "tmp", "simple/evil/index.html", b"<html>")
    assert list(outside.iterdir()) == []


def test_a_symlink_at_a_published_path_is_replaced_not_followed(web: Path) -> None:
    victim = web.parent / "outside" / "victim"
    victim.write_bytes(b"keep")
    (web / "last-modified").symlink_to(victim)
    assert not store.same_bytes(web, "last-modified", b"keep")
    store.write_file(web, web.parent / "tmp", "last-modified", b"new\n")
    assert victim.read_bytes() == b"keep"
    assert not (web / "last-modified").is_symlink()
    assert (web / "last-modified").read_bytes() == b"new\n"


def test_nothing_is_removed_or_read_through_a_symlinked_directory(web: Path) -> None:
    outside = web.parent / "outside"
    (outside / "file.whl").write_bytes(b"keep")
    (outside / "file.whl.metadata").write_bytes(b"keep")
    (web / "packages" / "ab").mkdir(parents=True)
    (web / "packages" / "ab" / "cd").symlink_to(outside)
    with pytest.raises(store.UnsafePath):
        store.remove(web, "packages/ab/cd/file.whl", ("", ".metadata"), stop="packages")
    with pytest.raises(store.UnsafePath):
        store.open_file(web, "packages/ab/cd/file.whl")
    assert sorted(p.name for p in outside.iterdir()) == ["file.whl", "file.whl.metadata"]
    assert list(store.walk_files(web, "packages")) == ["packages/ab/cd"]


def test_remove_link_removes_the_link_alone(web: Path) -> None:
    outside = web.parent / "outside"
    (outside / "index.html").write_bytes(b"keep")
    (web / "simple").mkdir()
    (web / "simple" / "evil").symlink_to(outside)
    (web / "simple" / "fine").mkdir()
    assert store.remove_link(web, "simple/evil")
    assert not store.remove_link(web, "simple/fine")
    assert not store.remove_link(web, "simple/absent")
    assert (outside / "index.html").read_bytes() == b"keep"
    assert sorted(p.name for p in (web / "simple").iterdir()) == ["fine"]


def test_a_tmp_on_another_filesystem_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "tmp").mkdir()
    store.check_same_filesystem(tmp_path / "tmp", tmp_path / "web")
    real_stat = os.stat

    def other_disk(path: object, *args: object, **kwargs: object) -> os.stat_result:
        found = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path).endswith("tmp"):
            values = list(found)
            values[stat.ST_DEV] += 1
            return os.stat_result(values)
        return found

    monkeypatch.setattr(store.os, "stat", other_disk)
    with pytest.raises(store.UnsafePath, match="another filesystem"):
        store.check_same_filesystem(tmp_path / "tmp", tmp_path / "web")


def test_flush_syncs_the_tree(tmp_path: Path) -> None:
    store.flush(tmp_path)  # no error on a real directory
    with pytest.raises(OSError):
        store.flush(tmp_path / "absent")
