"""Prometheus metrics in the text exposition format, for node_exporter's textfile collector.

Pure: ``render`` turns what observe.py gathered (the last run, and state.db) into the
file's text. Every sample carries a ``directory`` label, so that two mirrors on one host,
each writing its own file, never produce the same series (node_exporter refuses that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from simplemirror import __version__

# Every outcome a run can end in; each gets a sample (1 for the last run's, 0 otherwise)
# so that a query never has to guess at absent series.
OUTCOMES = ("ok", "partial", "unchanged", "interrupted", "error")
FAILURE_KINDS = ("deferred", "failed", "rejected")
PROJECT_STATUSES = ("ok", "deferred", "failed", "pending", "removed")


@dataclass(frozen=True)
class LastRun:
    """The run this process just finished (or failed to carry out)."""

    finished: float
    """Unix time."""
    duration: float
    outcome: str
    exit_code: int
    generation: int | None = None
    files_fetched: int = 0
    bytes_fetched: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    """deferred, failed and rejected: how many of each."""


@dataclass(frozen=True)
class Held:
    """What state.db says the mirror holds (None throughout when there is no state.db)."""

    last_success: float | None = None
    """Unix time the last run with exit 0 (ok or unchanged) finished."""
    upstream_serial: int | None = None
    serial: int | None = None
    projects: Mapping[str, int] | None = None
    files: int | None = None
    bytes: int | None = None


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"metric value {value!r} is not finite")
    return repr(float(value))


class _Writer:
    def __init__(self, base: Mapping[str, str]) -> None:
        self.base = dict(base)
        self.lines: list[str] = []

    def family(
        self, name: str, help_text: str, rows: list[tuple[Mapping[str, str], float]]
    ) -> None:
        if not rows:
            return  # unknown: absent, rather than a made-up value
        full = f"simplemirror_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} gauge")
        for labels, value in rows:
            merged = {**self.base, **labels}
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in merged.items())
            self.lines.append(f"{full}{{{text}}} {_number(value)}")

    def one(self, name: str, help_text: str, value: float | None) -> None:
        self.family(name, help_text, [] if value is None else [({}, value)])


def render(directory: str, run: LastRun, held: Held) -> str:
    """The whole .prom file."""
    w = _Writer({"directory": directory})
    w.family("build_info", "The simplemirror version that wrote this file.",
             [({"version": __version__}, 1)])
    w.one("last_run_timestamp_seconds",
          "When the last sync run ended (successful or not), as a Unix time.", run.finished)
    w.one("last_run_duration_seconds", "How long the last sync run took.", run.duration)
    w.one("last_run_exit_code", "The exit status of the last sync run (0: up to date).",
          run.exit_code)
    w.family("last_run_outcome", "1 for the outcome of the last sync run, 0 for the others.",
             [({"outcome": o}, int(o == run.outcome)) for o in OUTCOMES])
    w.one("last_run_generation", "The generation (state.db run number) of the last run.",
          run.generation)
    w.one("last_run_files_fetched", "Files downloaded by the last sync run.", run.files_fetched)
    w.one("last_run_bytes_fetched", "Bytes downloaded by the last sync run.", run.bytes_fetched)
    w.family("run_failures",
             "Projects the last run deferred or failed, and upstream entries it refused.",
             [({"kind": k}, run.failures.get(k, 0)) for k in FAILURE_KINDS])
    # 0 when no run ever succeeded: an alert on time() - this fires, as it should.
    w.one("last_success_timestamp_seconds",
          "When the last sync run that left the mirror up to date ended, as a Unix time "
          "(0: never).", held.last_success if held.last_success is not None else 0)
    w.one("upstream_serial", "The upstream's last serial the mirror has seen.",
          held.upstream_serial)
    w.one("serial", "The upstream serial of the mirror's last complete copy.", held.serial)
    lag = None
    if held.upstream_serial is not None and held.serial is not None:
        lag = max(held.upstream_serial - held.serial, 0)
    w.one("serial_lag", "How many serials the mirror is behind the upstream it last saw.", lag)
    if held.projects is not None:
        w.family("projects", "Projects in state.db, by status.",
                 [({"status": s}, held.projects.get(s, 0)) for s in PROJECT_STATUSES])
    w.one("files", "Files the mirror holds and publishes.", held.files)
    w.one("bytes", "Total size of the files the mirror holds.", held.bytes)
    return "\n".join(w.lines) + "\n"
