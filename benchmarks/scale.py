"""How simplemirror scales with the number of projects (metadata-heavy worlds).

    python -m benchmarks.scale                      # 10,000 / 100,000 / 650,000 projects
    python -m benchmarks.scale --sizes 10000 --changes 1000
    python -m benchmarks.scale --sizes 650000 --render-only   # rendering alone, no sync

For each size, on a fresh world and an empty mirror:

- initial sync, and its cost per project (wall and CPU);
- no-op sync answered 304 (the mirror sends the root's ETag);
- no-op sync with the root re-sent whole (nginx reloaded with ``etag off``, so there is
  no ETag to match and the full root comes back with 200);
- incremental sync after ``--changes`` projects changed upstream, and how many pages
  it rewrote (it should be only those projects' two pages and the root);
- rendering the root in-process: ``simplemirror.simple.render.root_html`` and ``root_json`` on
  that many entries.

Each size's world and mirror are removed before the next (a 650k world and its mirror
take about 30 GB and 6 million inodes), unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import artifacts, clients, world
from benchmarks.phases import Phase, run_phase
from benchmarks.upstream import Nginx


def time_rendering(names: list[str], serials: list[int], repeat: int = 3) -> dict[str, float]:
    """Best-of-``repeat`` seconds for simplemirror's two root renderers on these entries."""
    from simplemirror.simple import render  # here: only this mode needs simplemirror importable

    entries = [
        render.RootEntry(name=n, normalized=n, serial=s) for n, s in zip(names, serials,
                                                                        strict=True)
    ]
    best = {"root_html": float("inf"), "root_json": float("inf")}
    for _ in range(repeat):
        started = time.perf_counter()
        render.root_html(entries)
        best["root_html"] = min(best["root_html"], time.perf_counter() - started)
        started = time.perf_counter()
        render.root_json(entries, max(serials))
        best["root_json"] = min(best["root_json"], time.perf_counter() - started)
    best["both"] = best["root_html"] + best["root_json"]
    return best


