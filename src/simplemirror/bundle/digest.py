"""The state digest: one sha256 over what a mirror publishes, the same on both sides.

It hashes, in bytewise order of path, a line ``path NUL size NUL sha256 LF`` for
everything published below ``web/`` except ``last-modified``: every live file and the
files beside it, every project page, and the two root pages (a project upstream removed
counts as gone, though a stopped run may have left its pages for the next).

Two ways to work it out, which agree on a mirror whose tree is what its state.db says:
``published_digest``, what state.db publishes (``StateReader.published_entries``), with
the sizes and digests it does not hold (pages' sizes, signatures) read from the tree: the
near side's, whose tree a running sync changes under it; and ``tree_digest``, the paths
and sizes the tree holds: the far side's, before it applies a bundle, so that a file put
there, deleted or changed behind state.db's back is seen. In both, a sha256 that state.db
recorded for a path of that size is taken from it, not read (hashing every byte of a
mirror of the public index's size at every import would take days), unless the file was
modified since the last writer of the tree was done; a body changed in place at the
same size with its modification time put back is what `mirror verify` finds.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simplemirror.bundle.manifest import SIBLINGS
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.state import StateReader

Entry = tuple[str, int, str]


class DigestError(Exception):
    """What state.db says is published and what the tree holds disagree."""


class Lost(DigestError):
    """Files state.db publishes are in none of the trees looked in."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"{len(paths)} file(s) state.db publishes are not in the tree (the "
                         f"first: {paths[0]}): run `mirror verify` there")
        self.paths = paths


def state_digest(entries: Iterable[Entry]) -> str:
    """The digest of (path, size, sha256) entries, given in bytewise order of path."""
    digest = hashlib.sha256()
    last = ""
    for path, size, sha256 in entries:
        # UTF-8 keeps code point order: SQLite's order (bytes) is Python's (str).
        if path <= last:
            raise ValueError(f"entries out of order: {path!r} after {last!r}")
        digest.update(f"{path}\0{size}\0{sha256}\n".encode())
        last = path
    return "sha256:" + digest.hexdigest()


EMPTY = state_digest(())


@dataclass
class Tree:
    """What a far side's web/ holds, against what its state.db publishes."""

    digest: str | None = None
    """The state digest, the files it lost counted as state.db records them; None when
    one of those is a file state.db records no size or sha256 of (one beside another)."""
    lost: int = 0
    """How many files below packages/ state.db publishes and the tree does not hold."""
    first_lost: str | None = None
    strangers: list[str] = field(default_factory=list)
    """Paths the tree holds that state.db does not publish, or not at that size, or not
    with those bytes (of those modified since), or a page it lost: changed behind the
    mirror's back (the first few)."""
    count: int = 0
    """How many paths are strangers."""


def tree_digest(
    reader: StateReader, web: Path, changed_after_ns: int | None = None,
    tick: Callable[[], None] = lambda: None,
) -> Tree:
    """What ``web`` holds, streamed (one directory's names in memory at a time) beside
    what ``reader`` publishes: a path state.db publishes at the size the tree has lends
    its sha256; a file it lacks a sha256 of is hashed, and so is one modified at or
    after ``changed_after_ns`` (ns since the epoch: when the last writer of web/ was
    done), which must still be what state.db recorded. ``tick``: called at each
    directory (it may raise, to stop)."""
    result = Tree()
    rows = reader.published_entries(SIBLINGS, _PAGES, (layout.LAST_MODIFIED,))
    files = (p for p in _walk(str(web), "", tick) if p[0] != layout.LAST_MODIFIED)

    def stranger(path: str) -> None:
        result.count += 1
        if len(result.strangers) < 3:
            result.strangers.append(path)

    def entries() -> Iterator[Entry]:
        known = True
        held, row = next(files, None), next(rows, None)
        while held is not None or row is not None:
            if row is None or (held is not None and held[0] < row[0]):
                assert held is not None
                stranger(held[0])
                held = next(files, None)
            elif held is None or row[0] < held[0]:
                path, size, sha256 = row
                if path.startswith(f"{layout.PACKAGES}/"):
                    result.lost += 1
                    result.first_lost = result.first_lost or path
                else:
                    stranger(path)
                if size is None or sha256 is None:
                    known = False
                elif known:
                    yield path, size, sha256
                row = next(rows, None)
            else:
                path, size, mtime_ns = held
                differs = row[1] not in (None, size)
                sha256 = row[2]
                if sha256 is None or (
                    changed_after_ns is not None and mtime_ns >= changed_after_ns
                ):
                    sha256 = store.sha256_of(web, path)
                    if sha256 is None:
                        raise DigestError(f"{web}/{path} is not a regular file")
                    differs = differs or row[2] not in (None, sha256)
                if differs:
                    stranger(path)
                if known:
                    yield path, size, sha256
                held, row = next(files, None), next(rows, None)
        if not known:
            raise _Unknown

    try:
        result.digest = state_digest(entries())
    except _Unknown:
        result.digest = None
    return result


