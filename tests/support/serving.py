"""The two ways a mirror is served, run for real on 127.0.0.1: `mirror serve` as a child
process, and nginx with the shipped systemd/nginx-simplemirror.conf.

Both stop by themselves when the context ends (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

SHIPPED_NGINX_CONF = Path(__file__).resolve().parents[2] / "systemd" / "nginx-simplemirror.conf"
ROOT_PLACEHOLDER = "/srv/simplemirror/web"
START_TIMEOUT = 30.0

# Status, negotiated page type and URI of every request, for checks of what clients got.
# $simplemirror_page is the shipped config's choice, which sets the Content-Type it sends
# ($sent_http_content_type does not see a type set by add_header).
_LOG_FORMAT = "$status $simplemirror_page $request_uri"
_PAGE_TYPES = {
    "application/vnd.pypi.simple.v1+json": "json",
    "application/vnd.pypi.simple.v1+html": "v1html",
    "text/html": "html",
}
_SERVE_LINE = re.compile(r'"[A-Z]+ (\S+) HTTP/[0-9.]+" ([0-9]{3}) [0-9]+ (\S+) ')

_NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    # What Debian's /etc/nginx/nginx.conf sets around conf.d/, so the site runs as it
    # would there.
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip on;
    log_format simplemirror_test '{log_format}';
    access_log {work}/access.log simplemirror_test;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    include {site};
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT} s")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def site_conf(web: Path, port: int) -> str:
    """The shipped server block with its root and listen address set for this test."""
    text = SHIPPED_NGINX_CONF.read_text()
    text, roots = re.subn(
        rf"^(\s*)root {re.escape(ROOT_PLACEHOLDER)};$", rf"\1root {web};", text, flags=re.M
    )
    text, listens = re.subn(
        r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{port};", text, flags=re.M
    )
    if (roots, listens) != (1, 1):
        raise AssertionError(
            f"{SHIPPED_NGINX_CONF} should have one 'root {ROOT_PLACEHOLDER};' and one "
            f"'listen 80;' line; found {roots} and {listens}"
        )
    return text


@dataclass(frozen=True)
class Logged:
    """One request from a server's log; ``page``: json, v1html or html, what a page went
    out as (anything else for other requests)."""

    status: int
    page: str
    uri: str


class Served:
    """Common face of the two servers: ``url`` ends with ``/``; ``index`` is its /simple/.

    Each runs as a child process on ``port``, started with ``_start`` and stopped on
    leaving the ``with`` block by ``stop_signal`` (its graceful stop).
    """

    name: str
    stop_signal: int
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None

    @property
    def index(self) -> str:
        return f"{self.url}simple/"

    def requests(self) -> list[Logged]:
        raise NotImplementedError

    def _start(self, command: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, **popen)
        try:
            _wait_listening(self.port, self.proc, self.name)
        except BaseException:
            _stop(self.proc, signal.SIGKILL)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.returncode = _stop(self.proc, self.stop_signal)


class NginxSite(Served):
    """nginx in the foreground, as a child, with a private nginx.conf in ``work``."""

    name = "nginx"
    stop_signal = signal.SIGQUIT  # graceful: finish, then exit

    def __init__(self, web: Path, work: Path) -> None:
        self.web = web
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def site_text(self) -> str:
        return site_conf(self.web, self.port)

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def requests(self) -> list[Logged]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        logged = []
        for line in lines:
            status, page, uri = line.split(" ", 2)
            logged.append(Logged(int(status), page, uri))
        return logged

    def __enter__(self) -> NginxSite:
        self.work.mkdir(parents=True, exist_ok=True)
        site = self.work / "simplemirror.conf"
        site.write_text(self.site_text())
        conf = self.work / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            # As root, nginx would drop its worker to nobody, who cannot read pytest's
            # private (0700) temporary directories.
            user="user root;" if os.geteuid() == 0 else "",
            work=self.work, log_format=_LOG_FORMAT, site=site,
        ))
        command = ["nginx", "-p", str(self.work), "-e", str(self.work / "error.log"),
                   "-c", str(conf)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise AssertionError(f"nginx -t refused the configuration:\n{check.stderr}")
        self._start(command)
        return self


class MirrorServe(Served):
    """`python -m simplemirror serve` as a child process; its log goes to ``log``."""

    name = "mirror serve"
    stop_signal = signal.SIGTERM

    def __init__(self, directory: Path, work: Path) -> None:
        self.directory = directory
        self.log = work / "serve.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def requests(self) -> list[Logged]:
        logged = []
        for match in _SERVE_LINE.finditer(self.log.read_text()):
            uri, status, media = match.groups()
            logged.append(Logged(int(status), _PAGE_TYPES.get(media, media), uri))
        return logged

    def __enter__(self) -> MirrorServe:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._start(
                [sys.executable, "-m", "simplemirror", "serve", "--directory",
                 str(self.directory), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=log,
            )
        return self
