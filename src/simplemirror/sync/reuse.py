"""Files an operator already has (``--reuse-from``): taken instead of downloaded when
upstream's size and every hash match.

Another mirror's ``web/packages/`` (bandersnatch's, an old simplemirror tree), a pip
cache of wheels, a ``--find-links`` folder: each is walked once a run into a name →
paths index (``state.ReuseIndex``, on disk), and a file the plan needs is looked up
there by name and size. A candidate is staged (a hard link, a reflink, or a copy:
``store.adopt``), hashed from the staged bytes, and installed only if it is what
upstream describes; anything else is left alone and the file is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from simplemirror.store import tree as store
from simplemirror.store.backend import Storage

log = logging.getLogger("simplemirror")

CHUNK = 1 << 20


def walk(roots: Sequence[Path]) -> Iterator[tuple[str, str, int]]:
    """(file name, path, size) of every regular file below ``roots``; symlinks are
    neither followed nor taken. Streams: only directories still to visit are held."""
    stack = [str(root) for root in reversed(roots)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            yield entry.name, entry.path, entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # gone meanwhile, or unreadable: not a candidate
        except OSError as exc:
            log.warning("reuse-from: cannot read %s (%s); skipped", top, exc)


@dataclass(frozen=True)
class Taken:
    """A file taken from a reuse directory, verified and installed."""

    path: str
    """Where it now is, below web/."""
    size: int
    hashes: dict[str, str]
    how: str
    """link, reflink or copy."""


@dataclass
class Tally:
    """What --reuse-from did in one process (summed by the run)."""

    taken: int = 0
    bytes: int = 0
    hashed: int = 0
    rejected: int = 0

    def add(self, other: Tally) -> None:
        self.taken += other.taken
        self.bytes += other.bytes
        self.hashed += other.hashed
        self.rejected += other.rejected


class _Mismatch(Exception):
    pass


def _hash_into(
    read: Callable[[int], bytes], write: Callable[[bytes], None] | None,
    algorithms: Sequence[str], limit: int, check_stop: Callable[[], None],
) -> tuple[int, dict[str, str]]:
    hashers = [hashlib.new(a) for a in algorithms]
    size = 0
    while chunk := read(CHUNK):
        check_stop()
        size += len(chunk)
        if size > limit:
            raise _Mismatch(f"larger than the {limit} bytes upstream declared")
        if write is not None:
            write(chunk)
        for h in hashers:
            h.update(chunk)
    return size, {a: h.hexdigest() for a, h in zip(algorithms, hashers, strict=True)}


def _open_regular(path: str) -> io.FileIO:
    """``path`` for reading, if it is a regular file: never through a symlink, and never
    a FIFO or device swapped in since the walk (which could block for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Mismatch("not a regular file")
    return io.FileIO(fd, "rb")


def take(
    candidates: Sequence[str], *, storage: Storage, tmp: Path, expected_hashes: Mapping[str, str],
    expected_size: int | None, max_file_size: int, path_for_sha256: Callable[[str], str],
    check_stop: Callable[[], None], tally: Tally,
) -> Taken | None:
    """The first of ``candidates`` whose bytes are what upstream describes, installed at
    ``path_for_sha256(sha256)``; None when none is. Blocking: reads whole files."""
    algorithms = ["sha256", *(a for a in expected_hashes if a != "sha256")]
    limit = expected_size if expected_size is not None else max_file_size
    for candidate in candidates:
        staged = store.adopt(tmp, candidate)
        name = ""
        try:
            if staged is not None:
                name, how = staged
                with open(name, "rb") as body:
                    size, digests = _hash_into(body.read, None, algorithms, limit, check_stop)
            else:
                how = "copy"
                fd, name = store.create(tmp, store.DOWNLOAD_PREFIX)
                try:
                    with _open_regular(candidate) as body:
                        size, digests = _hash_into(
                            body.read, functools.partial(store.write_all, fd),
                            algorithms, limit, check_stop,
                        )
                finally:
                    os.close(fd)
            tally.hashed += 1
            if expected_size is not None and size != expected_size:
                raise _Mismatch(f"{size} bytes, upstream declared {expected_size}")
            for algorithm, digest in expected_hashes.items():
                if digests[algorithm] != digest:
                    raise _Mismatch(f"its {algorithm} is not the one upstream declared")
        except (_Mismatch, OSError) as exc:
            if name:
                store.discard(name)
            tally.rejected += 1
            log.info("reuse-from: %s not taken: %s", candidate, exc)
            continue
        except BaseException:
            if name:
                store.discard(name)
            raise
        rel = path_for_sha256(digests["sha256"])
        storage.install(name, rel, sha256=digests["sha256"], new_dir=True)
        tally.taken += 1
        tally.bytes += size
        return Taken(rel, size, digests, how)
    return None
