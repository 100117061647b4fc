"""One run of `mirror sync`: root index -> plan -> pages and files -> published tree.

Workers do the network I/O: tasks of this process's event loop (a thread) at
first, then, once a run has download processes (see _Workers), the same
coroutines on an event loop in each of them, pages included. Only the
coordinating thread touches state.db and writes pages, and it learns of
finished work through a queue.

Publish order (see ``run``): a project's files are in place before its pages
are written, and the root pages are written after every project page.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import functools
import json
import logging
import os
import queue
import sqlite3
import time
from collections.abc import Coroutine, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simplemirror.check.status import lock_path
from simplemirror.cli.config import Config
from simplemirror.filter import select
from simplemirror.report.progress import Reporter
from simplemirror.simple.model import (
    API_VERSION,
    HeldFile,
    ProjectPage,
    Replanning,
    Status,
    newer_api_version,
    version_of,
)
from simplemirror.simple.render import ProjectInfo
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import StorageError, open_storage
from simplemirror.store.state import ReuseIndex, State, StateError, unreadable
from simplemirror.sync import download, recover, reuse
from simplemirror.sync.plan import (
    MASS_DELETE_FLOOR_FILES,
    MASS_DELETE_FLOOR_PROJECTS,
    Choose,
    FilePlan,
    FileTodo,
    ProjectTodo,
    SyncPlan,
    is_mass_removal,
    plan_changes,
    plan_page,
    plan_retry,
    usable_serials,
)
from simplemirror.sync.publish import Ending, ProjectCopy, Publisher, publish
from simplemirror.sync.workers import ChildLost, ProcessPool
from simplemirror.upstream.client import (
    Client,
    Interrupted,
    PageResponse,
    RefusedURL,
    StalePage,
    UpstreamError,
)

if TYPE_CHECKING:  # imported where used: a full mirror does not pay for them
    from simplemirror.filter.closure import Closure
    from simplemirror.sync.resolve import UpstreamSource

log = logging.getLogger("simplemirror")

# Errors a download can end in that concern one file, not the whole run.
FILE_ERRORS = (UpstreamError, download.VerificationError, ChildLost)
# How long finished projects may wait in an open transaction before a commit.
COMMIT_EVERY = 2.0
# After a stop request, how long in-flight downloads get to notice it and clean up.
STOP_GRACE = 5.0


class SyncError(Exception):
    """The run could not be carried out at all (upstream root unusable, mirror locked)."""


class RootUnusable(SyncError):
    """The upstream root index could not be read or used; nothing in the mirror changed."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full, from the OS or SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)  # extended: the primary code in the low byte
    return code is not None and code & 0xFF == sqlite3.SQLITE_FULL


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the file is not a database, or a damaged one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def write_error(directory: Path, exc: Exception) -> SyncError:
    """What to say when the mirror's files or state.db cannot be written."""
    if isinstance(exc, store.UnsafePath | StorageError):
        return SyncError(str(exc))
    if disk_full(exc):
        return SyncError(
            f"the disk holding {directory} is full ({exc}); free some space, then run again"
        )
    return SyncError(
        f"cannot write into {directory}: {exc}; "
        "free some space or fix its permissions, then run again"
    )


@dataclass
class Forecast:
    """What `mirror sync --dry-run` found out, beyond the plan, about the run it stands for."""

    not_modified: bool = False
    """The root was unchanged (304, or the same bytes): only unfinished projects count."""
    serials: bool = True
    """False: upstream gives no usable serials, so every project is asked again (with a
    conditional request where a complete copy is held)."""
    refusal: str | None = None
    """Why the real run would stop before changing anything (the mass-removal cap), in
    the words it would use; nothing past the plan is read then."""
    pages_read: int = 0
    pages_unchanged: int = 0
    """Pages upstream answered 304 or with the same bytes: nothing to do there."""
    files: int = 0
    """Files to download (their siblings, such as .metadata, not counted)."""
    bytes: int = 0
    """Their declared sizes, added up; ``unknown_size`` of them declare none."""
    unknown_size: int = 0
    files_dropped: int = 0
    """Held files the pages read no longer list."""
    file_refusal: str | None = None
    """Set when those are more than max-removal of the files held: the real run keeps
    those past the cap and exits 1."""
    filtered: select.Tally = field(default_factory=select.Tally)
    """What the filters kept, left out and held back of the pages read."""


@dataclass
class RunSummary:
    generation: int | None
    outcome: str
    """ok, partial, unchanged or dry-run."""
    changed: int = 0
    deferred: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    """Projects upstream lists that the filters leave out (removed from the mirror)."""
    filtered: select.Tally = field(default_factory=select.Tally)
    """What the filters kept, left out and held back of the pages this run read."""
    unmet: list[tuple[str, str]] = field(default_factory=list)
    """(project, why) for what the requirements ask that the mirror cannot hold: the
    run does not converge (exit 1)."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """Entries upstream listed that cannot be mirrored (invalid names...): warnings."""
    blocked: set[str] = field(default_factory=set)
    """Failed projects with refused files: running again does not help until upstream
    corrects its page or the operator allows the file host."""
    files_fetched: int = 0
    bytes_fetched: int = 0
    metadata_from_wheels: int = 0
    """PEP 658 .metadata files read from their wheels (which upstream's hashes matched)."""
    metadata_fetched: int = 0
    """PEP 658 .metadata files downloaded."""
    reuse: reuse.Tally = field(default_factory=reuse.Tally)
    """Files taken from --reuse-from instead of downloaded; candidates hashed, rejected."""
    files_deleted: int = 0
    """Files whose bytes left the disk because no page lists them any more."""
    duration: float = 0.0
    plan: SyncPlan | None = None
    stopped_by: int | None = None
    """The signal that stopped the run early, if one did."""
    forecast: Forecast | None = None
    """A dry run's findings; its exit code is the one the real run would end with."""

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 128 + self.stopped_by  # the shell's convention: 130 SIGINT, 143 SIGTERM
        if self.forecast is not None and (self.forecast.refusal or self.forecast.file_refusal):
            return 1
        return 1 if self.deferred or self.failed or self.rejected or self.unmet else 0


# A lock found taken is asked for again this many times, LOCK_PATIENCE seconds apart:
# `mirror status` holds it shared for an instant to see whether a sync runs.
LOCK_TRIES, LOCK_PATIENCE = 5, 0.05
SYNC_COMMAND = "mirror sync"


def _flock(fd: int, operation: int, tries: int = LOCK_TRIES) -> bool:
    for attempt in range(tries):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(LOCK_PATIENCE)
    return False


def lock_refusal(command: str, directory: Path, holder: str | None, pid: str | None) -> str:
    """Why ``command`` cannot have the lock: ``holder`` (a command, None: readers only)
    with ``pid`` (None: unknown) has it."""
    if holder is None:
        busy = f"a mirror verify is reading {directory}"
    else:
        if holder != SYNC_COMMAND:
            who = holder
        elif command == SYNC_COMMAND:
            who = "another mirror sync"
        else:
            who = "a sync"
        busy = f"{who} (pid {pid or 'unknown'}) is running on {directory}"
    return f"{command} cannot run while {busy}; wait for it to finish"


def _holder(fd: int) -> tuple[str, str | None]:
    """The command holding the lock, and its pid, as it wrote them (a sync: its pid only)."""
    lines = os.pread(fd, 256, 0).decode(errors="replace").splitlines()
    pid = lines[0].strip() if lines and lines[0].strip() else None
    command = lines[1].strip() if len(lines) > 1 and lines[1].strip() else SYNC_COMMAND
    return command, pid


@contextmanager
def locked(
    directory: Path, command: str = SYNC_COMMAND, *, shared: bool = False
) -> Iterator[bool]:
    """Hold the mirror's lock; a second run on the same directory refuses to start.

    ``command`` names what runs, in the message of a refusal. ``shared``: a read lock, for
    a command that only reads (a plain verify): several may hold it at once, and a user
    who can only read the mirror can take it; where the lock file is missing and cannot
    be made, the command goes on without it. Yields whether the lock is held.

    flock is released by the kernel when the process dies, so a crashed run
    never leaves a lock behind.
    """
    path = lock_path(directory)
    try:
        # Read-only suffices for flock: a reader needs no write permission on the file.
        fd = os.open(path, (os.O_RDONLY if shared else os.O_RDWR) | os.O_CREAT, 0o644)
    except OSError as exc:
        if not shared:
            raise SyncError(f"cannot create the lock file {path}: {exc}") from exc
        log.debug("cannot open the lock file %s (%s): reading without it", path, exc)
        fd = -1
    if fd < 0:
        yield False
        return
    try:
        if not _flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX):
            holder: str | None
            holder, pid = _holder(fd)
            if not shared and _flock(fd, fcntl.LOCK_SH, tries=1):
                holder, pid = None, None  # only readers hold it: plain verifies
            raise SyncError(lock_refusal(command, directory, holder, pid))
        if not shared:
            os.ftruncate(fd, 0)
            named = "" if command == SYNC_COMMAND else f"{command}\n"
            os.pwrite(fd, f"{os.getpid()}\n{named}".encode(), 0)
        yield True
    finally:
        os.close(fd)


