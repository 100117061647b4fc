"""`mirror status`: what the mirror holds and how its runs went, from state.db alone.

No network, and no writes: state.db is opened read-only (SQLite URI ``mode=ro``), and
every query runs in one read transaction, so a sync writing at the same time (WAL) is
neither disturbed nor seen half way.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from simplemirror.report.units import human_bytes
from simplemirror.simple.model import Status
from simplemirror.store.state import NoState as NoState
from simplemirror.store.state import StateReader, read_snapshot
from simplemirror.store.state import connect_readonly as connect_readonly
from simplemirror.store.state import last_upstream as last_upstream

_STATUS_ORDER = (Status.OK, Status.DEFERRED, Status.FAILED, Status.PENDING, Status.REMOVED)


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
    lock; None, cannot tell, is taken as yes) is not a failure: the one before it
    decides; during a first sync there is none, so the mirror is not up to date. A run
    recorded as running with no sync going died without saying how (killed, or its disk
    full). A repair without problems left the mirror as the sync before it did; one that
    could not repair everything did not.
    """
    for index, (outcome, error) in enumerate(runs):
        if index == 0 and outcome == "running" and running is not False:
            continue
        if outcome == "repair" and error is None:
            continue
        return outcome in UP_TO_DATE
    # None finished: never synced, or a first sync still going (a mirror that holds
    # nothing whole yet, however long that sync has run).
    return False


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


def collect(
    directory: Path,
    configured_upstream: str | None = None,
    configured_filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
    - ``filters``: the [filters] keys in force at the last run, as the config file spells
      them (empty: a full mirror); ``filters_configured``: those of the config file given
      (``configured_filters``) when they differ, which the next sync applies, else null.

    Raises NoState when there is no usable state.db.
    """
    running = sync_running(directory)

    def query(reader: StateReader) -> dict[str, Any]:
        info = _collect(reader)
        info["sync_running"] = running
        info["up_to_date"] = up_to_date(reader.outcomes(), running)
        return info

    info = read_snapshot(directory / "state.db", query)
    last_upstream = info.pop("_last_upstream")
    if configured_upstream:
        upstream, source = configured_upstream, "config"
    elif last_upstream:
        upstream, source = last_upstream, "last run"
    else:
        upstream, source = None, None
    configured = configured_filters
    info["filters_configured"] = (
        configured if configured is not None and configured != info["filters"] else None
    )
    return {"directory": str(directory), "upstream": upstream, "upstream_from": source, **info}


def _collect(reader: StateReader) -> dict[str, Any]:
    last = reader.last_run()
    projects = {status.value: 0 for status in _STATUS_ORDER}
    projects.update(reader.project_counts())
    files, nbytes = reader.live_totals()

    def troubled(status: Status) -> list[dict[str, str | None]]:
        return [{"name": name, "error": error} for name, error in reader.troubled(status)]

    return {
        "last_run": run_info(last[:5]) if last else None,
        "_last_upstream": last[5] if last else None,
        "last_complete_run": run_info(reader.last_complete_run()),
        "serial_held": reader.serial_held(),
        "upstream_serial_seen": reader.upstream_serial_seen(),
        "projects": projects,
        "files_held": files,
        "bytes_held": nbytes,
        "deferred": troubled(Status.DEFERRED),
        "failed": troubled(Status.FAILED),
        "filters": reader.filters_in_force(),
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


def describe_filters(in_force: dict[str, Any]) -> str:
    """The [filters] keys in force on one line, as the config file would have them."""
    if not in_force:
        return "none (a full mirror)"
    return "; ".join(f"{key} = {json.dumps(value)}" for key, value in in_force.items())


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
    lines.append(f"filters:       {describe_filters(info['filters'])}")
    if info.get("filters_configured") is not None:
        lines.append(f"  the config file's differ, and the next sync applies them: "
                     f"{describe_filters(info['filters_configured'])}")
    for kind in ("deferred", "failed"):
        for project in info[kind]:
            lines.append(f"  {kind} {project['name']}: {project['error'] or 'no reason recorded'}")
    if info["deferred"] or info["failed"]:
        lines.append("  the next `mirror sync` retries them")
    return "\n".join(lines) + "\n"
