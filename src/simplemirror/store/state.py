"""state.db: everything the mirror knows, in SQLite (through sqlite-utils).

The schema lives in SCHEMA below and nowhere else. Only the coordinating
thread of a run touches the database; workers never do.

Generations: every run gets one (``runs.generation``). Files and pages record
the generation in which they appeared, were last written and went away, so
that everything that changed between two generations can be listed exactly
(for an air-gapped copy, say).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlite_utils

from simplemirror.simple.model import (
    NO_REPLANNING,
    HeldFile,
    HeldProject,
    Replanning,
    RootChanges,
    RootEntry,
    RootProject,
    Status,
)

SCHEMA_VERSION = 4
# What a read-only State (a dry run) reads as it is, without the upgrade a sync makes.
READABLE_SCHEMAS = frozenset({"2", "3", str(SCHEMA_VERSION)})

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

-- One row per run of `mirror sync`; the generation numbers everything else.
CREATE TABLE IF NOT EXISTS runs (
    generation        INTEGER PRIMARY KEY,
    started           TEXT NOT NULL,
    finished          TEXT,
    upstream          TEXT NOT NULL,
    upstream_serial   INTEGER,      -- the root index's serial at this run
    outcome           TEXT NOT NULL, -- running, ok, partial, unchanged, error
    projects_changed  INTEGER NOT NULL DEFAULT 0,
    projects_deferred INTEGER NOT NULL DEFAULT 0,
    projects_failed   INTEGER NOT NULL DEFAULT 0,
    projects_removed  INTEGER NOT NULL DEFAULT 0,
    files_fetched     INTEGER NOT NULL DEFAULT 0,
    bytes_fetched     INTEGER NOT NULL DEFAULT 0,
    error             TEXT
);

CREATE TABLE IF NOT EXISTS projects (
    name            TEXT PRIMARY KEY,   -- PEP 503 normalized
    display_name    TEXT NOT NULL,      -- as the upstream root spells it
    upstream_serial INTEGER,            -- what the upstream root listed last
    serial          INTEGER,            -- serial of the last page mirrored completely
    page_serial     INTEGER,            -- serial of the page the published pages show
    status          TEXT NOT NULL,      -- pending, ok, deferred, failed, removed
    error           TEXT,
    page_data       TEXT,               -- JSON: versions, status and verbatim top-level keys
    page_etag       TEXT,               -- ETag of the upstream page last mirrored
    page_hash       TEXT,               -- sha256 of that page's body (upstreams without serials)
    filters         TEXT,               -- fingerprint of the file filters its files were chosen by
    held_until      INTEGER,            -- Unix time a file min-age held back may be published
    appeared_gen    INTEGER NOT NULL,
    updated_gen     INTEGER NOT NULL,
    published_gen   INTEGER,            -- last generation its pages were written
    removed_gen     INTEGER
);

-- A file row is live (linked from its project's pages) while removed_gen is NULL.
CREATE TABLE IF NOT EXISTS files (
    id              INTEGER PRIMARY KEY,
    project         TEXT NOT NULL,
    filename        TEXT NOT NULL,
    path            TEXT NOT NULL,      -- below web/
    size            INTEGER NOT NULL,
    hashes          TEXT NOT NULL,      -- JSON: every digest verified at download
    url             TEXT NOT NULL,      -- where upstream served it
    requires_python TEXT,
    yanked          INTEGER NOT NULL DEFAULT 0,
    yanked_reason   TEXT,
    upload_time     TEXT,
    metadata_hashes TEXT,               -- JSON; NULL when no .metadata file is held
    signature       INTEGER NOT NULL DEFAULT 0,  -- 1: the .asc beside it is held
    provenance      INTEGER NOT NULL DEFAULT 0,  -- 1: the .provenance beside it is held
    extra           TEXT,               -- JSON: upstream keys kept verbatim
    appeared_gen    INTEGER NOT NULL,
    updated_gen     INTEGER NOT NULL,
    removed_gen     INTEGER,            -- left the project's pages (a tombstone)
    deleted_gen     INTEGER             -- its bytes left the disk
);
CREATE UNIQUE INDEX IF NOT EXISTS files_live
    ON files (project, filename) WHERE removed_gen IS NULL;
CREATE INDEX IF NOT EXISTS files_appeared ON files (appeared_gen);
-- Partial, so that it holds only tombstones: on one over every row, SQLite took
-- `removed_gen IS NULL` for a selective equality and walked every live file to find
-- one project's (a per-project cost that grew with the mirror).
CREATE INDEX IF NOT EXISTS files_tombstones ON files (removed_gen)
    WHERE removed_gen IS NOT NULL;
-- The tombstones whose bytes are still on disk: what the reaper deletes at the end of a
-- run, so next to none. Through files_tombstones, which keeps every tombstone ever for
-- `mirror log`, it read each one's row (0.6 CPU s a run at 255,000 of them; schema 4).
CREATE INDEX IF NOT EXISTS files_unreaped ON files (removed_gen)
    WHERE removed_gen IS NOT NULL AND deleted_gen IS NULL;
CREATE INDEX IF NOT EXISTS files_path ON files (path);

-- The live files (on a page, their bytes on disk) and their size, kept up by the
-- triggers below as rows change: `mirror status` and the removal cap read one row
-- instead of walking every file (over ten million at the public index's size, seconds
-- each time). One row, counted once when the table is made (State._count_live; schema 4).
CREATE TABLE IF NOT EXISTS live_totals (
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS live_totals_insert AFTER INSERT ON files
WHEN new.removed_gen IS NULL AND new.deleted_gen IS NULL BEGIN
    UPDATE live_totals SET files = files + 1, bytes = bytes + new.size;
END;
CREATE TRIGGER IF NOT EXISTS live_totals_update AFTER UPDATE OF size, removed_gen, deleted_gen
ON files WHEN old.size != new.size
    OR (old.removed_gen IS NULL AND old.deleted_gen IS NULL)
    != (new.removed_gen IS NULL AND new.deleted_gen IS NULL) BEGIN
    UPDATE live_totals SET
        files = files + (new.removed_gen IS NULL AND new.deleted_gen IS NULL)
            - (old.removed_gen IS NULL AND old.deleted_gen IS NULL),
        bytes = bytes
            + CASE WHEN new.removed_gen IS NULL AND new.deleted_gen IS NULL
              THEN new.size ELSE 0 END
            - CASE WHEN old.removed_gen IS NULL AND old.deleted_gen IS NULL
              THEN old.size ELSE 0 END;
END;
CREATE TRIGGER IF NOT EXISTS live_totals_delete AFTER DELETE ON files
WHEN old.removed_gen IS NULL AND old.deleted_gen IS NULL BEGIN
    UPDATE live_totals SET files = files - 1, bytes = bytes - old.size;
END;

-- Files verified and in place under web/packages whose project no page lists them for
-- yet: a run stopped (SIGTERM, SIGINT) before the project was complete. The next run
-- plans with them (State.planning_files) instead of downloading them again; its
-- record_project then makes them live rows, or tombstones for the reaper. Never on a
-- page, never counted as held, never reaped while here.
CREATE TABLE IF NOT EXISTS staged_files (
    project         TEXT NOT NULL,
    filename        TEXT NOT NULL,
    path            TEXT NOT NULL,      -- below web/
    size            INTEGER NOT NULL,
    hashes          TEXT NOT NULL,
    url             TEXT NOT NULL,
    requires_python TEXT,
    yanked          INTEGER NOT NULL DEFAULT 0,
    yanked_reason   TEXT,
    upload_time     TEXT,
    metadata_hashes TEXT,
    signature       INTEGER NOT NULL DEFAULT 0,
    provenance      INTEGER NOT NULL DEFAULT 0,
    extra           TEXT,
    staged_gen      INTEGER NOT NULL,
    PRIMARY KEY (project, filename)
);
CREATE INDEX IF NOT EXISTS staged_files_path ON staged_files (path);

CREATE TABLE IF NOT EXISTS pages (
    path         TEXT PRIMARY KEY,      -- below web/
    sha256       TEXT NOT NULL,
    size         INTEGER,               -- NULL: written before sizes were recorded
    appeared_gen INTEGER NOT NULL,
    written_gen  INTEGER NOT NULL,
    removed_gen  INTEGER
);
CREATE INDEX IF NOT EXISTS pages_written ON pages (written_gen);

-- Every failure of a run, once: what failed, and why.
CREATE TABLE IF NOT EXISTS failures (
    generation INTEGER NOT NULL,
    project    TEXT NOT NULL,
    filename   TEXT,
    kind       TEXT NOT NULL,           -- deferred, failed, rejected
    error      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_generation ON failures (generation);

-- What each run did to each project's published pages, for `mirror log`: the
-- projects row keeps only the latest of each. added: written, none published before
-- (a new project, or one back after its removal); changed: written again; removed:
-- deleted (upstream stopped listing it). Kept from generation meta changes_since on.
-- What a distribution file needs, read once (the requirements filter's closure): its
-- Requires-Dist, and an sdist's build requirements. Keyed by the file's sha256.
CREATE TABLE IF NOT EXISTS requires (
    sha256 TEXT PRIMARY KEY,
    dist   TEXT,                        -- JSON list; NULL: unknown
    build  TEXT                         -- JSON list; NULL: none read (a wheel)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS project_changes (
    generation INTEGER NOT NULL,
    project    TEXT NOT NULL,
    change     TEXT NOT NULL,           -- added, changed, removed
    PRIMARY KEY (generation, project)
) WITHOUT ROWID;

-- Air-gap bundles this mirror exported (the near side), in the order they were made.
-- The next plain export carries the changes of generations from the last one's next_gen
-- on, and applies to its target.
CREATE TABLE IF NOT EXISTS bundles_exported (
    bundle      TEXT PRIMARY KEY,
    chain       TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    full        INTEGER NOT NULL,
    since_gen   INTEGER NOT NULL,       -- the first generation whose changes it carries
    through_gen INTEGER NOT NULL,       -- the newest generation it saw
    next_gen    INTEGER NOT NULL,       -- where the next bundle's changes begin
    base        TEXT,                   -- state digest it applies to; NULL: a full bundle
    target      TEXT NOT NULL,          -- state digest it leads to
    created     TEXT NOT NULL,
    path        TEXT NOT NULL
);

-- Air-gap bundles applied to this mirror (the far side), in order: a replay is a no-op,
-- and the last one says where the chain stands.
CREATE TABLE IF NOT EXISTS bundles_applied (
    bundle     TEXT PRIMARY KEY,
    chain      TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    target     TEXT NOT NULL,
    generation INTEGER NOT NULL,
    key_id     TEXT NOT NULL,
    applied    TEXT NOT NULL
);
"""