@dataclass
class _Project:
    """A project in flight: its page, its file plan and the downloads outstanding."""

    todo: ProjectTodo
    page: ProjectPage
    files: FilePlan
    etag: str | None
    """The upstream page's ETag and body hash, kept to ask "changed?" next time."""
    page_hash: str
    outstanding: int = 0
    done: dict[str, HeldFile] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    offers_files: bool = False
    """Upstream's page offers files (mirrorable or refused); quarantine offers none."""
    refused: bool = False
    """Some of its files (or their redirects) were refused: see RunSummary.blocked."""
    left_out: frozenset[str] = frozenset()
    """Files upstream lists that the filters leave out."""
    due: int | None = None
    """When a file min-age holds back may be published (HeldProject.held_until)."""


@dataclass(frozen=True)
class _Root:
    """What reading the root index decided."""

    plan: SyncPlan
    not_modified: bool
    """Upstream answered 304: only unfinished projects are looked at."""
    etag: str | None = None
    serial: int | None = None
    rejected: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    """Of the root's body, as read."""
    serials: bool = True
    """Whether upstream's serials are usable (on a 304, as the last root said)."""
    refusal: str | None = None
    """Set when the plan removes too much: the run must stop, saying this."""
    unmet: tuple[tuple[str, str], ...] = ()
    """What the requirements' closure could not meet (RunSummary.unmet)."""


def mass_removal_refusal(
    removing: int, listed: int, share: float, upstream: str, last_upstream: str | None,
    pruned: int = 0,
) -> str:
    """What a run refused by the project removal cap says, and what to do about it.

    ``pruned`` of the ``removing`` are projects upstream lists that the filters leave out.
    """
    if pruned == removing:
        return (
            f"the filters leave out {pruned} of the {listed} projects held (more than "
            f"max-removal, {share:.0%}); nothing was changed. If the [filters] are right, "
            "run again with --allow-mass-delete to remove them; if not, correct the filters"
        )
    gone = removing - pruned
    also = f", and the filters leave out {pruned} more," if pruned else ""
    said = (
        f"upstream no longer lists {gone} of the {listed} projects held{also} "
        f"(more than max-removal, {share:.0%}); nothing was changed. "
    )
    if last_upstream is not None and last_upstream != upstream:
        # Imported here: runreport imports this module.
        from simplemirror.report.runreport import redact

        # --allow-mass-delete would then empty the mirror of the old index: say so first.
        return said + (
            f"The upstream, {redact(upstream)}, is not the one the last run synced from, "
            f"{redact(last_upstream)}: if that is a mistake, set the upstream back; only if "
            "the mirror is to follow the new index, run again with --allow-mass-delete, "
            "which removes every project the new index does not list"
        )
    return said + (
        "If upstream really removed them, run again with --allow-mass-delete; "
        "if not, its index is truncated: wait and run again"
    )


# With download-processes unset, a run starts its download processes only after
# this many files: below it, starting them costs more than they save.
PROCESSES_AFTER_FILES = 64


