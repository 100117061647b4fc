"""What a run shows while it works: the plain progress line, and the bars on a terminal."""

from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console
from rich.progress import TimeRemainingColumn

from simplemirror.report.progress import Reporter, seconds_left
from simplemirror.report.terminal import RichReporter
from simplemirror.report.units import clock


def test_reporter_logs_its_counts_when_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="simplemirror")
    with Reporter(interval=3600) as reporter:
        reporter.start(2)
        reporter.page_read()
        reporter.files_planned(3)
        reporter.file_done(1_500_000)
        reporter.project_done()
        assert "progress:" not in caplog.text  # not due yet
        reporter.interval = 0
        reporter.file_done(500_000)
    assert "progress: 1/2 projects, 2/3+ files (total still growing), 2.0 MB at " in caplog.text


def test_the_files_total_says_it_grows_until_every_page_is_read() -> None:
    reporter = Reporter()
    reporter.start(2)
    reporter.page_read()
    reporter.files_planned(3)
    reporter.file_done(12_345)
    assert reporter.files_text() == "1/3+ files (total still growing)"
    reporter.page_read()
    reporter.files_planned(2)
    assert reporter.files_text() == "1/5 files"
    line = reporter.line()
    assert "1/5 files, 12.3 kB at " in line  # a small run in kB, not "0.0 MB"
    assert re.search(r" at [\d.]+ [kMG]?B/s, about \d+:\d\d:\d\d left$", line), line


def test_seconds_left_at_the_pace_so_far() -> None:
    assert seconds_left(0, 10, 5.0) is None  # no pace yet
    assert seconds_left(1, 4, 10.0) == 30.0
    assert seconds_left(4, 4, 10.0) == 0.0
    assert clock(30.0) == "0:00:30" and clock(3723.4) == "1:02:03" and clock(-1) == "0:00:00"


def test_the_plain_line_estimates_from_projects_until_the_files_total_is_final() -> None:
    reporter = Reporter()
    reporter.start(4)
    reporter._started -= 10.0  # ten seconds into the run
    reporter.page_read()
    reporter.files_planned(100)
    reporter.project_done()  # 1 of 4 projects in 10 s: 30 s left
    assert round(reporter.seconds_left() or 0) == 30
    for _ in range(3):
        reporter.page_read()
        reporter.project_done()
    for _ in range(50):
        reporter.file_done(1)  # now the files: 50 of 100 in 10 s
    assert round(reporter.seconds_left() or 0) == 10


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=150), out


def test_no_bars_before_the_plan_is_made() -> None:
    """While the root is read (or when nothing changed) there is nothing to count."""
    console, out = _terminal()
    with RichReporter(console) as reporter:
        assert reporter.progress.tasks == []
    assert "projects" not in out.getvalue() and "files" not in out.getvalue()


def test_bars_show_bytes_an_eta_and_a_files_total_that_does_not_jump() -> None:
    console, out = _terminal()
    with RichReporter(console) as reporter:
        reporter.start(2)
        projects, files = reporter.progress.tasks
        assert projects.total == 2
        reporter.page_read()
        reporter.files_planned(3)
        reporter.file_done(12_345)
        # One page of two read: the files bar has no end yet, rather than one that moves.
        assert files.total is None
        assert "1/3+ files (total still growing)  12.3 kB" in files.fields["detail"]
        reporter.page_read()
        reporter.files_planned(2)
        assert files.total == 5 and "1/5 files  12.3 kB  " in files.fields["detail"]
    assert any(isinstance(c, TimeRemainingColumn) for c in reporter.progress.columns)
    assert "eta" in out.getvalue()


def test_verify_progress_line_has_bytes_and_an_eta() -> None:
    from simplemirror.check.verify import VerifyProgress

    progress = VerifyProgress()
    progress.start(4, 40_000)
    progress._started -= 10.0
    progress.advance(10_000)
    assert progress.line() == (
        "verify progress: 1/4 files, 10.0 kB of 40.0 kB, about 0:00:30 left"
    )