class StateError(Exception):
    """state.db cannot be used by this version."""


# Columns added after schema 1, for state.db files that predate them.
_ADDED_COLUMNS = (
    ("projects", "page_etag", "TEXT"),
    ("projects", "page_hash", "TEXT"),
    ("files", "deleted_gen", "INTEGER"),
    ("files", "signature", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "provenance", "INTEGER NOT NULL DEFAULT 0"),
    ("projects", "filters", "TEXT"),
    ("projects", "held_until", "INTEGER"),
    ("pages", "size", "INTEGER"),
)
# Of those, what a dry run never reads, and so does without.
_UNREAD_BY_DRY_RUN = frozenset({("pages", "size")})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# One encoder: json.dumps with any option builds a new one for every call, and a
# first sync encodes a few values for every file.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value)


# The columns of a file that a HeldFile holds, in _held_file's and _file_values' order.
_HELD_COLUMNS = (
    "filename, path, size, hashes, url, requires_python, yanked, yanked_reason, upload_time,"
    " metadata_hashes, signature, provenance, extra"
)


def _held_file(project: str, row: tuple[Any, ...]) -> HeldFile:
    (filename, path, size, hashes, url, requires_python, yanked, yanked_reason, upload_time,
     metadata, signature, provenance, extra) = row
    return HeldFile(
        project=project,
        filename=filename,
        path=path,
        size=size,
        hashes=json.loads(hashes),
        url=url,
        requires_python=requires_python,
        yanked=bool(yanked),
        yanked_reason=yanked_reason,
        upload_time=upload_time,
        metadata_hashes=json.loads(metadata) if metadata else None,
        signature=bool(signature),
        provenance=bool(provenance),
        extra=json.loads(extra) if extra else {},
    )


def _file_values(f: HeldFile) -> tuple[Any, ...]:
    """``f`` as the values of _HELD_COLUMNS."""
    return (
        f.filename,
        f.path,
        f.size,
        _json(dict(f.hashes)),
        f.url,
        f.requires_python,
        int(f.yanked),
        f.yanked_reason,
        f.upload_time,
        _json(dict(f.metadata_hashes) if f.metadata_hashes is not None else None),
        int(f.signature),
        int(f.provenance),
        _json(dict(f.extra)) if f.extra else None,
    )


