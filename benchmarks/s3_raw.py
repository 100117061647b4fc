"""The machine's own limit for an upload: a published tree sent to a bucket as plainly
as a client can (obstore, N PUTs at once on one event loop), with what every object of a
sync carries (Content-Type, Cache-Control, a SHA-256 the store verifies).

Used by benchmarks/s3.py after the local sync, on that sync's web/: the same objects, the
same sizes, so weed's CPU for them and the wall time are what no client can beat here.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path
from typing import Any

from simplemirror.serve import rules
from tests.support import seaweed


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def upload_tree(web: Path, endpoint: str, bucket: str, prefix: str = "pypi/",
                at_once: int = 16) -> dict[str, Any]:
    """Every file below ``web`` into ``bucket``; wall and this process's CPU seconds."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, config={
        "endpoint": endpoint, "allow_http": True, "region": "us-east-1",
        "access_key_id": seaweed.ACCESS_KEY, "secret_access_key": seaweed.SECRET_KEY,
        "virtual_hosted_style_request": False, "checksum_algorithm": "sha256",
    })
    rels = [os.path.relpath(os.path.join(top, name), web)
            for top, _dirs, names in os.walk(web) for name in names]

    async def all_of_them() -> int:
        gate = asyncio.Semaphore(at_once)
        sent = 0

        async def one(rel: str) -> None:
            nonlocal sent
            async with gate:
                body = (web / rel).read_bytes()
                await obstore.put_async(store, prefix + rel, body, attributes={
                    "Content-Type": rules.content_type(rel),
                    "Cache-Control": rules.cache_control(rel)})
                sent += len(body)

        await asyncio.gather(*(one(rel) for rel in rels))
        return sent

    c0, t0 = _cpu(), time.monotonic()
    sent = asyncio.run(all_of_them())
    return {"wall": time.monotonic() - t0, "cpu": _cpu() - c0, "objects": len(rels),
            "bytes": sent}


def main(argv: list[str] | None = None) -> int:
    """Upload one tree to a fresh server per flag set, to see what weed's settings cost."""
    import argparse
    import shlex
    import shutil
    import tempfile

    from benchmarks.s3 import _cpu_of

    parser = argparse.ArgumentParser(description="raw uploads of a tree, per weed setting")
    parser.add_argument("tree", type=Path, help="a published tree (a local sync's web/)")
    parser.add_argument("--at-once", type=int, default=16)
    parser.add_argument("--flags", action="append", default=[],
                        help="one set of further `weed server` flags (repeatable; '' = none)")
    args = parser.parse_args(argv)
    os.environ.update(seaweed.credentials_env())
    for flags in args.flags or [""]:
        root = Path(tempfile.mkdtemp(prefix="s3-raw-", dir="/dev/shm"))
        try:
            with seaweed.running(root, tuple(shlex.split(flags))) as weed:
                assert weed.proc is not None
                bucket = weed.bucket("raw")
                before = _cpu_of(weed.proc.pid)
                got = upload_tree(args.tree, weed.endpoint, bucket, at_once=args.at_once)
                got["weed_cpu"] = _cpu_of(weed.proc.pid) - before
            print(f"{flags or '(defaults)':<50} wall {got['wall']:6.2f} s  client cpu "
                  f"{got['cpu']:6.2f} s  weed cpu {got['weed_cpu']:6.2f} s  "
                  f"{got['objects']} objects, {got['bytes'] / 1e6:.1f} MB", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
