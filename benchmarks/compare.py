"""simplemirror against bandersnatch, on the same world, in one run.

    python -m benchmarks.compare --world files --projects 2000
    python -m benchmarks.compare --world metadata --projects 30000 --changes 1000
    python -m benchmarks.compare --world metadata --projects 3000 --rtt-ms 50 \
        --mirror-workers default

For each tool: an initial sync into an empty directory, a no-op re-sync, then (after the
upstream changed ``--changes`` projects, the same change for both) an incremental sync.
Each phase reports wall time, CPU (user+sys of the client), peak RSS, and the requests
and bytes nginx served. On the file-heavy world it also measures the machine's limit:
a plain parallel fetch + sha256 + write of the same file URLs (fetch.fetch_all).

With ``--rtt-ms N`` both tools reach nginx through wanproxy.py, which adds N ms of
round trip to every request and one more to every new connection, and each phase also
reports its bound: requests x RTT / the client's connections (its workers), the least
time that many connections can take, and the share of it the tool reached (bound /
wall). The yardsticks are loopback figures and are skipped then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import artifacts, clients, fetch, world
from benchmarks.phases import Phase, run_phase, settle
from benchmarks.upstream import Nginx
from benchmarks.wanproxy import Proxy

PHASES = ("initial", "noop", "incremental")


def _commit() -> str | None:
    """The checkout's commit, so that a report says which simplemirror it measured."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
        capture_output=True, text=True, check=False,
    )
    return done.stdout.strip() or None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=artifacts.KINDS, default=artifacts.FILES_KIND)
    parser.add_argument(
        "--projects", type=int, help="default: 2,000 (files) or 30,000 (metadata)"
    )
    parser.add_argument(
        "--changes", type=int, help="projects changed before the incremental sync "
        "(default: a tenth of the projects, at most 1,000)"
    )
    parser.add_argument("--only", choices=(*clients.TOOLS, "both"), default="both")
    parser.add_argument("--workers", type=int, default=10, help="each tool's workers")
    parser.add_argument(
        "--mirror-workers", type=_workers, metavar="N|default",
        help="simplemirror's workers, if not --workers; 'default': its own default",
    )
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0,
        help="reach nginx through a proxy adding this round trip (default 0: no proxy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the world and mirrors")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temp dir)")
    parser.add_argument("--json-out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--bandersnatch", help="the `bandersnatch` command")
    parser.add_argument("--no-limit", action="store_true", help="skip the fetch+hash limit")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds before a phase is killed"
    )
    args = parser.parse_args(argv)
    if args.mirror_workers is None:
        args.mirror_workers = args.workers
    if args.projects is None:
        args.projects = 2_000 if args.world == artifacts.FILES_KIND else 30_000
    if args.changes is None:
        args.changes = min(1_000, max(1, args.projects // 10))
    return args


def _workers(text: str) -> int | str:
    if text == "default":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or 'default'") from None


def default_mirror_workers() -> int:
    """simplemirror's default workers, as the checkout running the benchmark has it."""
    from dataclasses import fields

    from simplemirror.cli.config import Config  # here: the rest runs without simplemirror

    default = next(f.default for f in fields(Config) if f.name == "workers")
    assert isinstance(default, int)
    return default


def wan_table(results: list[Phase]) -> str:
    """Each phase against its bound: requests x RTT / connections."""
    head = (
        f"{'phase':<12} {'tool':<13} {'requests':>9} {'conns':>6} {'bound s':>8} "
        f"{'wall s':>8} {'of bound':>8} {'opened':>7} {'at once':>7} {'proxy cpu':>9} "
        f"{'curl s':>7} {'of curl':>7}"
    )
    lines = [head, "-" * len(head)]
    for p in results:
        x = p.extra
        if x.get("bound") is None:
            continue
        lines.append(
            f"{p.phase:<12} {p.tool:<13} {p.served.requests:>9} {x['concurrency']:>6} "
            f"{x['bound']:>8.2f} {p.usage.wall:>8.2f} {x['of_bound']:>8.2f} "
            f"{x['proxy']['connections']:>7} {x['proxy']['peak_open']:>7} "
            f"{x['proxy_cpu']:>9.2f} "
            + (f"{x['curl']['seconds']:>7.2f} {x['curl']['seconds'] / p.usage.wall:>7.2f}"
               if "curl" in x else f"{'':>7} {'':>7}")
        )
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(results: list[Phase], limits: dict[str, Any] | None) -> str:
    head = (
        f"{'phase':<12} {'tool':<13} {'wall s':>8} {'cpu s':>8} {'user':>7} {'sys':>7} "
        f"{'rss MB':>7} {'requests':>9} {'MB':>8} {'MB/s':>7} {'cpu s/GB':>8} "
        f"{'files':>7} {'.meta':>7} {'pages':>7} {'exit':>4} {'nginx':>6} {'other':>6}"
    )
    lines = [
        "(nginx, other: CPU seconds used meanwhile by nginx, and by anything else on the "
        "machine)", head, "-" * len(head),
    ]
    for p in results:
        u = p.usage
        lines.append(
            f"{p.phase:<12} {p.tool:<13} {u.wall:>8.2f} {u.cpu:>8.2f} {u.user:>7.2f} "
            f"{u.sys:>7.2f} {u.max_rss_mb:>7.0f} {p.served.requests:>9} {p.mb:>8.1f} "
            f"{p.mb_per_s:>7.1f} {p.cpu_per_gb:>8.1f} {p.files:>7} {p.metadata:>7} "
            f"{'' if p.pages_written is None else p.pages_written:>7} {u.returncode:>4} "
            f"{p.nginx_cpu:>6.1f} {p.extra.get('other_cpu', 0.0):>6.1f}"
        )
    for label, tool in YARDSTICKS:
        if limits and label in limits:
            lim = limits[label]
            cpu = f"{lim['cpu']:>8.2f}" if "cpu" in lim else f"{'':>8}"
            per_gb = f"{lim['cpu'] / (lim['mb'] / 1e3):>8.1f}" if "cpu" in lim else ""
            lines.append(
                f"{label:<12} {tool:<14} {lim['seconds']:>7.2f} {cpu} {'':>7} "
                f"{'':>7} {'':>7} {lim['requests']:>9.0f} {lim['mb']:>8.1f} "
                f"{lim['mb_per_s']:>7.1f} {per_gb}"
            )
    by = {(p.tool, p.phase): p for p in results}
    sm, bs = clients.SIMPLEMIRROR, clients.BANDERSNATCH
    ratio_lines = []
    for phase in PHASES:
        a, b = by.get((sm, phase)), by.get((bs, phase))
        if a and b:
            ratio_lines.append(
                f"{phase:<12} speed-up (bandersnatch wall / simplemirror wall) "
                f"{_ratio(b.usage.wall, a.usage.wall)}, CPU ratio (sm/bs) "
                f"{_ratio(a.usage.cpu, b.usage.cpu)}, RSS ratio (sm/bs) "
                f"{_ratio(a.usage.max_rss_mb, b.usage.max_rss_mb)}, requests sm/bs "
                f"{a.served.requests}/{b.served.requests}"
            )
    a, b = by.get((sm, "initial")), by.get((bs, "initial"))
    if a and b:
        ratio_lines.append(
            f"initial      throughput sm/bs {_ratio(a.mb_per_s, b.mb_per_s)}, "
            f"CPU s per GB sm/bs {_ratio(a.cpu_per_gb, b.cpu_per_gb)}"
        )
    for label, what in YARDSTICKS:
        if not limits or label not in limits:
            continue
        for tool in (sm, bs):
            p = by.get((tool, "initial"))
            if p:
                ratio_lines.append(
                    f"initial      {tool} throughput / {label} ({what}) "
                    f"{_ratio(p.mb_per_s, limits[label]['mb_per_s'])}"
                )
    return "\n".join([*lines, "", *ratio_lines])


# The yardsticks for the file-heavy world: (key, what it does). "limit" is the one
# the target is read against (see benchmarks/README.md, "What each figure is").
YARDSTICKS = (
    ("hash only", "fetch+sha256"),
    ("limit", "+write"),
    ("curl", "curl|sha256sum"),
)


def _limit(nginx: Nginx, paths: list[str], work: Path, workers: int) -> dict[str, Any]:
    """The plain fetchers on the initial sync's file URLs: what the machine can do.

    "limit" fetches, hashes (sha256) and writes each file (temporary file, then rename):
    the least a verifying mirror must do. "hash only" skips the disk; "curl" is the
    issue's example, parallel curl piped into sha256sum (native code, no disk).
    """
    out: dict[str, Any] = {}
    for label, _ in YARDSTICKS:
        settle()
        offset = nginx.log_offset()
        before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN
        )
        if label == "curl":
            result = fetch.curl_sha256(nginx.url, paths, parallel=workers, work=work)
        else:
            store = work / "limit-store" if label == "limit" else None
            result = fetch.fetch_all(
                nginx.port, paths, workers=workers, hash_bodies=True, store=store
            )
            if store is not None:
                shutil.rmtree(store)
        after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN
        )
        cpu = sum(
            (a.ru_utime - b.ru_utime) + (a.ru_stime - b.ru_stime)
            for a, b in zip(after, before, strict=True)
        )
        served = nginx.stats(offset)
        mb = served.bytes / 1e6
        out[label] = {
            "requests": result.requests, "seconds": result.seconds, "mb": mb,
            "mb_per_s": mb / result.seconds, "errors": result.errors, "cpu": cpu,
        }
        print(
            f"  {label}: {result.requests} files, {mb:.1f} MB in {result.seconds:.2f} s "
            f"({mb / result.seconds:.1f} MB/s, {cpu:.1f} CPU s)", flush=True,
        )
    return out


