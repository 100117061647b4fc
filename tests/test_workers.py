"""Download processes: tasks run in children, results and errors come back, nothing outlives
the parent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from simplemirror.sync import workers
from simplemirror.sync.workers import ChildLost, ProcessPool


class Context:
    def __init__(self, config: str, share: int) -> None:
        self.config = config
        self.share = share
        self.stop = threading.Event()


async def where(context: Context, value: int) -> tuple[int, str, int]:
    return os.getpid(), context.config, value * 2


async def fail(context: Context) -> None:
    raise FileNotFoundError(2, "no such file", "/nowhere")


async def wait_for_stop(context: Context) -> str:
    for _ in range(600):  # 30 s at most
        if context.stop.is_set():
            return "stopped"
        await asyncio.sleep(0.05)
    return "timed out"


async def nap(context: Context) -> str:
    await asyncio.sleep(1.0)
    return "rested"


def test_tasks_run_in_child_processes_with_their_context() -> None:
    pool = ProcessPool([2, 2], Context, "cfg")
    try:
        futures = [pool.submit(where, n) for n in range(6)]
        results = [future.result(timeout=30) for future in futures]
    finally:
        assert pool.shutdown(10)
    pids = {pid for pid, _, _ in results}
    assert os.getpid() not in pids and len(pids) == 2  # spread over both children
    assert [(config, doubled) for _, config, doubled in results] == [
        ("cfg", n * 2) for n in range(6)
    ]


def test_an_exception_comes_back_with_its_type_and_fields() -> None:
    pool = ProcessPool([1], Context, "cfg")
    try:
        with pytest.raises(FileNotFoundError) as info:
            pool.submit(fail).result(timeout=30)
    finally:
        pool.shutdown(10)
    assert info.value.errno == 2 and info.value.filename == "/nowhere"


async def where_async(context: Context, value: int) -> tuple[int, int, str]:
    await asyncio.sleep(0.01)
    return os.getpid(), threading.get_ident(), f"{context.config}:{value}"


async def unpicklable_async(context: Context) -> object:
    await asyncio.sleep(0.01)  # to finish in the same turn of the loop as its neighbours
    return threading.Lock()


async def sleep_long(context: Context) -> str:
    await asyncio.sleep(60)
    return "slept"


def test_coroutine_functions_run_on_the_childs_event_loop() -> None:
    pool = ProcessPool([3], Context, "cfg")
    try:
        results = [f.result(timeout=30) for f in [pool.submit(where_async, n) for n in range(8)]]
        child_pid = pool.submit(where, 0).result(timeout=30)[0]
    finally:
        assert pool.shutdown(10)
    assert [r[2] for r in results] == [f"cfg:{n}" for n in range(8)]
    pids = {r[0] for r in results}
    assert pids == {child_pid} and os.getpid() not in pids
    assert len({r[1] for r in results}) == 1  # one thread: the loop's


def test_a_result_that_cannot_cross_fails_alone_not_its_batch() -> None:
    pool = ProcessPool([1], Context, "cfg")
    try:
        # Submitted together, so that their replies are likely to share a message.
        futures = [pool.submit(where_async, 1), pool.submit(unpicklable_async),
                   pool.submit(where_async, 2)]
        assert futures[0].result(timeout=30)[2] == "cfg:1"
        with pytest.raises(ChildLost, match="cannot pickle"):
            futures[1].result(timeout=30)
        assert futures[2].result(timeout=30)[2] == "cfg:2"
    finally:
        pool.shutdown(10)


async def count_at_once(context: Context) -> int:
    """How many of these ran at once in this child, this one included, at most."""
    running = getattr(context, "running", 0) + 1
    context.running = running  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    context.running -= 1  # type: ignore[attr-defined]
    return running


def test_a_child_runs_no_more_coroutines_at_once_than_its_share_of_workers() -> None:
    # Each running task holds a connection to upstream: ten workers over two
    # processes must mean five connections each, however far ahead the parent sends.
    pool = ProcessPool([3], Context, "cfg")
    try:
        futures = pool.submit_all(count_at_once, [()] * 12)
        at_once = [f.result(timeout=30) for f in futures]
    finally:
        pool.shutdown(10)
    assert max(at_once) == 3


async def sleep_then_say(context: Context, seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def test_replies_finished_close_together_come_back_in_one_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three tasks ending 1.5 ms apart: each in a turn of the child's loop of its
    # own, but all within REPLY_DELAY of the first, so one message should carry
    # them (two at most, should the child be held up between them).
    assert workers.REPLY_DELAY >= 0.004
    messages: list[int] = []
    real_recv = workers._recv

    def counting_recv(conn: Any) -> Any:
        replies = real_recv(conn)
        tasks = [reply for reply in replies if reply[0] >= 0]  # not "started", not a log
        if tasks:
            messages.append(len(tasks))
        return replies

    monkeypatch.setattr(workers, "_recv", counting_recv)
    pool = ProcessPool([1], Context, "cfg")
    try:
        futures = pool.submit_all(sleep_then_say, [(0.0,), (0.0015,), (0.003,)])
        assert [f.result(timeout=30) for f in futures] == [0.0, 0.0015, 0.003]
    finally:
        pool.shutdown(10)
    assert sum(messages) == 3 and len(messages) < 3


def test_shutdown_cancels_running_coroutines() -> None:
    pool = ProcessPool([1], Context, "cfg")
    future = pool.submit(sleep_long)
    time.sleep(0.5)  # let it start
    started = time.monotonic()
    assert pool.shutdown(10)
    assert time.monotonic() - started < 5
    with pytest.raises(ChildLost):  # never finished: settled by the parent
        future.result(timeout=1)


def test_a_killed_child_fails_its_tasks_instead_of_hanging() -> None:
    pool = ProcessPool([1], Context, "cfg")
    try:
        pid = pool.submit(where, 1).result(timeout=30)[0]
        future = pool.submit(wait_for_stop)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ChildLost):
            future.result(timeout=10)
    finally:
        pool.shutdown(5)


def test_work_after_a_child_died_goes_to_the_children_still_alive() -> None:
    # Once, a dead child's count of tasks fell back to 0, so every later task went to its
    # closed pipe: one OOM kill failed every project left in the run.
    pool = ProcessPool([1, 1], Context, "cfg")
    try:
        first = [pool.submit(where, n) for n in range(4)]  # at once: spread over both
        pids = {future.result(timeout=30)[0] for future in first}
        assert len(pids) == 2
        dead = pids.pop()
        lost = pool.submit_all(nap, [()] * 2)  # one of them to the child about to die
        os.kill(dead, signal.SIGKILL)
        for future in lost:
            with contextlib.suppress(ChildLost):
                future.result(timeout=10)
        later = [pool.submit(where, n).result(timeout=30) for n in range(10)]
    finally:
        pool.shutdown(5)
    assert {pid for pid, _, _ in later} == pids


def test_when_every_child_died_new_work_fails_at_once() -> None:
    pool = ProcessPool([1], Context, "cfg")
    try:
        pid = pool.submit(where, 1).result(timeout=30)[0]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ChildLost):
            pool.submit(wait_for_stop).result(timeout=10)
        with pytest.raises(ChildLost):
            pool.submit(where, 2).result(timeout=1)
    finally:
        pool.shutdown(5)


async def burn(context: Context, seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_once_shut_down_the_childrens_cpu_counts_as_the_callers() -> None:
    # The benchmarks measure a sync with os.wait4: the CPU of a process it never reaps
    # (one forked by a fork server left running) would go uncounted.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool = ProcessPool([1], Context, "cfg")
    try:
        pool.submit(burn, 0.3).result(timeout=30)
    finally:
        assert pool.shutdown(10)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime >= 0.3


def test_children_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from simplemirror.sync.workers import ProcessPool
        from tests.test_workers import Context, where
        pool = ProcessPool([1, 1], Context, "cfg")
        futures = [pool.submit(where, n) for n in range(4)]
        pids = {future.result(timeout=30)[0] for future in futures}
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(60)
        """
    )
    root = Path(__file__).resolve().parent.parent
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie has ended
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False


