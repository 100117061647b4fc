"""state.db as older versions of simplemirror left it, for upgrade and read-only tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def as_schema_3(path: Path) -> None:
    """Turn the state.db at ``path`` into what simplemirror wrote at schema 3: before
    live_totals and the triggers that keep it."""
    db = sqlite3.connect(path)
    try:
        with db:
            for trigger in ("insert", "update", "delete"):
                db.execute(f"DROP TRIGGER live_totals_{trigger}")
            db.execute("DROP TABLE live_totals")
            db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    finally:
        db.close()


def as_schema_2(path: Path) -> None:
    """Turn the state.db at ``path`` into what simplemirror wrote at schema 2: before
    staged files (a stopped run's finished downloads) and recorded project changes."""
    as_schema_3(path)
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("DROP TABLE staged_files")
            db.execute("DROP TABLE project_changes")
            db.execute("DELETE FROM meta WHERE key = 'changes_since'")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        db.close()
