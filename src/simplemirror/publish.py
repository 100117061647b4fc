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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from simplemirror import layout, render, tempfiles
from simplemirror.model import HeldFile
from simplemirror.state import State

PAGE_MODE = 0o644


def _stage(tmp: Path, chunks: Iterable[bytes]) -> tuple[str, str]:
    """Write ``chunks`` to a new file in ``tmp``; its name and sha256."""
    fd, name = tempfiles.create(tmp, "page-", PAGE_MODE)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return name, digest.hexdigest()


def _install(name: str, target: Path) -> None:
    """Rename the staged file ``name`` over ``target``: readers see one or the other."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def write_atomic(target: Path, data: bytes, tmp: Path) -> str:
    """Replace ``target`` with ``data`` whole; the sha256 of ``data``."""
    name, digest = _stage(tmp, (data,))
    _install(name, target)
    return digest


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

    def page(self, rel: str, text: str) -> None:
        data = text.encode("utf-8")
        target = self.web / rel
        # Compare with the disk, not with state.db: after a crash the disk can
        # hold a newer page than state.db recorded, and a change that upstream
        # then reverted would otherwise never be written back.
        with contextlib.suppress(FileNotFoundError):
            if target.read_bytes() == data:
                return
        self._written(rel, write_atomic(target, data, self.tmp))

    def page_from_parts(self, rel: str, parts: Iterable[str]) -> None:
        """``page`` for a large page given in pieces: written as it is rendered, and
        compared with the page on disk by hash, so neither is held whole in memory."""
        target = self.web / rel
        name, digest = _stage(self.tmp, _encoded(parts))
        if _file_sha256(target) == digest:
            os.unlink(name)
            return
        _install(name, target)
        self._written(rel, digest)

    def _written(self, rel: str, digest: str) -> None:
        self.state.record_page(rel, digest, self.generation)
        self.pages_written += 1

    def project(self, info: render.ProjectInfo, files: Sequence[HeldFile]) -> None:
        """A project's pages; call only once every file in ``files`` is in place."""
        html_path, json_path = layout.project_pages(info.name)
        self.page(html_path, render.project_html(info, files, self.public_url))
        self.page(json_path, render.project_json(info, files, self.public_url))

    def last_modified(self, when: time.struct_time) -> None:
        """PEP 381's web/last-modified: when the mirror last completed a change (UTC)."""
        self.page(layout.LAST_MODIFIED, time.strftime("%Y%m%dT%H:%M:%S", when) + "\n")

    def root(self, entries: Callable[[], Iterable[render.RootEntry]], serial: int | None) -> None:
        """The root pages; call last, once every project page they link to is in place.

        ``entries`` is called once per format: at 650,000 projects, a list of them all
        held for both would cost ~100 MB.
        """
        html_path, json_path = layout.ROOT_PAGES
        self.page_from_parts(html_path, render.root_html_parts(entries()))
        self.page_from_parts(json_path, render.root_json_parts(entries(), serial))
