"""Run one client command and measure it: wall time, CPU time and peak memory.

The child is reaped with ``os.wait4``, whose rusage covers exactly that child (and any
process it waited for): user and system CPU seconds, and ``ru_maxrss``, its peak
resident set in KiB on Linux.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    wall: float
    user: float
    sys: float
    max_rss_mb: float
    returncode: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "cpu": self.cpu}


def run_measured(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Usage:
    """Run ``command`` with its output appended to ``log``; kill it after ``timeout`` s."""
    with log.open("ab") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # its own group: a timeout kills it and its helpers
        )
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
            timer.start()
        try:
            _, status, rusage = os.wait4(process.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Usage(
        wall=wall,
        user=rusage.ru_utime,
        sys=rusage.ru_stime,
        max_rss_mb=rusage.ru_maxrss / 1024,
        returncode=process.returncode,
    )