def auto_download_processes() -> int:
    """One download process per CPU core this process may use, at most 4; none on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if not cores or cores < 2 else min(cores, 4)


def shares(workers: int, processes: int) -> list[int]:
    """``workers`` shared out among at most ``processes``: no more in total, none idle."""
    count = max(1, min(workers, processes))
    return [workers // count + (i < workers % count) for i in range(count)]


def todo_requests(todo: FileTodo) -> int:
    """The requests a todo makes when none fails."""
    return todo.fetch_file + todo.fetch_metadata + todo.fetch_signature + todo.fetch_provenance


class _Workers:
    """Runs page fetches and download.download_todo on this process's event loop, or in
    download processes: the same coroutines either way.

    The processes start when needed: with ``download-processes`` set, at the first
    file; unset, once a run has had PROCESSES_AFTER_FILES files (a small run never
    pays for them). Once they have started, pages are fetched and parsed there as
    well: the coordinating process, which records and publishes every project, was
    the busiest of them. ``workers`` is the budget of connections in every mode: here,
    or shared out among the processes.
    """

    def __init__(self, client: Client, prefetched: dict[str, PageResponse] | None = None
                 ) -> None:
        self.client = client
        self.prefetched = prefetched or {}
        """Pages the requirements' closure read this run: not asked for again."""
        config = client.config
        if config.download_processes is None:
            self._processes, self._after = auto_download_processes(), PROCESSES_AFTER_FILES
        else:
            self._processes, self._after = config.download_processes, 0
        self._submitted = 0
        self._here_running: dict[Future[Any], int] = {}
        """What runs or waits here, and how many requests each makes (when all goes well)."""
        self._children: ProcessPool | None = None
        self._handed_over = False

    def _here(self, work: Coroutine[Any, Any, Any], requests: int = 1) -> Future[Any]:
        future = self.client.submit(self.client.in_turn(work))
        self._here_running[future] = requests
        future.add_done_callback(self._here_done)
        return future

    def _here_done(self, future: Future[Any]) -> None:
        self._here_running.pop(future, None)
        if not self._here_running and not self._work_here():
            self._hand_over()

    def _work_here(self) -> bool:
        """Whether new work runs in this process: until the download processes have
        started (their imports take a while, when work sent to them would only wait),
        but only as much as keeps this process's connections busy, so that when they
        take over, what is left here ends within a request or two, and the two together
        hold more than ``workers`` connections only that long. With
        max-requests-per-second they take over at once instead, so that what waits here
        is known when their turns begin."""
        children = self._children
        if children is None:
            return True
        if children.ready.is_set() or self.client.rate:
            return False
        return len(self._here_running) < self.client.connections

    def _hand_over(self) -> None:
        """The processes have taken over: close this process's connections, which would
        only sit idle on the server beside theirs (reopened if ever needed again)."""
        if not self._handed_over:
            self._handed_over = True
            self.client.submit(self.client.aclose())

    def _start_processes(self) -> None:
        config = self.client.config
        # With max-requests-per-second, the processes' turns begin once what waits
        # here has had its own: the rate holds across the hand-over.
        start = self.client.http.paced_until(sum(self._here_running.values()))
        self._children = ProcessPool(
            shares(config.workers, min(self._processes, config.connections_per_host)),
            functools.partial(Client, not_before=start), config,
        )

    def _to_processes(self) -> ProcessPool | None:
        """The download processes, if new work goes to them now."""
        if self._work_here():
            return None
        if not self._here_running:
            self._hand_over()
        return self._children

    def page(self, todo: ProjectTodo) -> Future[PageResponse | None]:
        response = _fresh(self.prefetched.pop(todo.name, None), todo)
        if response is not None:
            done: Future[PageResponse | None] = Future()
            done.set_result(response)
            return done
        children = self._to_processes()
        if children is not None:
            return children.submit(Client.get_page, todo, todo.etag)
        return self._here(self.client.get_page(todo, todo.etag))

    def submit(
        self, name: str, todos: list[FileTodo]
    ) -> list[Future[download.TodoResult]]:
        """download_todo for each of a project's ``todos``."""
        self._submitted += len(todos)
        if self._processes and self._children is None and self._submitted > self._after:
            self._start_processes()
        children = self._to_processes()
        if children is not None:
            return children.submit_all(download.download_todo, [(name, t) for t in todos])
        return [
            self._here(download.download_todo(self.client, name, todo), todo_requests(todo))
            for todo in todos
        ]

    def shutdown(self, timeout: float) -> bool:
        # What runs here is cancelled: a download cut short leaves nothing behind.
        for future in list(self._here_running):
            future.cancel()
        if self._children is not None:
            return self._children.shutdown(timeout)
        return True


def _fresh(response: PageResponse | None, todo: ProjectTodo) -> PageResponse | None:
    """``response`` if it is as new as the root promised ``todo``."""
    if response is None or todo.serial is None or response.page.serial is None:
        return response
    return response if response.page.serial >= todo.serial else None