def _network_limit(p: Phase, nginx: Nginx, proxy: Proxy, work: Path) -> None:
    """The same requests as ``p`` made, through the same proxy at the same concurrency,
    by ``curl -Z`` with every URL known from the start: what the delayed network and
    this machine allow, with no parsing, no order between requests and no start-up to
    speak of. A tool's wall against it is its own cost."""
    paths = nginx.paths(*p.extra["log_span"])
    settle()
    result = fetch.curl_all(proxy.url, paths, parallel=p.extra["concurrency"], work=work)
    p.extra["curl"] = {
        "seconds": result.seconds, "requests": result.requests, "errors": result.errors,
        "of_bound": p.extra["bound"] / result.seconds if result.seconds else None,
    }
    print(
        f"  curl -Z --parallel-max {p.extra['concurrency']}, {p.tool}'s {len(paths)} "
        f"{p.phase} requests: {result.seconds:.2f} s ({p.extra['curl']['of_bound']:.2f} of "
        f"the bound){' with errors' if result.errors else ''}", flush=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    tools = clients.TOOLS if args.only == "both" else (args.only,)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    # Only what this run creates is removed: a --workdir given may hold other things.
    ours = [work] if args.workdir is None else [
        work / n for n in ("world", "nginx", "logs", "wanproxy", *clients.TOOLS)
    ] + [work / f"{clients.BANDERSNATCH}.conf"]
    try:
        started = time.monotonic()
        the_world = world.generate(
            work / "world", args.world, args.projects,
            json_api=clients.BANDERSNATCH in tools,
        )
        files, metadata = the_world.file_counts()
        print(
            f"world: {args.world}, {args.projects} projects, {files} files + {metadata} "
            f".metadata, generated in {time.monotonic() - started:.1f} s ({work})", flush=True,
        )
        initial_files = (the_world.root / "files.txt").read_text().split()
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        with contextlib.ExitStack() as running:
            nginx = running.enter_context(Nginx(the_world, work / "nginx"))
            proxy = None
            if args.rtt_ms > 0:
                proxy = running.enter_context(Proxy(nginx.port, args.rtt_ms, work / "wanproxy"))
            url = proxy.url if proxy else nginx.url
            mirrors: list[clients.MirrorClient] = []
            connections: dict[str, int] = {}
            if clients.SIMPLEMIRROR in tools:
                mirror_workers = args.mirror_workers
                mirrors.append(clients.SimpleMirror(
                    work / "simplemirror", url,
                    None if mirror_workers == "default" else mirror_workers,
                    clients.find_mirror(args.mirror),
                ))
                connections[clients.SIMPLEMIRROR] = (
                    default_mirror_workers() if mirror_workers == "default" else mirror_workers
                )
            if clients.BANDERSNATCH in tools:
                mirrors.append(clients.Bandersnatch(
                    work / "bandersnatch", url, args.workers,
                    args.bandersnatch or clients.find_bandersnatch(),
                ))
                connections[clients.BANDERSNATCH] = args.workers
            results: list[Phase] = []

            def phase_of(client: clients.MirrorClient, phase: str) -> Phase:
                return run_phase(
                    client, phase, nginx, log_dir=logs, timeout=args.timeout,
                    count_pages=phase != "initial", proxy=proxy,
                    concurrency=connections[client.name],
                )

            for client in mirrors:
                for phase in ("initial", "noop"):
                    results.append(phase_of(client, phase))
            # Before the world changes: the same paths, the same answers.
            if proxy is not None:
                for p in results:
                    if p.phase == "initial" and p.extra.get("bound"):
                        _network_limit(p, nginx, proxy, work)
            changed = the_world.mutate(args.changes)
            nginx.reload()
            print(f"upstream changed {len(changed)} projects", flush=True)
            for client in mirrors:
                results.append(phase_of(client, "incremental"))
            limit = None
            if args.world == artifacts.FILES_KIND and not args.no_limit and proxy is None:
                limit = _limit(nginx, initial_files, work, args.workers)
        files_now, metadata_now = the_world.file_counts()
        report = {
            "commit": _commit(),
            "world": args.world,
            "projects": args.projects,
            "changes": len(changed),
            "workers": args.workers,
            "rtt_ms": args.rtt_ms,
            "connections": connections,
            "world_files": {"initial": [files, metadata], "after": [files_now, metadata_now]},
            "phases": [p.as_dict() for p in results],
            "limit": limit,
        }
        print()
        print(table(results, limit))
        if args.rtt_ms > 0:
            print(f"\nat {args.rtt_ms:g} ms round trip: bound = requests x RTT / connections")
            print(wan_table(results))
        return report
    finally:
        if not args.keep:
            for path in ours:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    report = run(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    failed = [p for p in report["phases"] if p["returncode"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
