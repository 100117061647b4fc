"""Log output as systemd, a log shipper or a person at a terminal sees it."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from simplemirror.report.logs import JsonFormatter
from tests.support.upstream import Upstream, World

ANSI = re.compile(r"\x1b\[")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S.*")


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("simplemirror", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_fields_and_extras() -> None:
    line = JsonFormatter().format(
        _record("%s failed: %s", "alpha", "503", project="alpha", path=Path("/x"))
    )
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "simplemirror"
    assert doc["message"] == "alpha failed: 503"
    assert doc["project"] == "alpha"
    assert doc["path"] == "/x"  # not JSON by itself: its text
    when = datetime.fromisoformat(doc["time"])
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
    assert abs(when.timestamp() - time.time()) < 60
    for internal in ("args", "msg", "levelno", "pathname", "created", "thread"):
        assert internal not in doc


def test_json_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("simplemirror", logging.ERROR, __file__, 1, "oops", (),
                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_terminal_log_lines_carry_iso_dates() -> None:
    """On a terminal, rich writes the time: in ISO order, not as its locale's [12/07/26 ...]."""
    import argparse
    import io

    from rich.console import Console

    from simplemirror.cli.main import _setup_logging

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    _setup_logging(argparse.Namespace(verbose=False, quiet=False, log_format="text"), console)
    logging.getLogger("simplemirror").warning("beta deferred")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colours off
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +WARNING +beta deferred", text), text


def _mirror(*args: str) -> list[str]:
    return [sys.executable, "-m", "simplemirror", *args]


def _no_waiting(tmp_path: Path) -> str:
    """A config that gives up on a stale page at once, so a deferral takes no time."""
    path = tmp_path / "fast.toml"
    path.write_text("[mirror]\nstale-retries = 0\nstale-wait = 0.0\n")
    return str(path)


def _world() -> World:
    world = World()
    world.add_project("alpha", ["1.0"])
    world.add_project("beta", ["1.0"])
    return world


def test_sync_under_a_pipe_logs_plain_lines_without_colour(tmp_path: Path) -> None:
    """What systemd sees: stderr is not a terminal, so no bars, no colour, one line per event."""
    with Upstream(_world()) as up:
        up.stale["beta"] = 10
        result = subprocess.run(
            _mirror("sync", "--upstream", up.url, "--directory", str(tmp_path / "m"),
                    "--workers", "2", "-c", _no_waiting(tmp_path)),
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "TERM": "xterm-256color", "FORCE_COLOR": ""},
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines), result.stderr
    assert any(" WARNING beta deferred" in line for line in lines)
    assert not ANSI.search(result.stderr + result.stdout)


def test_sync_log_format_json_is_one_object_per_line(tmp_path: Path) -> None:
    with Upstream(_world()) as up:
        up.stale["beta"] = 10
        result = subprocess.run(
            _mirror("sync", "--upstream", up.url, "--directory", str(tmp_path / "m"),
                    "--workers", "2", "--log-format", "json", "-c", _no_waiting(tmp_path)),
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1, result.stderr
    docs = [json.loads(line) for line in result.stderr.splitlines()]
    assert docs
    for doc in docs:
        assert {"time", "level", "logger", "message"} <= doc.keys()
    assert any(d["level"] == "WARNING" and "beta deferred" in d["message"] for d in docs)
    done = [d for d in docs if d.get("outcome")]
    assert done and done[-1]["outcome"] == "partial" and done[-1]["exit_code"] == 1
    assert done[-1]["report"] == str(tmp_path / "m" / "reports" / "1.json")
    assert "sync partial" in result.stdout  # the summary still goes to stdout, for people


def test_json_on_a_terminal_has_no_bars_and_text_has_them(tmp_path: Path) -> None:
    """On a terminal, text mode draws progress (rich); json never does."""
    with Upstream(_world()) as up:
        outputs = {}
        for fmt in ("text", "json"):
            primary, secondary = pty.openpty()
            try:
                process = subprocess.Popen(
                    _mirror("sync", "--upstream", up.url, "--directory",
                            str(tmp_path / fmt), "--log-format", fmt),
                    stdout=subprocess.DEVNULL, stderr=secondary, stdin=subprocess.DEVNULL,
                    env={**os.environ, "TERM": "xterm-256color"},
                )
                os.close(secondary)
                chunks = []
                while True:
                    try:
                        chunk = os.read(primary, 65536)
                    except OSError:  # EIO: the child closed its end
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
                assert process.wait(timeout=120) == 0
            finally:
                os.close(primary)
            outputs[fmt] = b"".join(chunks).decode(errors="replace")
    assert ANSI.search(outputs["text"])  # rich drew on the terminal
    lines = [line for line in outputs["json"].splitlines() if line.strip()]
    assert lines and not ANSI.search(outputs["json"])
    assert all(json.loads(line)["logger"] == "simplemirror" for line in lines)


def test_verify_and_status_accept_the_log_format(tmp_path: Path) -> None:
    with Upstream(_world()) as up:
        synced = subprocess.run(_mirror("sync", "--upstream", up.url, "--directory",
                                        str(tmp_path)), capture_output=True, timeout=120)
        assert synced.returncode == 0
    (tmp_path / "web" / "packages" / "stray.bin").write_bytes(b"x")
    verify = subprocess.run(
        _mirror("verify", "--directory", str(tmp_path), "--log-format", "json"),
        capture_output=True, text=True, timeout=120,
    )
    assert verify.returncode == 0, verify.stderr
    logged = [json.loads(line) for line in verify.stderr.splitlines()]
    assert any(d["message"].startswith("verifying") for d in logged)
    status = subprocess.run(
        _mirror("status", "--directory", str(tmp_path), "--log-format", "json", "--json"),
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["files_held"] == 4
    bad = subprocess.run(_mirror("status", "--log-format", "xml"), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--log-format" in bad.stderr
