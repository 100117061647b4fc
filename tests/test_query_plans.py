"""No statement that a sync, `mirror status` or `mirror log` runs walks every file row.

At the public index's size the files table holds over ten million rows (benchmarks/
fullsize.py): a statement that scans it costs seconds, each time. The statements are
those state.py itself runs, caught as SQLite executes them (a trace on every connection
the commands open) during real runs against the test upstream, then explained on the
state.db they left. Without statistics (state.db has no sqlite_stat1), SQLite plans by
its fixed rules, so a plan on this small state.db is the plan on a large one.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror.store import state
from tests.support.process import run
from tests.support.upstream import Upstream, World

# Statements that are not queries: nothing to plan.
_NOT_PLANNED = re.compile(
    r"\s*(BEGIN|COMMIT|END|SAVEPOINT|RELEASE|ROLLBACK|PRAGMA|CREATE|DROP|ALTER|ANALYZE)\b",
    re.IGNORECASE,
)
# A step that walks a whole table or index: "SCAN <table or alias>[ USING [COVERING ]INDEX
# <index>]", or "SEARCH <table or alias> USING [COVERING ]INDEX <index> (<column>>?)", a
# range open at one end (files_tombstones' "removed_gen>?" is every tombstone ever). A
# "SEARCH" by equality is a look-up.
_WALK = re.compile(
    r"^(?:SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?"
    r"|SEARCH (\w+) USING (?:COVERING )?INDEX (\w+) \(\w+[<>]\?\))$"
)
# Indexes that hold only the rows a run has work for, and so may be walked.
MAY_WALK = {
    "files_unreaped",  # tombstones whose bytes the reaper has yet to delete: next to none
}
# Statements that must walk the files, and why they may.
MAY_SCAN = {
    # Once in a state.db's life, when live_totals is made (a new state.db, or the
    # upgrade to schema 4): the count its triggers keep from then on.
    f"INSERT INTO live_totals {state._COUNT_LIVE}",
}


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("keeper", ["1.0"])
    w.add_project("grows", ["1.0"])
    w.add_project("shrinks", ["1.0", "2.0"])
    w.add_project("doomed", ["1.0"])
    return w


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement run on a connection opened from here on (sqlite_utils' too)."""
    seen: list[str] = []
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    yield seen


def files_walks(conn: sqlite3.Connection, statement: str) -> list[str]:
    """The steps of ``statement``'s plan that walk the files table, or an index of it."""
    names = {"files", *re.findall(r"\bfiles\s+AS\s+(\w+)", statement, re.IGNORECASE)}
    plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
    walks = []
    for *_, detail in plan:
        m = _WALK.match(detail)
        if m is None:
            continue
        table, index = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if table in names and index not in MAY_WALK:
            walks.append(detail)
    return walks


def test_hot_path_statements_do_not_scan_the_files_table(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    statements: list[str],
) -> None:
    directory = tmp_path / "mirror"
    config = tmp_path / "mirror.toml"
    # With a metrics file, each run ends by reading what `mirror status` reads.
    config.write_text(
        f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{directory}"\n'
        f'metrics-file = "{tmp_path / "mirror.prom"}"\n'
        "retries = 0\nretry-wait = 0.0\nstale-retries = 0\nstale-wait = 0.0\n"
    )
    assert run(capsys, "sync", "-c", str(config))[0] == 0  # every project new
    world.add_release("grows", "2.0")
    world.remove_file("shrinks", world.project("shrinks").files[0].filename)
    world.yank("keeper", world.project("keeper").files[0].filename)
    world.remove_project("doomed")
    # New files, a dropped one reaped, a yank, a project removed.
    assert run(capsys, "sync", "-c", str(config))[0] == 0
    assert run(capsys, "sync", "-c", str(config))[0] == 0  # no-op: the root answers 304
    for command in (["status"], ["status", "--json"], ["log"], ["log", "--generation", "2"],
                    ["log", "--generation", "2", "--json"]):
        assert run(capsys, *command, "--directory", str(directory))[0] == 0

    statements = statements[:]  # the runs' own; not those below
    conn = sqlite3.connect(directory / "state.db")
    # The root's temporary table (State.root_changes), as the run made it.
    for statement in statements:
        if re.match(r"\s*CREATE TEMP", statement, re.IGNORECASE):
            conn.execute(statement)
    planned = [s for s in dict.fromkeys(statements) if not _NOT_PLANNED.match(s)]
    on_files = [s for s in planned if re.search(r"\bfiles\b", s)]
    scans = {s: found for s in on_files if (found := files_walks(conn, s))}
    assert set(scans) <= MAY_SCAN, scans
    # What the runs must have run for the above to mean anything: recording files,
    # marking one gone, reaping it, the live files' totals (status, the removal cap),
    # a generation's files (log).
    for what in (r"INSERT INTO files \(", r"UPDATE files SET removed_gen", r"AS gone",
                 r"FROM live_totals", r"FROM files WHERE appeared_gen",
                 r"FROM files WHERE removed_gen ="):
        assert any(re.search(what, s) for s in planned), what
