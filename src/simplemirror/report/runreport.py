"""Run reports: what one `mirror sync` did, as a JSON document (no I/O here).

One report per generation, written by observe.py to ``<directory>/reports/<generation>.json``.
The keys are documented in README.md ("Observability"); ``schema`` is raised whenever a key
changes meaning or goes away (adding a key does not raise it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from simplemirror import __version__
from simplemirror.sync.run import RunSummary

SCHEMA = 1
SUFFIX = ".json"


@dataclass(frozen=True)
class RunTimes:
    """When a run began and ended (state.db's runs row: ISO 8601, UTC) and how long it took."""

    started: str | None
    finished: str | None
    duration: float


@dataclass(frozen=True)
class Serials:
    """The upstream's last serial seen, and the serial of the mirror's last complete copy."""

    upstream: int | None
    held: int | None

    @property
    def lag(self) -> int | None:
        if self.upstream is None or self.held is None:
            return None
        return max(self.upstream - self.held, 0)


def redact(url: str) -> str:
    """``url`` without a user name or password: reports and metrics are often world-readable."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _pairs(entries: list[tuple[str, str]], key: str) -> list[dict[str, str]]:
    return [{key: name, "reason": why} for name, why in entries]


def render(
    summary: RunSummary, *, upstream: str, times: RunTimes, serials: Serials,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a run that got as far as a RunSummary (ok, partial, unchanged, stopped).

    ``filters``: the [filters] keys in force (filter.rules.Filters.in_force).
    """
    return {
        "schema": SCHEMA,
        "simplemirror": __version__,
        "upstream": redact(upstream),
        "generation": summary.generation,
        "started": times.started,
        "finished": times.finished,
        "duration_seconds": round(times.duration, 3),
        "outcome": summary.outcome,
        "exit_code": summary.exit_code,
        "error": None,
        "stopped_by_signal": summary.stopped_by,
        "counts": {
            "projects_changed": summary.changed,
            "projects_deferred": len(summary.deferred),
            "projects_failed": len(summary.failed),
            "entries_rejected": len(summary.rejected),
            "projects_removed": len(summary.removed),
            "files_fetched": summary.files_fetched,
            "bytes_fetched": summary.bytes_fetched,
            "metadata_from_wheels": summary.metadata_from_wheels,
            "metadata_fetched": summary.metadata_fetched,
            "files_reused": summary.reuse.taken,
            "bytes_reused": summary.reuse.bytes,
            "reuse_hashed": summary.reuse.hashed,
            "reuse_rejected": summary.reuse.rejected,
            "files_deleted": summary.files_deleted,
        },
        "serial": {"upstream": serials.upstream, "held": serials.held, "lag": serials.lag},
        "deferred": _pairs(summary.deferred, "project"),
        "failed": _pairs(summary.failed, "project"),
        "rejected": _pairs(summary.rejected, "entry"),
        "removed": list(summary.removed),
        "filters": {
            "in_force": filters or {},
            "projects_left_out": list(summary.pruned),
            "unmet": _pairs(summary.unmet, "project"),
            **summary.filtered.to_data(),
        },
    }


def render_error(
    generation: int, error: str, *, upstream: str, times: RunTimes, serials: Serials,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a run that began a generation and then could not go on (SyncError)."""
    empty = RunSummary(generation, "error")
    doc = render(empty, upstream=upstream, times=times, serials=serials, filters=filters)
    doc.update(exit_code=1, error=error)
    return doc


def report_name(generation: int) -> str:
    return f"{generation}{SUFFIX}"


def generation_of(filename: str) -> int | None:
    """The generation a report file name stands for; None for anything else in reports/."""
    stem, dot, ext = filename.partition(".")
    if dot + ext != SUFFIX or not stem.isdigit():
        return None
    return int(stem)


def to_prune(generations: list[int], keep: int) -> list[int]:
    """The reports to delete so that the newest ``keep`` remain (``keep`` 0: keep all)."""
    if keep <= 0:
        return []
    return sorted(generations)[:-keep]
