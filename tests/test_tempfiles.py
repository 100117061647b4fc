"""Temporary files: readable by the web server whatever the umask, never clobbering."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from simplemirror import tempfiles


def test_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fd, name = tempfiles.create(tmp_path, "dl-", 0o644)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o644
    assert Path(name).parent == tmp_path and Path(name).name.startswith("dl-")


def test_names_are_unique_and_an_existing_file_is_left_alone(tmp_path: Path) -> None:
    fd, first = tempfiles.create(tmp_path, "x-", 0o644)
    os.close(fd)
    # Put a file where the next names would go: create must step past it untouched.
    pid = os.getpid()
    following = int(first.rsplit("-", 1)[1]) + 1
    squatter = tmp_path / f"x-{pid}-{following}"
    squatter.write_bytes(b"keep me")
    fd, second = tempfiles.create(tmp_path, "x-", 0o644)
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

    fd, name = tempfiles.create(tmp_path, "w-", 0o644)
    monkeypatch.setattr(tempfiles.os, "write", three_at_a_time)
    try:
        tempfiles.write_all(fd, b"0123456789")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert Path(name).read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


@pytest.mark.parametrize("new_dir", [True, False])
def test_install_makes_the_directories_it_needs(tmp_path: Path, new_dir: bool) -> None:
    fd, name = tempfiles.create(tmp_path, "i-", 0o644)
    os.close(fd)
    target = tmp_path / "web" / "a" / "b" / "file"
    tempfiles.install(name, str(target), new_dir=new_dir)
    assert target.exists() and not Path(name).exists()
    # Into a directory that is there already, either way.
    fd, again = tempfiles.create(tmp_path, "i-", 0o644)
    os.close(fd)
    tempfiles.install(again, str(target.with_name("other")), new_dir=new_dir)
    assert target.with_name("other").exists()


def test_install_that_fails_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, name = tempfiles.create(tmp_path, "i-", 0o644)
    os.close(fd)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfiles.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        tempfiles.install(name, str(tmp_path / "web" / "f"), new_dir=True)
    monkeypatch.undo()
    assert not Path(name).exists()


def test_install_of_a_temporary_file_that_is_gone_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tempfiles.install(str(tmp_path / "never-made"), str(tmp_path / "web" / "f"))
    assert not (tmp_path / "web").exists()  # no directories made for nothing


def test_clear_leftovers_empties_tmp_without_following_a_symlink(tmp_path: Path) -> None:
    tmp, outside = tmp_path / "tmp", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "file").write_bytes(b"x")
    (tmp / "a" / "b").mkdir(parents=True)
    (tmp / "a" / "b" / "dl-3").write_bytes(b"x")
    (tmp / "a" / "out").symlink_to(outside)
    (tmp / "out").symlink_to(outside)
    (tmp / "dl-4").write_bytes(b"x")

    tempfiles.clear_leftovers(tmp)

    assert list(tmp.iterdir()) == []
    assert (outside / "deep" / "file").read_bytes() == b"x"
