"""Writing pages into the published tree: whole or not at all.

Each page is written to a temporary file beside the tree and renamed over the
old one, so a reader sees the old page or the new one, never half of either.
A page whose bytes did not change is not written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from simplemirror import layout, render, tempfiles
from simplemirror.model import HeldFile
from simplemirror.state import State

PAGE_MODE = 0o644


def write_atomic(target: Path, data: bytes, tmp: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfiles.create(tmp, "page-", PAGE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


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
        digest = hashlib.sha256(data).hexdigest()
        write_atomic(target, data, self.tmp)
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
        self.page(html_path, render.root_html(entries()))
        self.page(json_path, render.root_json(entries(), serial))