class _Unknown(Exception):
    pass


def _walk(web: str, rel_dir: str, tick: Callable[[], None]) -> Iterator[tuple[str, int, int]]:
    """(path, size, mtime in ns) of everything below ``rel_dir``, in bytewise order of the
    whole path: a directory sorts as its name and a slash, as its files' paths do."""
    tick()
    names = []
    with os.scandir(f"{web}/{rel_dir}" if rel_dir else web) as found:
        for entry in found:
            if not entry.name.isascii():
                try:
                    entry.name.encode()
                except UnicodeEncodeError:
                    raise DigestError(f"{entry.path!r} is not a name the mirror writes (not "
                                      "UTF-8); the tree holds nothing else") from None
            names.append(entry.name + "/" if entry.is_dir(follow_symlinks=False)
                         else entry.name)
    names.sort()
    for name in names:
        path = f"{rel_dir}/{name}" if rel_dir else name
        if name.endswith("/"):
            yield from _walk(web, path[:-1], tick)
            continue
        status = os.lstat(f"{web}/{path}")
        if not stat.S_ISREG(status.st_mode):
            raise DigestError(f"{web}/{path} is not a regular file; the tree holds nothing "
                              "else")
        yield path, status.st_size, status.st_mtime_ns


_PAGES = (f"{layout.SIMPLE}/", f"/{layout.HTML_INDEX}", f"/{layout.JSON_INDEX}")


def published_digest(
    reader: StateReader,
    roots: Sequence[Path],
    root_pages: Iterable[Entry],
    changed_after_ns: int | None = None,
    *,
    in_tree: bool = False,
    tick: Callable[[], None] = lambda: None,
) -> str:
    """The digest of what ``reader``'s state.db publishes, with ``root_pages``.

    ``roots``: where the bytes are looked for, first match wins (an import's staging area,
    then web/). ``changed_after_ns``: a file modified at or after this (ns since the
    epoch) is hashed again and must still be what state.db recorded (an export while a
    sync runs: state.db is read as of one moment, and a page rewritten since then differs).
    ``in_tree``: every path is looked for and must have the size state.db says, not only
    those state.db lacks a size or sha256 of (an import, about to publish what state.db
    will say). ``tick``: called every few thousand paths (it may raise, to stop).
    """
    rows = reader.published_entries(
        SIBLINGS, _PAGES, (*layout.ROOT_PAGES, layout.LAST_MODIFIED)
    )
    found = _resolved(_ticking(rows, tick), roots, changed_after_ns, in_tree)
    return state_digest(heapq.merge(found, sorted(root_pages)))


def _ticking(rows: Iterable[_Row], tick: Callable[[], None]) -> Iterator[_Row]:
    for number, row in enumerate(rows):
        if not number % 4096:
            tick()
        yield row


_Row = tuple[str, int | None, str | None]


def _resolved(
    rows: Iterable[tuple[str, int | None, str | None]], roots: Sequence[Path],
    changed_after_ns: int | None, in_tree: bool,
) -> Iterator[Entry]:
    lost: list[str] = []
    for path, size, sha256 in rows:
        if size is not None and sha256 is not None and not in_tree:
            yield path, size, sha256
            continue
        for root in roots:
            status = store.stat_file(root, path)
            if status is None:
                continue
            if size is None:
                size = status.st_size
            elif size != status.st_size:
                raise DigestError(
                    f"{root}/{path} is {status.st_size} bytes, and state.db says {size}: "
                    "run `mirror verify` there"
                )
            if sha256 is None or (
                changed_after_ns is not None and status.st_mtime_ns >= changed_after_ns
            ):
                found = store.sha256_of(root, path)
                if found is None:
                    raise DigestError(f"{root}/{path} is not a regular file")
                if sha256 is not None and found != sha256:
                    raise DigestError(
                        f"{root}/{path} changed while it was read (a sync running?): run "
                        "again"
                    )
                sha256 = found
            break
        else:
            if in_tree and path.startswith(f"{layout.PACKAGES}/"):
                lost.append(path)  # all of them, for the receipt to ask for
                continue
            raise DigestError(
                f"{path} is published in state.db but is not in the tree: run `mirror "
                "verify` there"
            )
        yield path, size, sha256
    if lost:
        raise Lost(lost)
