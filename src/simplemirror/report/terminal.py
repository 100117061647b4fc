"""What a person at a terminal sees: rich's progress bars and log lines.

Imported only for a terminal: loading rich costs ~25 ms of CPU, a tenth of a sync that
changes nothing, which a run under systemd or cron never shows.
"""

from __future__ import annotations

import logging
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
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

from simplemirror.report import logs
from simplemirror.report.progress import Reporter
from simplemirror.report.units import human_bytes


def console() -> Console:
    return Console(stderr=True)


def log_handler(console: Console) -> logging.Handler:
    """Log lines that scroll above the bars."""
    handler = RichHandler(console=console, show_path=False, markup=False,
                          log_time_format=logs.TERMINAL_TIME_FORMAT)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


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
