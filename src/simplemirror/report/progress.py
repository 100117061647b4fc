"""What a run shows while it works: log lines (and, on a terminal, the bars of
report/terminal.py)."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Self

from simplemirror.report.units import clock, human_bytes

log = logging.getLogger("simplemirror")


class Periodic:
    """Counts work and logs ``line()`` at most every ``interval`` seconds.

    A context manager, so that a terminal subclass can start and stop its bars.
    """

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def line(self) -> str:
        raise NotImplementedError

    def _changed(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", self.line())


def seconds_left(done: float, total: float, elapsed: float) -> float | None:
    """How long the rest of ``total`` takes at the pace of the first ``done`` (None: no
    pace yet)."""
    if done >= total:
        return 0.0
    if done <= 0 or elapsed <= 0:
        return None
    return elapsed * (total - done) / done


class Reporter(Periodic):
    """A sync's progress; this base class logs a line every ``interval`` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__(interval)
        self.projects_total = 0
        self.projects_done = 0
        self.pages_read = 0
        self.files_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self._started: float | None = None

    def start(self, projects: int) -> None:
        """The plan is made: ``projects`` pages to read. Nothing is shown before."""
        self.projects_total = projects
        self._started = time.monotonic()

    def page_read(self) -> None:
        """One planned page came back (read, failed or unchanged). Not shown by itself:
        the files it plans, or its project being done, follow at once."""
        self.pages_read += 1

    @property
    def files_total_known(self) -> bool:
        """Every page is read, so no more files will be planned: the total is final."""
        return self.pages_read >= self.projects_total

    def files_planned(self, count: int) -> None:
        self.files_total += count
        self._changed()

    def file_done(self, nbytes: int) -> None:
        self.files_done += 1
        self.bytes_done += nbytes
        self._changed()

    def project_done(self) -> None:
        self.projects_done += 1
        self._changed()

    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def rate(self) -> float:
        """Bytes a second since the plan was made (reading the root is not downloading)."""
        elapsed = self.elapsed()
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def seconds_left(self) -> float | None:
        # Files once their total is final (the better measure: a project of many files
        # takes longer than one of none); projects, whose total never moves, until then.
        if self.files_total_known and self.files_total:
            return seconds_left(self.files_done, self.files_total, self.elapsed())
        return seconds_left(self.projects_done, self.projects_total, self.elapsed())

    def files_text(self) -> str:
        """Files done of planned, saying when that total still grows as pages are read."""
        if self.files_total_known:
            return f"{self.files_done}/{self.files_total} files"
        return f"{self.files_done}/{self.files_total}+ files (total still growing)"

    def line(self) -> str:
        left = self.seconds_left()
        return (
            f"progress: {self.projects_done}/{self.projects_total} projects, "
            f"{self.files_text()}, {human_bytes(self.bytes_done)} at "
            f"{human_bytes(self.rate())}/s"
            + ("" if left is None else f", about {clock(left)} left")
        )
