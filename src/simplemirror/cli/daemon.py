"""`mirror sync --every 10m`: sync, pause, sync again, for hosts without a scheduler.

Signals (SIGTERM, SIGINT) go through one ``SignalGate``: during a run they stop it the way
they stop a single `mirror sync` (in-flight work finishes and is published; a second signal
stops at once); during the pause between runs they end the loop at once.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable

from simplemirror.sync.run import Sync

log = logging.getLogger("simplemirror")

JITTER = 0.10
"""Each pause is the interval plus up to this share of it, at random: mirrors started
together (a fleet, after a reboot) drift apart instead of reaching upstream in step."""


def pause_length(interval: float, draw: Callable[[], float] = random.random) -> float:
    """How long to pause after a run: ``interval`` plus up to JITTER of it (``draw`` in [0, 1))."""
    return interval * (1.0 + JITTER * draw())


class Stopped(Exception):
    """A signal arrived while no run was going: the loop ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGate:
    """Where SIGTERM and SIGINT go: to the run in progress, or to the pause."""

    def __init__(self) -> None:
        self.sync: Sync | None = None
        self.received: int | None = None
        self.pausing = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        sync = self.sync
        if sync is not None:
            if sync.stopped_by is not None:
                raise KeyboardInterrupt  # the second signal: stop now
            name = signal.Signals(signum).name
            log.warning("%s received: stopping after in-flight work (again to stop at once)",
                        name)
            self.received = signum
            sync.request_stop(signum)
            return
        self.received = signum
        if self.pausing:
            raise Stopped(signum)
        # Between a run and the pause (writing the report): the loop sees `received`.

    def start_run(self, sync: Sync) -> bool:
        """Route signals to ``sync``; False if a signal already asked the loop to end."""
        self.sync = sync
        return self.received is None

    def end_run(self) -> None:
        self.sync = None

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``; raises Stopped as soon as a signal arrives (or had arrived)."""
        self.pausing = True
        try:
            if self.received is not None:
                raise Stopped(self.received)
            time.sleep(seconds)
        finally:
            self.pausing = False


def run_every(
    interval: float, once: Callable[[], int], gate: SignalGate,
    draw: Callable[[], float] = random.random,
) -> int:
    """Call ``once`` (one run; returns its exit status), pause, repeat, until a signal.

    A run that fails (exit 1) does not end the loop. Returns the exit status of the loop:
    the run's (128 + the signal) when a signal stopped a run, 0 when it came in a pause.
    """
    while True:
        code = once()
        if code >= 128:
            return code
        try:
            seconds = pause_length(interval, draw)
            log.info("next sync in %.0f s", seconds, extra={"next_run_seconds": seconds})
            gate.pause(seconds)
        except Stopped as stop:
            log.info("%s received between runs: exiting",
                     signal.Signals(stop.signum).name, extra={"signal": stop.signum})
            return 0
