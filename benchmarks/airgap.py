"""Air-gap bundles at scale: time, CPU and peak RSS of exports and imports.

    python -m benchmarks.airgap --sizes 10000,100000 --changes 1000 --workdir /dev/shm/airgap

For each size, on a fresh metadata-heavy world served by nginx: a near-side mirror is
synced from it (measured, for comparison), then, each measured as `mirror` commands:
a full export, its import into an empty far side, ``--changes`` projects changed upstream
and synced, a delta export and its import. Every import checks that the far side's state
digest is the near side's; the file counts of both trees are compared as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import artifacts, clients, world
from benchmarks.measure import Usage, run_measured
from benchmarks.phases import machine_cpu, settle
from benchmarks.upstream import Nginx


def _measured(name: str, command: list[str], logs: Path, timeout: float) -> dict[str, Any]:
    settle()
    busy, _ = machine_cpu()
    usage: Usage = run_measured(command, log=logs / f"{name}.log", timeout=timeout)
    other = machine_cpu()[0] - busy - usage.cpu
    if usage.returncode != 0:
        raise SystemExit(f"{name} failed (exit {usage.returncode}): see {logs / name}.log")
    figures = {"phase": name, **usage.as_dict(), "other_cpu": round(other, 2)}
    print(f"  {name:<13} {usage.wall:7.2f} s wall, {usage.cpu:7.2f} s cpu, "
          f"{usage.max_rss_mb:5.0f} MB; other {other:5.2f} s", flush=True)
    return figures


def _count(web: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(web))


def _newest(out: Path) -> Path:
    return max(out.iterdir(), key=lambda p: p.stat().st_mtime)


def _size_of(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.iterdir())


def run_size(size: int, changes: int, work: Path, binary: str, timeout: float
             ) -> dict[str, Any]:
    the_world = world.generate(work / "world", artifacts.METADATA_KIND, size, json_api=False)
    print(f"{size} projects: world ready", flush=True)
    logs, out = work / "logs", work / "bundles"
    logs.mkdir()
    near, far = work / "near", work / "far"
    key, pub = work / "bundle.key", work / "bundle.pub"
    phases = []
    with Nginx(the_world, work / "nginx") as nginx:
        sync = [binary, "sync", "--upstream", nginx.simple_url, "--directory", str(near),
                "--workers", "10", "--no-progress"]
        export = [binary, "export", "--directory", str(near), "--to", str(out),
                  "--secret-key", str(key)]
        phases.append(_measured("sync-initial", sync, logs, timeout))
        run_measured([binary, "keygen", "--secret-key", str(key), "--public-key", str(pub),
                      "--no-passphrase"], log=logs / "keygen.log")
        phases.append(_measured("export-full", [*export, "--full"], logs, timeout))
        full = _newest(out)
        phases[-1]["bundle_bytes"] = _size_of(full)
        phases.append(_measured("import-full", [
            binary, "import", "--from", str(full), "--directory", str(far), "--public-key",
            str(pub)], logs, timeout))
        the_world.mutate(changes)
        nginx.reload()
        phases.append(_measured("sync-delta", sync, logs, timeout))
        phases.append(_measured("export-delta", export, logs, timeout))
        delta = _newest(out)
        phases[-1]["bundle_bytes"] = _size_of(delta)
        phases.append(_measured("import-delta", [
            binary, "import", "--from", str(delta), "--directory", str(far), "--public-key",
            str(pub)], logs, timeout))
    near_files, far_files = _count(near / "web"), _count(far / "web")
    if near_files != far_files:
        raise SystemExit(f"the far side holds {far_files} files, the near side {near_files}")
    return {"projects": size, "changes": changes, "files": near_files, "phases": phases}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'projects':>9} {'phase':<13} {'wall s':>8} {'cpu s':>8} {'rss MB':>7} {'MB':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        for p in row["phases"]:
            size = p.get("bundle_bytes")
            lines.append(
                f"{row['projects']:>9} {p['phase']:<13} {p['wall']:>8.2f} {p['cpu']:>8.2f} "
                f"{p['max_rss_mb']:>7.0f} {size / 1e6 if size else 0:>8.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--workdir", type=Path, help="default: a temp dir under /tmp")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args(argv)
    binary = clients.find_mirror()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="airgap-"))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        work = root / f"size-{size}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        try:
            rows.append(run_size(size, args.changes, work, binary, args.timeout))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
