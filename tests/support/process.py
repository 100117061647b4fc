"""What a command changes in the test process, put back: the package logger, signal handlers.

A command run in-process (``cli.main``) installs its own log handler, on a stream that
is pytest's capture of that moment, and stops the package logger from propagating, so
that ``caplog`` sees nothing after it; and it installs signal handlers.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from simplemirror.cli.main import main
from simplemirror.sync.workers import ProcessPool


@contextmanager
def process_state_kept() -> Iterator[None]:
    """The package logger and the SIGINT/SIGTERM handlers, as they were before."""
    logger = logging.getLogger("simplemirror")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`mirror ARGS` in this process: its exit status, stdout and stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


class StartedPool(ProcessPool):
    """A ProcessPool whose construction returns once its children have started: a sync
    keeps its work in its own process until then, and a test that counts what reached
    the children must not depend on how fast they started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.ready.wait(120), "the download processes did not start"
