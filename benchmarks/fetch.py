"""Plain parallel fetchers: the yardsticks the mirror clients are held against.

``fetch_all`` is a minimal Python client: N threads, one persistent HTTP/1.1 connection
each, no retries, no parsing. With ``store`` it also does what a mirror cannot skip
for a file: hash it (sha256) while it streams to a temporary file, then rename it into
place. That is "the machine's limit" for the file-heavy world.

``curl_all`` drives one curl process in parallel mode (``-Z``) over a URL list: the
fastest generic client at hand, used to show the upstream is not the bottleneck.
``curl_sha256`` is the same with every body piped into one ``sha256sum``: the
issue's own example of the machine's fetch+hash limit, in native code.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchResult:
    requests: int
    bytes: int
    seconds: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def fetch_all(
    port: int,
    paths: Sequence[str],
    *,
    workers: int = 10,
    accept: str | None = None,
    hash_bodies: bool = False,
    store: Path | None = None,
) -> FetchResult:
    """GET every path from 127.0.0.1:``port`` with ``workers`` threads.

    With ``hash_bodies``, each body is hashed with sha256 as it arrives. With ``store``,
    it is also written to a temporary file in ``store``, then renamed to
    ``store/<sha256>``.
    """
    headers = {"Accept": accept} if accept else {}
    lock = threading.Lock()
    cursor = iter(paths)
    totals = {"requests": 0, "bytes": 0, "errors": 0}
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)

    def next_path() -> str | None:
        with lock:
            return next(cursor, None)

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        count = size = errors = 0
        while (path := next_path()) is not None:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                errors += 1
            if store is None and not hash_bodies:
                size += len(response.read())
            else:
                size += _drain(response, store)
            count += 1
        conn.close()
        with lock:
            totals["requests"] += count
            totals["bytes"] += size
            totals["errors"] += errors

    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return FetchResult(
        totals["requests"], totals["bytes"], time.monotonic() - started, totals["errors"]
    )


def _drain(response: http.client.HTTPResponse, store: Path | None) -> int:
    """Hash the body (and write it into ``store`` when given); returns its size."""
    digest = hashlib.sha256()
    size = 0
    if store is None:
        while chunk := response.read(CHUNK):  # read(n) releases the connection at the end
            digest.update(chunk)
            size += len(chunk)
        return size
    fd, tmp = tempfile.mkstemp(dir=store, prefix="dl-")
    with os.fdopen(fd, "wb") as out:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    os.replace(tmp, store / digest.hexdigest())
    return size


def _curl_config(work: Path, base_url: str, paths: Sequence[str], output: str) -> Path:
    config = work / "curl-urls.cfg"
    with config.open("w") as out:
        for path in paths:
            out.write(f'url = "{base_url}{path}"\noutput = "{output}"\n')
    return config


def curl_sha256(
    base_url: str, paths: Sequence[str], *, parallel: int = 10, work: Path
) -> FetchResult:
    """GET every path with one ``curl -Z`` process, every body piped into ``sha256sum``.

    One hash over all the bytes rather than one a file: what it measures is how fast
    this machine moves and hashes them, not the files' digests.
    """
    config = _curl_config(work, base_url, paths, "-")
    command = ["curl", "-s", "-Z", "--parallel-max", str(parallel), "-K", str(config)]
    started = time.monotonic()
    curl = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert curl.stdout is not None
    digest = subprocess.run(["sha256sum"], stdin=curl.stdout, capture_output=True, check=False)
    curl.stdout.close()
    returncode = curl.wait()
    seconds = time.monotonic() - started
    config.unlink()
    failed = returncode != 0 or digest.returncode != 0
    return FetchResult(len(paths), 0, seconds, 1 if failed else 0)


def curl_all(
    base_url: str, paths: Sequence[str], *, parallel: int = 10, accept: str | None = None,
    work: Path,
) -> FetchResult:
    """GET every path with one ``curl -Z`` process, bodies discarded."""
    config = _curl_config(work, base_url, paths, "/dev/null")
    command = [
        "curl", "-s", "-Z", "--parallel-max", str(parallel), "-K", str(config),
        "-w", "%{size_download}\n",
    ]
    if accept:
        command += ["-H", f"Accept: {accept}"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    sizes = [int(s) for s in done.stdout.split()]
    config.unlink()
    return FetchResult(len(sizes), sum(sizes), seconds, 0 if done.returncode == 0 else 1)
