"""Download processes: N children, each running the same coroutines as the parent over
its share of the workers, so that hashing and HTTP parsing use more than one core.

Why not a library's pool: concurrent.futures and multiprocessing.Pool run one task at a
time in a child, and a child here must keep its share of connections busy across many
projects at once; aiomultiprocess polls its queues every few milliseconds, leaves the
tasks of a killed child waiting for ever and sends errors back as text. What is left is a
pipe a child, pickles in batches, and the bookkeeping a dead child needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

CHILD_MODULES = [
    "simplemirror.sync.workers", "simplemirror.upstream.client", "simplemirror.sync.download"
]
"""What a download process runs (_child_main, Client, download_todo), and all they
import: imported once, by the fork server."""

_LOG = -1
"""The task number of a reply that is a log record from a child, not a task's result."""

_READY = -2
"""The task number of a child's first reply: it has started and takes work."""

LOGGER = "simplemirror"

# How long a download process holds a finished task's reply for others to join it
# (seconds). Sent at once, each small file cost a pipe write and a wake-up of the
# parent's reader and main threads: on a world of 100 KB files, holding replies
# 5 ms cut the CPU of a whole sync by 6% and cost no throughput (the parent
# keeps the processes' queues full well ahead of what it has heard back).
REPLY_DELAY = 0.005


