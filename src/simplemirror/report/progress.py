"""What a run shows while it works: rich progress bars on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

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


def bar(console: Console) -> Progress:
    """The progress display every terminal reporter uses: how far, how long, how long left."""
    return Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        _Eta(),
        console=console,
    )


class _Eta(TimeRemainingColumn):
    """Rich's estimate of the time left (from the last 30 s of progress), labelled so that
    it is not read as the time elapsed beside it; blank while a total is unknown."""

    def render(self, task: Task) -> Text:
        left = super().render(task)
        return Text.assemble("eta ", left) if left.plain else left


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


class RichReporter(Reporter):
    """Progress bars for projects and files, with bytes, the transfer rate and an ETA.

    No bars until ``start``: before the plan is made (the root being read, or a run that
    finds nothing changed) there is nothing to count, and empty 0/0 bars mislead.
    """

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.progress = bar(console)
        self._projects: TaskID | None = None
        self._files: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._changed()
        self.progress.stop()

    def start(self, projects: int) -> None:
        super().start(projects)
        if self._projects is None:
            # Whole from the first frame: rich redraws on a thread of its own.
            self._projects = self.progress.add_task(
                "projects", total=projects, detail=self._projects_detail()
            )
            self._files = self.progress.add_task(
                "files", total=None, detail=self._files_detail()
            )
        self._changed()

    def _projects_detail(self) -> str:
        return f"{self.projects_done}/{self.projects_total}"

    def _files_detail(self) -> str:
        return f"{self.files_text()}  {human_bytes(self.bytes_done)}  {human_bytes(self.rate())}/s"

    def _changed(self) -> None:
        if self._projects is None or self._files is None:
            return
        self.progress.update(
            self._projects,
            total=self.projects_total,
            completed=self.projects_done,
            detail=self._projects_detail(),
        )
        self.progress.update(
            self._files,
            # No total (a pulsing bar, no ETA) while pages still add files to it: a bar
            # whose end moves away as it fills says nothing true.
            total=self.files_total if self.files_total_known else None,
            completed=self.files_done,
            detail=self._files_detail(),
        )
