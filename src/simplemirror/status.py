"""`mirror status`: what the mirror holds and how its runs went, from state.db alone.

No network, and no writes: state.db is opened read-only (SQLite URI ``mode=ro``), and
every query runs in one read transaction, so a sync writing at the same time (WAL) is
neither disturbed nor seen half way.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from simplemirror.model import Status
from simplemirror.units import human_bytes

RUN_COLUMNS = "generation, started, finished, outcome, error"
T = TypeVar("T")
_STATUS_ORDER = (Status.OK, Status.DEFERRED, Status.FAILED, Status.PENDING, Status.REMOVED)


class NoState(Exception):
    """There is no state.db to read; the message says what to do."""


def lock_path(directory: Path) -> Path:
    """The mirror's lock file: a sync (or a repair) holds it exclusively, a plain verify shared."""
    return directory / ".lock"


def sync_running(directory: Path) -> bool | None:
    """Whether a sync (or a verify --repair) holds the mirror's lock now; None: cannot tell.

    Asking takes a shared lock for an instant, which needs only read access; a sync
    starting in that instant waits for it (see sync.locked).
    """
    try:
        fd = os.open(lock_path(directory), os.O_RDONLY)
    except FileNotFoundError:
        return False  # no run ever took the lock here
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock
    return False


# Outcomes of a finished run that leave the mirror an exact copy of what upstream listed.
UP_TO_DATE = frozenset({"ok", "unchanged"})


def up_to_date(runs: Iterable[tuple[str, str | None]], running: bool | None) -> bool:
    """Whether the runs (outcome, error; newest first) leave the mirror known up to date.

    The last run that finished decides. A run still going (``running``: a sync holds the
    lock; None, cannot tell, is taken as yes) is not a failure: the one before it decides,
    and during a first sync there is none. A run recorded as running with no sync going
    died without saying how (killed, or its disk full). A repair without problems left
    the mirror as the sync before it did; one that could not repair everything did not.
    """
    going = False
    for index, (outcome, error) in enumerate(runs):
        if index == 0 and outcome == "running" and running is not False:
            going = True
            continue
        if outcome == "repair" and error is None:
            continue
        return outcome in UP_TO_DATE
    return going  # only a first sync, still going


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


def connect_reader(path: Path, command: str, *, unchanging: bool) -> sqlite3.Connection:
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
        return conn
    except sqlite3.Error as exc:
        conn.close()
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        wal = path.with_name(path.name + "-wal")
        if (not unchanging or code != sqlite3.SQLITE_READONLY
                or (wal.exists() and wal.stat().st_size)):
            raise _unreadable(path, exc, command) from exc
    uri = f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True)


def read_snapshot(
    path: Path, query: Callable[[sqlite3.Connection], T], command: str = "mirror status"
) -> T:
    """``query``'s answer from the state.db at ``path``, opened read-only, in one read
    transaction. Raises NoState (saying what to do) when it cannot be read."""
    conn = connect_readonly(path)
    try:
        # One snapshot for every query, however a running sync moves on meanwhile.
        conn.execute("BEGIN")
        try:
            return query(conn)
        finally:
            conn.rollback()
    except sqlite3.Error as exc:
        raise _unreadable(path, exc, command) from exc
    finally:
        conn.close()