class ProcessPool:
    """Child processes that run coroutines, so that downloads use more than one core.

    One Python process is held to one core by its GIL, and hashing, writing and
    HTTP parsing for many small files fill it. Each child runs an event loop with
    its own context (``make_context(config)``: its Client); ``submit(fn, *args)``
    runs the coroutine function ``fn(context, *args)`` in the least busy child and
    hands back a standard Future. Functions, arguments, results and exceptions cross
    as pickles, so ``fn`` must be a module-level function (or a class's method).
    At most its share of them run at once in a child (of the workers):
    the parent sends work well ahead, and each running task holds a connection.

    Children ignore SIGINT and SIGTERM: the parent decides when to stop, and tells
    them (``shutdown``). A child whose parent dies sees its pipe close and exits.
    Children are forked from multiprocessing's fork server, which imports what they
    run once (CHILD_MODULES) before any of them starts: spawned, each child imported
    it all again, ~0.2 s of CPU apiece; forked from this process, whose threads may
    hold locks, a child could deadlock.
    """

    def __init__(
        self, shares: Sequence[int], make_context: Callable[[Any, int], Any], config: Any
    ) -> None:
        """One child for each of ``shares``: how many tasks it runs at once, given to
        its context too (``make_context(config, share)``: a Client's connections)."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(CHILD_MODULES)
        processes = len(shares)
        # A child starts with no logging set up: it logs at the parent's level,
        # and sends its records here (a retry, at DEBUG, shows with -v as the parent's do).
        level = logging.getLogger(LOGGER).getEffectiveLevel()
        self._conns: list[Connection] = []
        self._children: list[BaseProcess] = []
        for share in shares:
            parent_end, child_end = context.Pipe()
            child = context.Process(
                target=_child_main, args=(child_end, share, make_context, config, level),
                daemon=True,
            )
            child.start()
            child_end.close()
            self._conns.append(parent_end)
            self._children.append(child)
        self._futures: dict[int, tuple[Future[Any], int]] = {}
        self._busy = [0] * processes
        self._dead: set[int] = set()
        self._started: set[int] = set()
        self.ready = threading.Event()
        """Set once every child has started (imports done, its loop running), or ended:
        until then, work sent waits in the pipe."""
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="process-results", daemon=True)
        self._reader.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self.submit_all(fn, [args])[0]

    def submit_all(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Future[Any]]:
        """``fn(context, *args)`` for each ``args`` of ``calls``, spread over the children.

        What goes to one child goes as one message: a project's files, say, cost
        one write and one wake-up rather than one each.
        """
        futures: list[Future[Any]] = []
        batches: dict[int, list[tuple[int, Any, tuple[Any, ...]]]] = {}
        lost: list[Future[Any]] = []
        with self._lock:
            live = [c for c in range(len(self._busy)) if c not in self._dead]
            for args in calls:
                future: Future[Any] = Future()
                future.set_running_or_notify_cancel()
                futures.append(future)
                if not live:
                    lost.append(future)
                    continue
                child = min(live, key=self._busy.__getitem__)
                task = next(self._ids)
                self._futures[task] = (future, child)
                self._busy[child] += 1
                batches.setdefault(child, []).append((task, fn, args))
        for future in lost:
            future.set_exception(ChildLost("every download process has ended"))
        for child, batch in batches.items():
            try:
                _send(self._conns[child], batch)
            except (OSError, ValueError) as exc:  # the child is gone
                for task, _, _ in batch:
                    self._settle(task, False, ChildLost(f"a download process ended: {exc}"))
        return futures

    def _settle(self, task: int, ok: bool, value: Any) -> None:
        with self._lock:
            entry = self._futures.pop(task, None)
            if entry is None:
                return
            future, child = entry
            self._busy[child] -= 1
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _read(self) -> None:
        open_conns = list(self._conns)
        while open_conns:
            for conn in multiprocessing.connection.wait(open_conns):
                assert isinstance(conn, Connection)
                try:
                    replies = _recv(conn)
                except Exception:  # it ended, or sent a reply that will not unpickle
                    # Either way its answers are lost: it takes no more work.
                    open_conns.remove(conn)
                    self._fail_child(self._conns.index(conn))
                    continue
                for task, ok, value in replies:
                    if task == _READY:
                        self._note_started(self._conns.index(conn))
                    elif task == _LOG:
                        # A record that could not cross comes as a ChildLost: dropped.
                        if isinstance(value, logging.LogRecord):
                            logging.getLogger(value.name).handle(value)
                    else:
                        self._settle(task, ok, value)

    def _note_started(self, child: int) -> None:
        """``child`` started, or ended: either way, nothing more to wait for."""
        with self._lock:
            self._started.add(child)
            if len(self._started) == len(self._children):
                self.ready.set()

    def _fail_child(self, child: int) -> None:
        """A child ended: what it still had can never finish, and it is given no more."""
        self._note_started(child)
        with self._lock:
            self._dead.add(child)
            lost = [task for task, (_, c) in self._futures.items() if c == child]
        for task in lost:
            self._settle(task, False, ChildLost("a download process ended before its task"))

    def shutdown(self, timeout: float | None = None) -> bool:
        """Tell every child to stop (running tasks end soon), wait up to ``timeout``.

        Returns False if some child had to be killed.
        """
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                _send(conn, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        clean = True
        for child in self._children:
            child.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                clean = False
                child.kill()
                child.join()
        self._reader.join(1.0)
        with self._lock:
            left = list(self._futures)
        for task in left:
            self._settle(task, False, ChildLost("stopped before it finished"))
        for conn in self._conns:
            conn.close()
        _stop_fork_server()
        return clean


def _stop_fork_server() -> None:
    """End the fork server once its children are reaped, and wait for it: its CPU and
    theirs then count as this process's children's (os.wait4, as the benchmarks
    measure), and it does not outlive the run (a sync --every starts a fresh one, in
    the environment of its time). Python has no public call for this."""
    stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


def _send(conn: Connection, message: Any) -> None:
    # Plain pickle: Connection.send's pickler copies the copyreg table for every
    # message, a measurable cost at one message per small file. Nothing sent here
    # needs its extra reducers (no sockets or file descriptors cross).
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


class ChildLost(Exception):
    """A download process ended (killed, or out of memory) before finishing a task."""


def _child_main(
    conn: Connection, threads: int, make_context: Callable[[Any, int], Any], config: Any,
    level: int = logging.WARNING,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve(conn, threads, make_context(config, threads), level))


class _ToParent:
    """What QueueHandler puts a record into: the pipe to the parent, as a reply."""

    def __init__(self, send: Callable[[list[tuple[int, bool, Any]]], None]) -> None:
        self._send = send

    def put_nowait(self, record: logging.LogRecord) -> None:
        try:
            pickle.dumps(record, pickle.HIGHEST_PROTOCOL)
        except Exception:
            # An extra= field that cannot cross (a lock, a socket): its text instead.
            for key, value in list(vars(record).items()):
                try:
                    pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
                except Exception:
                    setattr(record, key, str(value))
        self._send([(_LOG, True, record)])


async def _serve(
    conn: Connection, threads: int, context: Any, level: int = logging.WARNING
) -> None:
    """Run the parent's tasks, ``threads`` at a time, as tasks of this event loop until
    it says stop (or dies)."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Any]] = set()
    # Tasks wait their turn in the order they came: the parent's queue, kept here.
    turns = asyncio.Semaphore(threads)

    async def in_turn(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        async with turns:
            return await fn(context, *args)

    send_lock = threading.Lock()
    told_to_stop: asyncio.Future[None] = loop.create_future()

    # Replies go back in batches: the tasks that finish within REPLY_DELAY of the
    # first share one message, and the parent one wake-up.
    outbox: list[tuple[int, bool, Any]] = []

    def send(replies: list[tuple[int, bool, Any]]) -> None:
        try:
            data = pickle.dumps(replies, pickle.HIGHEST_PROTOCOL)
        except Exception as unpicklable:
            if len(replies) > 1:  # find the one that cannot cross; the rest can
                for reply in replies:
                    send([reply])
                return
            # Say so rather than leave the parent waiting.
            task, _, value = replies[0]
            lost = ChildLost(f"{value or 'result'}: {unpicklable}")
            data = pickle.dumps([(task, False, lost)], pickle.HIGHEST_PROTOCOL)
        with send_lock:
            try:
                conn.send_bytes(data)
            except (OSError, ValueError):
                return  # the parent is gone

    # QueueHandler renders the message and drops what cannot cross (arguments, traceback
    # objects). Records are rare (at INFO, none; retries at DEBUG): each goes at once.
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [logging.handlers.QueueHandler(_ToParent(send))]  # type: ignore[arg-type]
    logger.setLevel(level)
    logger.propagate = False

    def flush() -> None:
        if not outbox:
            return
        replies = outbox[:]
        outbox.clear()
        send(replies)

    def finished(task: int, future: asyncio.Task[Any]) -> None:
        if future.cancelled():
            return  # only a stop cancels, and the parent settles what is left then
        exc = future.exception()
        reply = (task, True, future.result()) if exc is None else (task, False, exc)
        if not outbox:
            loop.call_later(REPLY_DELAY, flush)
        outbox.append(reply)

    def on_message() -> None:
        try:
            message = _recv(conn)
        except (EOFError, OSError):
            message = None  # the parent died: stop as if told to
        if message is None:
            loop.remove_reader(conn.fileno())
            if not told_to_stop.done():
                told_to_stop.set_result(None)
            return
        for task, fn, args in message:
            job = loop.create_task(in_turn(fn, args))
            running.add(job)
            job.add_done_callback(running.discard)
            job.add_done_callback(functools.partial(finished, task))

    loop.add_reader(conn.fileno(), on_message)
    send([(_READY, True, None)])
    await told_to_stop
    stop = getattr(context, "stop", None)
    if stop is not None:
        stop.set()
    for job in running:
        job.cancel()
    if running:
        await asyncio.wait(running, timeout=5.0)
    aclose = getattr(context, "aclose", None)
    if aclose is not None:
        await aclose()
    if outbox:
        flush()
    with send_lock:
        conn.close()
