"""Shared HTTP plumbing for the test servers (upstream and static tree)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
HTML = "text/html"


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by a test server. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    """When it arrived (time.monotonic)."""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


def _parse_accept(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        q = 1.0
        for param in pieces[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        ranges.append((media, q))
    return ranges


def _quality(media: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """Return (q, specificity) of the most specific range matching ``media``."""
    major = media.split("/", 1)[0]
    best: tuple[float, int] | None = None
    for rng, q in ranges:
        if rng == media:
            spec = 2
        elif rng == f"{major}/*":
            spec = 1
        elif rng == "*/*":
            spec = 0
        else:
            continue
        if best is None or spec > best[1]:
            best = (q, spec)
    return best if best is not None else (0.0, -1)


def negotiate(accept: str | None, offered: Sequence[str], default: str) -> str:
    """Pick a representation from ``offered`` (listed in server preference order).

    Only types the client names explicitly can win; a bare ``*/*`` (what curl and most HTTP
    libraries send) falls back to ``default`` so that naive clients get HTML like on a real
    index. Ties on q are broken by the server's preference order. Anything unsatisfiable
    also gets ``default``: a lenient answer keeps fixture failures pointing at the client.
    """
    if not accept:
        return default
    ranges = _parse_accept(accept)
    best: tuple[float, int, str] | None = None
    for index, media in enumerate(offered):
        q, spec = _quality(media, ranges)
        if spec == 2 and q > 0 and (best is None or (q, -index) > (best[0], best[1])):
            best = (q, -index, media)
    return best[2] if best is not None else default


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    # If-None-Match uses weak comparison (RFC 9110 13.1.2), so a W/ prefix still matches.
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


class TestHTTPServer(ThreadingHTTPServer):
    """Threaded loopback server tuned for many small keep-alive requests."""

    daemon_threads = True
    allow_reuse_address = True
    # Tests open bursts of parallel connections; the default backlog of 5 causes resets.
    request_queue_size = 128

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        owner: Any,
        log: list[str],
        errors: list[str],
        host: str = "127.0.0.1",
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), handler)
        self.owner = owner
        self.log = log
        self.errors = errors
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.peak_connections = 0
        """The most connections open at once."""

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Without this, Nagle + delayed ACK adds ~40 ms to every keep-alive response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conns_lock:
            self._conns.add(sock)
            self.peak_connections = max(self.peak_connections, len(self._conns))
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Keep stderr clean and the server alive; tests can inspect .errors. Clients hanging up
        # mid-request (timeouts, aborted downloads) are normal traffic, not fixture bugs.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        self.errors.append(traceback.format_exc())

    def close_all_connections(self) -> None:
        # Idle keep-alive connections keep handler threads blocked in readline(); shutting the
        # sockets down wakes them so they exit instead of leaking across tests.
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ServerThread:
    """Runs a TestHTTPServer in a daemon thread; start()/stop() are idempotent."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], owner: Any, host: str = "127.0.0.1"
    ) -> None:
        self._handler = handler
        self._owner = owner
        self.host = host
        self.server: TestHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Owned here rather than by the server so they stay readable after stop().
        self.log: list[str] = []
        self.errors: list[str] = []

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("server is not running")
        return int(self.server.server_address[1])

    def start(self) -> None:
        if self.server is not None:
            return
        self.server = TestHTTPServer(
            self._handler, self._owner, self.log, self.errors, self.host
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"test-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.close_all_connections()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server = None
        self._thread = None


class BaseHandler(BaseHTTPRequestHandler):
    """Keep-alive handler with helpers that always send an exact Content-Length."""

    protocol_version = "HTTP/1.1"
    server: TestHTTPServer
    # Bounded so a client that vanishes without FIN cannot pin a thread forever.
    timeout = 60

    def log_message(self, *args: Any) -> None:
        # The default writes every request to stderr, drowning pytest output.
        self.server.log.append(args[0] % args[1:])

    def record(self, sink: list[RequestRecord], lock: threading.Lock) -> None:
        rec = RequestRecord(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        with lock:
            sink.append(rec)

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_not_modified(self, headers: dict[str, str]) -> None:
        self.send_response(304)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def send_redirect(self, location: str, status: int = 301) -> None:
        self.send_body(status, b"moved\n", headers={"Location": location})

    def dispatch(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self.dispatch()
        except ConnectionError:
            self.close_connection = True
        except Exception:
            self.server.errors.append(traceback.format_exc())
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.send_body(500, b"internal fixture error\n")

    def do_GET(self) -> None:
        self._run()

    def do_HEAD(self) -> None:
        self._run()
