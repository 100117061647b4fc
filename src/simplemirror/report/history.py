"""`mirror log`: the runs, newest first, and what one run changed, from state.db alone.

Read-only, like `mirror status` (state.read_snapshot): one read transaction on a
``mode=ro`` connection, so it is safe while a sync runs. Its queries are
state.StateReader's, with every other statement on state.db.

What "changed in generation N" means, in state.db's columns:

- project added: ``project_changes.change = 'added'``: its pages were written in N and
  none were published before it (a new project, or one back after its removal);
- project changed: ``'changed'``: its pages were written again in N (new or dropped
  files, or only its data: a yank, a status, a serial);
- project removed: ``'removed'``: its pages were deleted in N, because upstream no longer
  lists it (usually in the run that noticed; in the next one, when that run stopped early).
  The projects row keeps only the latest of all this, hence that table (schema 3); for
  generations before meta ``changes_since`` (runs of an older simplemirror), project
  changes are unknown;
- file added: a files row with ``appeared_gen = N``: a new filename, or new bytes under a
  filename held before (then the old row shows as removed in N too);
- file removed: ``removed_gen = N``: it left its project's pages (its bytes leave the
  disk once nothing else links them, ``deleted_gen``).

A dry run records nothing, so has no generation. A run that stopped (interrupted, error,
or killed and still ``running``) shows what it committed before it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simplemirror.check import status
from simplemirror.report.units import human_bytes
from simplemirror.store.state import RUN_COUNTS, StateReader, read_snapshot

_PROJECT_CHANGES = ("added", "changed", "removed")


class NoGeneration(Exception):
    """The generation asked for is not in state.db; the message says which are."""


def _run(row: tuple[Any, ...]) -> dict[str, Any]:
    info = status.run_info(row[:5])
    assert info is not None
    upstream, upstream_serial, *counts = row[5:]
    return {**info, "upstream": upstream, "upstream_serial": upstream_serial,
            **dict(zip(RUN_COUNTS, counts, strict=True))}


def runs(directory: Path, limit: int) -> dict[str, Any]:
    """The last ``limit`` runs, newest first, as one JSON-ready object.

    Keys: ``directory``; ``runs``: a list of objects with the keys of `mirror status`'s
    ``last_run`` (generation, started, finished, outcome, duration_seconds, error), plus
    ``upstream``, ``upstream_serial`` and the run's own counts: ``projects_changed``,
    ``projects_deferred``, ``projects_failed``, ``projects_removed``, ``files_fetched``,
    ``bytes_fetched``.
    """

    def query(reader: StateReader) -> list[dict[str, Any]]:
        return [_run(row) for row in reader.runs(limit)]

    return {"directory": str(directory),
            "runs": read_snapshot(directory / "state.db", query, "mirror log")}


def changes(directory: Path, generation: int) -> dict[str, Any]:
    """What generation ``generation`` changed, as one JSON-ready object.

    Keys: ``directory``; ``run``: as one item of runs()'s list; ``projects``: null when
    not recorded for this generation, else ``added``, ``changed``, ``removed``: lists of
    (normalized) names; ``files``: ``added`` and ``removed``, lists of ``{"project",
    "filename", "size", "path"}`` (path below web/), with ``bytes_added`` and
    ``bytes_removed``, their totals. Raises NoGeneration when there is no such run.
    """
    path = directory / "state.db"

    def query(reader: StateReader) -> dict[str, Any]:
        row = reader.run(generation)
        if row is None:
            raise NoGeneration(_missing(reader, path, generation))
        added, removed = (_files(reader, generation, removed=removed)
                          for removed in (False, True))
        return {
            "directory": str(directory),
            "run": _run(row),
            "projects": _projects(reader, generation),
            "files": {
                "added": added,
                "removed": removed,
                "bytes_added": sum(f["size"] for f in added),
                "bytes_removed": sum(f["size"] for f in removed),
            },
        }

    return read_snapshot(path, query, "mirror log")


def _missing(reader: StateReader, path: Path, generation: int) -> str:
    low, high = reader.generations()
    if low is None:
        return f"no run is recorded in {path} yet, so there is no generation {generation}"
    return (
        f"there is no generation {generation} in {path} (it holds {low} to {high}); "
        "`mirror log` lists the runs"
    )


def _projects(reader: StateReader, generation: int) -> dict[str, list[str]] | None:
    rows = reader.project_changes(generation)
    if rows is None:
        return None
    found: dict[str, list[str]] = {change: [] for change in _PROJECT_CHANGES}
    for change, project in rows:
        found[change].append(project)
    return found


def _files(reader: StateReader, generation: int, *, removed: bool) -> list[dict[str, Any]]:
    rows = reader.files_changed(generation, removed=removed)
    return [{"project": p, "filename": f, "size": s, "path": w} for p, f, s, w in rows]


# -- text -----------------------------------------------------------------------------


def _human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"  # not finished: still running, or killed
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


_HEADER = ("generation", "started (UTC)", "duration", "outcome", "changed", "removed",
           "files", "fetched")
_WIDTHS = (10, -25, 12, -11, 7, 7, 6, 9)  # negative: left-aligned


def _columns(values: tuple[str, ...]) -> str:
    cells = (f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, w in zip(values, _WIDTHS, strict=True))
    return "  ".join(cells).rstrip()


def format_runs(info: dict[str, Any]) -> str:
    """One line per run, newest first, under a header."""
    if not info["runs"]:
        return f"no run is recorded in {info['directory']} yet\n"
    lines = [_columns(_HEADER)]
    for run in info["runs"]:
        lines.append(_columns((
            str(run["generation"]), run["started"], _human_duration(run["duration_seconds"]),
            run["outcome"], str(run["projects_changed"]), str(run["projects_removed"]),
            str(run["files_fetched"]), human_bytes(run["bytes_fetched"]),
        )))
    return "\n".join(lines) + "\n"


def format_changes(info: dict[str, Any]) -> str:
    """The run, then its projects added, changed and removed, then its files added and
    removed, with sizes and totals."""
    run, files = info["run"], info["files"]
    lines = [
        status.describe_run(run),
        f"fetched: {run['files_fetched']} file(s), {human_bytes(run['bytes_fetched'])}",
    ]
    if info["projects"] is None:
        lines.append("projects: not recorded for this generation (its run predates "
                     "`mirror log`); its files are below")
    else:
        for change in _PROJECT_CHANGES:
            names = info["projects"][change]
            lines.append(f"projects {change} ({len(names)}){':' if names else ''}")
            lines.extend(f"  {name}" for name in names)
    for change in ("added", "removed"):
        listed = files[change]
        total = human_bytes(files[f"bytes_{change}"])
        lines.append(f"files {change} ({len(listed)}, {total}){':' if listed else ''}")
        width = max((len(f["project"]) + len(f["filename"]) + 1 for f in listed), default=0)
        for f in listed:
            name = f"{f['project']}/{f['filename']}"
            lines.append(f"  {name:<{width}}  {human_bytes(f['size']):>9}")
    return "\n".join(lines) + "\n"