def _create(path: Path) -> None:
    """A new state.db, its schema in place before it appears under its name.

    Made beside it and renamed: a run killed while making it leaves no state.db at
    all (`mirror status` then says there is none, rather than that it is damaged),
    and the next run starts afresh, removing what the killed one left.
    """
    new = path.with_name(path.name + ".new")
    for suffix in ("", "-wal", "-shm", "-journal"):
        new.with_name(new.name + suffix).unlink(missing_ok=True)
    # Closing the last connection checkpoints its WAL into the file, which SQLite then
    # fsyncs (synchronous=NORMAL): only the rename is left to make durable. (The state
    # depends on the model alone, so not through store.tree.sync_directory.)
    State(new, _in_place=True).close()
    os.replace(new, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class State:
    _reader: StateReader | None = None

    def __init__(self, path: Path, *, wait: float = 5.0, _in_place: bool = False) -> None:
        """``wait``: how long a write waits for another writer (a sync's open batch)."""
        if not _in_place and not path.exists():
            _create(path)
        # No plugins: whatever sqlite-utils plugins are installed have no business in
        # state.db's connection, and finding them read every installed package's
        # metadata (~30 ms, a tenth of a sync that changes nothing).
        self.db = sqlite_utils.Database(path, execute_plugins=False)
        self.db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        # WAL lets a reader (`mirror status`) look while a sync writes; NORMAL
        # is durable across a crash of the process, which is what matters here.
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Every project reads and writes a few rows by index; with SQLite's 2 MB
        # default cache, a large state.db turns each look-up into read() calls,
        # and the cost per project grows with the mirror. No mmap, though: every
        # mapped page a scan touches counts in the process's RSS (165 MB for a
        # no-op run at 100,000 projects), and a bounded cache does as well here.
        self.db.execute("PRAGMA cache_size=-65536")  # KiB: 64 MiB
        found = self.get_meta("schema_version") if self.db["meta"].exists() else None
        if found is not None and int(found) > SCHEMA_VERSION:
            raise StateError(
                f"{path} was written by a newer simplemirror (schema {found}); upgrade it"
            )
        with self.transaction():
            self._migrate()
        changes_since = None if self.db["project_changes"].exists() else self._next_generation()
        self.db.executescript(SCHEMA)  # after the new columns exist, for their indexes
        # Committed here: left to an implicit transaction, the write lock stayed with this
        # connection until its next commit, and a writer beside a sync (an export) held
        # the sync up until it gave up.
        with self.transaction():
            if changes_since is not None:
                # The runs before this one (an older state.db's) recorded no project changes.
                self.set_meta("changes_since", str(changes_since))
            self._count_live()
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        self._note_staging()

    def _count_live(self) -> None:
        """Give live_totals its row, once (schema 4 on an older state.db: one walk over
        its files). From then on its triggers keep it; until then nothing writes files."""
        with self.transaction():
            if self.db.execute("SELECT 1 FROM live_totals").fetchone() is None:
                self.db.execute(f"INSERT INTO live_totals {_COUNT_LIVE}")

    def _note_staging(self) -> None:
        # Almost every run has nothing staged (only a stopped run stages): planning and
        # recording each project then skip staged_files, a query each on the hot path.
        self._staged = self.db.execute("SELECT 1 FROM staged_files LIMIT 1").fetchone() is not None

    def _migrate(self) -> None:
        """Add the columns later versions brought to an older state.db; drop replaced indexes."""
        self.db.execute("DROP INDEX IF EXISTS files_removed")  # now files_tombstones
        for table, column, kind in _ADDED_COLUMNS:
            if not self.db[table].exists():
                continue  # a new state.db: the schema creates it whole
            if column not in self.db[table].columns_dict:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _next_generation(self) -> int:
        if not self.db["runs"].exists():
            return 1
        (last,) = self.db.execute("SELECT coalesce(max(generation), 0) FROM runs").fetchone()
        return int(last) + 1

    @classmethod
    def readonly(cls, path: Path) -> State:
        """An existing state.db opened read-only, for `mirror sync --dry-run`.

        It takes no lock and never waits on a sync writing (WAL: readers and the
        writer do not block each other); opening it the ordinary way would write
        (the schema, the migration) and so wait for that sync, then fail. Only
        temporary tables (root_changes) are written, and those live in this
        connection alone. Raises StateError when state.db needs an upgrade first.
        """
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        state = cls.__new__(cls)
        state.db = sqlite_utils.Database(sqlite3.connect(uri, uri=True), execute_plugins=False)
        try:
            found = state.get_meta("schema_version") if state.db["meta"].exists() else None
            if found not in READABLE_SCHEMAS:
                raise StateError(
                    f"{path} was written by another version of simplemirror (schema "
                    f"{found}); run `mirror sync` once with this one to upgrade it"
                )
            for table, column, _ in _ADDED_COLUMNS:
                if (table, column) in _UNREAD_BY_DRY_RUN:
                    continue
                if column not in state.db[table].columns_dict:
                    raise StateError(
                        f"{path} predates this version of simplemirror; run `mirror sync` "
                        "once with it to upgrade state.db, then --dry-run can read it"
                    )
            if not state.db["requires"].exists():
                state.db.execute(
                    "CREATE TEMP TABLE requires (sha256 TEXT PRIMARY KEY, dist TEXT, build TEXT)"
                )
            if not state.db["staged_files"].exists():
                # Schema 2, written before staging existed, so nothing is staged: an
                # empty stand-in with the columns planning_files reads. (A dry run
                # reads nothing of schema 3's other addition, project_changes.)
                state.db.execute("CREATE TEMP TABLE staged_files AS SELECT * FROM files WHERE 0")
            if not state.db["live_totals"].exists() or state.db.execute(
                "SELECT 1 FROM live_totals"
            ).fetchone() is None:
                # Before schema 4 (or an upgrade cut short): counted here, once, for the
                # removal cap's base.
                state.db.execute(f"CREATE TEMP TABLE live_totals AS {_COUNT_LIVE}")
            state._note_staging()
        except BaseException:
            state.close()
            raise
        return state

    @classmethod
    def empty(cls) -> State:
        """A state.db in memory, holding nothing: what a dry run plans against before any sync."""
        return cls(Path(":memory:"), _in_place=True)  # not a file to make beside it

    def close(self) -> None:
        self.db.close()

    def batch(
        self, every: float, before_commit: Callable[[], None] = lambda: None
    ) -> Batch:
        """Begin one long transaction that Batch.due commits every ``every`` seconds;
        Batch.end commits the rest. Writes inside it join it (a transaction: a savepoint).
        ``before_commit`` runs before each commit (the storage layer's flush: no row
        may outlive the bytes it records)."""
        return Batch(self.db, every, before_commit)

    def rollback(self) -> None:
        """Undo what a failed statement left half done in the open transaction, if any."""
        if self.db.conn.in_transaction:
            self.db.conn.rollback()

    def reader(self) -> StateReader:
        """The read-only queries (StateReader) on this State's own connection: what
        `mirror verify --repair` reads while it writes. Not to be closed: close the State."""
        # One for the State's life: building one asks sqlite_master, and recovery asks
        # for it once a file.
        if self._reader is None:
            self._reader = StateReader(self.db.conn)
        return self._reader

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (nested: a savepoint). Writes outside one commit one by one."""
        with self.db.atomic():
            yield

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    # -- runs ---------------------------------------------------------------

    def begin_run(self, upstream: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO runs (started, upstream, outcome) VALUES (?, ?, 'running')",
            [now(), upstream],
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def died_unrecovered(self, current: int) -> tuple[str, int] | None:
        """(start of the oldest, newest generation) of the runs before ``current`` that died
        or ended in an error since the last recovery (see recover.py); None: none.

        Under the sync lock, a run still marked running is one that died. One that ended
        in an error before it could change the tree moves recovered_through past itself.
        """
        row = self.db.execute(
            "SELECT min(started), max(generation) FROM runs"
            " WHERE outcome IN ('running', 'error')"
            " AND generation < ? AND generation > coalesce("
            " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'recovered_through'), 0)",
            [current],
        ).fetchone()
        return None if row is None or row[1] is None else (row[0], int(row[1]))

    def recovered_through(self, generation: int) -> None:
        """The tree agrees with state.db again for every run up to ``generation``."""
        self.set_meta("recovered_through", str(generation))

    def finish_run(self, generation: int, outcome: str, **counts: Any) -> None:
        columns = ", ".join(f"{k} = ?" for k in counts)
        self.db.execute(
            f"UPDATE runs SET finished = ?, outcome = ?{', ' if columns else ''}{columns} "
            "WHERE generation = ?",
            [now(), outcome, *counts.values(), generation],
        )

    def synced_upstream(self) -> str | None:
        """The upstream of the last run that got to its end (ok, partial or unchanged):
        the index the projects held came from. Runs that stopped early are left out,
        since they may have stopped before they read anything."""
        row = self.db.execute(
            "SELECT upstream FROM runs WHERE outcome IN ('ok', 'partial', 'unchanged')"
            " ORDER BY generation DESC LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    # -- projects -----------------------------------------------------------

    def held_projects(self) -> dict[str, tuple[str, HeldProject]]:
        """Every project ever seen: normalized name -> (display name, state)."""
        return self._projects("")

    def _projects(self, where: str, params: Sequence[Any] = ()
                  ) -> dict[str, tuple[str, HeldProject]]:
        rows = self.db.execute(
            "SELECT name, display_name, serial, upstream_serial, status, page_etag, page_hash,"
            f" filters, held_until FROM projects{where}", params
        )
        return {
            name: (display, HeldProject(
                serial, upstream, Status(status), etag, page_hash, filters, held_until
            ))
            for name, display, serial, upstream, status, etag, page_hash, filters, held_until
            in rows
        }

    def undo_in_memory(self) -> None:
        """From here on, keep SQLite's temporary files in memory; drops temporary tables.

        Each project is recorded in a savepoint, whose undo pages SQLite spills to a
        temporary file past 64 KiB: ~30 write() calls a project (68,000 on a first
        sync of 2,000 projects) for a file nobody reads. Not from the start: the
        root's temporary table (root_changes) at PyPI's size belongs on disk.
        """
        self.db.execute("PRAGMA temp_store=MEMORY")

    def root_changes(
        self,
        projects: Iterable[RootProject],
        only: Collection[str] | None = None,
        *,
        wanted: Callable[[str], bool] | None = None,
        replanning: Replanning = NO_REPLANNING,
    ) -> RootChanges:
        """Compare a root's projects with those held, in SQLite: plan.needs_fetch in SQL.

        At PyPI's size, holding every project's state in memory to compare costs
        hundreds of megabytes; a temporary table and a join cost next to none.
        ``changed`` is a cursor over that join, to be read before the next call
        (which empties the table; closing state.db drops it). ``wanted``: the project
        filters; a held project the root lists that they leave out is ``pruned``.
        """
        self.db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS root_listing (name TEXT PRIMARY KEY,"
            " display TEXT NOT NULL, serial INTEGER, wanted INTEGER NOT NULL) WITHOUT ROWID"
        )
        with self.transaction():
            self.db.execute("DELETE FROM temp.root_listing")
            self.db.conn.executemany(
                "INSERT INTO temp.root_listing VALUES (?, ?, ?, ?)",
                (
                    (p.normalized, p.name, p.serial, wanted is None or wanted(p.normalized))
                    for p in projects
                    if only is None or p.normalized in only
                ),
            )
        (listed,) = self.db.execute(
            "SELECT count(*) FROM temp.root_listing WHERE wanted"
        ).fetchone()
        unlisted = [
            name
            for (name,) in self.db.execute(
                "SELECT name FROM projects AS p WHERE status != 'removed' AND NOT EXISTS"
                " (SELECT 1 FROM temp.root_listing AS r WHERE r.name = p.name)"
            )
        ]
        pruned = [] if wanted is None else [
            name
            for (name,) in self.db.execute(
                "SELECT p.name FROM temp.root_listing AS r JOIN projects AS p ON p.name = r.name"
                " WHERE NOT r.wanted AND p.status != 'removed'"
            )
        ]
        statuses = {status.value: status for status in Status}
        rows = self.db.execute(
            "SELECT r.name, r.display, r.serial, p.serial, p.upstream_serial, p.status,"
            " p.page_etag, p.page_hash, p.filters, p.held_until FROM temp.root_listing AS r"
            " LEFT JOIN projects AS p ON p.name = r.name"
            " WHERE r.wanted AND (p.name IS NULL OR p.status != 'ok' OR r.serial IS NULL"
            " OR p.serial IS NULL OR r.serial != p.serial"
            " OR p.filters IS NOT ? OR p.held_until <= ?)",
            [replanning.filters, replanning.now],
        )
        changed = (
            (
                # One string where the display name is the normal one, as it mostly is.
                RootProject(name if display == name else display, name, serial),
                None if status is None
                else HeldProject(held, upstream, statuses[status], etag, page_hash, filters,
                                 held_until),
            )
            for name, display, serial, held, upstream, status, etag, page_hash, filters,
            held_until in rows
        )
        return RootChanges(changed, unlisted, listed, pruned)

    def unfinished_projects(
        self, replanning: Replanning = NO_REPLANNING
    ) -> dict[str, tuple[str, HeldProject]]:
        """Like held_projects, but only those a 304 root leaves work for (with serials):
        not ok, behind the serial the root listed, or due to be planned again
        (Replanning). Cheap on a large, current mirror."""
        return self._projects(
            " WHERE status NOT IN ('ok', 'removed')"
            " OR (upstream_serial IS NOT NULL AND (serial IS NULL OR serial < upstream_serial))"
            " OR (status = 'ok' AND (filters IS NOT ? OR held_until <= ?))",
            [replanning.filters, replanning.now],
        )

    def note_listed(self, todos: Iterable[tuple[str, str, int | None]], generation: int) -> None:
        """Record what the root promised for projects about to be fetched.

        New projects enter as pending, so that a run that dies midway leaves a
        trace the next run finishes (even when the root then answers 304).
        """
        rows = ((name, display, serial, generation, generation) for name, display, serial in todos)
        with self.transaction():
            self.db.conn.executemany(
                "INSERT INTO projects (name, display_name, upstream_serial, status, appeared_gen,"
                " updated_gen) VALUES (?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET display_name = excluded.display_name,"
                # The display name shows in the root: a bundle export looks for changed
                # projects by updated_gen, and a run stopped before the fetch moves no other.
                " upstream_serial = excluded.upstream_serial, updated_gen = excluded.updated_gen,"
                " removed_gen = NULL,"
                " status = CASE WHEN status = 'removed' THEN 'pending' ELSE status END",
                rows,
            )

    def mark_removed(self, names: Iterable[str], generation: int) -> None:
        names = list(names)
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE projects SET status = 'removed', removed_gen = ?, updated_gen = ? "
                "WHERE name = ?",
                ((generation, generation, name) for name in names),
            )
            for name in names:
                self._settle_staged(name, (), generation)

    def set_status(
        self, name: str, status: Status, error: str | None, generation: int
    ) -> None:
        self.db.execute(
            "UPDATE projects SET status = ?, error = ?, updated_gen = ? WHERE name = ?",
            [status.value, error, generation, name],
        )

    def record_project(
        self,
        name: str,
        *,
        status: Status,
        error: str | None,
        page_serial: int | None,
        page_etag: str | None = None,
        page_hash: str | None = None,
        page_data: dict[str, Any],
        files: Iterable[HeldFile],
        gone: Iterable[HeldFile],
        generation: int,
        filters: str | None = None,
        held_until: int | None = None,
    ) -> None:
        """Record a project whose pages are about to be rewritten from ``files``, chosen
        under the file filters of fingerprint ``filters``; ``held_until``: see
        HeldProject."""
        files = list(files)
        self._record_files(name, files, gone, generation)
        self._settle_staged(name, files, generation)
        complete = status is Status.OK
        self._note_change(name, generation)
        self.db.execute(
            "UPDATE projects SET status = ?, error = ?, page_serial = ?, page_data = ?,"
            " page_etag = ?, page_hash = ?, serial = CASE WHEN ? THEN ? ELSE serial END,"
            " updated_gen = ?, published_gen = ?, removed_gen = NULL, filters = ?,"
            " held_until = ? WHERE name = ?",
            [
                status.value,
                error,
                page_serial,
                _json(page_data),
                page_etag,
                page_hash,
                complete,
                page_serial,
                generation,
                generation,
                filters,
                held_until,
                name,
            ],
        )
    def _note_change(self, name: str, generation: int) -> None:
        """What ``generation`` does to ``name``'s pages, for `mirror log`; call before
        published_gen moves: pages published before make this a change."""
        self.db.execute(
            "INSERT OR REPLACE INTO project_changes (generation, project, change)"
            " SELECT ?, name, CASE WHEN published_gen IS NULL THEN 'added' ELSE 'changed' END"
            " FROM projects WHERE name = ?",
            [generation, name],
        )

    def _record_files(
        self, name: str, files: list[HeldFile], gone: Iterable[HeldFile], generation: int
    ) -> None:
        """``files`` live on ``name``'s pages (new rows, or updated ones), ``gone`` off them."""
        # executemany on the connection itself: a first sync records every file,
        # and sqlite_utils' execute wraps each call.
        conn = self.db.conn
        conn.executemany(
            "UPDATE files SET removed_gen = ? WHERE project = ? AND filename = ?"
            " AND removed_gen IS NULL",
            [(generation, name, f.filename) for f in gone],
        )
        # Same name, other bytes (an index that lets files be replaced): the old
        # row goes away and a new one appears.
        conn.executemany(
            "UPDATE files SET removed_gen = ? WHERE project = ? AND filename = ?"
            " AND removed_gen IS NULL AND path != ?",
            [(generation, name, f.filename, f.path) for f in files],
        )
        conn.executemany(
            "INSERT INTO files (project, filename, path, size, hashes, url, requires_python,"
            " yanked, yanked_reason, upload_time, metadata_hashes, signature, provenance,"
            " extra, appeared_gen, updated_gen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (project, filename) WHERE removed_gen IS NULL DO UPDATE SET"
            " url = excluded.url, requires_python = excluded.requires_python,"
            " yanked = excluded.yanked, yanked_reason = excluded.yanked_reason,"
            " upload_time = excluded.upload_time,"
            " metadata_hashes = excluded.metadata_hashes, signature = excluded.signature,"
            " provenance = excluded.provenance, extra = excluded.extra,"
            " updated_gen = excluded.updated_gen",
            [(name, *_file_values(f), generation, generation) for f in files],
        )

    def note_unchanged(self, name: str, etag: str | None, generation: int) -> None:
        """Upstream confirmed the page of a complete copy is unchanged (304, or the same body)."""
        self.db.execute(
            "UPDATE projects SET page_etag = coalesce(?, page_etag), status = 'ok', error = NULL,"
            " updated_gen = ? WHERE name = ?",
            [etag, generation, name],
        )

    def held_files(self, project: str) -> list[HeldFile]:
        rows = self.db.execute(
            f"SELECT {_HELD_COLUMNS} FROM files WHERE project = ? AND removed_gen IS NULL"
            " ORDER BY id",
            [project],
        )
        return [_held_file(project, row) for row in rows]

    def planning_files(self, project: str) -> list[HeldFile]:
        """What plan_files may keep of ``project``: the files its pages list, and those a
        stopped run left in place without listing them (staged), which stand in for a
        listed file of the same name: they are what upstream offered last."""
        if not self._staged:
            return self.held_files(project)
        held = {f.filename: f for f in self.held_files(project)}
        rows = self.db.execute(
            f"SELECT {_HELD_COLUMNS} FROM staged_files WHERE project = ? ORDER BY filename",
            [project],
        )
        for row in rows:
            staged = _held_file(project, row)
            held[staged.filename] = staged
        return list(held.values())

    def stage_files(self, project: str, files: Iterable[HeldFile], generation: int) -> None:
        """Record files of an unfinished project that are verified and in place, so that
        the next run keeps them; its pages do not list them (see staged_files)."""
        self._staged = True
        with self.transaction():
            self.db.conn.executemany(
                f"INSERT OR REPLACE INTO staged_files ({_HELD_COLUMNS}, project, staged_gen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_file_values(f), project, generation) for f in files],
            )

    def _settle_staged(self, name: str, live: Iterable[HeldFile], generation: int) -> None:
        """Empty ``name``'s staging: a file staged under a path now ``live`` needs nothing
        more; any other becomes a tombstone, whose bytes the reaper deletes."""
        if not self._staged or self.db.execute(
            "SELECT 1 FROM staged_files WHERE project = ? LIMIT 1", [name]
        ).fetchone() is None:
            return  # the common cases: nothing staged at all, or nothing of this project
        conn = self.db.conn
        conn.executemany(
            "DELETE FROM staged_files WHERE project = ? AND filename = ? AND path = ?",
            [(name, f.filename, f.path) for f in live],
        )
        conn.execute(
            f"INSERT INTO files ({_HELD_COLUMNS}, project, appeared_gen, updated_gen,"
            f" removed_gen) SELECT {_HELD_COLUMNS}, project, staged_gen, ?, ?"
            " FROM staged_files WHERE project = ?",
            (generation, generation, name),
        )
        conn.execute("DELETE FROM staged_files WHERE project = ?", (name,))

    def requires_of(
        self, sha256s: Iterable[str]
    ) -> dict[str, tuple[list[str] | None, list[str] | None]]:
        """What state.db knows the files of these digests need: (Requires-Dist, build
        requirements), by digest."""
        found = {}
        for digest in sha256s:
            row = self.db.execute(
                "SELECT dist, build FROM requires WHERE sha256 = ?", [digest]
            ).fetchone()
            if row is not None:
                found[digest] = (json.loads(row[0]) if row[0] is not None else None,
                                 json.loads(row[1]) if row[1] is not None else None)
        return found

    def note_requires(self, sha256: str, dist: list[str] | None, build: list[str] | None
                      ) -> None:
        """Remember what the file of digest ``sha256`` needs (see requires_of)."""
        self.db.execute(
            "INSERT OR REPLACE INTO requires (sha256, dist, build) VALUES (?, ?, ?)",
            [sha256, _json(dist), _json(build)],
        )

    def root_entries(self) -> Iterator[RootEntry]:
        """Projects the root index lists: published and still listed upstream."""
        for display, name, serial in self.db.execute(_ROOT_QUERY):
            yield RootEntry(display, name, serial)

    # -- pages and failures -------------------------------------------------

    def record_page(self, path: str, sha256: str, size: int, generation: int) -> None:
        self.db.execute(
            "INSERT INTO pages (path, sha256, size, appeared_gen, written_gen)"
            " VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,"
            " written_gen = excluded.written_gen,"
            " appeared_gen = CASE WHEN removed_gen IS NULL THEN appeared_gen"
            " ELSE excluded.appeared_gen END, removed_gen = NULL",
            [path, sha256, size, generation, generation],
        )

    def record_failure(
        self, generation: int, project: str, filename: str | None, kind: str, error: str
    ) -> None:
        self.db.execute(
            "INSERT INTO failures (generation, project, filename, kind, error)"
            " VALUES (?, ?, ?, ?, ?)",
            [generation, project, filename, kind, error],
        )

    # -- removals -------------------------------------------------------------

    def listed_count(self) -> int:
        """Projects still listed (not removed): the base of the project removal cap."""
        (projects,) = self.db.execute(
            "SELECT count(*) FROM projects WHERE status != 'removed'"
        ).fetchone()
        return int(projects)

    def live_files_count(self) -> int:
        """Live files: the base of the file removal cap."""
        (files,) = self.db.execute("SELECT files FROM live_totals").fetchone()
        return int(files)

    def unpublish_pending(self) -> list[str]:
        """Removed projects whose pages are still published (deletion not done yet)."""
        rows = self.db.execute(
            "SELECT name FROM projects WHERE status = 'removed' AND published_gen IS NOT NULL"
            " ORDER BY name"
        )
        return [name for (name,) in rows]

    def unpublish(self, name: str, pages: Iterable[str], generation: int) -> None:
        """Record that a removed project's pages are gone; its files leave its pages too."""
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE pages SET removed_gen = ? WHERE path = ? AND removed_gen IS NULL",
                ((generation, page) for page in pages),
            )
            self.db.execute(
                "UPDATE files SET removed_gen = ? WHERE project = ? AND removed_gen IS NULL",
                [generation, name],
            )
            self.db.execute("UPDATE projects SET published_gen = NULL WHERE name = ?", [name])
            self.db.execute(
                "INSERT OR REPLACE INTO project_changes (generation, project, change)"
                " VALUES (?, ?, 'removed')",
                [generation, name],
            )

    def reapable(self) -> list[tuple[int, str]]:
        """(id, path) of files off every page whose bytes are still on disk.

        A path that a live row still uses (the same bytes under the same name in
        another project), or a staged file, is kept.
        """
        rows = self.db.execute(
            "SELECT id, path FROM files AS gone WHERE removed_gen IS NOT NULL"
            " AND deleted_gen IS NULL AND NOT EXISTS (SELECT 1 FROM files AS live"
            " WHERE live.path = gone.path AND live.removed_gen IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM staged_files AS staged"
            " WHERE staged.path = gone.path)"
        )
        return list(rows)

    def mark_deleted(self, ids: Iterable[int], generation: int) -> None:
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE files SET deleted_gen = ? WHERE id = ?",
                ((generation, file_id) for file_id in ids),
            )

    # -- air-gap bundles ------------------------------------------------------

    def record_export(
        self, *, bundle: str, chain: str, sequence: int, full: bool, since_gen: int,
        through_gen: int, next_gen: int, base: str | None, target: str, path: str,
    ) -> None:
        """The near side exported a bundle (its ledger: see bundles_exported)."""
        with self.transaction():
            if self.get_meta("bundle_chain") is None:
                self.set_meta("bundle_chain", chain)
            self.db.execute(
                "INSERT INTO bundles_exported (bundle, chain, sequence, full, since_gen,"
                " through_gen, next_gen, base, target, created, path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [bundle, chain, sequence, int(full), since_gen, through_gen, next_gen, base,
                 target, now(), path],
            )

    def import_project(
        self, name: str, *, display_name: str, serial: int | None, page_serial: int | None,
        status: Status, error: str | None, page_data: dict[str, Any], pages: bool,
        generation: int,
    ) -> None:
        """A published project as a bundle carries it (the far side); ``pages``: its pages
        are written again now."""
        self.db.execute(
            "INSERT INTO projects (name, display_name, serial, page_serial, status, error,"
            " page_data, appeared_gen, updated_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET display_name = excluded.display_name,"
            " serial = excluded.serial, page_serial = excluded.page_serial,"
            " status = excluded.status, error = excluded.error,"
            " page_data = excluded.page_data, updated_gen = excluded.updated_gen,"
            " removed_gen = CASE WHEN excluded.status = 'removed'"
            " THEN coalesce(removed_gen, excluded.updated_gen) END",
            [name, display_name, serial, page_serial, status.value, error, _json(page_data),
             generation, generation],
        )
        if pages:
            self._note_change(name, generation)
            self.db.execute(
                "UPDATE projects SET published_gen = ? WHERE name = ?", [generation, name]
            )

    def import_files(self, name: str, files: list[HeldFile], generation: int) -> None:
        """Files a bundle carries as live on ``name``'s pages (new rows, or updated ones)."""
        self._record_files(name, files, (), generation)

    def import_gone(self, project: str, filename: str, path: str, generation: int) -> int:
        """A file a bundle says left its project's pages; how many live rows that ends."""
        cursor = self.db.execute(
            "UPDATE files SET removed_gen = ? WHERE project = ? AND filename = ? AND path = ?"
            " AND removed_gen IS NULL",
            [generation, project, filename, path],
        )
        return int(cursor.rowcount)

    def record_applied(
        self, *, bundle: str, chain: str, sequence: int, target: str, generation: int,
        key_id: str,
    ) -> None:
        """The far side applied a bundle (its ledger: see bundles_applied)."""
        self.db.execute(
            "INSERT INTO bundles_applied (bundle, chain, sequence, target, generation, key_id,"
            " applied) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [bundle, chain, sequence, target, generation, key_id, now()],
        )


