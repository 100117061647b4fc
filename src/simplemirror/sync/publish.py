"""Writing pages into the published tree: whole or not at all, and in the publish order.

Each page is written to a temporary file beside the tree and renamed over the
old one, so a reader sees the old page or the new one, never half of either.
A page whose bytes did not change is not written again. ``publish`` states and
performs the order in which a run (and `verify --repair`) changes the tree.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simplemirror.simple import render
from simplemirror.simple.model import HeldFile, version_of
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Storage
from simplemirror.store.state import State
from simplemirror.sync import reap

_IN_FLIGHT = 64
"""Pages queued for upload at most (``Publisher.pipelined``), each held in memory."""


def _encoded(parts: Iterable[str], batch: int = 4096) -> Iterator[bytes]:
    it = iter(parts)
    while pieces := list(itertools.islice(it, batch)):
        yield "".join(pieces).encode("utf-8")


@dataclass(frozen=True)
class ProjectCopy:
    """A project whose files are all in place: what its pages show, and its rows."""

    info: render.ProjectInfo
    files: Sequence[HeldFile]
    record: Callable[[], None] = lambda: None
    """Records it in state.db (in the transaction under way); called once its pages
    are written, so that state.db never claims a copy the disk does not hold."""


@dataclass(frozen=True)
class Ending:
    """What a run does once every project is in, decided then (see ``publish``)."""

    root: tuple[Iterable[render.RootEntry], int | None] | None
    """The root pages' entries and serial; None: the root pages stand as they are."""
    remove: bool = False
    """Unpublish removed projects, then delete the files no page lists."""
    last_modified: bool = False
    """The run completed a change: write web/last-modified."""


def publish(
    publisher: Publisher, projects: Iterable[ProjectCopy], ending: Callable[[], Ending]
) -> int:
    """Change the tree in the publish order; how many files were deleted.

    1. files: each project arrives once every file its pages list is installed;
    2. its pages;
    3. its rows in state.db;
    4. the root pages, listing only projects whose pages and rows are in place
       (``ending`` decides them, and records what goes with them, in the
       transaction the root is written in);
    5. the pages of projects upstream removed, now that no root lists them;
    6. the files no page lists any more;
    7. web/last-modified.

    A reader therefore never follows a link to something not yet (or no longer) there,
    and a run that stops anywhere leaves only what the next run finishes.
    """
    with publisher.pipelined():
        for copy in projects:
            publisher.project(copy.info, copy.files)
            publisher.then(copy.record)
    state = publisher.state
    with state.transaction():
        end = ending()
        if end.root is not None:
            publisher.root(*end.root)
        publisher.storage.flush()  # the fsync policy (store/tree.py): bytes before the rows
    deleted = 0
    if end.remove:
        reap.unpublish_removed_projects(publisher.storage, state, publisher.generation)
        deleted = reap.reap_files(publisher.storage, state, publisher.generation)
    if end.last_modified:
        publisher.last_modified(time.gmtime())
    return deleted


def project_info(
    name: str, page_serial: int | None, data: Mapping[str, Any], files: Sequence[HeldFile]
) -> render.ProjectInfo:
    """What a project's pages show besides its files, from the row state.db keeps
    (``page_data``); versions derived from ``files`` where the row has none (rows of an
    older simplemirror)."""
    versions = data.get("versions")
    if versions is None:
        found = {version_of(f.filename) for f in files}
        versions = sorted(v for v in found if v is not None)
    return render.ProjectInfo.from_data(name, page_serial, {**data, "versions": versions})