async def log_in_child(context: Context, value: int) -> int:
    import logging

    log = logging.getLogger("simplemirror")
    log.debug("child debug %d", value)
    log.warning("child warning %d", value, extra={"lock": threading.Lock()})  # cannot cross
    return value


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_a_child_logs_at_the_parent_level_into_the_parent(
    caplog: pytest.LogCaptureFixture, level: str
) -> None:
    caplog.set_level(level, logger="simplemirror")
    pool = ProcessPool([1], Context, "cfg")
    try:
        assert pool.submit(log_in_child, 7).result(timeout=30) == 7
        assert pool.submit(where, 1).result(timeout=30)[2] == 2  # the pool goes on working
    finally:
        assert pool.shutdown(10)
    records = [r for r in caplog.records if r.name == "simplemirror"]
    assert [r.getMessage() for r in records] == (
        ["child debug 7"] if level == "DEBUG" else []
    ) + ["child warning 7"]
    assert "lock" in records[-1].lock  # an extra field that cannot cross comes as its text


async def my_share(context: Context) -> int:
    return context.share


def test_each_child_is_given_its_own_share() -> None:
    pool = ProcessPool([2, 3], Context, "cfg")
    try:
        # Both idle: the first task goes to the first child, the next to the other.
        shares = [f.result(timeout=30) for f in pool.submit_all(my_share, [(), ()])]
    finally:
        assert pool.shutdown(10)
    assert sorted(shares) == [2, 3]


def test_ready_once_every_child_has_started() -> None:
    pool = ProcessPool([1, 1], Context, "cfg")
    try:
        assert pool.ready.wait(120)
        # Both said so from their event loops, which then take work at once.
        assert pool._started == {0, 1}
        assert pool.submit(where, 2).result(timeout=60)[1:] == ("cfg", 4)
    finally:
        assert pool.shutdown(10)


def test_a_child_that_died_before_it_started_is_not_waited_for() -> None:
    pool = ProcessPool([1], Context, "cfg")
    try:
        pool._children[0].kill()
        assert pool.ready.wait(120)
    finally:
        pool.shutdown(10)
