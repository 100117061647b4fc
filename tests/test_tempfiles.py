"""Temporary files: readable by the web server whatever the umask, never clobbering."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
