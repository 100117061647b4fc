"""A minimal pool of daemon worker threads that hands back standard Futures.

Why not ThreadPoolExecutor: its threads are joined when the interpreter
exits, so one download stuck in a network read would hold a stopping mirror
for the whole read timeout. These threads are daemons; a run that is told to
stop commits its state and exits, and an abandoned read dies with the process
(its temporary file is cleared by the next run, never published).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class WorkerPool:
    def __init__(self, workers: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Cancel what has not started, wait up to ``timeout`` for the rest.

        Returns False if some task was still running when the time ran out.
        """
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not _STOP:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
