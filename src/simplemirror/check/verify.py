"""`mirror verify`: check the published tree against state.db, and repair what it can.

Three checks, each in bounded memory however large the mirror:

1. files: every live row of state.db (listed on a page, bytes on disk) is hashed again by a
   pool of workers and compared with its recorded size and sha256, and its ``.metadata``
   file with the recorded metadata hashes. Rows stream from SQLite in batches and only a
   short window of them is in flight at a time.
2. orphans: files under ``web/packages/`` that no row of state.db holds. A row holds its
   path until its bytes are deleted (``deleted_gen``), so a file already off every page
   but not yet reaped by a sync is not an orphan: deleting it here would make state.db
   claim bytes the disk no longer has. The siblings of a held file (its ``.metadata``),
   and files a stopped sync left staged for its next run, are not orphans either. Every
   path found is looked up in state.db (through the ``files_path`` and
   ``staged_files_path`` indexes), never in a set of every path held in memory.
3. pages: the root and every project page under ``web/simple/`` parse, and every link on
   them resolves to a file whose bytes are what the page advertises.

The mirror is *sound* when nothing is missing, corrupt or broken (after ``--repair``:
when everything found was repaired). Orphans alone do not make it unsound: they waste
space but no page links them, so no client can be served a wrong byte. They are
reported, and with ``--delete-orphans`` deleted; an orphan that cannot be deleted then
makes the run unsound, since the operator asked for it to go.

Verify holds the mirror's lock throughout: a sync running at the same time would make
files it has not recorded yet look like orphans, and its page rewrites race with a
repair's. A plain verify only reads: it holds the lock shared (several at once, none
during a sync, and no write permission needed) and opens state.db read-only, so a user
who may only read the mirror can check it. ``--repair`` and ``--delete-orphans`` write:
they hold it exclusively, like a sync.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import sqlite3
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urldefrag, urlsplit

from packaging.utils import canonicalize_name
from rich.console import Console
from rich.progress import TaskID

from simplemirror.cli.config import Config
from simplemirror.report.progress import Periodic, seconds_left
from simplemirror.report.terminal import bar
from simplemirror.report.units import clock, human_bytes
from simplemirror.simple.model import Status
from simplemirror.store import layout
from simplemirror.store.backend import Storage, StorageError, open_storage
from simplemirror.store.state import State, StateError, StateReader, connect_reader
from simplemirror.sync import download, reap
from simplemirror.sync.publish import Ending, Publisher, publish
from simplemirror.sync.run import locked
from simplemirror.upstream.client import Client, UpstreamError

log = logging.getLogger("simplemirror")

CHUNK = 1 << 20
# Rows fetched from SQLite at a time, and hashing jobs queued per worker: enough to keep
# every worker busy, few enough that memory does not grow with the mirror.
HASH_THREADS_PER_CPU = 4
BATCH = 512
WINDOW_PER_WORKER = 4
# A download or a disk error that concerns one file, not the whole repair.
REPAIR_ERRORS = (UpstreamError, download.VerificationError, OSError)


class VerifyError(Exception):
    """Verification could not run at all; the message says what to do."""


@dataclass(frozen=True)
class FileRow:
    """A live file as state.db records it."""

    id: int
    project: str
    filename: str
    path: str
    size: int
    hashes: Mapping[str, str]
    url: str
    metadata_hashes: Mapping[str, str] | None

    @property
    def sha256(self) -> str:
        return self.hashes.get("sha256", "")


@dataclass(frozen=True)
class FileProblem:
    row: FileRow
    kind: str
    """missing or corrupt."""
    metadata: bool
    """About the file's .metadata sibling, not the distribution itself."""
    detail: str

    @property
    def path(self) -> str:
        return layout.metadata_path(self.row.path) if self.metadata else self.row.path

    @property
    def label(self) -> str:
        suffix = layout.METADATA_SUFFIX if self.metadata else ""
        return f"{self.row.project}/{self.row.filename}{suffix}"


@dataclass(frozen=True)
class PageProblem:
    page: str
    """Below web/."""
    project: str | None
    """Normalized name; None for the root pages."""
    detail: str


