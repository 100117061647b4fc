"""state.db: schema creation and upgrades of older files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from simplemirror.state import SCHEMA_VERSION, State, StateError


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
    import pytest

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
            f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION + 1}');"
        )
    with pytest.raises(StateError, match="newer simplemirror"):
        State(path)
