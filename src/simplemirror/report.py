"""What a run shows while it works: rich progress bars on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

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
    """The progress display every terminal reporter uses."""
    return Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )


class Reporter(Periodic):
    """A sync's progress; this base class logs a line every ``interval`` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__(interval)
        self.projects_total = 0
        self.projects_done = 0
        self.files_total = 0
        self.files_done = 0
        self.bytes_done = 0

    def start(self, projects: int) -> None:
        self.projects_total = projects

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

    def line(self) -> str:
        return (
            f"progress: {self.projects_done}/{self.projects_total} projects, "
            f"{self.files_done}/{self.files_total} files, {self.bytes_done / 1e6:.1f} MB"
        )


class RichReporter(Reporter):
    """Progress bars for projects and files, with bytes and the transfer rate."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.progress = bar(console)
        self._started = time.monotonic()
        self._projects: TaskID | None = None
        self._files: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        self._projects = self.progress.add_task("projects", total=None, detail="")
        self._files = self.progress.add_task("files", total=None, detail="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._changed()
        self.progress.stop()

    def _changed(self) -> None:
        if self._projects is None or self._files is None:
            return
        rate = self.bytes_done / max(time.monotonic() - self._started, 1e-6)
        self.progress.update(
            self._projects,
            total=self.projects_total,
            completed=self.projects_done,
            detail=f"{self.projects_done}/{self.projects_total}",
        )
        self.progress.update(
            self._files,
            total=self.files_total or None,
            completed=self.files_done,
            detail=f"{self.files_done}/{self.files_total}  "
            f"{self.bytes_done / 1e6:.1f} MB  {rate / 1e6:.1f} MB/s",
        )
