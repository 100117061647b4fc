"""`mirror status`: what the mirror holds and how its runs went, from state.db alone.

No network, and no writes: state.db is opened read-only (SQLite URI ``mode=ro``), and
every query runs in one read transaction, so a sync writing at the same time (WAL) is
neither disturbed nor seen half way.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from simplemirror.plan import Status

RUN_COLUMNS = "generation, started, finished, outcome, error"
T = TypeVar("T")
_STATUS_ORDER = (Status.OK, Status.DEFERRED, Status.FAILED, Status.PENDING, Status.REMOVED)


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


def last_upstream(path: Path, command: str = "verify") -> str | None:
    """The upstream of the last run recorded in the state.db at ``path``; None without
    a state.db or a run. Raises NoState (saying what to do) when it cannot be read:
    "no upstream" would send the operator looking for the wrong thing."""
    if not path.is_file():
        return None
    row = read_snapshot(
        path,
        lambda conn: conn.execute(
            "SELECT upstream FROM runs ORDER BY generation DESC LIMIT 1"
        ).fetchone(),
        command,
    )
    return row[0] if row else None


def read_snapshot(
    path: Path, query: Callable[[sqlite3.Connection], T], command: str = "status"
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
        if "readonly" in str(exc) and not os.access(path.parent, os.W_OK):
            # WAL mode: even a reader writes the -shm index beside state.db.
            raise NoState(
                f"{path} can only be read by a user who may write in {path.parent} "
                "(SQLite's WAL mode); run this as the mirror's user, e.g. "
                f"`sudo -u simplemirror mirror {command} ...`"
            ) from exc
        raise NoState(
            f"{path} cannot be read as a simplemirror state database ({exc}); check that "
            "the directory is the mirror's, and if it is, state.db is damaged: restore it "
            "from a backup, or move it aside and run `mirror sync` to build a new one "
            "(which downloads every file again)"
        ) from exc
    finally:
        conn.close()


def run_info(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """A runs row (RUN_COLUMNS) as JSON-ready keys, with its duration."""
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
    - ``serial_held``: the upstream serial of the last complete copy (meta root_serial).
    - ``upstream_serial_seen``: the upstream root's serial at the last run that saw one.
    - ``projects``: the number of projects in each status: ok, deferred, failed, pending,
      removed (always all five keys).
    - ``files_held``: live files (on a page, bytes on disk); ``bytes_held``: their sizes.
    - ``deferred``, ``failed``: lists of ``{"name", "error"}``, by name.

    Raises NoState when there is no usable state.db.
    """
    info = read_snapshot(directory / "state.db", _collect)
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


def describe_run(run: dict[str, Any] | None) -> str:
    if run is None:
        return "none"
    text = f"generation {run['generation']}, {run['outcome']}, started {run['started']}"
    if run["finished"] is None:
        if run["outcome"] == "running":
            text += ", not finished (still running, or killed: the next sync resumes)"
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
        f"last run:      {describe_run(info['last_run'])}",
        f"last complete: {describe_run(info['last_complete_run'])}",
        f"serial:        {serial}",
        f"projects:      {counts}",
        f"files:         {info['files_held']} held, {info['bytes_held'] / 1e6:.1f} MB",
    ]
    for kind in ("deferred", "failed"):
        for project in info[kind]:
            lines.append(f"  {kind} {project['name']}: {project['error'] or 'no reason recorded'}")
    if info["deferred"] or info["failed"]:
        lines.append("  the next `mirror sync` retries them")
    return "\n".join(lines) + "\n"
