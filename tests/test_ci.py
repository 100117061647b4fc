"""CI runs what the README says to run, and that includes the type checker."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"Run the tests[^\n]*\n\n```sh\n(.*?)\n```", text, re.S)
    return str(block)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == _readme_test_command()


def test_the_test_command_type_checks_src_strictly_after_ruff() -> None:
    steps = _readme_test_command().split(" && ")
    assert steps.index(".venv/bin/mypy src") == steps.index(".venv/bin/ruff check .") + 1
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = [Requirement(r).name for r in project["project"]["optional-dependencies"]["test"]]
    assert "mypy" in extra
    assert project["tool"]["mypy"]["strict"] is True
