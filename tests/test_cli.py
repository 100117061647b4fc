"""Tests of the `mirror` command's argument handling and exit statuses."""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import tenacity.nap

import simplemirror
from simplemirror import __version__
from simplemirror.cli.main import EXIT_INCOMPLETE, EXIT_USAGE, build_parser, main
from tests.support.canned import Canned

UPSTREAM = "http://index.test/simple/"
SRC = Path(simplemirror.__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tenacity.nap.time, "sleep", lambda _seconds: None)


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def fast_config(tmp_path: Path, upstream: str = UPSTREAM) -> Path:
    return write_config(
        tmp_path / "mirror.toml",
        "[mirror]\n"
        f'upstream = "{upstream}"\n'
        f'directory = "{(tmp_path / "mirror").as_posix()}"\n'
        "retries = 0\nretry-wait = 0\nretry-max-wait = 0\nstale-wait = 0\n",
    )


def run_outcomes(directory: Path) -> list[str]:
    with sqlite3.connect(directory / "state.db") as db:
        return [row[0] for row in db.execute("SELECT outcome FROM runs ORDER BY generation")]


def test_no_upstream_is_a_usage_error_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sync", "--directory", str(tmp_path / "m")]) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "--upstream" in err
    assert not (tmp_path / "m").exists()  # nothing is created before the config is good


def test_no_directory_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sync", "--upstream", UPSTREAM]) == 2
    assert "--directory" in capsys.readouterr().err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["sync", "-c", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "does not exist" in err


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        tmp_path / "mirror.toml",
        f'[mirror]\nupstream = "{UPSTREAM}"\ndirectory = "{tmp_path.as_posix()}"\n'
        "wrokers = 4\n",
    )
    assert main(["sync", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'wrokers' in [mirror]; did you mean 'workers'?" in err


def test_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "mirror.toml", "[mirror\nupstream = \n")
    assert main(["sync", "-c", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_non_http_upstream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sync", "--upstream", "ftp://index.test/", "--directory", str(tmp_path)]
    assert main(argv) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],  # a command is required
        ["frobnicate"],
        ["sync", "--workers", "many"],
        ["sync", "--no-such-option"],
    ],
)
def test_argparse_usage_errors_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: mirror" in capsys.readouterr().err


def _help_of(command: str) -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command].format_help()


@pytest.mark.parametrize(("command", "own"), [
    ("serve", ["--host", "--port"]),
    ("status", ["--json"]),
    ("log", ["--json", "--limit", "--generation"]),
])
def test_serve_and_status_list_only_the_options_they_use(command: str, own: list[str]) -> None:
    text = _help_of(command)
    for option in ["--config", "--directory", "--verbose", "--quiet",
                   "--log-format", *own]:
        assert option in text, option
    # They read no upstream and draw no progress bars.
    for absent in ["--upstream", "--no-progress", "progress", "bars"]:
        assert absent not in text, absent


def test_sync_and_verify_keep_the_upstream_and_their_bars() -> None:
    for command in ("sync", "verify"):
        text = _help_of(command)
        assert "--upstream" in text and "bars" in text, command


@pytest.mark.parametrize("argv", [
    ["serve", "--upstream", "http://index.example/simple/"],
    ["serve", "--no-progress"],
    ["status", "--upstream", "http://index.example/simple/"],
    ["status", "--no-progress"],
    ["log", "--upstream", "http://index.example/simple/"],
])
def test_options_serve_and_status_do_not_use_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"simplemirror {__version__}"


def test_upstream_server_error_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Canned()
    try:
        server.add("/simple/", status=503)
        config = fast_config(tmp_path, server.url("/simple/"))
        code = main(["sync", "-c", str(config), "--no-progress"])
    finally:
        server.close()
    assert code == EXIT_INCOMPLETE == 1
    err = capsys.readouterr().err
    assert "could not read the upstream root index" in err
    assert "503" in err
    # A first run that never got a usable root leaves no mirror skeleton behind.
    assert not (tmp_path / "mirror").exists()


def test_unreachable_upstream_exits_1_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection error that outlasts the retries is an upstream failure, not a crash."""
    probe = Canned()
    upstream = probe.url("/simple/")
    probe.close()  # nothing listens on that port now
    code = main(["sync", "-c", str(fast_config(tmp_path, upstream)), "--no-progress"])
    assert code == EXIT_INCOMPLETE
    assert "could not read the upstream root index" in capsys.readouterr().err
    assert not (tmp_path / "mirror").exists()  # nothing left, 'running' or otherwise


def test_dry_run_upstream_server_error_exits_1_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Canned()
    try:
        server.add("/simple/", status=503)
        config = fast_config(tmp_path, server.url("/simple/"))
        code = main(["sync", "-c", str(config), "--dry-run", "--no-progress"])
    finally:
        server.close()
    assert code == EXIT_INCOMPLETE
    err = capsys.readouterr().err
    assert "503" in err
    assert not (tmp_path / "mirror").exists()  # a dry run writes nothing


def test_python_m_simplemirror_help() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "simplemirror", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mirror")
    assert "sync" in result.stdout
    assert "--version" in result.stdout


def test_summary_shows_a_small_run_in_kilobytes(capsys: pytest.CaptureFixture[str]) -> None:
    from simplemirror.cli.main import _print_summary
    from simplemirror.sync.run import RunSummary

    _print_summary(RunSummary(3, "ok", changed=1, files_fetched=2, bytes_fetched=12_345))
    assert "2 file(s), 12.3 kB fetched in" in capsys.readouterr().out


def test_rich_is_loaded_only_for_a_terminal() -> None:
    # ~25 ms of CPU a run: a tenth of a sync that changes nothing, under systemd or cron.
    code = "import sys, simplemirror.cli.main; print(sorted(m for m in sys.modules if 'rich' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
