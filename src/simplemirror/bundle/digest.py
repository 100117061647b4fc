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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simplemirror.bundle.manifest import SIBLINGS
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Local, Storage
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
    reader: StateReader, storage: Path | Storage, changed_after_ns: int | None = None,
    tick: Callable[[], None] = lambda: None, *, spill: Path | None = None,
) -> Tree:
    """What ``storage`` holds, streamed (one directory's names in memory at a time; in a
    bucket, a listing in key order) beside what ``reader`` publishes: a path state.db
    publishes at the size the tree has lends its sha256; a file it lacks a sha256 of is
    hashed, and so is one modified at or after ``changed_after_ns`` (ns since the epoch:
    when the last writer of the tree was done; in a bucket, by the store's clock, with
    s3.CLOCK_MARGIN to spare), which must still be what state.db recorded (in a bucket,
    the SHA-256 the store vouches for, or the object read). ``spill``: a directory of the
    mirror's own where a bucket's listing is put in order (for a bucket only). ``tick``:
    called at each directory (it may raise, to stop)."""
    result = Tree()
    rows = reader.published_entries(SIBLINGS, _PAGES, (layout.LAST_MODIFIED,))
    root = _Root(storage, spill)
    files = (p for p in root.walk(tick) if p[0] != layout.LAST_MODIFIED)

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
                    sha256 = root.sha256(path)
                    if sha256 is None:
                        raise DigestError(f"{root.name}/{path} is not a regular file")
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
    finally:
        files.close()  # a bucket's listing put in order: its file goes now, not at GC
    return result


class _Unknown(Exception):
    pass


class _Root:
    """Where bytes are looked for: a directory (an import's staging area, web/) or the
    storage the tree is published to (web/ again, or a bucket)."""

    def __init__(self, where: Path | Storage, spill: Path | None) -> None:
        self.spill = spill
        self.bucket = None
        self.path: Path | None = None
        if isinstance(where, Path):
            self.path = where
        elif isinstance(where, Local):
            self.path = where.web
        else:
            from simplemirror.store import s3  # boto3 only where a bucket is used

            assert isinstance(where, s3.S3Storage)
            self.bucket = where
        self.name = str(self.path) if self.bucket is None else self.bucket.where
        self._listed: Generator[tuple[str, int, int], None, None] | None = None
        self._at: tuple[str, int, int] | None = None

    def walk(self, tick: Callable[[], None]) -> Generator[tuple[str, int, int], None, None]:
        """(path, size, modified) of everything held, in bytewise order of path; modified
        in ns since the epoch, for a bucket's object s3.CLOCK_MARGIN later than the store
        says (its clock is not ours)."""
        if self.path is not None:
            yield from _walk(str(self.path), "", tick)
            return
        from simplemirror.store import s3

        assert self.bucket is not None and self.spill is not None, "a bucket needs a spill"
        margin = int(s3.CLOCK_MARGIN * 10**9)
        listed = self.bucket.walk_sorted(self.spill, tick=tick)
        for number, (path, size, modified) in enumerate(listed):
            if not number % 4096:
                tick()
            yield path, size, int(modified * 10**9) + margin

    def stat(self, path: str) -> tuple[int, int] | None:
        """(size, modified as walk gives it) of the file at ``path``; None when there is
        none. In a bucket,
        from one listing in key order, not a HEAD a path (a mirror's .metadata files alone
        are millions): ``path`` must come after the one asked before."""
        if self.path is not None:
            status = store.stat_file(self.path, path)
            return None if status is None else (status.st_size, status.st_mtime_ns)
        if self._listed is None:
            self._listed = self.walk(lambda: None)
            self._at = next(self._listed, None)
        while self._at is not None and self._at[0] < path:
            self._at = next(self._listed, None)
        if self._at is None or self._at[0] != path:
            return None
        return self._at[1], self._at[2]

    def close(self) -> None:
        """Give up the listing stat reads (a bucket's: its file in the spill goes)."""
        if self._listed is not None:
            self._listed.close()

    def sha256(self, path: str) -> str | None:
        """The sha256 of the file at ``path``: its bytes read (in a bucket, the one the
        store vouches for first, one HEAD)."""
        if self.path is not None:
            return store.sha256_of(self.path, path)
        assert self.bucket is not None
        found = self.bucket.look(path)
        if found is None:
            return None
        if found[1] is not None:
            return found[1]
        try:
            with self.bucket.open_file(path) as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            return None


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
    roots: Sequence[Path | Storage],
    root_pages: Iterable[Entry],
    changed_after_ns: int | None = None,
    *,
    spill: Path | None = None,
    in_tree: bool = False,
    tick: Callable[[], None] = lambda: None,
) -> str:
    """The digest of what ``reader``'s state.db publishes, with ``root_pages``.

    ``roots``: where the bytes are looked for, first match wins (an import's staging area,
    then the storage: web/ or a bucket). ``changed_after_ns``: a file modified at
    or after this (ns since the epoch) is hashed again and must still be what state.db
    recorded (an export while a sync runs: state.db is read as of one moment, and a page
    rewritten since then differs). ``spill``: a directory of the process's own where a
    bucket's listing is put in order (for a bucket only).
    ``in_tree``: every path is looked for and must have the size state.db says, not only
    those state.db lacks a size or sha256 of (an import, about to publish what state.db
    will say). ``tick``: called every few thousand paths (it may raise, to stop).
    """
    rows = reader.published_entries(
        SIBLINGS, _PAGES, (*layout.ROOT_PAGES, layout.LAST_MODIFIED)
    )
    looked = [_Root(root, spill) for root in roots]
    try:
        found = _resolved(_ticking(rows, tick), looked, changed_after_ns, in_tree)
        return state_digest(heapq.merge(found, sorted(root_pages)))
    finally:
        for root in looked:
            root.close()  # a bucket's listing put in order: its file goes now, not at GC


def _ticking(rows: Iterable[_Row], tick: Callable[[], None]) -> Iterator[_Row]:
    for number, row in enumerate(rows):
        if not number % 4096:
            tick()
        yield row


_Row = tuple[str, int | None, str | None]


def _resolved(
    rows: Iterable[tuple[str, int | None, str | None]], looked: list[_Root],
    changed_after_ns: int | None, in_tree: bool,
) -> Iterator[Entry]:
    lost: list[str] = []
    for path, size, sha256 in rows:
        if size is not None and sha256 is not None and not in_tree:
            yield path, size, sha256
            continue
        for root in looked:
            status = root.stat(path)
            if status is None:
                continue
            held, modified = status
            if size is None:
                size = held
            elif size != held:
                raise DigestError(
                    f"{root.name}/{path} is {held} bytes, and state.db says {size}: "
                    "run `mirror verify` there"
                )
            if sha256 is None or (
                changed_after_ns is not None and modified >= changed_after_ns
            ):
                found = root.sha256(path)
                if found is None:
                    raise DigestError(f"{root.name}/{path} is not a regular file")
                if sha256 is not None and found != sha256:
                    raise DigestError(
                        f"{root.name}/{path} changed while it was read (a sync running?): run "
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