class Batch:
    """One long write transaction, committed every ``every`` seconds (see State.batch).

    A first sync records hundreds of thousands of rows: a commit for each would cost a
    sync of the WAL each time; one transaction for the whole run would lose all of it
    to a kill. Readers (`mirror status`) see the run move on at each commit.
    """

    def __init__(
        self, db: sqlite_utils.Database, every: float, before_commit: Callable[[], None]
    ) -> None:
        self._db = db
        self._every = every
        self._before_commit = before_commit
        self._last = time.monotonic()
        self._db.execute("BEGIN")

    def due(self) -> None:
        """Commit what was written so far, and go on in a new transaction, if it is time."""
        if time.monotonic() - self._last > self._every:
            self._before_commit()
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._last = time.monotonic()

    def end(self) -> None:
        """Commit what is left. SQLite rolls back by itself after some errors (a full
        disk): then there is nothing to commit, and the error that did it is the one
        to report."""
        if self._db.conn.in_transaction:
            self._before_commit()
            self._db.execute("COMMIT")


# -- reading state.db, read-only: `mirror status`, `mirror log`, `mirror verify`, reports --

RUN_COLUMNS = "generation, started, finished, outcome, error"
"""The columns of a run that status.run_info reads, in its order."""
RUN_COUNTS = (
    "projects_changed", "projects_deferred", "projects_failed", "projects_removed",
    "files_fetched", "bytes_fetched",
)
_RUN_QUERY = f"SELECT {RUN_COLUMNS}, upstream, upstream_serial, {', '.join(RUN_COUNTS)} FROM runs"
_LIVE = "removed_gen IS NULL AND deleted_gen IS NULL"
# What live_totals holds, counted the long way.
_COUNT_LIVE = (
    f"SELECT count(*) AS files, coalesce(sum(size), 0) AS bytes FROM files WHERE {_LIVE}"
)
_ROOT_QUERY = (
    "SELECT display_name, name, serial FROM projects"
    " WHERE published_gen IS NOT NULL AND status != 'removed' ORDER BY name"
)
T = TypeVar("T")


