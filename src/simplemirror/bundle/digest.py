"""The state digest: one sha256 over what a mirror publishes, the same on both sides.

It hashes, in bytewise order of path, a line ``path NUL size NUL sha256 LF`` for
everything published below ``web/`` except ``last-modified``: every live file and the
files beside it, every project page, and the two root pages (a project upstream removed
counts as gone, though a stopped run may have left its pages for the next). Each side
works it out from its own state.db (``StateReader.published_entries``) and its own tree:
sizes and digests state.db does not hold (pages' sizes, signatures) are read from the
tree. The root pages are given by the caller, rendered from the same state, so that a root
a running sync has not written yet counts as what it will be.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from simplemirror.bundle.manifest import SIBLINGS
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.state import StateReader

Entry = tuple[str, int, str]


class DigestError(Exception):
    """What state.db says is published and what the tree holds disagree."""


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


def published_digest(
    reader: StateReader,
    roots: Sequence[Path],
    root_pages: Iterable[Entry],
    changed_after_ns: int | None = None,
) -> str:
    """The digest of what ``reader``'s state.db publishes, with ``root_pages``.

    ``roots``: where the bytes are looked for, first match wins (an import's staging area,
    then web/). ``changed_after_ns``: a file modified at or after this (ns since the
    epoch) is hashed again and must still be what state.db recorded (an export while a
    sync runs: state.db is read as of one moment, and a page rewritten since then differs).
    """
    pages = (f"{layout.SIMPLE}/", f"/{layout.HTML_INDEX}", f"/{layout.JSON_INDEX}")
    rows = reader.published_entries(
        SIBLINGS, pages, (*layout.ROOT_PAGES, layout.LAST_MODIFIED)
    )
    found = _resolved(rows, roots, changed_after_ns)
    return state_digest(heapq.merge(found, sorted(root_pages)))


def _resolved(
    rows: Iterable[tuple[str, int | None, str | None]], roots: Sequence[Path],
    changed_after_ns: int | None,
) -> Iterator[Entry]:
    for path, size, sha256 in rows:
        if size is not None and sha256 is not None:
            yield path, size, sha256
            continue
        for root in roots:
            status = store.stat_file(root, path)
            if status is None:
                continue
            if size is None:
                size = status.st_size
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
            raise DigestError(
                f"{path} is published in state.db but is not in the tree: run `mirror "
                "verify` there"
            )
        yield path, size, sha256
