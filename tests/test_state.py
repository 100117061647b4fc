"""state.db: schema creation and upgrades of older files."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest
import sqlite_utils
import sqlite_utils.plugins
from packaging.requirements import Requirement

from simplemirror.simple.model import HeldFile, RootProject
from simplemirror.store.state import SCHEMA_VERSION, State, StateError, StateReader
from simplemirror.sync.plan import Status
from tests.support.schemas import as_schema_2, as_schema_3

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_declared_sqlite_utils_has_the_transactions_state_uses():
    # State.transaction is Database.atomic, which came with sqlite-utils 4.0: a 3.x
    # that the declaration let in would install, then fail on the first State().
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (requirement,) = [r for r in map(Requirement, declared) if r.name == "sqlite-utils"]
    assert not requirement.specifier.contains("3.39.1")  # the last 3.x
    assert requirement.specifier.contains(importlib.metadata.version("sqlite-utils"))


class _Plugin:
    """A sqlite-utils plugin, as an installed package would register one."""

    def __init__(self) -> None:
        self.prepared = 0

    @sqlite_utils.hookimpl
    def prepare_connection(self, conn: sqlite3.Connection) -> None:
        self.prepared += 1


def test_installed_sqlite_utils_plugins_never_touch_state_db(tmp_path: Path):
    plugin = _Plugin()
    sqlite_utils.plugins.pm.register(plugin)
    try:
        State(tmp_path / "state.db")
        State.readonly(tmp_path / "state.db")
    finally:
        sqlite_utils.plugins.pm.unregister(plugin)
    assert plugin.prepared == 0


def test_a_schema_1_state_db_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE projects (name TEXT PRIMARY KEY, display_name TEXT NOT NULL,
                upstream_serial INTEGER, serial INTEGER, page_serial INTEGER,
                status TEXT NOT NULL, error TEXT, page_data TEXT,
                appeared_gen INTEGER NOT NULL, updated_gen INTEGER NOT NULL,
                published_gen INTEGER, removed_gen INTEGER);
            INSERT INTO projects (name, display_name, status, appeared_gen, updated_gen)
                VALUES ('old', 'Old', 'ok', 1, 1);
            CREATE TABLE files (id INTEGER PRIMARY KEY, project TEXT NOT NULL,
                filename TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
                hashes TEXT NOT NULL, url TEXT NOT NULL, requires_python TEXT,
                yanked INTEGER NOT NULL DEFAULT 0, yanked_reason TEXT, upload_time TEXT,
                metadata_hashes TEXT, extra TEXT, appeared_gen INTEGER NOT NULL,
                updated_gen INTEGER NOT NULL, removed_gen INTEGER);
            """
        )
    state = State(path)
    try:
        assert "page_etag" in state.db["projects"].columns_dict
        assert "deleted_gen" in state.db["files"].columns_dict
        assert state.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert list(state.held_projects()) == ["old"]
    finally:
        state.close()


def test_a_newer_state_db_is_refused(tmp_path: Path):

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
            f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION + 1}');"
        )
    with pytest.raises(StateError, match="newer simplemirror"):
        State(path)


def _plan(state: State, sql: str, params: list) -> str:
    rows = state.db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return " | ".join(row[-1] for row in rows)


