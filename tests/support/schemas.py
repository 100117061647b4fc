"""state.db as older versions of simplemirror left it, for upgrade and read-only tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def as_schema_2(path: Path) -> None:
    """Turn the state.db at ``path`` into what simplemirror wrote at schema 2: before
    staged files (a stopped run's finished downloads) and recorded project changes."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("DROP TABLE staged_files")
            db.execute("DROP TABLE project_changes")
            db.execute("DELETE FROM meta WHERE key = 'changes_since'")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        db.close()
