"""The plain reporter: one progress line every ``interval`` seconds, none in between."""

from __future__ import annotations

import logging

import pytest

from simplemirror.report import Reporter


def test_reporter_logs_its_counts_when_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="simplemirror")
    with Reporter(interval=3600) as reporter:
        reporter.start(2)
        reporter.files_planned(3)
        reporter.file_done(1_500_000)
        reporter.project_done()
        assert "progress:" not in caplog.text  # not due yet
        reporter.interval = 0
        reporter.file_done(500_000)
    assert "progress: 1/2 projects, 2/3 files, 2.0 MB" in caplog.text