@dataclass
class VerifyResult:
    repair: bool = False
    delete_orphans: bool = False
    files_checked: int = 0
    bytes_checked: int = 0
    metadata_checked: int = 0
    pages_checked: int = 0
    missing: list[FileProblem] = field(default_factory=list)
    corrupt: list[FileProblem] = field(default_factory=list)
    broken: list[PageProblem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    orphan_pages: list[str] = field(default_factory=list)
    """Projects with pages under web/simple/ that state.db does not record as published
    (left by a sync that died): served, yet listed by no root."""
    orphans_deleted: int = 0
    orphan_pages_deleted: int = 0
    orphan_errors: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[tuple[str, str]] = field(default_factory=list)
    """(what, why and what to do next)."""
    pages_rewritten: int = 0
    repair_generation: int | None = None

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.corrupt) + len(self.broken)

    @property
    def sound(self) -> bool:
        if self.orphan_errors or len(self.orphan_pages) > self.orphan_pages_deleted:
            return False
        if self.repair:
            return not self.unrepaired
        return not self.problems


# -- progress -------------------------------------------------------------------------------


class VerifyProgress(Periodic):
    """Counts files hashed; this base class logs a line every ``interval`` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__(interval)
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self._started = time.monotonic()

    def start(self, files: int, nbytes: int) -> None:
        self.files_total, self.bytes_total = files, nbytes
        self._started = time.monotonic()
        log.info("verifying %d file(s), %s", files, human_bytes(nbytes))

    def advance(self, nbytes: int) -> None:
        self.files_done += 1
        self.bytes_done += nbytes
        self._changed()

    def phase(self, what: str) -> None:
        log.info("%s", what)

    def line(self) -> str:
        left = seconds_left(self.bytes_done, self.bytes_total, time.monotonic() - self._started)
        return (
            f"verify progress: {self.files_done}/{self.files_total} files, "
            f"{human_bytes(self.bytes_done)} of {human_bytes(self.bytes_total)}"
            + ("" if left is None else f", about {clock(left)} left")
        )


class RichVerifyProgress(VerifyProgress):
    """A progress bar over the bytes to hash, for a terminal."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.progress = bar(console)
        self._task: TaskID | None = None

    def __enter__(self) -> RichVerifyProgress:
        self.progress.start()
        self._task = self.progress.add_task("verify", total=None, detail="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._changed()
        self.progress.stop()

    def start(self, files: int, nbytes: int) -> None:
        self.files_total, self.bytes_total = files, nbytes
        self._started = time.monotonic()
        self._changed()

    def phase(self, what: str) -> None:
        if self._task is not None:
            self.progress.update(self._task, description=what.split()[0])

    def _changed(self) -> None:
        if self._task is None:
            return
        self.progress.update(
            self._task,
            total=self.bytes_total or None,
            completed=self.bytes_done,
            detail=f"{self.files_done}/{self.files_total} files  "
            f"{human_bytes(self.bytes_done)} of {human_bytes(self.bytes_total)}",
        )


# -- checking bytes -------------------------------------------------------------------------


def check_bytes(
    storage: Storage, rel: str, size: int | None, sha256: str | None
) -> tuple[str, str] | None:
    """(kind, detail) when ``rel`` is not a file of ``size`` bytes with ``sha256``, else None.

    Reads in CHUNK-sized pieces into one buffer: memory stays flat for any file size.
    """
    digest = hashlib.sha256()
    try:
        with storage.open_file(rel) as fh:
            found = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            if size is not None and found != size:
                return "corrupt", f"{found} bytes on disk, {size} expected"
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while n := fh.readinto(buffer):
                digest.update(view[:n])
    except FileNotFoundError:
        return "missing", "not on disk"
    except OSError as exc:
        return "corrupt", f"cannot be read ({exc.strerror or exc})"
    if sha256 is not None and digest.hexdigest() != sha256:
        return "corrupt", f"sha256 is {digest.hexdigest()}, {sha256} expected"
    return None


def check_object(
    storage: Storage, rel: str, size: int | None, sha256: str | None, *, deep: bool
) -> tuple[str, str] | None:
    """check_bytes, or in a bucket (unless ``deep``) the size and the sha256 the object
    carries, from one HEAD: the store verified that sha256 when the object went up. An
    object that carries none (put there by other means) is read and hashed."""
    if deep or not storage.remote:
        return check_bytes(storage, rel, size, sha256)
    try:
        held = storage.stat(rel)
    except OSError as exc:
        return "corrupt", f"cannot be read ({exc})"
    if held is None:
        return "missing", "not in the bucket"
    found_size, found_sha256 = held
    if size is not None and found_size != size:
        return "corrupt", f"{found_size} bytes in the bucket, {size} expected"
    if found_sha256 is None:
        return check_bytes(storage, rel, size, sha256)
    if sha256 is not None and found_sha256 != sha256:
        return "corrupt", f"sha256 is {found_sha256}, {sha256} expected"
    return None


@dataclass(frozen=True)
class _Checked:
    row: FileRow
    problems: tuple[FileProblem, ...]
    metadata_checked: bool


def _check_row(web: Storage, row: FileRow, deep: bool = False) -> _Checked:
    """Worker: the file and its .metadata against what state.db recorded."""
    problems = []
    found = check_object(web, row.path, row.size, row.sha256, deep=deep)
    if found is not None:
        problems.append(FileProblem(row, found[0], False, found[1]))
    if row.metadata_hashes is not None:
        meta = layout.metadata_path(row.path)
        found = check_object(web, meta, None, row.metadata_hashes.get("sha256"), deep=deep)
        if found is not None:
            problems.append(FileProblem(row, found[0], True, found[1]))
    return _Checked(row, tuple(problems), row.metadata_hashes is not None)


def _row(raw: tuple[Any, ...]) -> FileRow:
    file_id, project, filename, path, size, hashes, url, metadata = raw
    return FileRow(
        file_id, project, filename, path, size, json.loads(hashes), url,
        json.loads(metadata) if metadata else None,
    )


# -- pages ----------------------------------------------------------------------------------


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def resolve_link(page_dir: str, href: str) -> str | None:
    """The path below web/ a relative link on a page in ``page_dir`` points at.

    None for a link that leaves the tree or is not relative (the mirror writes only
    relative links, so that the tree works under any prefix).
    """
    url = urldefrag(href).url
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or parts.query or not parts.path:
        return None
    if parts.path.startswith("/"):
        return None
    rel = posixpath.normpath(posixpath.join(page_dir, unquote(parts.path)))
    if rel == ".." or rel.startswith("../") or rel.startswith("/"):
        return None
    return rel


# -- the run --------------------------------------------------------------------------------


class Verifier:
    """One verification of a mirror whose lock the caller holds.

    ``db`` is read; ``state``, the same database opened for writing, is needed only to
    repair.
    """

    def __init__(
        self, config: Config, db: StateReader, progress: VerifyProgress,
        state: State | None = None, *, deep: bool = False,
    ) -> None:
        self.config = config
        self._state = state
        self.db = db
        self.web = open_storage(config.web, config.storage)
        self.deep = deep
        """Read and hash every object of a bucket, not only its size and stored sha256."""
        self.progress = progress
        self.result = VerifyResult()
        # Paths found missing or corrupt: a page link to one of them is covered by that
        # report (and by its repair), not reported a second time.
        self.bad_paths: set[str] = set()
        # Paths pages link that state.db does not hold: never deleted as orphans.
        self.linked_unrecorded: set[str] = set()
        self._files_fetched = 0
        self._bytes_fetched = 0

    def run(self, *, repair: bool, delete_orphans: bool) -> VerifyResult:
        result = self.result
        result.repair, result.delete_orphans = repair, delete_orphans
        self._check_files()
        orphans = self._find_orphans()
        self._check_pages()
        result.orphans = [p for p in orphans if not self._linked(p)]
        if repair and result.problems:
            self._repair()
        if delete_orphans:
            self._delete_orphans()
        return result

    @property
    def state(self) -> State:
        assert self._state is not None, "a repair opens state.db for writing"
        return self._state

    # -- files --------------------------------------------------------------------------

    def _check_files(self) -> None:
        self.progress.phase("files: hashing every file state.db holds")
        count, total = self.db.live_totals()
        self.progress.start(count, total)
        cursor = self.db.live_files()
        window: deque[Future[_Checked]] = deque()
        limit = self.config.workers * WINDOW_PER_WORKER
        # Threads: hashlib lets go of the GIL over large buffers, so they share the cores.
        # As many as the disk and cores can keep busy, not one per network connection
        # (workers is 50 by default, for a network's round trips).
        threads = min(self.config.workers, HASH_THREADS_PER_CPU * (os.cpu_count() or 1))
        pool = ThreadPoolExecutor(threads, thread_name_prefix="verify")
        try:
            while rows := cursor.fetchmany(BATCH):
                for raw in rows:
                    window.append(pool.submit(_check_row, self.web, _row(raw), self.deep))
                    while len(window) >= limit:
                        self._checked(window.popleft().result())
            while window:
                self._checked(window.popleft().result())
        finally:
            cursor.close()
            pool.shutdown(wait=False, cancel_futures=True)

    def _checked(self, checked: _Checked) -> None:
        result = self.result
        result.files_checked += 1
        result.bytes_checked += checked.row.size
        result.metadata_checked += checked.metadata_checked
        for problem in checked.problems:
            (result.missing if problem.kind == "missing" else result.corrupt).append(problem)
            self.bad_paths.add(problem.path)
            log.warning("%s %s (%s): %s", problem.kind, problem.label, problem.path,
                        problem.detail)
        self.progress.advance(checked.row.size)

    # -- orphans ------------------------------------------------------------------------

    def _held(self, path: str) -> bool:
        """Some row of state.db holds ``path`` on disk (live, off every page but not yet
        reaped, or staged by a stopped sync for its next run)."""
        return self.db.holds_path(path)

    def _is_orphan(self, path: str) -> bool:
        if self._held(path):
            return False
        for suffix in reap.SIBLING_SUFFIXES:  # a sibling of a held file is no orphan
            if path.endswith(suffix) and self._held(path[: -len(suffix)]):
                return False
        return True

    def _find_orphans(self) -> list[str]:
        self.progress.phase("orphans: looking for files state.db does not hold")
        found = []
        for rel, _ in self.web.walk_files(layout.PACKAGES):
            if self._is_orphan(rel):
                found.append(rel)
        return found

    def _linked(self, path: str) -> bool:
        if path in self.linked_unrecorded:
            return True
        return any(
            path.endswith(suffix) and path[: -len(suffix)] in self.linked_unrecorded
            for suffix in reap.SIBLING_SUFFIXES
        )

    # -- pages --------------------------------------------------------------------------

    def _check_pages(self, projects: set[str] | None = None, *, root: bool = True) -> None:
        """Check the root (``root``) and the pages of ``projects`` (None: every one)."""
        self.progress.phase("pages: checking every link on every page")
        if root:
            self._check_root()
        names = sorted(projects) if projects is not None else self.web.list_dirs(layout.SIMPLE)
        for name in names:
            if projects is None and not self.db.is_published(name):
                # Its links are not checked: what only it links is an orphan too.
                self.result.orphan_pages.append(name)
                log.warning("orphan page %s/: state.db records no such project as published",
                            layout.project_dir(name))
                continue
            self._check_project(name)
        # A project state.db records as published must have both its pages.
        for name in self.db.published_projects():
            if projects is not None and name not in projects:
                continue
            for page in layout.project_pages(name):
                if not self.web.is_file(page):
                    self._broken(page, name, "missing: state.db records the project as published")

    def _broken(self, page: str, project: str | None, detail: str) -> None:
        self.result.broken.append(PageProblem(page, project, detail))
        log.warning("broken page %s: %s", page, detail)

    def _read_page(self, page: str, project: str | None) -> str | None:
        try:
            with self.web.open_file(page) as fh:
                text = fh.read().decode("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._broken(page, project, f"cannot be read: {exc}")
            return None
        self.result.pages_checked += 1
        return text

    def _html_anchors(self, page: str, project: str | None, text: str) -> list[dict[str, Any]]:
        # Every page the mirror writes ends with </html>; anything else was cut short.
        if not text.rstrip().endswith("</html>"):
            self._broken(page, project, "truncated: it does not end with </html>")
            return []
        parser = _Anchors()
        parser.feed(text)
        parser.close()
        return parser.anchors

    def _json_doc(self, page: str, project: str | None, text: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            self._broken(page, project, f"not valid JSON: {exc}")
            return None
        if not isinstance(doc, dict):
            self._broken(page, project, "not a JSON object")
            return None
        return doc

    def _check_root(self) -> None:
        html_page, json_page = layout.ROOT_PAGES
        text = self._read_page(html_page, None)
        if text is not None:
            for anchor in self._html_anchors(html_page, None, text):
                href = str(anchor.get("href") or "")
                target = resolve_link(layout.SIMPLE, href)
                if target is None or not self.web.is_file(
                    f"{target}/{layout.HTML_INDEX}"
                ):
                    self._broken(html_page, None, f"link {href!r}: no such project page")
        text = self._read_page(json_page, None)
        if text is None:
            return
        doc = self._json_doc(json_page, None, text)
        if doc is None:
            return
        projects = doc.get("projects")
        if not isinstance(projects, list):
            self._broken(json_page, None, "no 'projects' list")
            return
        for entry in projects:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                self._broken(json_page, None, f"project entry without a name: {entry!r}")
                continue
            page = layout.project_pages(canonicalize_name(name))[1]
            if not self.web.is_file(page):
                self._broken(json_page, None, f"lists {name!r}, but {page} is missing")

    def _check_project(self, name: str) -> None:
        page_dir = layout.project_dir(name)
        html_page, json_page = layout.project_pages(name)
        text = self._read_page(html_page, name)
        if text is not None:
            for anchor in self._html_anchors(html_page, name, text):
                href = str(anchor.get("href") or "")
                algorithm, _, digest = urldefrag(href).fragment.partition("=")
                if algorithm != "sha256" or not digest:
                    self._broken(html_page, name, f"link {href!r}: no #sha256= fragment")
                    continue
                target = resolve_link(page_dir, href)
                self._check_link(html_page, name, href, target, digest, None)
                core = anchor.get("data-core-metadata")
                if core is not None and target is not None:
                    algorithm, _, digest = str(core).partition("=")
                    self._check_link(
                        html_page, name, f"{href} (metadata)",
                        layout.metadata_path(target), digest if algorithm == "sha256" else None,
                        None,
                    )
        text = self._read_page(json_page, name)
        if text is None:
            return
        doc = self._json_doc(json_page, name, text)
        if doc is None:
            return
        files = doc.get("files")
        if doc.get("name") != name or not isinstance(files, list):
            self._broken(json_page, name, f"not the PEP 691 page of {name!r}")
            return
        for entry in files:
            if not isinstance(entry, dict):
                self._broken(json_page, name, f"file entry is not an object: {entry!r}")
                continue
            url = str(entry.get("url") or "")
            hashes = entry.get("hashes")
            sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
            if not isinstance(sha256, str):
                self._broken(json_page, name, f"link {url!r}: no sha256 hash")
                continue
            size = entry.get("size")
            target = resolve_link(page_dir, url)
            if target is not None and posixpath.basename(target) != entry.get("filename"):
                self._broken(json_page, name, f"link {url!r}: does not end in its file name")
                continue
            self._check_link(
                json_page, name, url, target, sha256, size if isinstance(size, int) else None
            )
            core = entry.get("core-metadata")
            if core and target is not None:
                meta_digest = core.get("sha256") if isinstance(core, dict) else None
                self._check_link(
                    json_page, name, f"{url} (metadata)", layout.metadata_path(target),
                    meta_digest, None,
                )

    def _check_link(
        self, page: str, project: str, href: str, target: str | None, sha256: str | None,
        size: int | None,
    ) -> None:
        why = self._link_problem(target, sha256, size)
        if why is not None:
            self._broken(page, project, f"link {href!r}: {why}")

    def _link_problem(self, target: str | None, sha256: str | None, size: int | None) -> str | None:
        if target is None or not target.startswith(f"{layout.PACKAGES}/"):
            return f"does not point into web/{layout.PACKAGES}/"
        if target in self.bad_paths:
            return None  # reported as missing or corrupt already
        recorded = self._recorded(target)
        if recorded is not None:
            # Hashed in the first phase and found sound: compare what the page claims with
            # what state.db vouches for, without reading the bytes again.
            recorded_sha256, recorded_size = recorded
            if sha256 is not None and sha256 != recorded_sha256:
                return f"advertises sha256 {sha256}, the file's is {recorded_sha256}"
            if size is not None and recorded_size is not None and size != recorded_size:
                return f"advertises {size} bytes, the file has {recorded_size}"
            return None
        # A link to bytes state.db does not vouch for (a page older than state.db, after a
        # kill): check them here, and never delete them as an orphan.
        self.linked_unrecorded.add(target)
        found = check_bytes(self.web, target, size, sha256)
        if found is None:
            return None
        return "the file is not on disk" if found[0] == "missing" else found[1]

    def _recorded(self, target: str) -> tuple[str, int | None] | None:
        """(sha256, size) of a live file at ``target``, or of the live file whose
        .metadata it is; None when state.db does not hold it."""
        live = self.db.live_file_at(target)
        if live is not None:
            hashes, size = live
            return hashes.get("sha256", ""), size
        if target.endswith(layout.METADATA_SUFFIX):
            metadata = self.db.live_metadata_of(target[: -len(layout.METADATA_SUFFIX)])
            if metadata is not None:
                return metadata.get("sha256", ""), None
        return None

    # -- repair -------------------------------------------------------------------------

    def _repair(self) -> None:
        """Fetch bad files again, rewrite affected pages from state.db, under a generation."""
        config, state, result = self.config, self.state, self.result
        config.tmp.mkdir(parents=True, exist_ok=True)
        generation = state.begin_run(config.upstream)
        result.repair_generation = generation
        try:
            touched = self._refetch(generation)
            self._rewrite_pages(generation, touched)
        except BaseException as exc:
            state.finish_run(
                generation, "error", error=f"repair stopped: {exc!r}",
                files_fetched=self._files_fetched, bytes_fetched=self._bytes_fetched,
            )
            raise
        state.finish_run(
            generation, "repair", files_fetched=self._files_fetched,
            bytes_fetched=self._bytes_fetched,
            error="; ".join(f"{what}: {why}" for what, why in result.unrepaired) or None,
        )

    def _refetch(self, generation: int) -> set[str]:
        """Download every missing or corrupt file again; returns the projects repaired."""
        by_row: dict[int, list[FileProblem]] = {}
        for problem in [*self.result.missing, *self.result.corrupt]:
            by_row.setdefault(problem.row.id, []).append(problem)
        if not by_row:
            return set()
        self.progress.phase(f"repair: fetching {len(by_row)} file(s) again")
        client = Client(self.config)
        touched: set[str] = set()
        failed: dict[str, str] = {}
        futures: list[tuple[list[FileProblem], Future[dict[bool, tuple[int, str | None]]]]] = []
        try:
            for problems in by_row.values():
                work = self._refetch_row(client, problems[0].row, {p.metadata for p in problems})
                futures.append((problems, client.submit(client.in_turn(work))))
            for problems, future in futures:
                outcomes = future.result()
                for problem in problems:
                    nbytes, error = outcomes[problem.metadata]
                    if error is None:
                        self._files_fetched += 1
                        self._bytes_fetched += nbytes
                        self.result.repaired.append(problem.label)
                        self.bad_paths.discard(problem.path)
                        touched.add(problem.row.project)
                        log.info("repaired %s", problem.label)
                        continue
                    self._unrepaired_file(problem, error, generation)
                    failed.setdefault(problem.row.project, f"{problem.label}: {error}")
        finally:
            for _, future in futures:
                future.cancel()
            client.close()
        for project, error in failed.items():
            self._mark_failed(project, f"verify --repair could not restore {error}", generation)
        return touched

    def _unrepaired_file(self, problem: FileProblem, error: str, generation: int) -> None:
        project = problem.row.project
        self.result.unrepaired.append((problem.label, (
            f"{error}. The next `mirror sync` fetches {project}'s page again and drops the "
            "file if upstream no longer lists it; otherwise run `mirror verify --repair` later"
        )))
        self.state.record_failure(
            generation, project, problem.row.filename, "failed", f"verify --repair: {error}"
        )
        log.warning("could not repair %s: %s", problem.label, error)

    async def _refetch_row(
        self, client: Client, row: FileRow, wanted: set[bool]
    ) -> dict[bool, tuple[int, str | None]]:
        """Fetch a row's file (False) and/or its .metadata (True) again, as a sync does.

        Returns (bytes fetched, error or None) for each of ``wanted``.
        """
        error: str | None = None
        if (refused := client.file_guard.refusal(row.url)) is not None:
            error = f"its recorded URL {row.url} is refused: {refused}"
        elif row.path != layout.file_path(row.sha256, row.filename):
            error = f"state.db path {row.path} is not the content address of its sha256"
        if error is not None:
            return {which: (0, error) for which in wanted}
        outcomes: dict[bool, tuple[int, str | None]] = {}
        if False in wanted:
            try:
                got = await download.fetch(
                    client, download.Fetch.file(row.url, row.filename, row.hashes, row.size)
                )
                outcomes[False] = (got.size, None)
            except REPAIR_ERRORS as exc:
                outcomes[False] = (0, str(exc))
        if True in wanted:
            assert row.metadata_hashes is not None
            if outcomes.get(False, (0, None))[1] is not None:
                outcomes[True] = (0, "its distribution file could not be repaired")
                return outcomes
            read = download.FromWheel.of(row.path, row.filename, row.metadata_hashes)
            with contextlib.suppress(download.NotInWheel):  # then it is downloaded
                if read is not None:  # the wheel's own METADATA, if it has those hashes
                    download.metadata_from_wheel(self.config, read)
                    outcomes[True] = (0, None)
                    return outcomes
            try:
                got = await download.fetch(client, download.Fetch.beside(
                    urldefrag(row.url).url + layout.METADATA_SUFFIX,
                    row.path + layout.METADATA_SUFFIX, row.metadata_hashes,
                ))
                outcomes[True] = (got.size, None)
            except REPAIR_ERRORS as exc:
                outcomes[True] = (0, str(exc))
        return outcomes

    def _mark_failed(self, project: str, error: str, generation: int) -> None:
        """Make the next sync fetch the project's page again (even after a 304 root)."""
        held = self.db.project_status(project)
        if held is not None and held is not Status.REMOVED:
            self.state.set_status(project, Status.FAILED, error, generation)

    def _rewrite_pages(self, generation: int, touched: set[str]) -> None:
        """Write the pages of every affected project again from state.db, then re-check them."""
        result = self.result
        found = list(result.broken)
        projects = touched | {p.project for p in found if p.project is not None}
        root = any(p.project is None for p in found)
        if not projects and not root:
            return
        self.progress.phase(f"repair: writing the pages of {len(projects)} project(s) again")
        publisher = Publisher(
            self.web, self.config.tmp, self.state, generation, self.config.public_url
        )
        cannot: dict[str, str] = {}
        copies = []
        for name in sorted(projects):
            copy = publisher.copy_from_state(name)
            if copy is None:
                cannot[name] = (
                    "state.db does not record this project as published, so there is nothing "
                    "to write it from; if its directory is a leftover, delete it"
                )
            else:
                copies.append(copy)

        def ending() -> Ending:
            serial = self.state.get_meta("root_serial")
            entries = self.state.root_entries()
            return Ending((entries, int(serial) if serial else None) if root else None)

        # The same order as a sync's: pages from state.db, then the root listing them;
        # their rows in one transaction, which commits after publish's flush.
        with self.state.transaction():
            publish(publisher, copies, ending)
        result.pages_rewritten = publisher.pages_written
        # Only what is still broken once written again stays unrepaired.
        result.broken, counted = [], result.pages_checked
        self._check_pages(projects, root=root)
        still, result.broken, result.pages_checked = result.broken, found, counted
        for problem in still:
            reason = cannot.get(problem.project or "") or (
                "still broken after it was written again from state.db; "
                "run `mirror sync`, then verify again"
            )
            result.unrepaired.append((f"{problem.page}: {problem.detail}", reason))
        still_pages = {p.page for p in still}
        for page in sorted({p.page for p in found} - still_pages):
            result.repaired.append(page)

    # -- orphans ------------------------------------------------------------------------

    def _delete_orphans(self) -> None:
        result = self.result
        for name in result.orphan_pages:
            try:
                reap.remove_project_pages(self.web, name)
            except OSError as exc:
                result.orphan_errors.append((layout.project_dir(name) + "/", str(exc)))
                continue
            result.orphan_pages_deleted += 1
        for rel in result.orphans:
            try:
                self.web.remove(rel, stop=layout.PACKAGES)
            except OSError as exc:
                result.orphan_errors.append((rel, str(exc)))
                continue
            result.orphans_deleted += 1


def verify(
    config: Config,
    *,
    repair: bool = False,
    delete_orphans: bool = False,
    progress: VerifyProgress | None = None,
    deep: bool = False,
) -> VerifyResult:
    """Check (and optionally repair) the mirror in ``config.directory``.

    Raises VerifyError (or state.NoState) when there is no usable state.db, and
    sync.SyncError when a sync holds the mirror's lock.
    """
    if not config.state_path.is_file():
        raise VerifyError(
            f"no state.db in {config.directory}: there is no mirror to verify there. "
            "Check --directory (or the config's directory), or run `mirror sync` first"
        )
    try:
        open_storage(config.web, config.storage).check()
    except StorageError as exc:
        raise VerifyError(str(exc)) from None
    writes = repair or delete_orphans
    command = " ".join(["mirror verify", *(["--repair"] if repair else []),
                        *(["--delete-orphans"] if delete_orphans else [])])
    with locked(config.directory, command, shared=not writes) as held:
        state = None
        try:
            if writes:
                state = State(config.state_path)
                db = state.reader()
            else:  # while the lock is held, no sync writes state.db
                db = connect_reader(config.state_path, "mirror verify", unchanging=held)
        except (sqlite3.Error, StateError) as exc:
            raise VerifyError(f"cannot use {config.state_path}: {exc}") from exc
        try:
            return Verifier(config, db, progress or VerifyProgress(), state, deep=deep).run(
                repair=repair, delete_orphans=delete_orphans
            )
        finally:
            if state is not None:
                state.close()
            else:
                db.close()


def report_lines(result: VerifyResult) -> list[str]:
    """The summary printed at the end: counts, then one line per finding."""
    lines = [
        f"verify: {result.files_checked} file(s) ({human_bytes(result.bytes_checked)}), "
        f"{result.metadata_checked} metadata file(s) and {result.pages_checked} page(s) "
        f"checked; {len(result.missing)} missing, {len(result.corrupt)} corrupt, "
        f"{len(result.broken)} broken page link(s), {len(result.orphans)} orphan(s)"
        + (f", {len(result.orphan_pages)} orphan project page(s)" if result.orphan_pages else "")
    ]
    for problem in result.missing:
        lines.append(f"  missing {problem.label} ({problem.path}): {problem.detail}")
    for problem in result.corrupt:
        lines.append(f"  corrupt {problem.label} ({problem.path}): {problem.detail}")
    for page in result.broken:
        lines.append(f"  broken {page.page}: {page.detail}")
    for orphan in result.orphans:
        lines.append(f"  orphan {orphan}")
    for name in result.orphan_pages:
        lines.append(
            f"  orphan page {layout.project_dir(name)}/: state.db records no such project as "
            "published (left by a sync that died)"
        )
    if result.repair:
        lines.append(
            f"repair: {len(result.repaired)} repaired, {len(result.unrepaired)} not repaired, "
            f"{result.pages_rewritten} page(s) rewritten"
            + (f" (generation {result.repair_generation})" if result.repair_generation else "")
        )
        for what in result.repaired:
            lines.append(f"  repaired {what}")
        for what, why in result.unrepaired:
            lines.append(f"  not repaired {what}: {why}")
    if result.delete_orphans:
        lines.append(
            f"orphans: {result.orphans_deleted} deleted"
            + (f", and the pages of {result.orphan_pages_deleted} project(s)"
               if result.orphan_pages else "")
        )
        for path, why in result.orphan_errors:
            lines.append(f"  could not delete {path}: {why} (fix its permissions, run again)")
    if result.sound:
        lines.append("verify: the mirror is sound")
        if result.orphans and not result.delete_orphans:
            lines.append(
                "  orphans take space but no page links them; "
                "`mirror verify --delete-orphans` deletes them"
            )
    elif not result.repair and result.problems:
        lines.append(
            f"verify: {result.problems} problem(s); `mirror verify --repair` fetches missing "
            "and corrupt files again from upstream and rewrites broken pages from state.db"
        )
    else:
        lines.append("verify: the mirror is not sound (see above)")
    if len(result.orphan_pages) > result.orphan_pages_deleted:
        lines.append(
            "  orphan pages are served though no root lists them; `mirror sync` (after a "
            "run that died) or `mirror verify --delete-orphans` deletes them"
        )
    return lines
