"""Writing pages into the published tree: whole or not at all.

Each page is written to a temporary file beside the tree and renamed over the
old one, so a reader sees the old page or the new one, never half of either.
A page whose bytes did not change is not written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from simplemirror import layout, render, tempfiles
from simplemirror.model import HeldFile
from simplemirror.state import State

PAGE_MODE = 0o644


def _stage_side_by_side(
    tmp: Path, streams: Sequence[Iterable[bytes]]
) -> list[tuple[str, str]]:
    """Write each stream of chunks to a new file in ``tmp``, a chunk of each in turn.

    In turn, so that streams rendered from one shared pass over their data (see
    Publisher.root) never run far apart. Their names and sha256s, in order; on any
    failure, none of the files is left.
    """
    files: list[tuple[int, str]] = []
    try:
        for _ in streams:
            files.append(tempfiles.create(tmp, "page-", PAGE_MODE))
        digests = [hashlib.sha256() for _ in streams]
        active = [(iter(chunks), fd, digest)
                  for chunks, (fd, _), digest in zip(streams, files, digests, strict=True)]
        while active:
            for entry in list(active):
                chunks, fd, digest = entry
                chunk = next(chunks, None)
                if chunk is None:
                    active.remove(entry)
                    continue
                digest.update(chunk)
                tempfiles.write_all(fd, chunk)
    except BaseException:
        for _, name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        raise
    finally:
        for fd, _ in files:
            os.close(fd)
    return [(name, digest.hexdigest()) for (_, name), digest in zip(files, digests, strict=True)]


def write_atomic(target: str, data: bytes, tmp: Path) -> str:
    """Replace ``target`` with ``data`` whole; the sha256 of ``data``.

    Not through _stage: a first sync writes two small pages a project, and
    streaming machinery for one piece costs more than its system calls.
    """
    fd, name = tempfiles.create(tmp, "page-", PAGE_MODE)
    try:
        try:
            tempfiles.write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    tempfiles.install(name, target)
    return hashlib.sha256(data).hexdigest()


def _same_bytes(path: str, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (False when there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        held = b""
        # One byte more than data: a longer file differs.
        while len(held) <= len(data) and (more := os.read(fd, len(data) + 1 - len(held))):
            held += more
        return held == data
    finally:
        os.close(fd)


def _encoded(parts: Iterable[str], batch: int = 4096) -> Iterator[bytes]:
    it = iter(parts)
    while pieces := list(itertools.islice(it, batch)):
        yield "".join(pieces).encode("utf-8")


def _file_sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


class Publisher:
    """Writes pages for one run and records them in state.db under its generation."""

    def __init__(
        self, web: Path, tmp: Path, state: State, generation: int, public_url: str | None = None
    ) -> None:
        self.public_url = public_url
        """Where web/ is served; provenance is advertised only with it (absolute URLs)."""
        self.web = web
        self.tmp = tmp
        self.state = state
        self.generation = generation
        self.pages_written = 0

    def page(self, rel: str, text: str, *, new: bool = False) -> None:
        """Write the page at ``rel`` unless it holds these bytes already.

        ``new``: its directory was just made, so there is nothing to compare with.
        """
        data = text.encode("utf-8")
        target = f"{self.web}/{rel}"
        # Compare with the disk, not with state.db: after a crash the disk can
        # hold a newer page than state.db recorded, and a change that upstream
        # then reverted would otherwise never be written back.
        if not new and _same_bytes(target, data):
            return
        self._written(rel, write_atomic(target, data, self.tmp))

    def page_from_parts(self, rel: str, parts: Iterable[str]) -> None:
        """``page`` for a large page given in pieces: written as it is rendered, and
        compared with the page on disk by hash, so neither is held whole in memory."""
        self.pages_from_parts({rel: parts})

    def pages_from_parts(self, pages: Mapping[str, Iterable[str]]) -> None:
        """``page_from_parts`` for several pages at once, written side by side."""
        staged = _stage_side_by_side(self.tmp, [_encoded(parts) for parts in pages.values()])
        for rel, (name, digest) in zip(pages, staged, strict=True):
            target = self.web / rel
            if _file_sha256(target) == digest:
                os.unlink(name)
                continue
            tempfiles.install(name, str(target))
            self._written(rel, digest)

    def _written(self, rel: str, digest: str) -> None:
        self.state.record_page(rel, digest, self.generation)
        self.pages_written += 1

    def project(self, info: render.ProjectInfo, files: Sequence[HeldFile]) -> None:
        """A project's pages; call only once every file in ``files`` is in place."""
        html_path, json_path = layout.project_pages(info.name)
        # A project seen for the first time (every one, on a first sync) has no
        # pages to compare with: making its directory says so in one call.
        try:
            os.mkdir(f"{self.web}/{layout.project_dir(info.name)}")
            new = True
        except FileExistsError:
            new = False
        except FileNotFoundError:  # web/simple itself is missing: page() makes it
            new = False
        self.page(html_path, render.project_html(info, files, self.public_url), new=new)
        self.page(json_path, render.project_json(info, files, self.public_url), new=new)

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