def in_path_order(
    path: Path, entries: Iterable[tuple[str, int, float]], tick: Callable[[], None],
) -> Iterator[tuple[str, int, float]]:
    """(path, size, modified) ``entries`` in bytewise order of path, through a table in
    the SQLite file ``path`` (an empty file of the caller's, a bucket's listing of
    millions of pages: more than memory should hold), deleted once they are read or
    given up. ``tick``: called every thousand entries stored (it may raise, to stop)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Scratch, read once and deleted: nothing to recover after a crash.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        # BINARY collation: the bytes of UTF-8, the order of Python's str and of state.db.
        conn.execute("CREATE TABLE listed (path TEXT PRIMARY KEY, size INTEGER, "
                     "modified REAL) WITHOUT ROWID")
        conn.execute("BEGIN")
        left = iter(entries)
        while batch := list(itertools.islice(left, 1000)):
            tick()
            conn.executemany("INSERT INTO listed VALUES (?, ?, ?)", batch)
        conn.execute("COMMIT")
        yield from conn.execute("SELECT path, size, modified FROM listed ORDER BY path")
    finally:
        conn.close()
        path.unlink(missing_ok=True)  # a sync's start clears tmp/


class ReuseIndex:
    """Where files an operator already has are (``--reuse-from``), by file name: one
    run's index, in a file of its own in tmp/ (at millions of files, memory stays
    flat), deleted when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Disposable: no journal to keep, nothing to make durable.
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute(
            "CREATE TABLE files (filename TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL)"
        )

    def add(self, found: Iterable[tuple[str, str, int]]) -> int:
        """Index (file name, path, size) rows; how many."""
        before = self.count()
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO files VALUES (?, ?, ?)", found)
        self.conn.execute("CREATE INDEX IF NOT EXISTS files_by_name ON files (filename, size)")
        self.conn.execute("COMMIT")
        return self.count() - before

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM files").fetchone()[0])

    def candidates(self, filename: str, size: int | None) -> list[str]:
        """Paths of files named ``filename`` (of ``size`` bytes, when it is known)."""
        if size is None:
            rows = self.conn.execute("SELECT path FROM files WHERE filename = ?", [filename])
        else:
            rows = self.conn.execute(
                "SELECT path FROM files WHERE filename = ? AND size = ?", [filename, size]
            )
        return [path for (path,) in rows]

    def close(self) -> None:
        self.conn.close()
        self.path.unlink(missing_ok=True)