def _unreadable(path: Path, exc: sqlite3.Error, command: str = "mirror status") -> NoState:
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
    conn = connect_reader(path, command, unchanging=True)
    try:
        row = conn.execute("SELECT upstream FROM runs ORDER BY generation DESC LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        raise _unreadable(path, exc, command) from exc
    finally:
        conn.close()
    return row[0] if row else None


def run_info(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    generation, started, finished, outcome, error = row
    duration = None
    if started and finished:
        duration = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
    return {
        "generation": generation,
        "started": started,
        "finished": finished,
        "outcome": outcome,
        "duration_seconds": duration,
        "error": error,
    }


def collect(directory: Path, configured_upstream: str | None = None) -> dict[str, Any]:
    """The status of the mirror in ``directory``, as one JSON-ready object.

    Keys:

    - ``directory``: the mirror directory.
    - ``upstream``: the configured upstream, else the last run's (null when neither);
      ``upstream_from``: ``"config"``, ``"last run"`` or null.
    - ``last_run``, ``last_complete_run`` (the last with outcome ``ok``): null, or an
      object with ``generation``, ``started`` and ``finished`` (ISO 8601, UTC; finished
      is null while a run is going, or if it died), ``outcome`` (running, ok, partial,
      unchanged, interrupted, error, repair), ``duration_seconds`` (null until finished)
      and ``error``.
    - ``sync_running``: whether a sync (or a verify --repair) holds the mirror's lock now
      (null: the lock file cannot be read).
    - ``up_to_date``: whether the last run that finished left the mirror an exact copy
      (see up_to_date); `mirror status` exits 3 when it is false.
    - ``serial_held``: the upstream serial of the last complete copy (meta root_serial).
    - ``upstream_serial_seen``: the upstream root's serial at the last run that saw one.
    - ``projects``: the number of projects in each status: ok, deferred, failed, pending,
      removed (always all five keys).
    - ``files_held``: live files (on a page, bytes on disk); ``bytes_held``: their sizes.
    - ``deferred``, ``failed``: lists of ``{"name", "error"}``, by name.

    Raises NoState when there is no usable state.db.
    """
    running = sync_running(directory)

    def query(conn: sqlite3.Connection) -> dict[str, Any]:
        info = _collect(conn)
        info["sync_running"] = running
        info["up_to_date"] = up_to_date(
            conn.execute("SELECT outcome, error FROM runs ORDER BY generation DESC"), running
        )
        return info

    info = read_snapshot(directory / "state.db", query)
    last_upstream = info.pop("_last_upstream")
    if configured_upstream:
        upstream, source = configured_upstream, "config"
    elif last_upstream:
        upstream, source = last_upstream, "last run"
    else:
        upstream, source = None, None
    return {"directory": str(directory), "upstream": upstream, "upstream_from": source, **info}


def _collect(conn: sqlite3.Connection) -> dict[str, Any]:
    last = conn.execute(
        f"SELECT {RUN_COLUMNS}, upstream FROM runs ORDER BY generation DESC LIMIT 1"
    ).fetchone()
    complete = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE outcome = 'ok' ORDER BY generation DESC LIMIT 1"
    ).fetchone()
    seen = conn.execute(
        "SELECT upstream_serial FROM runs WHERE upstream_serial IS NOT NULL"
        " ORDER BY generation DESC LIMIT 1"
    ).fetchone()
    held = conn.execute("SELECT value FROM meta WHERE key = 'root_serial'").fetchone()
    projects = {status.value: 0 for status in _STATUS_ORDER}
    for status, count in conn.execute("SELECT status, count(*) FROM projects GROUP BY status"):
        projects[status] = count
    columns = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    # A state.db from before deleted_gen existed is read as it stands (read-only: no
    # migration); there, every row without removed_gen has its bytes on disk.
    live = "removed_gen IS NULL" + (" AND deleted_gen IS NULL" if "deleted_gen" in columns else "")
    files, nbytes = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM files WHERE {live}"
    ).fetchone()

    def troubled(status: Status) -> list[dict[str, str | None]]:
        rows = conn.execute(
            "SELECT name, error FROM projects WHERE status = ? ORDER BY name", [status.value]
        )
        return [{"name": name, "error": error} for name, error in rows]

    return {
        "last_run": run_info(last[:5]) if last else None,
        "_last_upstream": last[5] if last else None,
        "last_complete_run": run_info(complete),
        "serial_held": int(held[0]) if held and held[0] is not None else None,
        "upstream_serial_seen": seen[0] if seen else None,
        "projects": projects,
        "files_held": files,
        "bytes_held": nbytes,
        "deferred": troubled(Status.DEFERRED),
        "failed": troubled(Status.FAILED),
    }


_NOT_FINISHED = {
    True: ", still running",
    False: ", not finished: its process ended without recording how (killed, or its disk "
    "full); the next sync resumes",
    None: ", not finished (still running, or killed: the next sync resumes)",
}


def describe_run(run: dict[str, Any] | None, running: bool | None = None) -> str:
    if run is None:
        return "none"
    text = f"generation {run['generation']}, {run['outcome']}, started {run['started']}"
    if run["finished"] is None:
        if run["outcome"] == "running":
            text += _NOT_FINISHED[running]
        return text
    text += f", finished {run['finished']} ({run['duration_seconds']:.0f} s)"
    if run["error"]:
        text += f": {run['error']}"
    return text


def format_text(info: dict[str, Any]) -> str:
    """The status as lines for a person."""
    source = f" (from the {info['upstream_from']})" if info["upstream_from"] else ""
    held, seen = info["serial_held"], info["upstream_serial_seen"]
    serial = f"held {'none' if held is None else held}, upstream last seen "
    serial += "unknown" if seen is None else str(seen)
    if held is not None and seen is not None and seen > held:
        serial += f" ({seen - held} behind)"
    counts = ", ".join(f"{n} {status}" for status, n in info["projects"].items())
    lines = [
        f"mirror:        {info['directory']}",
        f"upstream:      {info['upstream'] or 'unknown (not configured, and no run yet)'}{source}",
        f"last run:      {describe_run(info['last_run'], info.get('sync_running'))}",
        f"last complete: {describe_run(info['last_complete_run'])}",
        f"serial:        {serial}",
        f"projects:      {counts}",
        f"files:         {info['files_held']} held, {human_bytes(info['bytes_held'])}",
    ]
    for kind in ("deferred", "failed"):
        for project in info[kind]:
            lines.append(f"  {kind} {project['name']}: {project['error'] or 'no reason recorded'}")
    if info["deferred"] or info["failed"]:
        lines.append("  the next `mirror sync` retries them")
    return "\n".join(lines) + "\n"
