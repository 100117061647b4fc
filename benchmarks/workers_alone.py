"""What a download process spends, alone: its work in N threads, or N tasks of one loop.

    python -m benchmarks.workers_alone --projects 5000 --threads 1,5 --tasks 1,5

For every project of a fresh metadata world: ``fetch_page``, ``plan_files``, then
``download_todo`` for each file (the file and its ``.metadata``), exactly the calls a
download process makes, with no parent, pipes, state.db or pages: the blocking
``Client`` called from N threads (``--threads``; its requests run on one background event
loop), or awaited in N tasks of one event loop
(``--tasks``, what download processes run). Prints the user and system CPU a project
for each: the difference between one thread and several is what the threads cost by
contending for the GIL; the tasks pay no such cost.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import artifacts, world
from benchmarks.upstream import Nginx


def run_threads(the_world: world.World, nginx: Nginx, work: Path, threads: int) -> str:
    from simplemirror.cli import config  # here: the rest of benchmarks/ runs without it
    from simplemirror.sync.download import download_todo
    from simplemirror.sync.plan import ProjectTodo, plan_files
    from simplemirror.upstream.client import Client

    mirror = work / f"mirror-{threads}"
    cfg = config.build({}, {"upstream": nginx.simple_url, "directory": str(mirror)})
    cfg.web.mkdir(parents=True)
    cfg.tmp.mkdir(parents=True)
    client = Client(cfg)
    names = iter(list(the_world.names()))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work_through() -> None:
        try:
            while True:
                with lock:
                    name = next(names, None)
                if name is None:
                    return
                got = client.fetch_page(ProjectTodo(name, name, None))
                assert got is not None
                for todo in plan_files(got.page.files, []).fetch:
                    client.run(download_todo(client, name, todo))
        except BaseException as exc:  # reported below, not lost in a thread
            failures.append(exc)

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    pool = [threading.Thread(target=work_through) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(mirror)
    if failures:
        raise SystemExit(f"{threads} thread(s): {failures[0]!r}")
    return _row(f"{threads} threads", wall, before, after, the_world.projects)


def run_tasks(the_world: world.World, nginx: Nginx, work: Path, tasks: int) -> str:
    from simplemirror.cli import config
    from simplemirror.sync.download import download_todo
    from simplemirror.sync.plan import ProjectTodo, plan_files
    from simplemirror.upstream.client import Client

    mirror = work / f"mirror-loop-{tasks}"
    cfg = config.build({}, {"upstream": nginx.simple_url, "directory": str(mirror)})
    cfg.web.mkdir(parents=True)
    cfg.tmp.mkdir(parents=True)
    names = iter(list(the_world.names()))

    async def work_through(client: Client) -> None:
        for name in names:  # shared: each task takes the next project
            got = await client.get_page(ProjectTodo(name, name, None))
            assert got is not None
            for todo in plan_files(got.page.files, []).fetch:
                await download_todo(client, name, todo)

    async def all_tasks() -> None:
        client = Client(cfg)
        try:
            await asyncio.gather(*(work_through(client) for _ in range(tasks)))
        finally:
            await client.aclose()

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    asyncio.run(all_tasks())
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(mirror)
    return _row(f"{tasks} tasks", wall, before, after, the_world.projects)


def _row(how: str, wall: float, before: Any, after: Any, projects: int) -> str:
    user = (after.ru_utime - before.ru_utime) / projects * 1e3
    system = (after.ru_stime - before.ru_stime) / projects * 1e3
    return f"{how:>10} {wall:>8.2f} {user:>9.3f} {system:>9.3f} {user + system:>9.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=5000)
    parser.add_argument("--threads", default="1,5", help="thread counts, comma-separated")
    parser.add_argument("--tasks", default="1,5",
                        help="task counts on one event loop, comma-separated ('' for none)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-workers-", dir=args.workdir))
    try:
        the_world = world.generate(
            work / "world", artifacts.METADATA_KIND, args.projects, json_api=False
        )
        print(f"{'how':>10} {'wall s':>8} {'user ms':>9} {'sys ms':>9} {'cpu ms':>9}"
              "   (a project)")
        with Nginx(the_world, work / "nginx") as nginx:
            for threads in (int(t) for t in args.threads.split(",") if t):
                print(run_threads(the_world, nginx, work, threads), flush=True)
            for tasks in (int(t) for t in args.tasks.split(",") if t):
                print(run_tasks(the_world, nginx, work, tasks), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
