"""Temporary files in the mirror's tmp/, written whole and then renamed into web/."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path

_serial = itertools.count()
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def create(tmp: Path, prefix: str, mode: int) -> tuple[int, str]:
    """A new, empty file in ``tmp`` opened for writing: (descriptor, path).

    tempfile.mkstemp draws random names through several layers of Python; a
    counter is enough here, since tmp/ belongs to the run that holds the lock
    (O_EXCL still refuses a name that exists). The mode is set whatever the
    umask: the published tree is read by another user (the web server).
    """
    while True:
        name = f"{tmp}/{prefix}{_pid}-{next(_serial)}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        break
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return fd, name


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until all of ``data`` is written (a write may take only part)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def install(name: str, target: str, *, new_dir: bool = False) -> None:
    """Rename the finished temporary file ``name`` to ``target``, making its directory.

    ``new_dir``: the directory is most likely not there yet (a content-addressed
    file's own), so make it first rather than after a failed rename. Plain
    ``os`` calls: at one or two per file, pathlib's objects cost more than the
    system calls. On failure the temporary file is removed.
    """
    try:
        if new_dir:
            _make_dir(os.path.dirname(target))
        try:
            os.replace(name, target)
        except FileNotFoundError:
            if not os.path.exists(name):
                raise
            _make_dir(os.path.dirname(target))
            os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _make_dir(path: str) -> None:
    # Not os.makedirs: it looks at each parent before making it, and a
    # content-addressed file's directory most often lacks one or two.
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        _make_dir(parent)
        _make_dir(path)


def clear_leftovers(tmp: Path) -> None:
    """Empty ``tmp`` of what a run that died left there (never published).

    Directories too, whoever made them, and everything in them; but a symlink is
    removed, never followed, so that nothing outside tmp/ is ever deleted
    (shutil.rmtree does not follow the symlinks inside a directory either).
    """
    with os.scandir(tmp) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
