"""Measure the benchmark upstream alone: how fast does nginx serve each kind of request?

    python -m benchmarks.loadtest --world metadata --projects 30000
    python -m benchmarks.loadtest --world files --projects 2000

Fetches the root, every project page (JSON and HTML), every JSON API document and every
file with both plain clients of fetch.py (10 in parallel), and reports requests/s, MB/s
and nginx's own CPU time per request. A mirror client that makes fewer requests per
second than these is not held back by the upstream.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks import artifacts, fetch, world
from benchmarks.pages import JSON_TYPE
from benchmarks.upstream import Nginx


def _row(label: str, result: fetch.FetchResult, nginx_cpu: float) -> str:
    per_request = nginx_cpu / result.requests * 1e6 if result.requests else 0.0
    return (
        f"{label:<28} {result.requests:>9} {result.seconds:>8.2f} {result.rate:>10.0f} "
        f"{result.mb_per_s:>9.1f} {nginx_cpu:>8.2f} {per_request:>9.1f}"
        + (f"  ERRORS {result.errors}" if result.errors else "")
    )


def run(the_world: world.World, work: Path, workers: int) -> list[str]:
    names = list(the_world.names())
    files = (the_world.root / "files.txt").read_text().split()
    plans: list[tuple[str, list[str], str | None]] = [
        ("root (JSON, gzip) x20", ["/simple/"] * 20, JSON_TYPE),
        ("project pages JSON", [f"/simple/{n}/" for n in names], JSON_TYPE),
        ("project pages HTML", [f"/simple/{n}/" for n in names], "text/html"),
        ("files + .metadata", files, None),
    ]
    if the_world.json_api:
        plans.insert(3, ("JSON API", [f"/pypi/{n}/json" for n in names], None))
    lines = [
        f"{'what':<28} {'requests':>9} {'seconds':>8} {'req/s':>10} {'MB/s':>9} "
        f"{'nginx s':>8} {'us/req':>9}"
    ]
    with Nginx(the_world, work / "nginx") as nginx:
        clients: list[tuple[str, Callable[[list[str], str | None], fetch.FetchResult]]] = [
            ("curl -Z", lambda p, a: fetch.curl_all(
                nginx.url, p, parallel=workers, accept=a, work=work)),
            ("python", lambda p, a: fetch.fetch_all(
                nginx.port, p, workers=workers, accept=a)),
        ]
        for client, go in clients:
            for label, paths, accept in plans:
                before = nginx.cpu_seconds()
                result = go(paths, accept)
                lines.append(_row(f"{label} [{client}]", result, nginx.cpu_seconds() - before))
                print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=artifacts.KINDS, default=artifacts.METADATA_KIND)
    parser.add_argument("--projects", type=int, default=30_000)
    parser.add_argument("--world-dir", type=Path, help="an existing world to serve")
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        if args.world_dir:
            the_world = world.World.load(args.world_dir)
        else:
            the_world = world.generate(work / "world", args.world, args.projects, json_api=True)
        print(f"{the_world.kind} world, {the_world.projects} projects, {args.workers} clients")
        run(the_world, work, args.workers)


if __name__ == "__main__":
    main()