class Sync:
    """One run. Construct, then call ``run()``."""

    def __init__(self, config: Config, reporter: Reporter | None = None) -> None:
        self.config = config
        self.storage = open_storage(config.web, config.storage)
        self.client = Client(config)
        self.reporter = reporter or Reporter()
        self.stopped_by: int | None = None
        self._api_versions_warned: set[tuple[int, int]] = set()
        # True while the run has changed nothing on disk: an error then needs no recovery.
        self._tree_untouched = False
        self._after_died = False
        """This run recovered from one that died: it finishes what came after the root."""
        self._reuse: ReuseIndex | None = None
        self.clock = time.time
        """The time the cooldown (min-age) is measured at; read once a run, when it plans."""
        self._choose: Choose | None = None
        self._file_fingerprint = config.filters.file_fingerprint()
        """Of the file filters in force, the requirements' closure included once known."""
        self._source: UpstreamSource | None = None
        self._closure: Closure | None = None
        self._dry = False

    def request_stop(self, signum: int) -> None:
        """Finish soon: no new work, in-flight downloads abandoned, state committed.

        Safe to call from a signal handler.
        """
        self.stopped_by = signum
        self.client.stop.set()

    # -- the run ------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> RunSummary:
        try:
            return self._run(dry_run=dry_run)
        finally:
            self.client.close()

    def _run(self, *, dry_run: bool = False) -> RunSummary:
        started = time.monotonic()
        config = self.config
        self._dry = dry_run
        if dry_run:
            return self._dry_run(started)
        try:
            # A bucket that is missing or denies access says so before anything is
            # fetched upstream (or made on disk).
            self.storage.check()
            handed_on = self.storage.handed_on()
        except StorageError as exc:
            raise SyncError(str(exc)) from None
        if handed_on is not None:  # what check() found, for the download processes
            config = self.config = self.client.config = dataclasses.replace(
                config, storage=handed_on)
        # What this run brings into being: a first run that never gets a usable root
        # removes it again (see _undo_first_run).
        # mkdir(parents=True) makes missing parents too: the outermost first.
        local = not self.storage.remote
        dirs = (config.directory, config.web, config.tmp) if local else (
            config.directory, config.tmp)
        wanted = (*reversed(config.directory.parents), *dirs, lock_path(config.directory))
        made = [p for p in wanted if not p.exists()]
        try:
            for d in dirs:
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SyncError(f"cannot create the mirror directory: {exc}") from exc
        with locked(config.directory):
            try:
                # Under the lock no other run uses tmp/: a temporary file of ours
                # there was left by a run that died, and was never published.
                if local:
                    store.check_same_filesystem(config.tmp, config.web)
                # Checked afresh each run: under --every, a directory may have been
                # swapped for a symlink since the last one.
                store.forget_dirs()
                store.clear_leftovers(config.tmp)
                first = not config.state_path.exists()  # under the lock: no run makes it now
                state = State(config.state_path)
            except (OSError, sqlite3.Error, StateError) as exc:
                if disk_full(exc) or isinstance(exc, store.UnsafePath):
                    raise write_error(config.directory, exc) from exc
                if isinstance(exc, sqlite3.Error) and damaged(exc):
                    raise SyncError(str(unreadable(config.state_path, exc, "mirror sync"))) from exc
                raise SyncError(
                    f"cannot use {config.directory}: {exc}; it must be writable by this user"
                ) from exc
            try:
                summary = self._run_locked(state)
            except RootUnusable:
                state.close()
                if first:
                    self._undo_first_run(made)
                raise
            finally:
                state.close()
        summary.duration = time.monotonic() - started
        return summary

    def _undo_first_run(self, made: list[Path]) -> None:
        """Leave the directory as this first run found it: its state.db and what it made.

        Called under the lock, so that the lock file goes while still held. Only empty
        directories are removed: nothing this run did not create is ever touched.
        """
        state_path = self.config.state_path
        for suffix in ("", "-wal", "-shm", "-journal"):
            state_path.with_name(state_path.name + suffix).unlink(missing_ok=True)
        for path in reversed(made):  # the lock file and the innermost directories first
            try:
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                log.debug("left %s in place: %s", path, exc)

    def _run_locked(self, state: State) -> RunSummary:
        config = self.config
        try:
            generation = state.begin_run(config.upstream)
        except sqlite3.Error as exc:
            raise write_error(config.directory, exc) from exc
        try:
            self._recover(state, generation)
            self._tree_untouched = True  # until planning is done
            return self._sync(state, generation)
        except sqlite3.Error as exc:
            # state.db could not be written (a full disk, most likely): one clear error,
            # which also keeps a --every loop going.
            error = write_error(config.directory, exc)
            self._record_error(state, generation, error)
            raise error from exc
        except SyncError as exc:
            self._record_error(state, generation, exc)
            raise
        finally:
            if self._reuse is not None:
                self._reuse.close()
                self._reuse = None
            if self._source is not None:
                self._source.discard_staged()

    def _recover(self, state: State, generation: int) -> None:
        """After a run that died, make the tree agree with state.db (see recover.py)."""
        died = state.died_unrecovered(generation)
        self._after_died = died is not None
        if died is None:
            return
        started, through = died
        config = self.config
        publisher = Publisher(self.storage, config.tmp, state, generation, config.public_url)
        try:
            with state.transaction():
                done = recover.recover(
                    self.storage, state, publisher, recover.since_epoch(started)
                )
                state.recovered_through(through)
                self.storage.flush()
        except OSError as exc:
            raise write_error(config.directory, exc) from exc
        log.info(
            "recovered from run %d, which died: %d project(s) unpublished, %d page(s) "
            "written again, %d unrecorded file(s) deleted",
            through, len(done.pages_removed), done.pages_rewritten, done.files_removed,
        )

    def _record_error(self, state: State, generation: int, error: SyncError) -> None:
        """Record the run as ended in ``error``, if state.db can still be written."""
        try:
            state.rollback()  # what a failed statement left half done
            with state.transaction():
                state.finish_run(generation, "error", error=str(error))
                if self._tree_untouched:
                    # Nothing on disk to reconcile: the next run need not walk the tree.
                    # (Otherwise it does, as after a run that died: what was written
                    # before the rolled-back commit has no row to say so.)
                    state.recovered_through(generation)
        except sqlite3.Error as exc:
            log.warning(
                "could not record run %d as failed in state.db (%s); `mirror status` "
                "shows it as not finished", generation, exc,
            )

    def _sync(self, state: State, generation: int) -> RunSummary:
        config = self.config
        try:
            root = self._plan(state, generation)
        except Interrupted:
            return self._interrupted(RunSummary(generation, "interrupted"), state)
        except UpstreamError as exc:
            raise RootUnusable(f"could not read the upstream root index: {exc}") from None
        if root.plan.fetch:
            self._reuse = self._index_reuse()
        self._tree_untouched = False
        plan = root.plan
        summary = RunSummary(generation, "ok", plan=plan, rejected=list(root.rejected))
        summary.removed, summary.pruned = list(plan.removed), list(plan.pruned)
        summary.unmet = list(root.unmet)
        if self._source is not None:
            summary.files_fetched += self._source.files_fetched
            summary.bytes_fetched += self._source.bytes_fetched
        root_pages_there = all(self.storage.is_file(p) for p in layout.ROOT_PAGES)
        if (root.not_modified and not plan.fetch and root_pages_there and not root.unmet
                and not self._after_died):
            # 304 (or the same bytes) and nothing left over: the mirror is current.
            # Write nothing. (After a run that died, its root may be up and what follows
            # the root not done: removals, last-modified. The publish below does them.)
            summary.outcome = "unchanged"
            state.finish_run(generation, "unchanged")
            return summary

        # In the publish order (publish.publish): each project as its downloads
        # finish (_fetch_all), then the root, then removals.
        publisher = Publisher(self.storage, config.tmp, state, generation, config.public_url)
        self._files_held, self._files_removing = state.live_files_count(), 0
        try:
            with closing(self._fetch_all(plan, state, publisher, summary)) as copies:
                summary.files_deleted = publish(
                    publisher, copies, lambda: self._ending(root, summary, state, root_pages_there)
                )
        except OSError as exc:
            raise write_error(config.directory, exc) from exc
        if self.stopped_by is not None:
            return self._interrupted(summary, state)
        complete = not summary.deferred and not summary.failed and not summary.unmet
        summary.outcome = "ok" if complete else "partial"
        state.finish_run(
            generation,
            summary.outcome,
            upstream_serial=root.serial,
            projects_changed=summary.changed,
            projects_deferred=len(summary.deferred),
            projects_failed=len(summary.failed),
            projects_removed=len(summary.removed),
            files_fetched=summary.files_fetched,
            bytes_fetched=summary.bytes_fetched,
        )
        return summary

    def _ending(
        self, root: _Root, summary: RunSummary, state: State, root_pages_there: bool
    ) -> Ending:
        """Once every project is in: the root pages to write (recording what goes with
        them), and whether removals and web/last-modified follow."""
        serial = state.get_meta("root_serial")
        if self.stopped_by is not None:
            # What finished is published and recorded, and a root lists it, so that a
            # first sync stopped early still serves /simple/: with the serial of the last
            # complete copy, not this root's. The root's ETag and serial, and removals,
            # wait for a run that gets through.
            if not (summary.changed or summary.removed or not root_pages_there):
                return Ending(None)
            return Ending((state.root_entries(), int(serial) if serial else None))
        complete = not summary.deferred and not summary.failed
        before = serial
        if complete and root.serial is not None:
            state.set_meta("root_serial", str(root.serial))
        serial = state.get_meta("root_serial")
        if not root.not_modified:
            # Saved only now: a run that dies before the root is written sees the full
            # root again next time, not a 304.
            state.set_meta("root_etag", root.etag)
            state.set_meta("root_sha256", root.sha256)
            state.set_meta("root_scope", self._scope())
        # The root pages derive from the published projects and the serial: when
        # neither moved, they are the same bytes, and at 650,000 projects rendering
        # them just to find that out costs seconds.
        unchanged = (not summary.changed and not root.plan.removed and not root.plan.pruned
                     and serial == before)
        pages = None
        if not unchanged or not root_pages_there:
            pages = (state.root_entries(), int(serial) if serial else None)
        return Ending(pages, remove=True, last_modified=complete)

    def _interrupted(self, summary: RunSummary, state: State) -> RunSummary:
        """Record the run as stopped on request; what it finished is published."""
        assert summary.generation is not None
        summary.outcome = "interrupted"
        summary.stopped_by = self.stopped_by
        log.warning("stopped on request; the next run resumes where this one stopped")
        state.finish_run(
            summary.generation,
            "interrupted",
            projects_changed=summary.changed,
            files_fetched=summary.files_fetched,
            bytes_fetched=summary.bytes_fetched,
        )
        return summary

    def _plan(self, state: State, generation: int) -> _Root:
        """Read the root and decide; record what the root promised."""
        root = self._decide(state)
        if root.refusal is not None:
            raise SyncError(root.refusal)
        filters = self.config.filters
        # What `mirror status` shows as in force: what this run applies. Written only
        # when it changes: a run with nothing to do writes nothing it need not.
        in_force = json.dumps(filters.in_force()) if filters.active else None
        if state.get_meta("filters") != in_force:
            state.set_meta("filters", in_force)
        self._keep_closure(state)
        if root.not_modified:
            return root
        plan = root.plan
        with state.transaction():
            state.set_meta("root_serials", "yes" if root.serials else "no")
            state.note_listed(((t.name, t.display_name, t.serial) for t in plan.fetch), generation)
            state.mark_removed((*plan.removed, *plan.pruned), generation)
            for entry, reason in root.rejected:
                state.record_failure(generation, entry, None, "rejected", reason)
        for name in plan.removed:
            log.warning("project %s is no longer listed upstream; recorded as removed", name)
        for name in plan.pruned:
            log.info("project %s is left out by the filters; recorded as removed", name)
        return root

    def _decide(self, state: State) -> _Root:
        """Read the root and plan the run from it and ``state``, writing nothing.

        The run (``_plan``) and --dry-run (over state.db opened read-only) both plan
        here, so that a dry run says what the run will do: which projects it asks
        for, the fallback without serials, the plan on a 304, the removal cap.
        """
        only = self.config.projects or None
        filters = self.config.filters
        now = int(self.clock())
        rules: dict[str, select.Rule] = {}
        unmet: tuple[tuple[str, str], ...] = ()
        last = self._kept_closure(state)
        if last is not None:  # the root's ETag holds only for the closure it was read for
            self._file_fingerprint = self._closure_fingerprint(last)
        response = self.client.fetch_root(self._etag(state), self._root_sha256(state))
        if filters.requirements is not None:
            # What the root lists of the projects the last closure read (None: a 304).
            at = None if response is None else (
                {p.normalized: p.serial for p in response.index.projects
                 if p.normalized in last.serials}
                if last is not None and usable_serials(response.index) else {}
            )
            if last is not None and last.stands(at, now):
                closure = last
            else:
                closure = self._resolve(state, now)
                moved = last is None or self._closure_fingerprint(closure) != (
                    self._file_fingerprint)
                if response is None and moved:
                    # A 304 says nothing of projects the closure now holds: read it whole.
                    response = self.client.fetch_root(None, None)
            self._closure = closure
            rules, unmet = closure.rules, tuple(closure.problems)
            self._file_fingerprint = self._closure_fingerprint(closure)
        replanning = Replanning(self._file_fingerprint, now)
        if filters.narrows_files:
            def choose(page: ProjectPage, held: Mapping[str, HeldFile]) -> select.Selection:
                rule = None if filters.included(page.name) else rules.get(page.name)
                return select.select(filters, page, held, now, rule)

            self._choose = choose
        wanted = (lambda name: filters.wants_project(name, rules)) if (
            filters.narrows_projects) else None
        if response is None:
            log.info("upstream root index unchanged (HTTP 304, or the same bytes)")
            if state.get_meta("root_serials") == "no":
                plan = plan_retry(state.held_projects(), only, serials=False,
                                  replanning=replanning)
                return _Root(plan, True, serials=False, unmet=unmet)
            plan = plan_retry(state.unfinished_projects(replanning), only, replanning=replanning)
            return _Root(plan, not_modified=True, unmet=unmet)
        index, etag, sha256 = response.index, response.etag, response.sha256
        self._warn_of_newer_api(index.api_version)
        serials = usable_serials(index)
        changes = state.root_changes(
            # Without usable serials, each project is asked with a conditional request.
            index.projects if serials else (p._replace(serial=None) for p in index.projects),
            only,
            wanted=wanted,
            replanning=replanning,
        )
        missing = sorted(
            set(only) - {p.normalized for p in index.projects} - set(index.held_back)
        ) if only else []
        serial, rejected, collisions = index.serial, index.rejected, index.collisions
        held_back = index.held_back
        # The projects are in state.db's temporary table now: at PyPI's size, the
        # parsed root is a hundred megabytes better given back before planning.
        del response, index
        plan = plan_changes(changes, only, held_back, replanning)
        removing = len(plan.removed) + len(plan.pruned)
        # Counted only when needed: a full scan of the projects at PyPI's size.
        listed = state.listed_count() if removing else 0
        refusal = None
        if removing and not self.config.allow_mass_delete and is_mass_removal(
            removing, listed, self.config.max_removal, MASS_DELETE_FLOOR_PROJECTS
        ):
            refusal = mass_removal_refusal(
                removing, listed, self.config.max_removal, self.config.upstream,
                state.synced_upstream(), len(plan.pruned),
            )
        for name in missing:
            log.warning("project %s is not listed by the upstream index", name)
        for dropped, kept in collisions:
            log.warning("upstream lists %r and %r, one project; mirrored once", dropped, kept)
        return _Root(plan, False, etag, serial, rejected, sha256, serials, refusal, unmet)

    def _scope(self) -> str:
        """What a saved root ETag is valid for: the same upstream, projects and filters
        (a 304 says nothing of projects the filters left out last time), the
        requirements' closure included."""
        scope: list[Any] = [self.config.upstream, list(self.config.projects)]
        fingerprint = self.config.filters.fingerprint()
        if fingerprint is not None:  # a full mirror keeps the scope it always had
            scope.append(fingerprint)
            if self.config.filters.requirements is not None:
                scope.append(self._file_fingerprint)
        return json.dumps(scope)

    def _closure_fingerprint(self, closure: Closure) -> str | None:
        return self.config.filters.file_fingerprint(
            [[name, rule.key()] for name, rule in sorted(closure.rules.items())]
        )

    def _kept_closure(self, state: State) -> Closure | None:
        """The closure the last run worked out, if the requirements and file filters it
        was worked out under are those in force (see _keep_closure)."""
        if self.config.filters.requirements is None:
            return None
        kept = state.get_meta("closure")
        data = json.loads(kept) if kept else None
        if not data or data.get("input") != self.config.filters.file_fingerprint():
            return None
        from simplemirror.filter.closure import Closure

        return Closure.from_data(data)

    def _keep_closure(self, state: State) -> None:
        """Keep the closure just worked out for the next run, which then reads no page
        of it while upstream's root lists the same serials for them."""
        closure, source = self._closure, self._source
        if closure is None or source is None or not source.responses or not source.complete:
            return  # not worked out this run (kept from the last), or not wholly read
        data = {"input": self.config.filters.file_fingerprint(), **closure.to_data()}
        state.set_meta("closure", json.dumps(data))

    def _resolve(self, state: State, now: int) -> Closure:
        """The requirements' closure, read from upstream; its pages kept for the run."""
        from simplemirror.filter.closure import resolve
        from simplemirror.sync.resolve import UpstreamSource

        wanted = self.config.filters.requirements
        assert wanted is not None
        source = UpstreamSource(self.client, state, stage=not self._dry)
        self._source = source
        closure = resolve(self.config.filters, wanted, source, now)
        for name, why in closure.problems:
            log.warning("requirements: %s: %s", name, why)
        log.info("requirements: %d project(s) in the closure, %d page(s) read",
                 len(closure.rules), len(source.responses))
        return closure

    def _etag(self, state: State) -> str | None:
        # A 304 after a --project run says nothing about the projects that run
        # left out, nor does one from another upstream: ask afresh then.
        if state.get_meta("root_scope") != self._scope():
            return None
        return state.get_meta("root_etag")

    def _root_sha256(self, state: State) -> str | None:
        if state.get_meta("root_scope") != self._scope():
            return None
        return state.get_meta("root_sha256")

    def _dry_run(self, started: float) -> RunSummary:
        """Plan as the run would, then read the pages it would fetch and count their files.

        state.db is opened read-only (a sync may be writing it) and nothing is written
        or downloaded. The exit code is the one the run would end with, as far as
        pages tell: the removal caps, pages that fail, entries refused.
        """
        path = self.config.state_path
        try:
            state = State.readonly(path) if path.exists() else State.empty()
        except (sqlite3.Error, StateError) as exc:
            raise SyncError(f"cannot read {path}: {exc}") from exc
        summary = RunSummary(None, "dry-run")
        try:
            try:
                root = self._decide(state)
            except Interrupted:
                summary.stopped_by = self.stopped_by
                return summary
            except UpstreamError as exc:
                raise SyncError(f"could not read the upstream root index: {exc}") from None
            forecast = Forecast(root.not_modified, root.serials, root.refusal)
            summary.plan, summary.forecast = root.plan, forecast
            summary.removed, summary.rejected = list(root.plan.removed), list(root.rejected)
            summary.pruned, summary.unmet = list(root.plan.pruned), list(root.unmet)
            if root.refusal is None:  # else the run stops before any page
                self._forecast_pages(root.plan, state, summary, forecast)
        finally:
            state.close()
            if self._source is not None:
                self._source.discard_staged()
            summary.duration = time.monotonic() - started
        return summary

    def _forecast_pages(
        self, plan: SyncPlan, state: State, summary: RunSummary, forecast: Forecast
    ) -> None:
        """Fetch the planned pages (as the run would: conditional where it would be) and
        count what plan_page would download; pages that fail are the run's failures."""
        config = self.config
        client = self.client
        waiting: collections.deque[tuple[ProjectTodo, Future[PageResponse | None]]] = (
            collections.deque()
        )
        todos = iter(plan.fetch)
        self.reporter.start(len(plan.fetch))
        try:
            while True:
                # A bounded look-ahead, as in the run: memory stays flat at any size.
                while len(waiting) < config.workers * 2 and (
                    (todo := next(todos, None)) is not None
                ):
                    prefetched = self._source.responses if self._source else {}
                    if (got := _fresh(prefetched.pop(todo.name, None), todo)) is not None:
                        done: Future[PageResponse | None] = Future()
                        done.set_result(got)
                        waiting.append((todo, done))
                        continue
                    # The run's own path: the coroutine, on the client's loop, in turn.
                    work = client.in_turn(client.get_page(todo, todo.etag))
                    waiting.append((todo, client.submit(work)))
                if not waiting:
                    break
                todo, future = waiting.popleft()
                try:
                    response = client.result(future)
                except Interrupted:
                    summary.stopped_by = self.stopped_by
                    return
                except StalePage as exc:
                    summary.deferred.append((todo.name, str(exc)))
                    continue
                except UpstreamError as exc:
                    summary.failed.append((todo.name, str(exc)))
                    continue
                finally:
                    self.reporter.project_done()
                forecast.pages_read += 1
                if response is None or response.sha256 == todo.page_hash:
                    forecast.pages_unchanged += 1
                    continue
                files, refused, chosen = plan_page(
                    response.page, state.planning_files(todo.name),
                    self.client.file_guard.refusal, provenance=config.public_url is not None,
                    choose=self._choose,
                )
                if self._choose is not None:
                    forecast.filtered.add(chosen)
                if refused:
                    summary.failed.append(
                        (todo.name, "; ".join(f"{f}: refused: {r}" for f, r in refused))
                    )
                elif files.gone:  # a page with refused entries deletes nothing
                    forecast.files_dropped += len(files.gone)
                for wanted in files.fetch:
                    if wanted.fetch_file:
                        forecast.files += 1
                        if wanted.dist.size is None:
                            forecast.unknown_size += 1
                        else:
                            forecast.bytes += wanted.dist.size
        finally:
            for _, future in waiting:
                future.cancel()
        held = state.live_files_count()
        if not config.allow_mass_delete and is_mass_removal(
            forecast.files_dropped, held, config.max_removal, MASS_DELETE_FLOOR_FILES
        ):
            forecast.file_refusal = (
                f"upstream dropped {forecast.files_dropped} file(s), more than max-removal "
                f"({config.max_removal:.0%}) of the {held} files held: the run keeps those "
                "past the cap and exits 1. Run with --allow-mass-delete if that is right"
            )

    # -- fetching and publishing projects ------------------------------------

    def _fetch_all(
        self, plan: SyncPlan, state: State, publisher: Publisher, summary: RunSummary
    ) -> Generator[ProjectCopy, None, None]:
        """Fetch every planned page and download its files; each project, as it completes.

        Its pages are written and its rows recorded by the caller (publish.publish)
        before this goes on, within the transaction committed every COMMIT_EVERY s."""
        config = self.config
        events: queue.SimpleQueue[tuple[str, Any, Future[Any]]] = queue.SimpleQueue()
        todos = iter(plan.fetch)
        # Bounded look-ahead keeps memory flat however large the plan: a new
        # page is asked for only while the file backlog is short.
        page_window = config.workers * 2
        file_window = config.workers * 32
        in_flight = {"pages": 0, "files": 0}
        # Projects with downloads under way, for a stop to find their finished files;
        # each leaves as it completes (a first sync has 650,000 of them).
        downloading: dict[str, _Project] = {}
        self.reporter.start(len(plan.fetch))

        def track(kind: str, tag: Any, future: Future[Any]) -> None:
            in_flight["pages" if kind == "page" else "files"] += 1
            if kind == "file":
                downloading[tag[0].todo.name] = tag[0]
            future.add_done_callback(lambda f: events.put((kind, tag, f)))

        def refill() -> None:
            while in_flight["pages"] < page_window and in_flight["files"] < file_window:
                todo = next(todos, None)
                if todo is None:
                    return
                track("page", todo, workers.page(todo))

        workers = _Workers(self.client, self._source.responses if self._source else None)
        state.undo_in_memory()  # the plan is made: the root's table can go
        # The bytes durable before the rows that say they are there.
        batch = state.batch(COMMIT_EVERY, self._flush)
        shut = False
        try:
            refill()
            while (in_flight["pages"] or in_flight["files"]) and not self.client.stop.is_set():
                try:
                    # A timeout, so that a stop request is seen even while all
                    # workers are busy with long downloads.
                    kind, tag, future = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                if kind == "page":
                    in_flight["pages"] -= 1
                    self.reporter.page_read()
                    project = self._page_done(tag, future, state, publisher, summary)
                    if project is not None:
                        wanted = list(project.files.fetch)
                        futures = workers.submit(tag.name, wanted)
                        for todo, file_future in zip(wanted, futures, strict=True):
                            project.outstanding += 1
                            track("file", (project, todo), file_future)
                        self.reporter.files_planned(len(project.files.fetch))
                        if not project.outstanding:
                            yield from self._finished(project, state, publisher, summary)
                else:
                    in_flight["files"] -= 1
                    project, todo = tag
                    self._file_done(project, todo, future, summary)
                    if not project.outstanding:
                        del downloading[project.todo.name]
                        yield from self._finished(project, state, publisher, summary)
                batch.due()
                refill()
            if self.stopped_by is not None:
                # Every download settled first; what they finished joins the batch, so
                # its rows commit after the flush as any others.
                workers.shutdown(STOP_GRACE)
                shut = True
                yield from self._keep_finished(
                    events, downloading.values(), state, publisher, summary
                )
        except BaseException:
            self.client.stop.set()
            raise
        finally:
            # Normally both pools are idle here. After a stop request or an
            # error, queued work is dropped and running downloads see the stop
            # within a chunk; a read stuck longer is abandoned (never published).
            if not shut:
                workers.shutdown(STOP_GRACE)
            batch.end()

    def _flush(self) -> None:
        """store.flush, on a way out: an error here must not hide the one under way."""
        try:
            self.storage.flush()
        except OSError as exc:
            log.warning("could not flush %s to disk: %s", self.storage.where, exc)

    def _keep_finished(
        self,
        events: queue.SimpleQueue[tuple[str, Any, Future[Any]]],
        projects: Iterable[_Project],
        state: State,
        publisher: Publisher,
        summary: RunSummary,
    ) -> Iterator[ProjectCopy]:
        """After a stop, keep every download that finished: a project it completes is
        published (given to the caller); the finished files of the others are staged,
        for the next run to keep without fetching them again and without any page
        listing them before."""
        while True:
            try:
                kind, tag, future = events.get_nowait()
            except queue.Empty:
                break
            # Pages, and downloads cut short (cancelled, ended by the stop) are left
            # for the next run: none of them is a failure.
            if kind == "file" and not future.cancelled() and future.exception() is None:
                project, todo = tag
                self._file_done(project, todo, future, summary)
                if not project.outstanding:
                    yield from self._finished(project, state, publisher, summary)
        for project in projects:  # _finished ones have none outstanding
            if project.outstanding and project.done:
                state.stage_files(project.todo.name, project.done.values(), publisher.generation)

    def _page_done(
        self,
        todo: ProjectTodo,
        future: Future[PageResponse | None],
        state: State,
        publisher: Publisher,
        summary: RunSummary,
    ) -> _Project | None:
        generation = publisher.generation
        try:
            response = future.result()
        except Interrupted:
            return None
        except StalePage as exc:
            self._give_up(todo.name, Status.DEFERRED, str(exc), state, generation, summary)
            return None
        except (UpstreamError, ChildLost) as exc:
            self._give_up(todo.name, Status.FAILED, str(exc), state, generation, summary)
            return None
        if response is None or response.sha256 == todo.page_hash:
            # A complete copy, and upstream says (304) or shows (same bytes) it is current.
            state.note_unchanged(todo.name, response.etag if response else None, generation)
            self.reporter.project_done()
            return None
        page = response.page
        self._warn_of_newer_api(page.api_version)
        # planning_files: with what a stopped run left staged, so as not to fetch it again.
        files, refused, chosen = plan_page(
            page, state.planning_files(todo.name), self.client.file_guard.refusal,
            provenance=self.config.public_url is not None, choose=self._choose,
        )
        if self._choose is not None:  # a full mirror has nothing to count
            summary.filtered.add(chosen)
        if self._reuse is not None:
            files = self._with_reuse(files, self._reuse)
        if self._source is not None and self._source.staged:
            files = self._with_staged(files, self._source.staged)
        for filename, reason in refused:
            log.warning("%s: refused %s: %s", todo.name, filename, reason)
        # A refused file is work left undone: the project does not converge.
        return _Project(
            todo, chosen.page, files, response.etag, response.sha256,
            errors=[(f, f"refused: {r}") for f, r in refused],
            offers_files=bool(chosen.page.files or page.rejected)
            and page.status != "quarantined",
            refused=bool(refused),
            left_out=frozenset(dist.filename for dist, _ in chosen.dropped),
            due=chosen.due,
        )

    def _index_reuse(self) -> ReuseIndex | None:
        """The run's index of --reuse-from's files, by name; None without any."""
        roots = self.config.reuse_from
        if not roots:
            return None
        for root in roots:
            if not root.is_dir():
                raise SyncError(
                    f"reuse-from: {root} is not a directory (is its disk mounted?); fix "
                    "the path or leave it out"
                )
        index = ReuseIndex(self.config.tmp / store.REUSE_INDEX.format(pid=os.getpid()))
        try:
            count = index.add(reuse.walk(roots))
        except BaseException:
            index.close()
            raise
        log.info("reuse-from: %d file(s) found below %s", count, ", ".join(map(str, roots)))
        return index

    @staticmethod
    def _with_reuse(files: FilePlan, index: ReuseIndex) -> FilePlan:
        """``files``, each download told of the files of its name an operator has."""
        fetch = []
        for todo in files.fetch:
            found = (index.candidates(todo.dist.filename, todo.dist.size)
                     if todo.fetch_file else [])
            metadata = (index.candidates(todo.dist.filename + layout.METADATA_SUFFIX, None)
                        if todo.fetch_metadata else [])
            if found or metadata:
                todo = dataclasses.replace(
                    todo, reuse=tuple(found), reuse_metadata=tuple(metadata)
                )
            fetch.append(todo)
        return dataclasses.replace(files, fetch=tuple(fetch))

    @staticmethod
    def _with_staged(files: FilePlan, staged: Mapping[str, str]) -> FilePlan:
        """``files``, each sdist the closure downloaded taken from where it is."""
        fetch = [
            dataclasses.replace(todo, reuse=(staged[todo.dist.filename], *todo.reuse))
            if todo.fetch_file and todo.dist.filename in staged else todo
            for todo in files.fetch
        ]
        return dataclasses.replace(files, fetch=tuple(fetch))

    def _warn_of_newer_api(self, version: tuple[int, int] | None) -> None:
        """PEP 629: say so when upstream speaks a newer minor version, once a run
        (the root and every page would say the same)."""
        if version is None or version in self._api_versions_warned:
            return
        if newer_api_version(version):
            self._api_versions_warned.add(version)
            log.warning(
                "upstream speaks Simple API version %d.%d, newer than the %s this simplemirror "
                "knows; mirroring what it understands", *version, API_VERSION,
            )

    def _give_up(
        self, name: str, status: Status, error: str, state: State, generation: int,
        summary: RunSummary,
    ) -> None:
        log.warning("%s %s: %s", name, status.value, error)
        (summary.deferred if status is Status.DEFERRED else summary.failed).append((name, error))
        state.set_status(name, status, error, generation)
        state.record_failure(generation, name, None, status.value, error)
        self.reporter.project_done()

    def _file_done(
        self, project: _Project, todo: FileTodo, future: Future[Any], summary: RunSummary
    ) -> None:
        filename = todo.dist.filename
        try:
            result: download.TodoResult = future.result()
        except Interrupted:
            return  # not counted down: a project cut short is never published
        except FILE_ERRORS as exc:
            project.outstanding -= 1
            project.errors.append((filename, str(exc)))
            project.refused = project.refused or isinstance(exc, RefusedURL)
            log.warning("%s: %s failed: %s", project.todo.name, filename, exc)
            self.reporter.file_done(0)
            return
        # Any other exception (an OSError from the disk) ends the run: no later
        # file would fare better.
        project.outstanding -= 1
        project.done[filename] = result.held
        if todo.fetch_file and not result.reused:
            summary.files_fetched += 1
        summary.bytes_fetched += result.fetched
        staged = self._source is not None and filename in self._source.staged
        if result.reuse is not None and not staged:  # the closure's is no operator's file
            summary.reuse.add(result.reuse)
        if result.metadata == "wheel":
            summary.metadata_from_wheels += 1
        elif result.metadata == "download":
            summary.metadata_fetched += 1
        if result.sibling_error:
            project.errors.append((filename, result.sibling_error))
            log.warning("%s: %s %s", project.todo.name, filename, result.sibling_error)
        self.reporter.file_done(result.fetched)

    def _finished(
        self, project: _Project, state: State, publisher: Publisher, summary: RunSummary
    ) -> Iterator[ProjectCopy]:
        """All of a project's downloads are over: the copy to publish (none when it is
        withheld), which records it once its pages are written."""
        page, name = project.page, project.todo.name
        for dist, copy in project.files.keep:
            project.done[dist.filename] = download.held_file(
                name, dist, copy.path, copy.size, copy.hashes, copy
            )
        # Upstream's order; files that failed are left out (never advertised).
        files = [project.done[d.filename] for d in page.files if d.filename in project.done]
        gone = list(project.files.gone)
        if gone and project.errors:
            # A page with refused entries or failed downloads is not trusted to
            # delete: what it dropped stays listed until a run gets through cleanly.
            files += gone
            gone = []
        if not files and project.errors and project.offers_files:
            self._withhold(project, state, publisher.generation, summary)
            return
        if gone and not self.config.allow_mass_delete and is_mass_removal(
            self._files_removing + len(gone), self._files_held, self.config.max_removal,
            MASS_DELETE_FLOOR_FILES,
        ):
            # Keep what upstream dropped: the page still offers those files, and
            # the project does not converge until an operator says otherwise.
            filtered = sum(1 for f in gone if f.filename in project.left_out)
            why = (f"the filters leave out {filtered} file(s)" if filtered == len(gone)
                   else f"upstream dropped {len(gone) - filtered} file(s)" + (
                       f" and the filters leave out {filtered}" if filtered else ""))
            project.errors.append(("*", (
                f"{why}; with the others removed in this run that is more than max-removal "
                f"({self.config.max_removal:.0%}) of the files held, so they were kept. "
                "Run with --allow-mass-delete if that is right"
            )))
            files += gone
            gone = []
        self._files_removing += len(gone)
        versions = page.versions
        if versions is None:  # api-version 1.0 upstream: derive them (PEP 700)
            found = {version_of(d.filename) for d in page.files}
            versions = tuple(sorted(v for v in found if v is not None))
        info = ProjectInfo(
            name, page.serial, versions, page.extra, page.status, page.status_reason
        )

        def record() -> None:
            self._record(project, info, files, gone, state, publisher.generation, summary)

        yield ProjectCopy(info, files, record)

    def _record(
        self, project: _Project, info: ProjectInfo, files: list[HeldFile], gone: list[HeldFile],
        state: State, generation: int, summary: RunSummary,
    ) -> None:
        """A project's rows, once its pages are written; counted as changed."""
        page, name = project.page, project.todo.name
        error = "; ".join(f"{f}: {e}" for f, e in project.errors) or None
        status = Status.FAILED if project.errors else Status.OK
        with state.transaction():
            state.record_project(
                name,
                status=status,
                error=error,
                page_serial=page.serial,
                page_etag=project.etag,
                page_hash=project.page_hash,
                page_data=info.to_data(),
                files=files,
                gone=gone,
                generation=generation,
                filters=self._file_fingerprint,
                held_until=project.due,
            )
            for filename, err in project.errors:
                state.record_failure(generation, name, filename, "failed", err)
        summary.changed += 1
        if project.errors:
            summary.failed.append((name, error or ""))
            if project.refused:
                summary.blocked.add(name)
        self.reporter.project_done()

    def _withhold(
        self, project: _Project, state: State, generation: int, summary: RunSummary
    ) -> None:
        """Upstream offers files and none could be mirrored: no page saying it has none.

        A project published before keeps its last pages (and its place in the root);
        a new one stays unpublished. Either way it is recorded failed, with why, and
        its page is asked for again by the next run.
        """
        name = project.todo.name
        error = (
            "none of its files could be mirrored, so its page was not written (one "
            "published before is kept as it was): "
            + "; ".join(f"{f}: {e}" for f, e in project.errors)
        )
        log.warning("%s failed: none of its files could be mirrored; page not written", name)
        with state.transaction():
            state.set_status(name, Status.FAILED, error, generation)
            for filename, err in project.errors:
                state.record_failure(generation, name, filename, "failed", err)
        summary.failed.append((name, error))
        if project.refused:
            summary.blocked.add(name)
        self.reporter.project_done()
