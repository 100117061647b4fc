"""Where things may live: every SQL statement in state.py, and state.py below planning
and rendering (plan -> model <- state, render -> model). Read from the source, so that a
statement added elsewhere, or an import that turns the layers round, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "simplemirror"
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|BEGIN|COMMIT|ROLLBACK|PRAGMA|CREATE|ALTER|"
                 r"DROP)\b")
# Talking to SQLite directly: a statement, or a transaction opened, ended or looked at.
DB_CALLS = {"execute", "executemany", "executescript", "connect", "in_transaction"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.glob("*.py") if p.name != "state.py")


def _sql_outside_state() -> list[str]:
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and SQL.search(node.value)):
                found.append(f"{where} {node.value[:50]!r}")
            elif isinstance(node, ast.Attribute) and node.attr in DB_CALLS:
                receiver = ast.unparse(node.value)
                if node.attr != "connect" or receiver == "sqlite3":
                    found.append(f"{where} {receiver}.{node.attr}")
    return found


def test_every_sql_statement_is_in_state_py() -> None:
    assert _sql_outside_state() == []


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "simplemirror":
                names.update(f"simplemirror.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("simplemirror.")}


def test_state_depends_on_the_model_alone() -> None:
    assert _imported(SRC / "state.py") == {"simplemirror.model"}


def test_the_model_depends_on_no_layer_above_it() -> None:
    assert not _imported(SRC / "model.py") & {
        "simplemirror.plan", "simplemirror.render", "simplemirror.state"
    }
