"""After each sync run: write its report and, when configured, the Prometheus textfile.

This is the I/O edge of runreport.py and metrics.py. It reads state.db read-only (as
`mirror status` does), after the run has released it. A failure here is logged and never
changes the run's exit status: the mirror itself is what the status speaks for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from simplemirror import metrics, runreport, status, store
from simplemirror.config import Config
from simplemirror.sync import RunSummary

log = logging.getLogger("simplemirror")

REPORTS = "reports"


def last_generation(state_path: Path) -> int:
    """The newest generation in state.db (0: none, or no state.db yet)."""
    if not state_path.is_file():
        return 0
    try:
        conn = status.connect_readonly(state_path)
        try:
            row = conn.execute("SELECT max(generation) FROM runs").fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, status.NoState):
        return 0
    return int(row[0] or 0)


def _serials(conn: sqlite3.Connection) -> runreport.Serials:
    seen = conn.execute(
        "SELECT upstream_serial FROM runs WHERE upstream_serial IS NOT NULL"
        " ORDER BY generation DESC LIMIT 1"
    ).fetchone()
    held = conn.execute("SELECT value FROM meta WHERE key = 'root_serial'").fetchone()
    return runreport.Serials(
        upstream=int(seen[0]) if seen else None,
        held=int(held[0]) if held and held[0] is not None else None,
    )


def _times(conn: sqlite3.Connection, generation: int, duration: float) -> runreport.RunTimes:
    row = conn.execute(
        "SELECT started, finished FROM runs WHERE generation = ?", [generation]
    ).fetchone()
    started, finished = row if row else (None, None)
    return runreport.RunTimes(started, finished, duration)


def _failed_generation(conn: sqlite3.Connection, since: int, error: str) -> int | None:
    """The generation this process began and ended in ``error``, if it got that far.

    A run refused by the lock begins none; the runs newer than ``since`` are then another
    process's, and never carry this process's error message.
    """
    row = conn.execute(
        "SELECT max(generation) FROM runs WHERE generation > ? AND outcome = 'error'"
        " AND error = ?",
        [since, error],
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _write_report(directory: Path, generation: int, doc: dict[str, object], keep: int) -> Path:
    reports = directory / REPORTS
    reports.mkdir(exist_ok=True)
    target = reports / runreport.report_name(generation)
    store.write_durable(target, (json.dumps(doc, indent=2) + "\n").encode())
    found = [g for g in map(runreport.generation_of, os.listdir(reports)) if g is not None]
    for old in runreport.to_prune(found, keep):
        with contextlib.suppress(FileNotFoundError):
            (reports / runreport.report_name(old)).unlink()
    return target


def _held(config: Config) -> metrics.Held:
    """What the mirror holds, from state.db; all unknown when there is none yet."""
    if not config.state_path.is_file():
        return metrics.Held()
    info = status.collect(config.directory)  # one read snapshot; safe beside a running sync
    conn = status.connect_readonly(config.state_path)
    try:
        row = conn.execute(
            "SELECT max(finished) FROM runs WHERE outcome IN ('ok', 'unchanged')"
        ).fetchone()
    finally:
        conn.close()
    success = datetime.fromisoformat(row[0]).timestamp() if row and row[0] else None
    return metrics.Held(
        last_success=success,
        upstream_serial=info["upstream_serial_seen"],
        serial=info["serial_held"],
        projects=info["projects"],
        files=info["files_held"],
        bytes=info["bytes_held"],
    )


def write_metrics(config: Config, run: metrics.LastRun) -> None:
    if config.metrics_file is None:
        return
    try:
        text = metrics.render(str(config.directory), run, _held(config))
        store.write_durable(config.metrics_file, text.encode())
    except (OSError, sqlite3.Error, status.NoState) as exc:
        log.error(
            "cannot write the metrics file %s: %s; check that its directory exists and is "
            "writable by this user", config.metrics_file, exc,
        )


def record_run(config: Config, summary: RunSummary) -> Path | None:
    """Report and metrics for a run that returned a summary. Returns the report's path."""
    assert summary.generation is not None
    path = None
    try:
        conn = status.connect_readonly(config.state_path)
        try:
            times = _times(conn, summary.generation, summary.duration)
            serials = _serials(conn)
        finally:
            conn.close()
        doc = runreport.render(summary, upstream=config.upstream, times=times, serials=serials)
        path = _write_report(config.directory, summary.generation, doc, config.keep_reports)
    except (OSError, sqlite3.Error, status.NoState) as exc:
        log.error("cannot write the run report into %s: %s", config.directory / REPORTS, exc)
    failures = {
        "deferred": len(summary.deferred),
        "failed": len(summary.failed),
        "rejected": len(summary.rejected),
    }
    write_metrics(config, metrics.LastRun(
        finished=round(time.time(), 3), duration=round(summary.duration, 3),
        outcome=summary.outcome, exit_code=summary.exit_code, generation=summary.generation,
        files_fetched=summary.files_fetched, bytes_fetched=summary.bytes_fetched,
        failures=failures,
    ))
    return path


def record_error(config: Config, error: str, *, since: int, duration: float) -> Path | None:
    """Report (when the run had begun a generation) and metrics for a run ended by SyncError.

    ``since``: the newest generation before the run (see last_generation).
    """
    path = None
    generation = None
    if config.state_path.is_file():
        try:
            conn = status.connect_readonly(config.state_path)
            try:
                generation = _failed_generation(conn, since, error)
                if generation is not None:
                    times = _times(conn, generation, duration)
                    serials = _serials(conn)
            finally:
                conn.close()
            if generation is not None:
                doc = runreport.render_error(
                    generation, error, upstream=config.upstream, times=times, serials=serials
                )
                path = _write_report(config.directory, generation, doc, config.keep_reports)
        except (OSError, sqlite3.Error, status.NoState) as exc:
            log.error("cannot write the run report into %s: %s", config.directory / REPORTS, exc)
    write_metrics(config, metrics.LastRun(
        finished=round(time.time(), 3), duration=round(duration, 3), outcome="error", exit_code=1,
        generation=generation,
    ))
    return path
