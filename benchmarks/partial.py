"""A partial mirror's cost against a full one's (issue 19): the same world, one sync
with ``[filters] include-projects`` keeping a share of the projects, one without.

The filtered sync should cost about its share of the full sync's requests: it asks
for the root, then only the pages and files of the projects it keeps.

    python -m benchmarks.partial --projects 100000 --every 100 --workdir /dev/shm/partial
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import artifacts
from benchmarks.clients import SimpleMirror, find_mirror
from benchmarks.phases import run_phase
from benchmarks.upstream import Nginx
from benchmarks.world import generate


class FilteredMirror(SimpleMirror):
    """simplemirror with a config file holding ``[filters]``."""

    def __init__(self, directory: Path, host_url: str, binary: str, include: str) -> None:
        super().__init__(directory, host_url, None, binary)
        self.config = directory.parent / f"{directory.name}.toml"
        self.config.write_text(
            "[mirror]\n"
            f'upstream = "{host_url}/simple/"\n'
            f'directory = "{directory}"\n'
            "\n[filters]\n"
            f"include-projects = [{json.dumps(include)}]\n"
        )

    def command(self) -> list[str]:
        return [self.binary, "sync", "-c", str(self.config), "--no-progress"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=100,
                        help="keep one project in this many (100: 1%%)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.every not in (10, 100, 1000):
        parser.error("--every: 10, 100 or 1000 (a regex on the project number's last digits)")
    binary = find_mirror(args.mirror)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="partial-"))
    if work.exists():
        shutil.rmtree(work)
    world = generate(work / "world", artifacts.METADATA_KIND, args.projects, json_api=False)
    # proj-NNNNNN: the projects whose number ends in as many zeros as --every has.
    include = r"proj-\d+" + "0" * (len(str(args.every)) - 1)
    figures = {}
    with Nginx(world, work / "nginx") as nginx:
        logs = work / "logs"
        logs.mkdir()
        for name, client in (
            ("filtered", FilteredMirror(work / "filtered", nginx.url, binary, include)),
            ("full", SimpleMirror(work / "full", nginx.url, None, binary)),
        ):
            phase = run_phase(client, name, nginx, log_dir=logs, timeout=args.timeout)
            if phase.usage.returncode != 0:
                print(f"{name}: exit {phase.usage.returncode}; see {logs}", file=sys.stderr)
                return 1
            figures[name] = phase.as_dict()
    filtered, full = figures["filtered"], figures["full"]
    for key, what in (("requests", "requests"), ("bytes", "bytes served")):
        share = filtered["served"][key] / full["served"][key]
        print(f"filtered / full {what}: {filtered['served'][key]} / {full['served'][key]}"
              f" = {share:.4f} (kept 1 in {args.every}: {1 / args.every:.4f})")
    print(f"filtered / full CPU s: {filtered['cpu']:.2f} / {full['cpu']:.2f}"
          f" = {filtered['cpu'] / full['cpu']:.3f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
