"""Serve a benchmark world with nginx on 127.0.0.1, and count what it served.

nginx runs as a foreground child (``daemon off``) with a generated nginx.conf in a
private directory, so nothing of the system's nginx setup is used or touched. It serves
every endpoint both clients use:

- ``/simple/`` and ``/simple`` (bandersnatch asks without the slash): the root, PEP 691
  JSON or PEP 503 HTML by the Accept header, gzip-compressed (gzip_static) as the public
  index sends it;
- ``/simple/<name>/``: project pages, negotiated the same way;
- ``/pypi/<name>/json``: the JSON API document bandersnatch reads;
- ``/packages/...``: files and their ``.metadata``.

Project pages and JSON API documents carry ``X-PyPI-Last-Serial`` from a map of every
project's serial (bandersnatch refuses a document without one as stale). The access log
records status and bytes of every request; ``Nginx.stats(since)`` sums a phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.world import World

LOG_FORMAT = "$msec $status $bytes_sent $request_method $request_uri"

_CONF = """\
{user}
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '{log_format}';
    access_log {work}/access.log bench;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    etag {etag};
    gzip_static on;
    gzip_vary on;
    default_type application/octet-stream;
    # A map of 650,000 projects: with max_size under 100x the count nginx starts its
    # search for a hash size near max_size instead of trying every size from 1 up.
    map_hash_max_size {map_size};
    map_hash_bucket_size 128;
    map $http_accept $simple_index {{
        default index.html;
        "~application/vnd\\.pypi\\.simple\\.v1\\+json" index.v1_json;
    }}
    map $project $pypi_serial {{
        default {serial};
        include {root}/serials.map;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/htdocs;
        location = /simple {{
            rewrite ^ /simple/ last;
        }}
        location = /simple/ {{
            types {{ application/vnd.pypi.simple.v1+json v1_json; text/html html; }}
            add_header Vary Accept;
            add_header X-PyPI-Last-Serial {serial};
            try_files /simple/$simple_index =404;
        }}
        location ~ ^/simple/(?<project>[^/]+)/$ {{
            types {{ application/vnd.pypi.simple.v1+json v1_json; text/html html; }}
            add_header Vary Accept;
            add_header X-PyPI-Last-Serial $pypi_serial;
            try_files /simple/$project/$simple_index =404;
        }}
        location ~ ^/pypi/(?<project>[^/]+)/json$ {{
            default_type application/json;
            add_header X-PyPI-Last-Serial $pypi_serial;
            try_files /pypi/$project/json =404;
        }}
        location /packages/ {{
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kind(uri: str) -> str:
    """What a request was for, from its URI."""
    if uri in ("/simple/", "/simple"):
        return "root"
    if uri.startswith("/simple/"):
        return "page"
    if uri.startswith("/pypi/"):
        return "json-api"
    if uri.endswith(".metadata"):
        return "metadata"
    return "file"


@dataclass
class Stats:
    """What nginx served in one phase."""

    requests: int = 0
    bytes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "by_kind": dict(self.by_kind),
            "by_status": dict(self.by_status),
        }


class Nginx:
    """One nginx serving ``world`` from ``work`` (its config, pid, logs)."""

    def __init__(
        self, world: World, work: Path, *, etag: bool = True, workers: int = 1
    ) -> None:
        self.world = world
        self.work = work
        self.etag = etag
        self.workers = workers
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        work.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The host root, without a trailing slash (bandersnatch's ``master``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple/"

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def _write_conf(self) -> Path:
        conf = self.work / "nginx.conf"
        conf.write_text(
            _CONF.format(
                # Run as root, nginx would drop its workers to nobody, who cannot read
                # a world under a private temp dir (pytest's, mkdtemp's 0700).
                user="user root;" if os.geteuid() == 0 else "",
                workers=self.workers,
                work=self.work,
                log_format=LOG_FORMAT,
                etag="on" if self.etag else "off",
                map_size=max(2 * self.world.projects, 1024),
                serial=self.world.serial,
                root=self.world.root,
                port=self.port,
            )
        )
        return conf

    def start(self) -> None:
        conf = self._write_conf()
        self.access_log.touch()
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(self.work), "-e", str(self.work / "error.log")],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120  # a 650k-entry map takes a few seconds to load
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: see {self.work / 'error.log'}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def workers_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def reload(self, *, etag: bool | None = None) -> None:
        """Reload the config (and the serial map); return once the old workers are gone.

        Call after the world changed: the serial map is read only when nginx loads it.
        """
        assert self.process is not None
        if etag is not None:
            self.etag = etag
        self._write_conf()
        old = set(self.workers_pids())
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = set(self.workers_pids())
            if now and not now & old:
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not reload")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- measuring -------------------------------------------------------------

    def log_offset(self) -> int:
        return self.access_log.stat().st_size

    def stats(self, since: int) -> Stats:
        """Sum the access log from byte offset ``since`` (nginx writes each line at once)."""
        out = Stats()
        with self.access_log.open("rb") as log:
            log.seek(since)
            for line in log:
                parts = line.split()
                if len(parts) < 5:
                    continue
                status, sent, uri = parts[1].decode(), int(parts[2]), parts[4].decode()
                out.requests += 1
                out.bytes += sent
                out.by_status[status] += 1
                out.by_kind[_kind(uri)] += 1
        return out

    def paths(self, since: int, until: int) -> list[str]:
        """The request paths the access log holds between byte offsets ``since`` and
        ``until``, in the order nginx answered them."""
        with self.access_log.open("rb") as log:
            log.seek(since)
            lines = log.read(until - since).splitlines()
        return [parts[4].decode() for parts in map(bytes.split, lines) if len(parts) >= 5]

    def cpu_seconds(self) -> float:
        """User + system CPU of nginx's workers so far (from /proc; ticks to seconds)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.workers_pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request (for checks); returns status, headers and body."""
        request = urllib.request.Request(self.url + path)
        if accept:
            request.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
