"""Temporary files in the mirror's tmp/, written whole and then renamed into web/."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

_serial = itertools.count()


def create(tmp: Path, prefix: str, mode: int) -> tuple[int, str]:
    """A new, empty file in ``tmp`` opened for writing: (descriptor, path).

    tempfile.mkstemp draws random names through several layers of Python; a
    counter is enough here, since tmp/ belongs to the run that holds the lock
    (O_EXCL still refuses a name that exists). The mode is set whatever the
    umask: the published tree is read by another user (the web server).
    """
    while True:
        name = f"{tmp}/{prefix}{os.getpid()}-{next(_serial)}"
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
