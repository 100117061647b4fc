"""Run one client command and measure it: wall time, CPU time and peak memory.

The command runs under a small launcher process, which reaps it with ``os.wait4``: that
rusage covers exactly the command (and any process it waited for): user and system CPU
seconds, and ``ru_maxrss``, its peak resident set in KiB on Linux.

Why a launcher: Linux carries the peak RSS of the process that starts a program into
that program's ``ru_maxrss`` (at exec, the old address space's high-water mark is kept).
Started straight from a harness that holds a 650k-project world in memory, a client
would be charged the harness's ~300 MB. The launcher is a fresh interpreter of ~10 MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# argv: <rusage json path> <command...>. Stays tiny: no imports beyond os, sys, json.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(f"cannot start {sys.argv[2]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"user": ru.ru_utime, "sys": ru.ru_stime, "max_rss_kib": ru.ru_maxrss,
               "returncode": os.waitstatus_to_exitcode(status)}, out)
"""


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
        report = log.with_name(log.name + ".rusage.json")
        report.unlink(missing_ok=True)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(report), *command],
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
            _, status, launcher = os.wait4(process.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    try:
        measured = json.loads(report.read_text())
    except (OSError, ValueError):
        # Killed by the timeout with its launcher: only the launcher's own figures,
        # which include the command's CPU only if the launcher got to reap it.
        measured = {"user": launcher.ru_utime, "sys": launcher.ru_stime,
                    "max_rss_kib": 0, "returncode": process.returncode}
    report.unlink(missing_ok=True)
    return Usage(
        wall=wall,
        user=measured["user"],
        sys=measured["sys"],
        max_rss_mb=measured["max_rss_kib"] / 1024,
        returncode=measured["returncode"],
    )