def test_a_state_db_being_made_appears_only_with_its_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run killed while it makes state.db leaves none, not an empty one that every
    command then calls damaged; the next run makes it afresh."""
    path = tmp_path / "state.db"

    def killed(self: State) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(State, "_migrate", killed)
        with pytest.raises(KeyboardInterrupt):
            State(path)
    assert not path.exists()
    state = State(path)
    try:
        assert state.get_meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        state.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]  # nothing left over


def test_an_empty_state_in_memory_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """What a dry run plans against before any sync: nothing on disk, in the directory
    it runs from or anywhere."""
    monkeypatch.chdir(tmp_path)
    State.empty().close()
    assert list(tmp_path.iterdir()) == []


def test_per_project_queries_use_the_project_index_not_a_walk_over_live_files(tmp_path: Path):
    # With an index over every row's removed_gen, SQLite read `removed_gen IS NULL` as a
    # selective equality and walked all live files of the mirror for each project.
    state = State(tmp_path / "state.db")
    held = "SELECT filename FROM files WHERE project = ? AND removed_gen IS NULL ORDER BY id"
    assert "files_live (project=?)" in _plan(state, held, ["p"])
    gone = "UPDATE files SET removed_gen = ? WHERE project = ? AND removed_gen IS NULL"
    assert "files_live (project=?)" in _plan(state, gone, [1, "p"])
    unreaped = "SELECT id FROM files WHERE removed_gen IS NOT NULL AND deleted_gen IS NULL"
    assert "files_unreaped" in _plan(state, unreaped, [])


def test_the_old_index_over_every_removed_gen_is_dropped(tmp_path: Path):
    path = tmp_path / "state.db"
    State(path).close()
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX files_removed ON files (removed_gen)")
    state = State(path)
    names = {name for (name,) in state.db.execute("SELECT name FROM sqlite_master")}
    assert "files_removed" not in names and "files_tombstones" in names


def test_root_changes_in_sql_plan_the_same_as_planning_in_memory(tmp_path: Path):
    import random

    from simplemirror.simple.model import RootIndex, RootProject
    from simplemirror.sync.plan import HeldProject, Status, plan_changes, plan_sync

    rng = random.Random(7)
    state = State(tmp_path / "state.db")
    held: dict[str, HeldProject] = {}
    for i in range(400):
        name = f"p{i}"
        status = rng.choice(list(Status))
        serial = rng.choice([None, i, i + 1])
        upstream = rng.choice([None, i, i + 2])
        etag = rng.choice([None, f'"e{i}"'])
        held[name] = HeldProject(serial, upstream, status, etag, None)
        state.db.execute(
            "INSERT INTO projects (name, display_name, serial, upstream_serial, status,"
            " page_etag, appeared_gen, updated_gen) VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
            [name, name.upper(), serial, upstream, status.value, etag],
        )
    # The root lists some held projects (at various serials), leaves some out, adds new ones.
    root = RootIndex(
        tuple(
            RootProject(f"P{i}", f"p{i}", rng.choice([None, i, i + 1, i + 5]))
            for i in range(100, 500)
            if rng.random() < 0.9
        ),
        500,
    )
    for only in (None, {f"p{i}" for i in range(0, 500, 3)}):
        expected = plan_sync(root, held, only)
        got = plan_changes(state.root_changes(root.projects, only), only)
        assert sorted(got.fetch, key=lambda t: t.name) == sorted(
            expected.fetch, key=lambda t: t.name)
        assert got.removed == expected.removed
        assert got.unchanged == expected.unchanged
        assert expected.fetch and expected.removed and expected.unchanged  # each case occurs


def test_undo_in_memory_keeps_savepoint_journals_off_the_disk(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    try:
        assert state.db.execute("PRAGMA temp_store").fetchone()[0] == 0  # the default: a file
        state.undo_in_memory()
        assert state.db.execute("PRAGMA temp_store").fetchone()[0] == 2  # memory
        with state.transaction():  # still usable, savepoints and all
            state.set_meta("k", "v")
        assert state.get_meta("k") == "v"
    finally:
        state.close()


def test_project_changes_are_recorded_from_the_first_run_after_the_upgrade(tmp_path: Path):
    new = State(tmp_path / "new.db")
    try:
        assert new.get_meta("changes_since") == "1"
    finally:
        new.close()

    path = tmp_path / "state.db"
    state = State(path)
    for _ in range(3):
        state.finish_run(state.begin_run("http://127.0.0.1/simple/"), "ok")
    state.close()
    # What a schema-2 simplemirror left: three runs, and no record of project changes.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE project_changes")
        db.execute("DELETE FROM meta WHERE key = 'changes_since'")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    for _ in range(2):  # the first opening upgrades; the next leaves it be
        state = State(path)
        try:
            assert state.db["project_changes"].exists()
            assert state.get_meta("changes_since") == "4"
            assert state.get_meta("schema_version") == str(SCHEMA_VERSION) == "4"
        finally:
            state.close()


# -- staged files: finished by a stopped run, on no page yet -------------------------------


def _file(project: str, filename: str, digest: str) -> HeldFile:
    return HeldFile(
        project=project, filename=filename, path=f"packages/{digest}/{filename}", size=3,
        hashes={"sha256": digest * 64}, url=f"http://127.0.0.1/{filename}",
    )


def _record(
    state: State, name: str, files: list[HeldFile], generation: int,
    gone: tuple[HeldFile, ...] = (),
) -> None:
    with state.transaction():
        state.record_project(
            name, status=Status.OK, error=None, page_serial=1, page_data={}, files=files,
            gone=gone, generation=generation,
        )


def test_staged_files_are_planned_with_but_never_listed_nor_reaped(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    state.note_listed([("p", "p", 1)], 1)
    old = _file("p", "p-1.0.tar.gz", "a")
    _record(state, "p", [old], 1)
    _record(state, "p", [], 2, gone=(old,))  # upstream dropped it: a tombstone, reapable
    assert state.reapable() == [(1, old.path)]
    # It comes back, and a run stopped with it downloaded again (at the same path).
    again = _file("p", "p-1.0.tar.gz", "a")
    state.stage_files("p", [again], 3)

    assert state.reapable() == []  # the staged file's bytes stay
    assert state.held_files("p") == []  # no page lists it, no count holds it
    assert state.live_files_count() == 0
    assert state.planning_files("p") == [again]  # but the next run keeps it

    _record(state, "p", [again], 4)
    assert state.held_files("p") == [again]
    assert state.db.execute("SELECT count(*) FROM staged_files").fetchone() == (0,)


def test_a_staged_file_stands_in_for_the_listed_one_of_the_same_name(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    state.note_listed([("p", "p", 1)], 1)
    listed = _file("p", "p-1.0.tar.gz", "a")
    _record(state, "p", [listed], 1)
    replaced = _file("p", "p-1.0.tar.gz", "b")  # upstream replaced the bytes
    state.stage_files("p", [replaced], 2)
    assert state.planning_files("p") == [replaced]


def test_staged_files_no_page_takes_become_tombstones_for_the_reaper(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    state.note_listed([("p", "p", 1), ("q", "q", 1)], 1)
    dropped = _file("p", "p-1.0.tar.gz", "a")
    kept = _file("p", "p-1.1.tar.gz", "b")
    state.stage_files("p", [dropped, kept], 1)
    of_removed = _file("q", "q-1.0.tar.gz", "c")
    state.stage_files("q", [of_removed], 1)

    _record(state, "p", [kept], 2)  # the page no longer lists p-1.0
    state.mark_removed(["q"], 2)  # upstream no longer lists q

    assert sorted(path for _, path in state.reapable()) == [dropped.path, of_removed.path]
    assert state.held_files("p") == [kept]
    assert state.db.execute("SELECT count(*) FROM staged_files").fetchone() == (0,)


def test_a_read_only_state_plans_and_never_waits_on_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    state.note_listed([("p", "p", 1)], 1)
    state.stage_files("p", [_file("p", "p-1.0.tar.gz", "a")], 1)
    state.close()
    writer = sqlite3.connect(path)
    writer.execute("BEGIN IMMEDIATE")  # a sync in the middle of a transaction
    writer.execute("UPDATE projects SET serial = 5")
    try:
        started = time.monotonic()
        reader = State.readonly(path)
        try:
            changes = reader.root_changes([RootProject("p", "p", 2), RootProject("n", "n", 1)])
            assert sorted(project.normalized for project, _ in changes.changed) == ["n", "p"]
            assert [f.filename for f in reader.planning_files("p")] == ["p-1.0.tar.gz"]
        finally:
            reader.close()
        assert time.monotonic() - started < 2
    finally:
        writer.rollback()
        writer.close()
    with sqlite3.connect(path) as db:  # and it wrote nothing
        assert db.execute("SELECT count(*) FROM projects").fetchone() == (1,)


def test_a_read_only_state_reads_one_written_before_staging_existed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    state.note_listed([("p", "p", 1)], 1)
    _record(state, "p", [_file("p", "p-1.0.tar.gz", "a")], 1)
    state.close()
    as_schema_2(path)  # as a simplemirror before staging left it: no upgrade needed to read
    reader = State.readonly(path)
    try:
        assert [f.filename for f in reader.planning_files("p")] == ["p-1.0.tar.gz"]
    finally:
        reader.close()
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'staged_files'").fetchall()
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == ("2",)


def _live(state: State) -> tuple[int, int]:
    """live_totals, checked against the live files counted the long way."""
    kept = state.db.execute("SELECT files, bytes FROM live_totals").fetchall()
    counted = state.db.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM files"
        " WHERE removed_gen IS NULL AND deleted_gen IS NULL"
    ).fetchall()
    assert kept == counted
    assert state.reader().live_totals() == counted[0]
    assert state.live_files_count() == counted[0][0]
    return counted[0]


def test_live_totals_follow_every_change_to_the_files(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    assert _live(state) == (0, 0)
    state.note_listed([("p", "p", 1), ("q", "q", 1)], 1)
    a, b = _file("p", "p-1.0.tar.gz", "a"), _file("p", "p-1.1.tar.gz", "b")
    big = HeldFile(**{**_file("q", "q-1.0.tar.gz", "c").__dict__, "size": 1000})
    _record(state, "p", [a, b], 1)
    _record(state, "q", [big], 1)
    assert _live(state) == (3, 1006)
    _record(state, "p", [a, b], 2)  # the same files again: upserts, no change
    assert _live(state) == (3, 1006)
    _record(state, "p", [a], 3, gone=(b,))  # upstream dropped one
    assert _live(state) == (2, 1003)
    replaced = HeldFile(**{**_file("p", "p-1.0.tar.gz", "d").__dict__, "size": 10})
    _record(state, "p", [replaced], 4)  # same name, other bytes: a new row, the old gone
    assert _live(state) == (2, 1010)
    state.stage_files("p", [_file("p", "p-2.0.tar.gz", "e")], 5)  # staged: not live
    assert _live(state) == (2, 1010)
    _record(state, "p", [replaced], 6)  # the staged file no page took: a tombstone
    assert _live(state) == (2, 1010)
    state.mark_removed(["q"], 7)
    state.unpublish("q", [], 7)
    assert _live(state) == (1, 10)
    state.mark_deleted([file_id for file_id, _ in state.reapable()], 8)
    assert _live(state) == (1, 10)
    state.db.execute("DELETE FROM files")
    assert _live(state) == (0, 0)


def test_the_upgrade_to_schema_4_counts_the_live_files_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    state.note_listed([("p", "p", 1)], 1)
    old = _file("p", "p-1.0.tar.gz", "a")
    _record(state, "p", [old, _file("p", "p-1.1.tar.gz", "b")], 1)
    _record(state, "p", [_file("p", "p-1.1.tar.gz", "b")], 2, gone=(old,))
    state.close()
    as_schema_3(path)
    with StateReader(sqlite3.connect(path)) as reader:  # `mirror status` before the upgrade
        assert reader.live_totals() == (1, 3)
    reader_state = State.readonly(path)  # a dry run before it
    try:
        assert reader_state.live_files_count() == 1
    finally:
        reader_state.close()
    with sqlite3.connect(path) as db:  # which wrote nothing
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'live_totals'").fetchall()

    state = State(path)
    try:
        assert state.get_meta("schema_version") == "4"
        assert _live(state) == (1, 3)
        _record(state, "p", [_file("p", "p-1.2.tar.gz", "c")], 3,
                gone=(_file("p", "p-1.1.tar.gz", "b"),))
        assert _live(state) == (1, 3)
    finally:
        state.close()
    state = State(path)  # opened again: counted once, not again
    try:
        assert state.db.execute("SELECT count(*) FROM live_totals").fetchone() == (1,)
    finally:
        state.close()


def test_a_read_only_state_refuses_a_state_db_it_would_have_to_upgrade(tmp_path: Path) -> None:
    import pytest

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
        )
    with pytest.raises(StateError, match="run `mirror sync` once"):
        State.readonly(path)


def _committed_runs(path: Path) -> int:
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_a_batch_commits_when_due_and_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    try:
        batch = state.batch(0.05)
        state.begin_run("http://127.0.0.1/simple/")
        batch.due()  # too early: still one open transaction
        assert _committed_runs(path) == 0
        time.sleep(0.06)
        batch.due()
        assert _committed_runs(path) == 1  # another connection sees it now
        state.begin_run("http://127.0.0.1/simple/")
        batch.end()
        assert _committed_runs(path) == 2
        assert not state.db.conn.in_transaction
    finally:
        state.close()


def test_a_batch_ends_quietly_when_sqlite_rolled_it_back_already(tmp_path: Path) -> None:
    # After some errors (a full disk) SQLite ends the transaction itself: the error that
    # did it is the one to report, not a COMMIT with no transaction.
    path = tmp_path / "state.db"
    state = State(path)
    try:
        batch = state.batch(60)
        state.begin_run("http://127.0.0.1/simple/")
        state.db.conn.rollback()
        batch.end()
        state.begin_run("http://127.0.0.1/simple/")  # written outside any batch
        state.rollback()  # nothing open: nothing to undo
        assert _committed_runs(path) == 1
    finally:
        state.close()


def test_rollback_undoes_what_the_open_transaction_holds(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    try:
        state.batch(60)
        state.begin_run("http://127.0.0.1/simple/")
        state.rollback()
        assert not state.db.conn.in_transaction
        assert state.synced_upstream() is None
        assert state.db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    finally:
        state.close()


def test_schema_3_gains_page_sizes_and_the_bundle_ledgers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    state.record_page("simple/p/index.html", "a" * 64, 10, state.begin_run("http://h/"))
    state.close()
    # What a schema-3 simplemirror left: no page sizes, no bundle ledgers.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE pages DROP COLUMN size")
        db.execute("DROP TABLE bundles_exported")
        db.execute("DROP TABLE bundles_applied")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.close()
    State.readonly(path).close()  # a dry run reads it as it stands

    state = State(path)
    try:
        assert state.get_meta("schema_version") == "4"
        assert state.db["bundles_exported"].exists() and state.db["bundles_applied"].exists()
        assert state.db.execute("SELECT path, size FROM pages").fetchall() == [
            ("simple/p/index.html", None)
        ]
    finally:
        state.close()
