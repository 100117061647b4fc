"""Where things may live: every SQL statement in store/state.py, and the state below
planning and rendering (plan -> model <- state, render -> model). Read from the source, so that a
statement added elsewhere, or an import that turns the layers round, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "simplemirror"
STATE = SRC / "store" / "state.py"
MODEL = SRC / "simple" / "model.py"
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|BEGIN|COMMIT|ROLLBACK|PRAGMA|CREATE|ALTER|"
                 r"DROP)\b")
# Talking to SQLite directly: a statement, or a transaction opened, ended or looked at.
DB_CALLS = {"execute", "executemany", "executescript", "connect", "in_transaction"}


def _modules() -> list[Path]:
    modules = sorted(p for p in SRC.rglob("*.py") if p != STATE)
    assert len(modules) > 30, "the walk must see every module, in every folder"
    return modules


def _sql_outside_state() -> list[str]:
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and SQL.search(node.value)):
                found.append(f"{where} {node.value[:50]!r}")
            elif isinstance(node, ast.Attribute) and node.attr in DB_CALLS:
                receiver = ast.unparse(node.value)
                if node.attr != "connect" or receiver == "sqlite3":
                    found.append(f"{where} {receiver}.{node.attr}")
    return found


def test_every_sql_statement_is_in_the_state_module() -> None:
    assert _sql_outside_state() == []


def _module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(path: Path) -> set[str]:
    """The simplemirror modules a file imports (`from simplemirror.store import state`
    imports simplemirror.store.state; `from simplemirror.simple.model import X`, the model)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("simplemirror.") and _module(n)}


def test_state_depends_on_the_model_alone() -> None:
    assert _imported(STATE) == {"simplemirror.simple.model"}


def test_the_model_depends_on_no_layer_above_it() -> None:
    assert not _imported(MODEL) & {
        "simplemirror.sync.plan", "simplemirror.simple.render", "simplemirror.store.state"
    }


def test_the_benchmarks_import_what_exists() -> None:
    """benchmarks/ imports simplemirror lazily, inside the functions that need it, so a
    module moved in src/ breaks a benchmark only when it is run by hand, weeks later."""
    import importlib

    missing = []
    for path in sorted((SRC.parent.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.split(".")[0] == "simplemirror"):
                continue
            where = f"{path.name}:{node.lineno}"
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(f"{where} {node.module}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and not _module(f"{node.module}.{alias.name}"):
                    missing.append(f"{where} {node.module}.{alias.name}")
    assert not missing