class Publisher:
    """Writes pages for one run and records them in state.db under its generation."""

    def __init__(
        self, storage: Storage, tmp: Path, state: State, generation: int,
        public_url: str | None = None,
    ) -> None:
        self.public_url = public_url
        """Where web/ is served; provenance is advertised only with it (absolute URLs)."""
        self.storage = storage
        self.tmp = tmp
        self.state = state
        self.generation = generation
        self.pages_written = 0
        self._pending: collections.deque[
            tuple[concurrent.futures.Future[str] | None, Callable[[str], None]]
        ] = collections.deque()
        """Pages going up and what follows each (recording it; a project's rows), in
        the order they were asked for (``pipelined``)."""
        self._pool: concurrent.futures.Executor | None = None

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        """Pages written while in it go up in the upload threads when the storage is
        remote (a PUT each, ``_IN_FLIGHT`` queued at most), not one after another. What
        follows a page (``then``) still runs in order, in this thread, once every page
        asked for before it is written: a project's rows after its pages, as ``publish``
        says. Everything is written and recorded when it ends without an error."""
        self._pool = self.storage.uploads() if self.storage.remote else None
        try:
            yield
            self._settle(0)
        finally:
            # After an error, what was not settled stays unrecorded: pages in the tree
            # that state.db does not claim, which the next run compares and rewrites.
            # None may still be going up once this returns: the run would release its
            # lock, and a page landing later could overwrite a newer run's.
            going = [future for future, _ in self._pending if future is not None]
            for future in going:
                future.cancel()
            concurrent.futures.wait(going)
            self._pending.clear()
            self._pool = None

    def then(self, step: Callable[[], None]) -> None:
        """``step`` once every page asked for so far is written (now, if none is going
        up)."""
        if not self._pending:
            step()
        else:
            self._pending.append((None, lambda _digest: step()))
            # Run now what is ready: rows held behind a page long up would otherwise
            # wait for the next page asked for (none, if the rest are unchanged), miss
            # the batch's commits and hold every project's files in memory.
            self._settle(_IN_FLIGHT)

    def _settle(self, limit: int) -> None:
        """Finish what is ready, in order, and wait until at most ``limit`` remain."""
        while self._pending:
            future, step = self._pending[0]
            if len(self._pending) <= limit and future is not None and not future.done():
                return
            self._pending.popleft()
            step(future.result() if future is not None else "")

    def page(self, rel: str, text: str, *, new: bool = False, dir_checked: bool = False
             ) -> None:
        """Write the page at ``rel`` unless it holds these bytes already.

        ``new``: its directory was just made, so there is nothing to compare with.
        ``dir_checked``: its directory is known to be a real one (store.make_dir).
        """
        data = text.encode("utf-8")
        # Compare with the disk, not with state.db: after a crash the disk can
        # hold a newer page than state.db recorded, and a change that upstream
        # then reverted would otherwise never be written back. In a bucket, where the
        # comparison is a request, only a page state.db records with these very bytes
        # is worth it; any other (a new project's, a changed one's) is written.
        if not new and (
            self._maybe_same(rel, data) if self.storage.remote
            else self.storage.same_bytes(rel, data)
        ):
            return
        if self._pool is not None:
            size = len(data)
            self._pending.append((
                self._pool.submit(self.storage.write_page, self.tmp, rel, data,
                                  dir_checked=new or dir_checked),
                lambda digest: self._written(rel, digest, size),
            ))
            self._settle(_IN_FLIGHT)
            return
        digest = self.storage.write_page(self.tmp, rel, data, dir_checked=new or dir_checked)
        self._written(rel, digest, len(data))

    def _maybe_same(self, rel: str, data: bytes) -> bool:
        recorded = self.state.reader().page_sha256(rel)
        return (recorded == hashlib.sha256(data).hexdigest()
                and self.storage.same_bytes(rel, data))

    def pages_from_parts(self, pages: Mapping[str, Iterable[str]]) -> None:
        """``page`` for large pages given in pieces (the root's), written side by side as
        they are rendered, and compared with the pages on disk by hash, so that none is
        held whole in memory."""
        staged = store.stage_streams(self.tmp, [_encoded(parts) for parts in pages.values()])
        for rel, (name, digest) in zip(pages, staged, strict=True):
            if self.storage.sha256_of(rel) == digest:
                store.discard(name)
                continue
            size = os.stat(name).st_size
            self.storage.install(name, rel, sha256=digest)
            self._written(rel, digest, size)

    def _written(self, rel: str, digest: str, size: int) -> None:
        self.state.record_page(rel, digest, size, self.generation)
        self.pages_written += 1

    def project(self, info: render.ProjectInfo, files: Sequence[HeldFile]) -> None:
        """A project's pages; call only once every file in ``files`` is in place."""
        html_path, json_path = layout.project_pages(info.name)
        # A project seen for the first time (every one, on a first sync) has no
        # pages to compare with: making its directory says so in one call.
        new = self.storage.make_dir(layout.project_dir(info.name))
        html = render.project_html(info, files, self.public_url)
        self.page(html_path, html, new=new, dir_checked=True)
        json = render.project_json(info, files, self.public_url)
        self.page(json_path, json, new=new, dir_checked=True)

    def project_from_state(self, name: str) -> bool:
        """A project's pages written again from what state.db holds; False when it
        records none published (nothing to write them from)."""
        copy = self.copy_from_state(name)
        if copy is None:
            return False
        self.project(copy.info, copy.files)
        return True

    def copy_from_state(self, name: str) -> ProjectCopy | None:
        """A project as state.db records it published (None: it records none); its rows
        are there already."""
        recorded = self.state.reader().published_page(name)
        if recorded is None:
            return None
        page_serial, data = recorded
        files: list[HeldFile] = self.state.held_files(name)
        return ProjectCopy(project_info(name, page_serial, data, files), files)

    def last_modified(self, when: time.struct_time) -> None:
        """PEP 381's web/last-modified: when the mirror last completed a change (UTC)."""
        self.page(layout.LAST_MODIFIED, time.strftime("%Y%m%dT%H:%M:%S", when) + "\n")

    def root(self, entries: Iterable[render.RootEntry], serial: int | None) -> None:
        """The root pages; call last, once every project page they link to is in place.

        Both are rendered from one pass over ``entries``, written side by side: at
        650,000 projects a list of them all would cost ~100 MB, and a pass for each
        format read the projects table twice (seconds, when it is not in the cache).
        """
        html_path, json_path = layout.ROOT_PAGES
        for_html, for_json = itertools.tee(entries)
        self.pages_from_parts({
            html_path: render.root_html_parts(for_html),
            json_path: render.root_json_parts(for_json, serial),
        })
