"""Switching from bandersnatch without downloading again (``mirror sync --reuse-from``).

    python -m benchmarks.switch --projects 2000 --workdir /dev/shm/bench/switch

On the file world: bandersnatch makes its mirror first; then simplemirror makes a
fresh one (every file downloaded), and a third, its first sync given bandersnatch's
``web/packages/`` with ``--reuse-from``. Printed: each phase's figures (phases.py)
and what the switch saved against the fresh sync: wall, CPU, requests and bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import artifacts, clients, world
from benchmarks.phases import run_phase
from benchmarks.upstream import Nginx


class Switching(clients.SimpleMirror):
    """simplemirror's first sync, taking what another mirror holds."""

    name = "switch"

    def __init__(self, directory: Path, host_url: str, workers: int, binary: str,
                 reuse_from: Path) -> None:
        super().__init__(directory, host_url, workers, binary)
        self.reuse_from = reuse_from

    def command(self) -> list[str]:
        return [*super().command(), "--reuse-from", str(self.reuse_from)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=artifacts.KINDS, default=artifacts.FILES_KIND)
    parser.add_argument("--projects", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temp dir)")
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--bandersnatch", help="the `bandersnatch` command")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-switch-"))
    work.mkdir(parents=True, exist_ok=True)
    ours = [work / n for n in ("world", "nginx", "logs", "bandersnatch", "fresh", "switch")]
    try:
        the_world = world.generate(work / "world", args.world, args.projects, json_api=True)
        files, metadata = the_world.file_counts()
        print(f"world: {args.world}, {args.projects} projects, {files} files + {metadata} "
              ".metadata", flush=True)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        binary = clients.find_mirror(args.mirror)
        with Nginx(the_world, work / "nginx") as nginx:
            bandersnatch = clients.Bandersnatch(
                work / "bandersnatch", nginx.url, args.workers,
                args.bandersnatch or clients.find_bandersnatch(),
            )
            fresh = clients.SimpleMirror(work / "fresh", nginx.url, args.workers, binary)
            switch = Switching(work / "switch", nginx.url, args.workers, binary,
                               bandersnatch.web / "packages")
            phases = [
                run_phase(client, "initial", nginx, log_dir=logs, timeout=args.timeout)
                for client in (bandersnatch, fresh, switch)
            ]
        _, new, reused = phases
        print()
        print(f"switch against fresh: wall {reused.usage.wall:.2f} / {new.usage.wall:.2f} s "
              f"({new.usage.wall / reused.usage.wall:.1f}x faster), CPU {reused.usage.cpu:.2f} "
              f"/ {new.usage.cpu:.2f} s, requests {reused.served.requests} / "
              f"{new.served.requests}, MB served {reused.mb:.1f} / {new.mb:.1f}")
        said = (logs / "switch-initial.log").read_text(errors="replace").splitlines()
        print("  switch's summary:", *[line for line in said if "reused" in line])
        failed = [p for p in phases if p.usage.returncode != 0]
        return 1 if failed else 0
    finally:
        if not args.keep:
            for path in ours:
                shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
