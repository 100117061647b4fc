"""state.db: everything the mirror knows, in SQLite (through sqlite-utils).

The schema lives in SCHEMA below and nowhere else. Only the coordinating
thread of a run touches the database; workers never do.

Generations: every run gets one (``runs.generation``). Files and pages record
the generation in which they appeared, were last written and went away, so
that everything that changed between two generations can be listed exactly
(for an air-gapped copy, say).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from simplemirror.model import HeldFile, RootProject
from simplemirror.plan import HeldProject, RootChanges, Status
from simplemirror.render import RootEntry

SCHEMA_VERSION = 3

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
CREATE INDEX IF NOT EXISTS files_path ON files (path);

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
CREATE TABLE IF NOT EXISTS project_changes (
    generation INTEGER NOT NULL,
    project    TEXT NOT NULL,
    change     TEXT NOT NULL,           -- added, changed, removed
    PRIMARY KEY (generation, project)
) WITHOUT ROWID;
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
)


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


class State:
    def __init__(self, path: Path) -> None:
        self.db = sqlite_utils.Database(path)
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
        if changes_since is not None:
            # The runs before this one (an older state.db's) recorded no project changes.
            self.set_meta("changes_since", str(changes_since))
        self.set_meta("schema_version", str(SCHEMA_VERSION))

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
        state.db = sqlite_utils.Database(sqlite3.connect(uri, uri=True))
        try:
            found = state.get_meta("schema_version") if state.db["meta"].exists() else None
            if found is None or int(found) != SCHEMA_VERSION:
                raise StateError(
                    f"{path} was written by another version of simplemirror (schema "
                    f"{found}); run `mirror sync` once with this one to upgrade it"
                )
            for table, column, _ in _ADDED_COLUMNS:
                if column not in state.db[table].columns_dict:
                    raise StateError(
                        f"{path} predates this version of simplemirror; run `mirror sync` "
                        "once with it to upgrade state.db, then --dry-run can read it"
                    )
            if not state.db["staged_files"].exists():
                # Written before staging existed, so nothing is staged: an empty
                # stand-in with the columns planning_files reads.
                state.db.execute("CREATE TEMP TABLE staged_files AS SELECT * FROM files WHERE 0")
        except BaseException:
            state.close()
            raise
        return state

    @classmethod
    def empty(cls) -> State:
        """A state.db in memory, holding nothing: what a dry run plans against before any sync."""
        return cls(Path(":memory:"))

    def close(self) -> None:
        self.db.close()

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
        without recording their end, since the last recovery (see recover.py); None: none.

        Under the sync lock, a run still marked running is one that died.
        """
        row = self.db.execute(
            "SELECT min(started), max(generation) FROM runs WHERE outcome = 'running'"
            " AND generation < ? AND generation > coalesce("
            " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'recovered_through'), 0)",
            [current],
        ).fetchone()
        return None if row is None or row[1] is None else (row[0], int(row[1]))

    def recovered_through(self, generation: int) -> None:
        """The tree agrees with state.db again for every run up to ``generation``."""
        self.set_meta("recovered_through", str(generation))

    def is_published(self, name: str) -> bool:
        """Whether state.db records pages of ``name`` as published (removed or not)."""
        row = self.db.execute(
            "SELECT 1 FROM projects WHERE name = ? AND published_gen IS NOT NULL", [name]
        ).fetchone()
        return row is not None

    def published_page(self, name: str) -> tuple[int | None, str | None] | None:
        """(page_serial, page_data) of a project published; None when it is not."""
        row = self.db.execute(
            "SELECT page_serial, page_data FROM projects WHERE name = ?"
            " AND published_gen IS NOT NULL", [name]
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def holds_path(self, path: str) -> bool:
        """Some row holds ``path`` (below web/) on disk: live, off every page but not yet
        reaped, or staged by a stopped run for its next one."""
        return (
            self.db.execute(
                "SELECT 1 FROM files WHERE path = ? AND deleted_gen IS NULL"
                " UNION ALL SELECT 1 FROM staged_files WHERE path = ? LIMIT 1", [path, path]
            ).fetchone()
            is not None
        )

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
        rows = self.db.execute(
            "SELECT name, display_name, serial, upstream_serial, status, page_etag, page_hash"
            " FROM projects"
        )
        return {
            name: (display, HeldProject(serial, upstream, Status(status), etag, page_hash))
            for name, display, serial, upstream, status, etag, page_hash in rows
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
        self, projects: Iterable[RootProject], only: Collection[str] | None = None
    ) -> RootChanges:
        """Compare a root's projects with those held, in SQLite: plan.needs_fetch in SQL.

        At PyPI's size, holding every project's state in memory to compare costs
        hundreds of megabytes; a temporary table and a join cost next to none.
        ``changed`` is a cursor over that join, to be read before the next call
        (which empties the table; closing state.db drops it).
        """
        self.db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS root_listing"
            " (name TEXT PRIMARY KEY, display TEXT NOT NULL, serial INTEGER) WITHOUT ROWID"
        )
        with self.transaction():
            self.db.execute("DELETE FROM temp.root_listing")
            self.db.conn.executemany(
                "INSERT INTO temp.root_listing VALUES (?, ?, ?)",
                (
                    (p.normalized, p.name, p.serial)
                    for p in projects
                    if only is None or p.normalized in only
                ),
            )
        (listed,) = self.db.execute("SELECT count(*) FROM temp.root_listing").fetchone()
        unlisted = [
            name
            for (name,) in self.db.execute(
                "SELECT name FROM projects AS p WHERE status != 'removed' AND NOT EXISTS"
                " (SELECT 1 FROM temp.root_listing AS r WHERE r.name = p.name)"
            )
        ]
        statuses = {status.value: status for status in Status}
        rows = self.db.execute(
            "SELECT r.name, r.display, r.serial, p.serial, p.upstream_serial, p.status,"
            " p.page_etag, p.page_hash FROM temp.root_listing AS r"
            " LEFT JOIN projects AS p ON p.name = r.name"
            " WHERE p.name IS NULL OR p.status != 'ok' OR r.serial IS NULL"
            " OR p.serial IS NULL OR r.serial != p.serial"
        )
        changed = (
            (
                # One string where the display name is the normal one, as it mostly is.
                RootProject(name if display == name else display, name, serial),
                None if status is None
                else HeldProject(held, upstream, statuses[status], etag, page_hash),
            )
            for name, display, serial, held, upstream, status, etag, page_hash in rows
        )
        return RootChanges(changed, unlisted, listed)

    def unfinished_projects(self) -> dict[str, tuple[str, HeldProject]]:
        """Like held_projects, but only those a 304 root leaves work for (with serials):
        not ok, or behind the serial the root listed. Cheap on a large, current mirror."""
        rows = self.db.execute(
            "SELECT name, display_name, serial, upstream_serial, status, page_etag, page_hash"
            " FROM projects WHERE status NOT IN ('ok', 'removed')"
            " OR (upstream_serial IS NOT NULL AND (serial IS NULL OR serial < upstream_serial))"
        )
        return {
            name: (display, HeldProject(serial, upstream, Status(status), etag, page_hash))
            for name, display, serial, upstream, status, etag, page_hash in rows
        }

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
                " upstream_serial = excluded.upstream_serial, removed_gen = NULL,"
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
    ) -> None:
        """Record a project whose pages are about to be rewritten from ``files``."""
        # executemany on the connection itself: a first sync records every file,
        # and sqlite_utils' execute wraps each call.
        conn = self.db.conn
        conn.executemany(
            "UPDATE files SET removed_gen = ? WHERE project = ? AND filename = ?"
            " AND removed_gen IS NULL",
            [(generation, name, f.filename) for f in gone],
        )
        files = list(files)
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
        self._settle_staged(name, files, generation)
        complete = status is Status.OK
        # Before published_gen moves: pages published before make this a change.
        self.db.execute(
            "INSERT OR REPLACE INTO project_changes (generation, project, change)"
            " SELECT ?, name, CASE WHEN published_gen IS NULL THEN 'added' ELSE 'changed' END"
            " FROM projects WHERE name = ?",
            [generation, name],
        )
        self.db.execute(
            "UPDATE projects SET status = ?, error = ?, page_serial = ?, page_data = ?,"
            " page_etag = ?, page_hash = ?, serial = CASE WHEN ? THEN ? ELSE serial END,"
            " updated_gen = ?, published_gen = ?, removed_gen = NULL WHERE name = ?",
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
                name,
            ],
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
        with self.transaction():
            self.db.conn.executemany(
                f"INSERT OR REPLACE INTO staged_files ({_HELD_COLUMNS}, project, staged_gen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_file_values(f), project, generation) for f in files],
            )

    def _settle_staged(self, name: str, live: Iterable[HeldFile], generation: int) -> None:
        """Empty ``name``'s staging: a file staged under a path now ``live`` needs nothing
        more; any other becomes a tombstone, whose bytes the reaper deletes."""
        if self.db.execute(
            "SELECT 1 FROM staged_files WHERE project = ? LIMIT 1", [name]
        ).fetchone() is None:
            return  # the common case, and one look-up
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

    def root_entries(self) -> Iterator[RootEntry]:
        """Projects the root index lists: published and still listed upstream."""
        rows = self.db.execute(
            "SELECT display_name, name, serial FROM projects"
            " WHERE published_gen IS NOT NULL AND status != 'removed' ORDER BY name"
        )
        for display, name, serial in rows:
            yield RootEntry(display, name, serial)

    # -- pages and failures -------------------------------------------------

    def record_page(self, path: str, sha256: str, generation: int) -> None:
        self.db.execute(
            "INSERT INTO pages (path, sha256, appeared_gen, written_gen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,"
            " written_gen = excluded.written_gen,"
            " appeared_gen = CASE WHEN removed_gen IS NULL THEN appeared_gen"
            " ELSE excluded.appeared_gen END, removed_gen = NULL",
            [path, sha256, generation, generation],
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
        """Live file rows: the base of the file removal cap."""
        (files,) = self.db.execute(
            "SELECT count(*) FROM files WHERE removed_gen IS NULL"
        ).fetchone()
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
