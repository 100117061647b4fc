"""CPU per request of the two S3 clients considered (boto3, obstore), on SeaweedFS.

    python -m benchmarks.s3_clients [--objects 2000] [--size 50000]

PUTs (with and without a SHA-256 checksum) and HEADs of small objects, 8 at once (threads
for boto3, tasks of one event loop for obstore), against `weed server -s3` on 127.0.0.1.
obstore is not a dependency: install it in the venv to include it (pip install obstore).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import hashlib
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from tests.support import seaweed


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(name: str, count: int, fn: Callable[[], Any]) -> None:
    c0, t0 = _cpu(), time.monotonic()
    fn()
    cpu = _cpu() - c0
    print(f"{name:<44} wall {time.monotonic() - t0:6.2f} s  cpu {cpu:6.2f} s  "
          f"{cpu / count * 1000:5.2f} ms cpu/request", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=50_000)
    args = parser.parse_args(argv)
    n = args.objects
    bodies = [os.urandom(args.size) for _ in range(64)]
    os.environ.update(seaweed.credentials_env())
    with seaweed.running(Path(tempfile.mkdtemp(prefix="s3-clients-"))) as weed:
        for name in ("boto3", "obstore"):
            weed.bucket(f"clients-{name}")
        client = boto3.session.Session().client(
            "s3", endpoint_url=weed.endpoint, region_name="us-east-1",
            config=botocore.config.Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"}, max_pool_connections=16,
                retries={"mode": "standard"}, parameter_validation=False,
            ),
        )
        pool = concurrent.futures.ThreadPoolExecutor(8)

        def boto_put(checksum: bool) -> None:
            def one(i: int) -> None:
                body = bodies[i % 64]
                extra = {"ChecksumSHA256": base64.b64encode(
                    hashlib.sha256(body).digest()).decode()} if checksum else {}
                client.put_object(Bucket="clients-boto3", Key=f"k/{i}", Body=body,
                                  ContentType="application/octet-stream", **extra)
            list(pool.map(one, range(n)))

        def boto_head() -> None:
            list(pool.map(lambda i: client.head_object(
                Bucket="clients-boto3", Key=f"k/{i}", ChecksumMode="ENABLED"), range(n)))

        _measure("boto3 PUT with ChecksumSHA256", n, lambda: boto_put(True))
        _measure("boto3 PUT without a checksum", n, lambda: boto_put(False))
        _measure("boto3 HEAD", n, boto_head)
        try:
            import obstore
            from obstore.store import S3Store
        except ImportError:
            print("obstore is not installed: pip install obstore to compare")
            return 0

        def store(checksum: bool) -> Any:
            config: dict[str, Any] = {
                "endpoint": weed.endpoint, "allow_http": True, "region": "us-east-1",
                "access_key_id": seaweed.ACCESS_KEY, "secret_access_key": seaweed.SECRET_KEY,
                "virtual_hosted_style_request": False,
            }
            if checksum:
                config["checksum_algorithm"] = "sha256"
            return S3Store("clients-obstore", config=config)

        async def at_once(fn: Callable[[int], Any]) -> None:
            gate = asyncio.Semaphore(8)

            async def one(i: int) -> None:
                async with gate:
                    await fn(i)
            await asyncio.gather(*(one(i) for i in range(n)))

        for checksum in (True, False):
            target = store(checksum)

            def put(i: int, target: Any = target) -> Any:
                return obstore.put_async(target, f"k/{i}", bodies[i % 64],
                                         attributes={"Content-Type": "application/octet-stream"})

            _measure(f"obstore PUT {'with' if checksum else 'without'} a SHA-256", n,
                     lambda put=put: asyncio.run(at_once(put)))
        s = store(True)
        _measure("obstore HEAD", n, lambda: asyncio.run(at_once(
            lambda i: obstore.head_async(s, f"k/{i}"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