class NoState(Exception):
    """There is no state.db to read; the message says what to do."""


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing state.db (never creates one)."""
    if not path.is_file():
        raise NoState(
            f"no state.db in {path.parent}: no mirror has been synced there yet. "
            "Check --directory (or the config's directory), or run `mirror sync` first"
        )
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise NoState(f"cannot open {path} for reading: {exc}") from exc


def connect_reader(path: Path, command: str, *, unchanging: bool) -> StateReader:
    """A read-only connection to state.db, tried; NoState, saying why, when it cannot read.

    In WAL mode, SQLite's readers share an index in the -shm file beside the database
    and create it when it is missing, which a user who cannot write in the directory
    cannot do. When no -wal file holds commits beyond the database file, that file is
    all there is, and with ``unchanging`` it is read as immutable (no index, no locks).
    That is sound only while nothing writes it: the caller holds the mirror's lock, or
    reads a row or two whose failure costs no more than a detail.
    """
    conn = connect_readonly(path)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        return StateReader(conn)
    except sqlite3.Error as exc:
        conn.close()
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        wal = path.with_name(path.name + "-wal")
        if (not unchanging or code != sqlite3.SQLITE_READONLY
                or (wal.exists() and wal.stat().st_size)):
            raise unreadable(path, exc, command) from exc
    uri = f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    return StateReader(sqlite3.connect(uri, uri=True))


def read_snapshot(
    path: Path, query: Callable[[StateReader], T], command: str = "mirror status"
) -> T:
    """``query``'s answer from the state.db at ``path``, opened read-only, in one read
    transaction. Raises NoState (saying what to do) when it cannot be read."""
    conn = connect_readonly(path)
    try:
        # One snapshot for every query, however a running sync moves on meanwhile.
        conn.execute("BEGIN")
        try:
            return query(StateReader(conn))
        finally:
            conn.rollback()
    except sqlite3.Error as exc:
        raise unreadable(path, exc, command) from exc
    finally:
        conn.close()


def unreadable(path: Path, exc: sqlite3.Error, command: str = "mirror status") -> NoState:
    """Why state.db at ``path`` could not be read, and what to do, for ``command``."""
    if "readonly" in str(exc) and not os.access(path.parent, os.W_OK):
        # WAL mode: even a reader writes the -shm index beside state.db.
        return NoState(
            f"{path} can only be read by a user who may write in {path.parent} "
            "(SQLite's WAL mode); run this as the mirror's user, e.g. "
            f"`sudo -u simplemirror {command} ...`"
        )
    return NoState(
        f"{path} cannot be read as a simplemirror state database ({exc}); check that "
        "the directory is the mirror's, and if it is, state.db is damaged: restore it "
        "from a backup, or move it aside and run `mirror sync` to build a new one "
        "(which downloads every file again)"
    )


def last_upstream(path: Path, command: str = "mirror verify") -> str | None:
    """The upstream of the last run recorded in the state.db at ``path``; None without
    a state.db or a run. Raises NoState (saying what to do) when it cannot be read:
    "no upstream" would send the operator looking for the wrong thing."""
    if not path.is_file():
        return None
    with connect_reader(path, command, unchanging=True) as reader:
        try:
            return reader.last_upstream()
        except sqlite3.Error as exc:
            raise unreadable(path, exc, command) from exc


def open_reader(path: Path) -> StateReader:
    """A reader of the existing state.db at ``path`` (see connect_readonly)."""
    return StateReader(connect_readonly(path))


class StateReader:
    """The queries of those who only read state.db, on a connection of theirs (read-only,
    or a State's own for `mirror verify --repair`). Rows come back as tuples, in the
    column order each method names; callers turn them into what they show."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # A state.db from before staging (schema 2) has no staged_files, hence nothing
        # staged: a reader takes it as it is, without the upgrade a sync makes.
        self._staging = self._one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'staged_files'"
        ) is not None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    # -- runs ---------------------------------------------------------------------------

    def last_generation(self) -> int:
        """The newest generation (0: none)."""
        row = self._one("SELECT max(generation) FROM runs")
        return int(row[0] or 0) if row else 0

    def last_upstream(self) -> str | None:
        """The upstream of the last run recorded; None before any."""
        row = self._one("SELECT upstream FROM runs ORDER BY generation DESC LIMIT 1")
        return row[0] if row else None

    def outcomes(self) -> Iterator[tuple[str, str | None]]:
        """(outcome, error) of every run, newest first."""
        return iter(self.conn.execute("SELECT outcome, error FROM runs ORDER BY generation DESC"))

    def last_run(self) -> tuple[Any, ...] | None:
        """RUN_COLUMNS and upstream of the newest run."""
        return self._one(
            f"SELECT {RUN_COLUMNS}, upstream FROM runs ORDER BY generation DESC LIMIT 1"
        )

    def last_complete_run(self) -> tuple[Any, ...] | None:
        """RUN_COLUMNS of the newest run that ended ok."""
        return self._one(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE outcome = 'ok' ORDER BY generation DESC"
            " LIMIT 1"
        )

    def last_success(self) -> str | None:
        """When the newest run that left an exact copy (ok, unchanged) finished."""
        row = self._one("SELECT max(finished) FROM runs WHERE outcome IN ('ok', 'unchanged')")
        return row[0] if row else None

    def upstream_serial_seen(self) -> int | None:
        """The upstream root's serial at the last run that saw one."""
        row = self._one(
            "SELECT upstream_serial FROM runs WHERE upstream_serial IS NOT NULL"
            " ORDER BY generation DESC LIMIT 1"
        )
        return int(row[0]) if row else None

    def filters_in_force(self) -> dict[str, Any]:
        """The [filters] keys the last run that planned applied (empty: a full mirror)."""
        row = self._one("SELECT value FROM meta WHERE key = 'filters'")
        found: dict[str, Any] = json.loads(row[0]) if row and row[0] else {}
        return found

    def serial_held(self) -> int | None:
        """The upstream serial of the last complete copy (meta root_serial)."""
        row = self._one("SELECT value FROM meta WHERE key = 'root_serial'")
        return int(row[0]) if row and row[0] is not None else None

    def run_times(self, generation: int) -> tuple[str | None, str | None]:
        """(started, finished) of a run; both None when there is no such run."""
        row = self._one("SELECT started, finished FROM runs WHERE generation = ?", [generation])
        return (row[0], row[1]) if row else (None, None)

    def failed_generation(self, since: int, error: str) -> int | None:
        """The newest run after ``since`` that ended in ``error``."""
        row = self._one(
            "SELECT max(generation) FROM runs WHERE generation > ? AND outcome = 'error'"
            " AND error = ?",
            [since, error],
        )
        return int(row[0]) if row and row[0] is not None else None

    def runs(self, limit: int) -> list[tuple[Any, ...]]:
        """The last ``limit`` runs, newest first: RUN_COLUMNS, upstream, upstream_serial
        and RUN_COUNTS."""
        return self.conn.execute(
            f"{_RUN_QUERY} ORDER BY generation DESC LIMIT ?", [limit]
        ).fetchall()

    def run(self, generation: int) -> tuple[Any, ...] | None:
        """One run, as runs() gives them; None when there is no such generation."""
        if not -(2**63) <= generation < 2**63:
            return None  # a number SQLite cannot hold names no generation either
        return self._one(f"{_RUN_QUERY} WHERE generation = ?", [generation])

    def generations(self) -> tuple[int | None, int | None]:
        """The lowest and highest generation; (None, None) before any run."""
        row = self._one("SELECT min(generation), max(generation) FROM runs")
        return (row[0], row[1]) if row else (None, None)

    def project_changes(self, generation: int) -> list[tuple[str, str]] | None:
        """(change, project) of a generation, by project; None when not recorded for it
        (a run of a simplemirror that did not record them)."""
        table = self._one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'project_changes'"
        )
        since = self._one("SELECT value FROM meta WHERE key = 'changes_since'")
        # No table: no simplemirror that records them has opened this state.db yet.
        if table is None or generation < int(since[0] if since else 1):
            return None
        return self.conn.execute(
            "SELECT change, project FROM project_changes WHERE generation = ? ORDER BY project",
            [generation],
        ).fetchall()

    def files_changed(
        self, generation: int, *, removed: bool
    ) -> list[tuple[str, str, int, str]]:
        """(project, filename, size, path) of the files that appeared in (or, ``removed``,
        left the pages in) ``generation``, by project and filename."""
        column = "removed_gen" if removed else "appeared_gen"
        return self.conn.execute(
            f"SELECT project, filename, size, path FROM files WHERE {column} = ?"
            " ORDER BY project, filename",
            [generation],
        ).fetchall()

    # -- projects -----------------------------------------------------------------------

    def project_counts(self) -> dict[str, int]:
        """The number of projects in each status present."""
        rows = self.conn.execute("SELECT status, count(*) FROM projects GROUP BY status")
        return {status: count for status, count in rows}

    def troubled(self, status: Status) -> list[tuple[str, str | None]]:
        """(name, error) of the projects in ``status``, by name."""
        return self.conn.execute(
            "SELECT name, error FROM projects WHERE status = ? ORDER BY name", [status.value]
        ).fetchall()

    def project_status(self, name: str) -> Status | None:
        row = self._one("SELECT status FROM projects WHERE name = ?", [name])
        return Status(row[0]) if row else None

    def published_projects(self) -> list[str]:
        """Projects whose pages are published and still listed upstream, by name."""
        rows = self.conn.execute(
            "SELECT name FROM projects WHERE published_gen IS NOT NULL AND status != ?"
            " ORDER BY name",
            [Status.REMOVED.value],
        )
        return [name for (name,) in rows]

    def is_published(self, name: str) -> bool:
        """Whether state.db records pages of ``name`` as published (removed or not)."""
        return self._one(
            "SELECT 1 FROM projects WHERE name = ? AND published_gen IS NOT NULL", [name]
        ) is not None

    def published_page(self, name: str) -> tuple[int | None, dict[str, Any]] | None:
        """(page serial, page data) a published project's pages are written from; None
        when the project is not published."""
        row = self._one(
            "SELECT page_serial, page_data, published_gen FROM projects WHERE name = ?", [name]
        )
        if row is None or row[2] is None:
            return None
        return row[0], json.loads(row[1]) if row[1] else {}

    # -- files --------------------------------------------------------------------------

    def live_totals(self) -> tuple[int, int]:
        """(count, bytes) of live files: on a page, bytes on disk."""
        if self._one("SELECT 1 FROM sqlite_master WHERE name = 'live_totals'"):
            row = self._one("SELECT files, bytes FROM live_totals")
            if row is not None:
                return int(row[0]), int(row[1])
        # A state.db from before schema 4 is read as it stands (read-only: no upgrade),
        # counted; one from before deleted_gen existed holds the bytes of every row
        # without removed_gen.
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(files)")}
        count = _COUNT_LIVE if "deleted_gen" in columns else _COUNT_LIVE.replace(
            _LIVE, "removed_gen IS NULL")
        row = self._one(count)
        assert row is not None  # an aggregate always has its row
        return int(row[0]), int(row[1])

    def live_files(self) -> sqlite3.Cursor:
        """Every live file, by id: id, project, filename, path, size, hashes (JSON), url,
        metadata_hashes (JSON or None). A cursor: read it in batches."""
        return self.conn.execute(
            "SELECT id, project, filename, path, size, hashes, url, metadata_hashes FROM files"
            f" WHERE {_LIVE} ORDER BY id"
        )

    def holds_path(self, path: str) -> bool:
        """Some row holds ``path`` on disk (live, off every page but not yet reaped, or
        staged by a stopped sync for its next run)."""
        if not self._staging:
            return self._one(
                "SELECT 1 FROM files WHERE path = ? AND deleted_gen IS NULL LIMIT 1", [path]
            ) is not None
        return self._one(
            "SELECT 1 FROM files WHERE path = ? AND deleted_gen IS NULL"
            " UNION ALL SELECT 1 FROM staged_files WHERE path = ? LIMIT 1", [path, path]
        ) is not None

    def live_file_at(self, path: str) -> tuple[dict[str, str], int] | None:
        """(hashes, size) of a live file at ``path``; None when none is."""
        row = self._one(
            f"SELECT hashes, size FROM files WHERE path = ? AND {_LIVE} LIMIT 1", [path]
        )
        return (json.loads(row[0]), row[1]) if row else None

    def live_metadata_of(self, path: str) -> dict[str, str] | None:
        """The .metadata hashes of the live file at ``path``; None when none is held."""
        row = self._one(
            f"SELECT metadata_hashes FROM files WHERE path = ? AND {_LIVE}"
            " AND metadata_hashes IS NOT NULL LIMIT 1",
            [path],
        )
        return json.loads(row[0]) if row else None

    def page_sha256(self, path: str) -> str | None:
        """The sha256 state.db records for the published page at ``path``."""
        row = self._one("SELECT sha256 FROM pages WHERE path = ? AND removed_gen IS NULL",
                        [path])
        return row[0] if row else None

    # -- air-gap bundles ------------------------------------------------------------------

    def root_entries(self) -> Iterator[RootEntry]:
        """Projects the root index lists (as State.root_entries)."""
        for display, name, serial in self.conn.execute(_ROOT_QUERY):
            yield RootEntry(display, name, serial)

    def newest_run(self) -> tuple[int, str] | None:
        """(generation, outcome) of the newest run; None before any."""
        row = self._one("SELECT generation, outcome FROM runs ORDER BY generation DESC LIMIT 1")
        return (int(row[0]), row[1]) if row else None

    def published_entries(
        self, suffixes: tuple[str, str, str], pages: tuple[str, str, str],
        leave_out: Sequence[str],
    ) -> Iterator[tuple[str, int | None, str | None]]:
        """(path, size, sha256) of everything published below web/, by path (bytewise),
        leaving out the pages in ``leave_out``. ``suffixes``: of the .metadata, signature
        and provenance files beside a distribution; ``pages``: a project's pages are
        ``pages[0] + name + pages[1]`` and ``... + pages[2]``. A size or sha256 state.db
        does not hold (those of the files beside one, and the sizes of pages written by a
        simplemirror before 0.1's schema 4) is None.

        A project upstream removed counts as gone already, though a run that stopped
        early may not have deleted its pages yet: the next one does."""
        metadata, signature, provenance = suffixes
        prefix, html, json_page = pages
        marks = ", ".join("?" * len(leave_out))
        live = f"{_LIVE} AND project NOT IN (SELECT name FROM projects WHERE status = 'removed')"
        return iter(self.conn.execute(
            "SELECT path, max(size), max(sha256) FROM ("
            f" SELECT path, size, json_extract(hashes, '$.sha256') AS sha256 FROM files"
            f" WHERE {live}"
            " UNION ALL SELECT path || ?, NULL, json_extract(metadata_hashes, '$.sha256')"
            f" FROM files WHERE {live} AND metadata_hashes IS NOT NULL"
            f" UNION ALL SELECT path || ?, NULL, NULL FROM files WHERE {live} AND signature"
            f" UNION ALL SELECT path || ?, NULL, NULL FROM files WHERE {live} AND provenance"
            " UNION ALL SELECT path, size, sha256 FROM pages WHERE removed_gen IS NULL"
            f" AND path NOT IN ({marks}) AND path NOT IN (SELECT ? || name || ? FROM projects"
            " WHERE status = 'removed' UNION ALL SELECT ? || name || ? FROM projects"
            " WHERE status = 'removed')"
            ") GROUP BY path ORDER BY path",
            [metadata, signature, provenance, *leave_out, prefix, html, prefix, json_page],
        ))

    def export_projects(
        self, since: int, pages: tuple[str, str, str]
    ) -> Iterator[tuple[str, str, int | None, int | None, Status, str | None, dict[str, Any],
                        bool]]:
        """Published projects (not removed) whose row or pages changed in generation
        ``since`` or later, by name: (name, display name, serial, page serial, status,
        error, page data, whether its pages were written then). ``pages``: a project's
        pages are ``pages[0] + name + pages[1]`` and ``pages[0] + name + pages[2]``."""
        prefix, html, json_page = pages
        rows = self.conn.execute(
            "SELECT p.name, p.display_name, p.serial, p.page_serial, p.status, p.error,"
            " p.page_data, EXISTS (SELECT 1 FROM pages WHERE path IN (? || p.name || ?,"
            " ? || p.name || ?) AND written_gen >= ? AND removed_gen IS NULL)"
            " FROM projects AS p WHERE p.published_gen IS NOT NULL AND p.status != 'removed'"
            " AND (p.updated_gen >= ?"
            " OR EXISTS (SELECT 1 FROM pages WHERE path IN (? || p.name || ?,"
            " ? || p.name || ?) AND written_gen >= ? AND removed_gen IS NULL))"
            " ORDER BY p.name",
            [prefix, html, prefix, json_page, since, since, prefix, html, prefix, json_page,
             since],
        )
        for name, display, serial, page_serial, status, error, data, written in rows:
            yield (name, display, serial, page_serial, Status(status), error,
                   json.loads(data) if data else {}, bool(written))

    def export_files(
        self, since: int, also: Collection[str] = ()
    ) -> Iterator[tuple[HeldFile, bool]]:
        """Live files whose row changed in generation ``since`` or later, and those at the
        paths ``also`` (the far side lost them), by project and id, each with whether its
        bytes must travel: no row that was live before ``since`` and is live still holds
        its path (the far side has them otherwise)."""
        rows = self.conn.execute(
            f"SELECT project, {_HELD_COLUMNS}, NOT EXISTS (SELECT 1 FROM files AS o"
            " WHERE o.path = f.path AND o.removed_gen IS NULL AND o.appeared_gen < ?)"
            f" FROM files AS f WHERE {_LIVE} AND (updated_gen >= ?"
            " OR path IN (SELECT value FROM json_each(?))) ORDER BY project, id",
            [since, since, json.dumps(sorted(also))],
        )
        for project, *row, needed in rows:
            yield _held_file(project, tuple(row)), bool(needed)

    def export_gone(self, since: int) -> Iterator[tuple[str, str, str]]:
        """(project, filename, path) of the files that left their pages in generation
        ``since`` or later."""
        return iter(self.conn.execute(
            "SELECT project, filename, path FROM files WHERE removed_gen >= ?"
            " ORDER BY project, filename, id",
            [since],
        ))

    def export_removed(self, since: int) -> list[str]:
        """Projects upstream removed in generation ``since`` or later (still so)."""
        rows = self.conn.execute(
            "SELECT name FROM projects WHERE status = 'removed' AND updated_gen >= ?"
            " ORDER BY name",
            [since],
        )
        return [name for (name,) in rows]

    def bundle_chain(self) -> str | None:
        """The chain of bundles this mirror exports (None before its first export)."""
        row = self._one("SELECT value FROM meta WHERE key = 'bundle_chain'")
        return row[0] if row else None

    def _exported_any(self) -> bool:
        # A state.db no simplemirror with bundles has opened yet (schema 3) has no ledger:
        # an export reads it as it is (it never writes beside a sync; see bundle.export).
        return self._one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bundles_exported'"
        ) is not None

    def last_export(self) -> tuple[str, int, int, str] | None:
        """(bundle, sequence, next generation, target digest) of the newest export."""
        if not self._exported_any():
            return None
        row = self._one(
            "SELECT bundle, sequence, next_gen, target FROM bundles_exported"
            " ORDER BY rowid DESC LIMIT 1"
        )
        return (row[0], int(row[1]), int(row[2]), row[3]) if row else None

    def export_reaching(self, sequence: int, target: str) -> tuple[str, int] | None:
        """(bundle, next generation) of the newest export of ``sequence`` that led to the
        state digest ``target``; None when this mirror made none."""
        if not self._exported_any():
            return None
        row = self._one(
            "SELECT bundle, next_gen FROM bundles_exported WHERE sequence = ? AND target = ?"
            " ORDER BY rowid DESC LIMIT 1",
            [sequence, target],
        )
        return (row[0], int(row[1])) if row else None

    def last_applied(self) -> tuple[str, str, int, str] | None:
        """(bundle, chain, sequence, target digest) of the bundle applied last."""
        row = self._one(
            "SELECT bundle, chain, sequence, target FROM bundles_applied"
            " ORDER BY rowid DESC LIMIT 1"
        )
        return (row[0], row[1], int(row[2]), row[3]) if row else None

    def applied(self, bundle: str) -> tuple[int, int] | None:
        """(sequence, generation) of ``bundle`` if it was applied here."""
        row = self._one("SELECT sequence, generation FROM bundles_applied WHERE bundle = ?",
                        [bundle])
        return (int(row[0]), int(row[1])) if row else None

    def held_files(self, project: str) -> list[HeldFile]:
        """A project's live files, by id (as State.held_files)."""
        rows = self.conn.execute(
            f"SELECT {_HELD_COLUMNS} FROM files WHERE project = ? AND removed_gen IS NULL"
            " ORDER BY id",
            [project],
        )
        return [_held_file(project, row) for row in rows]


def snapshot(path: Path) -> StateReader:
    """A reader of the state.db at ``path`` that sees it as it is now, however a sync writes
    on meanwhile: one read transaction, held until it is closed (a WAL snapshot)."""
    conn = connect_readonly(path)
    try:
        conn.execute("BEGIN")
        reader = StateReader(conn)
        reader.newest_run()  # the snapshot is taken at the first read
    except sqlite3.Error as exc:
        conn.close()
        raise unreadable(path, exc, "mirror export") from exc
    return reader
