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

from simplemirror.check import status
from simplemirror.cli.config import Config
from simplemirror.report import metrics, runreport
from simplemirror.store import tree as store
from simplemirror.store.state import NoState, StateReader, open_reader
from simplemirror.sync.run import RunSummary

log = logging.getLogger("simplemirror")

REPORTS = "reports"


def last_generation(state_path: Path) -> int:
    """The newest generation in state.db (0: none, or no state.db yet)."""
    if not state_path.is_file():
        return 0
    try:
        with open_reader(state_path) as reader:
            return reader.last_generation()
    except (sqlite3.Error, NoState):
        return 0


def _serials(reader: StateReader) -> runreport.Serials:
    return runreport.Serials(upstream=reader.upstream_serial_seen(), held=reader.serial_held())


def _times(reader: StateReader, generation: int, duration: float) -> runreport.RunTimes:
    started, finished = reader.run_times(generation)
    return runreport.RunTimes(started, finished, duration)


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
    with open_reader(config.state_path) as reader:
        finished = reader.last_success()
    success = datetime.fromisoformat(finished).timestamp() if finished else None
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
    except (OSError, sqlite3.Error, NoState) as exc:
        log.error(
            "cannot write the metrics file %s: %s; check that its directory exists and is "
            "writable by this user", config.metrics_file, exc,
        )


def record_run(config: Config, summary: RunSummary) -> Path | None:
    """Report and metrics for a run that returned a summary. Returns the report's path."""
    assert summary.generation is not None
    path = None
    try:
        with open_reader(config.state_path) as reader:
            times = _times(reader, summary.generation, summary.duration)
            serials = _serials(reader)
        doc = runreport.render(summary, upstream=config.upstream, times=times, serials=serials,
                               filters=config.filters.in_force())
        path = _write_report(config.directory, summary.generation, doc, config.keep_reports)
    except (OSError, sqlite3.Error, NoState) as exc:
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
            with open_reader(config.state_path) as reader:
                # The generation this process began and ended in ``error``, if it got that
                # far. A run refused by the lock begins none; the runs newer than ``since``
                # are then another process's, and never carry this process's error message.
                generation = reader.failed_generation(since, error)
                if generation is not None:
                    times = _times(reader, generation, duration)
                    serials = _serials(reader)
            if generation is not None:
                doc = runreport.render_error(
                    generation, error, upstream=config.upstream, times=times, serials=serials,
                    filters=config.filters.in_force(),
                )
                path = _write_report(config.directory, generation, doc, config.keep_reports)
        except (OSError, sqlite3.Error, NoState) as exc:
            log.error("cannot write the run report into %s: %s", config.directory / REPORTS, exc)
    write_metrics(config, metrics.LastRun(
        finished=round(time.time(), 3), duration=round(duration, 3), outcome="error", exit_code=1,
        generation=generation,
    ))
    return path
