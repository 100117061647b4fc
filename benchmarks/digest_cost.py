"""The far side's state digest passes alone: CPU (user+sys) and wall of each, on a far-side
mirror directory (one `benchmarks.airgap --keep` leaves).

    python -m benchmarks.digest_cost FAR rows rows-in-tree tree tree-reread

rows: what state.db publishes, sizes and sha256s from its rows (the near side's way);
rows-in-tree: the same, each path looked up in the tree at its recorded size (an import's
target check when the base check could not vouch for web/); tree: web/ walked beside the
rows (an import's base check), reading no file; tree-reread: the walk reading every file
again.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from simplemirror.bundle import digest
from simplemirror.store.state import snapshot


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    far, modes = Path(argv[0]), argv[1:]
    web = far / "web"
    for mode in modes:
        reader = snapshot(far / "state.db")
        cpu, wall = _cpu(), time.monotonic()
        if mode == "rows":
            result = digest.published_digest(reader, [web], [])
        elif mode == "rows-in-tree":
            result = digest.published_digest(reader, [web], [], in_tree=True)
        elif mode in ("tree", "tree-reread"):
            since = 0 if mode == "tree-reread" else time.time_ns()
            result = str(digest.tree_digest(reader, web, since).digest)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        cpu, wall = _cpu() - cpu, time.monotonic() - wall
        reader.close()
        print(f"{mode:<13} cpu {cpu:7.2f} s  wall {wall:7.2f} s  {result[:23]}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
