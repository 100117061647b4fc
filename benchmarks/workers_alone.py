"""What a download process spends, alone: its work in N threads of this one process.

    python -m benchmarks.workers_alone --projects 5000 --threads 1,5

For every project of a fresh metadata world: ``Client.fetch_page``, ``plan_files``, then
``download_todo`` for each file (the file and its ``.metadata``), exactly the calls a
download process makes, with no parent, pipes, state.db or pages. Prints the user and
system CPU a project for each thread count: the difference between one thread and
several is what the threads cost by contending for the GIL.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import artifacts, world
from benchmarks.upstream import Nginx


def run_threads(the_world: world.World, nginx: Nginx, work: Path, threads: int) -> str:
    from simplemirror import config  # here: the rest of benchmarks/ runs without it
    from simplemirror.plan import ProjectTodo, plan_files
    from simplemirror.sync import download_todo
    from simplemirror.upstream import Client

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
                    download_todo(client, name, todo)
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
    count = the_world.projects
    user = (after.ru_utime - before.ru_utime) / count * 1e3
    system = (after.ru_stime - before.ru_stime) / count * 1e3
    return f"{threads:>7} {wall:>8.2f} {user:>9.3f} {system:>9.3f} {user + system:>9.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=5000)
    parser.add_argument("--threads", default="1,5", help="thread counts, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-workers-", dir=args.workdir))
    try:
        the_world = world.generate(
            work / "world", artifacts.METADATA_KIND, args.projects, json_api=False
        )
        print(f"{'threads':>7} {'wall s':>8} {'user ms':>9} {'sys ms':>9} {'cpu ms':>9}"
              "   (a project)")
        with Nginx(the_world, work / "nginx") as nginx:
            for threads in (int(t) for t in args.threads.split(",")):
                print(run_threads(the_world, nginx, work, threads), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