def run_size(
    size: int, changes: int, work: Path, *, workers: int, binary: str, timeout: float,
    count_files: bool, reuse_world: bool = False, initial_only: bool = False,
    count_pages: bool = True, progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """All phases at one size; ``progress`` gets the figures so far after each phase."""
    started = time.monotonic()
    if reuse_world and (work / "world" / world.MANIFEST).exists():
        the_world = world.World.load(work / "world")
        if the_world.projects != size or the_world.kind != artifacts.METADATA_KIND:
            raise SystemExit(f"{work / 'world'} is not a fresh {size}-project metadata world")
        print(f"{size} projects: world reused", flush=True)
    else:
        the_world = world.generate(
            work / "world", artifacts.METADATA_KIND, size, json_api=False
        )
    generated = time.monotonic() - started
    print(f"{size} projects: world ready in {generated:.1f} s", flush=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    phases: list[Phase] = []
    with Nginx(the_world, work / "nginx") as nginx:
        client = clients.SimpleMirror(work / "mirror", nginx.url, workers, binary)

        def phase(name: str, *, pages: bool = count_pages) -> Phase:
            phases.append(run_phase(
                client, name, nginx, log_dir=logs, timeout=timeout, count_tree=count_files,
                count_pages=pages,
            ))
            progress({"projects": size, "phases": [p.as_dict() for p in phases]})
            return phases[-1]

        phase("initial", pages=False)
        if initial_only:
            return {"projects": size, "phases": [p.as_dict() for p in phases],
                    "per_project_ms": phases[0].usage.wall / size * 1000,
                    "cpu_per_project_ms": phases[0].usage.cpu / size * 1000}
        phase("noop-304")
        nginx.reload(etag=False)
        phase("noop-resent")
        nginx.reload(etag=True)
        changed = the_world.mutate(changes)
        nginx.reload()
        phase("incremental")
    files, metadata = the_world.file_counts()
    initial = phases[0]
    rendering = time_rendering(
        list(the_world.names()), [the_world.project_serial(i) for i in range(size)]
    )
    print(
        f"  render root: html {rendering['root_html']:.2f} s, json {rendering['root_json']:.2f} s",
        flush=True,
    )
    return {
        "projects": size,
        "changes": len(changed),
        "generate_s": generated,
        "world_files": [files, metadata],
        "per_project_ms": initial.usage.wall / size * 1000,
        "cpu_per_project_ms": initial.usage.cpu / size * 1000,
        "phases": [p.as_dict() for p in phases],
        "render": rendering,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'projects':>9} {'initial s':>9} {'ms/proj':>7} {'cpu ms/p':>8} {'rss MB':>6} "
        f"{'304 s':>6} {'rss':>4} {'resent s':>8} {'rss':>4} {'incr s':>6} {'rss':>4} "
        f"{'pages':>6} {'html s':>6} {'json s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        p = {ph["phase"]: ph for ph in r["phases"]}
        lines.append(
            f"{r['projects']:>9} {p['initial']['wall']:>9.1f} {r['per_project_ms']:>7.3f} "
            f"{r['cpu_per_project_ms']:>8.3f} {p['initial']['max_rss_mb']:>6.0f} "
            f"{p['noop-304']['wall']:>6.2f} {p['noop-304']['max_rss_mb']:>4.0f} "
            f"{p['noop-resent']['wall']:>8.2f} {p['noop-resent']['max_rss_mb']:>4.0f} "
            f"{p['incremental']['wall']:>6.1f} {p['incremental']['max_rss_mb']:>4.0f} "
            f"{p['incremental']['pages_written'] or '-':>6} {r['render']['root_html']:>6.2f} "
            f"{r['render']['root_json']:>6.2f}"
        )
    per = [r["per_project_ms"] for r in rows]
    if len(per) > 1:
        lines.append(f"per-project cost, largest / smallest size: {per[-1] / per[0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,650000")
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--workdir", type=Path, help="default: a temp dir under /tmp")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    switches = {
        "--render-only": "only time simplemirror's root rendering at each size (no world, "
        "no sync)",
        "--reuse-world": "use the world already in <workdir>/size-N/world (made by `python "
        "-m benchmarks.world DIR --world metadata --projects N`) instead of generating one",
        "--initial-only": "only the first sync (its wall, CPU and peak RSS), then stop",
        "--no-count-pages": "do not walk web/simple for the pages each later run rewrote "
        "(minutes per phase at 650k when the mirror is on a disk whose cache keeps little)",
        "--count-files": "walk the mirror's tree after each phase to count its files "
        "(minutes at 650k on a cold disk; by default the mirror's own summary line is the "
        "record)",
    }
    for switch, text in switches.items():
        parser.add_argument(switch, action="store_true", help=text)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.render_only:
        for size in sizes:
            names = [world.project_name(i) for i in range(size)]
            took = time_rendering(names, list(range(1, size + 1)))
            print(
                f"{size} projects: root_html {took['root_html']:.2f} s, "
                f"root_json {took['root_json']:.2f} s, both {took['both']:.2f} s"
            )
        return 0
    binary = clients.find_mirror(args.mirror)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def save(partial: dict[str, Any] | None = None) -> None:
        # After every phase: a long run's early figures survive its being cut short.
        if args.json_out:
            done = rows + ([{"unfinished": True, **partial}] if partial else [])
            args.json_out.write_text(json.dumps(done, indent=2))

    for size in sizes:
        work = base / f"size-{size}"
        try:
            rows.append(run_size(
                size, args.changes, work, workers=args.workers, binary=binary,
                timeout=args.timeout, count_files=args.count_files,
                reuse_world=args.reuse_world, initial_only=args.initial_only,
                count_pages=not args.no_count_pages, progress=save,
            ))
            save()  # before the clean-up, which takes long for millions of files
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    if not args.keep and args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    print()
    if args.initial_only:
        for r in rows:
            first = r["phases"][0]
            print(f"{r['projects']} projects: initial {first['wall']:.1f} s, "
                  f"{r['cpu_per_project_ms']:.3f} ms CPU per project, "
                  f"peak RSS {first['max_rss_mb']:.0f} MB")
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
