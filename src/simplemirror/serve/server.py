"""`mirror serve`: a small threaded HTTP server over ``<directory>/web``.

For small sites and the air-gapped side of a mirror; a busy site should put nginx in front
(systemd/nginx-simplemirror.conf does the same job). Standard library only.

- ``/simple/`` and ``/simple/<name>/`` are content-negotiated (PEP 691, see
  serve_rules.negotiate) between ``index.v1_json`` and ``index.html``, with ``Vary: Accept``;
  other spellings of a name, and paths missing their trailing slash, redirect (301).
- Files are sent with sendfile, with a cheap ETag (inode, size and mtime) and
  Last-Modified; If-None-Match and If-Modified-Since give 304; one byte range gives 206
  (416 when it is past the end; several ranges get the whole file, 200). GET and HEAD only.
- Nothing outside web/ is ever sent: a path with ``..``, a backslash or NUL (however
  encoded) is refused (400), a symlink that leads out of web/ is 404, and there are no
  directory listings.
- At most ``max_connections`` connections are served at once (a thread each); more
  wait in the listen backlog until one ends.
- Each request is logged at INFO on the "simplemirror" logger, one line with the client,
  request line, status, bytes sent, content type (which representation a page went out
  as) and time taken; the same parts go with it as fields (access_fields), which JSON
  logs give as keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import FrameType
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from simplemirror import __version__
from simplemirror.serve import rules
from simplemirror.store import layout

log = logging.getLogger("simplemirror")

IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may sit idle (or a send may stall) before it is closed."""
STOP_GRACE = 10.0
"""Seconds a stop waits for responses in flight before the process exits anyway."""
MAX_CONNECTIONS = 256
"""Connections served at once (a thread each) unless --max-connections says otherwise."""


_ETAG_TAGS = {rules.JSON_V1: "-j", rules.HTML_V1: "-v", rules.HTML: "-h"}


class ServeError(Exception):
    """The server cannot start; the message says what to do."""


class Remote(Protocol):
    """A bucket served instead of web/ (store.s3.S3Storage)."""

    where: str

    def describe(self, rel: str) -> tuple[int, str, float] | None: ...

    def stream(self, rel: str, first: int, last: int) -> Iterator[bytes]: ...

    def is_file(self, rel: str) -> bool: ...

    def check(self) -> None: ...


class MirrorServer(ThreadingHTTPServer):
    """One thread per connection, over the web/ directory ``web``.

    At most ``max_connections`` at once: past that, a new connection is not accepted
    until one ends, and waits in the listen backlog (as nginx does at its
    worker_connections), so that a crowd of slow or idle clients costs a bounded
    number of threads.
    """

    daemon_threads = True
    # Clients open bursts of parallel connections; the default backlog of 5 drops some.
    request_queue_size = 128

    def __init__(
        self, web: Path, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
        remote: Remote | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.remote = remote
        """Serve this bucket instead of ``web``."""
        self.root = remote.where if remote is not None else os.path.realpath(web)
        self.max_connections = max_connections
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = False
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS query that can hang for
        # seconds on an air-gapped network. Nothing here uses the name.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):  # typeshed allows it (AF_UNIX); this server is TCP
            host = host.decode()
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def get_request(self) -> tuple[socket.socket, Any]:
        # Only serve_forever's thread accepts, so a free place seen here stays free.
        with self._lock:
            while len(self._connections) >= self.max_connections and not self._stopping:
                self._idle.wait()  # a connection ending, or shutdown(), wakes it
            if self._stopping:
                raise OSError("stopping")  # serve_forever skips it, then sees the shutdown
        sock, address = super().get_request()
        # Without it, Nagle's algorithm and the client's delayed ACK add ~40 ms to every
        # response on a keep-alive connection (headers and body go in separate writes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
            self._idle.notify_all()
        super().shutdown_request(request)

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True  # no waiting for a free place any more
            self._idle.notify_all()
        super().shutdown()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away, or timed out
            log.debug("connection from %s ended: %s", client_address[0], error)
            return
        log.exception("internal error while answering %s", client_address[0])

    def drain(self, grace: float = STOP_GRACE) -> None:
        """After shutdown(): let responses in flight finish, close idle connections.

        Shutting down the read side wakes handlers waiting for a next request (they see
        the end of the stream and close), while a response being sent goes on to its end.
        """
        with self._lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
            deadline = time.monotonic() + grace
            while self._connections and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            if self._connections:
                log.warning("stopping with %d response(s) unfinished", len(self._connections))


def access_fields(
    client: str, requestline: str, status: int, sent: int, media: str, seconds: float
) -> dict[str, Any]:
    """The access line's parts as structured fields (keys of the object in JSON logs).

    ``method`` and ``path`` (the request target as sent, query included) are None when the
    request line could not be read as one; ``content_type`` is None when nothing was sent
    with one.
    """
    words = requestline.split()
    method, path = (words[0], words[1]) if 2 <= len(words) <= 3 else (None, None)
    return {
        "client": client, "method": method, "path": path, "status": status, "bytes": sent,
        "content_type": None if media == "-" else media, "seconds": round(seconds, 6),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response has a Content-Length
    timeout = IDLE_TIMEOUT
    server: MirrorServer

    _status: int | None = None
    _sent: int = 0
    _media: str = "-"
    _started: float = 0.0

    def version_string(self) -> str:
        return f"simplemirror/{__version__}"

    # -- logging: one line per request, written once it is answered ------------------------

    def parse_request(self) -> bool:
        self._started = time.monotonic()
        return super().parse_request()

    def handle_one_request(self) -> None:
        self._status, self._sent, self._media = None, 0, "-"
        self._started = time.monotonic()
        try:
            super().handle_one_request()
        finally:
            if self._status is not None:
                seconds = time.monotonic() - self._started
                client = self.client_address[0]
                log.info(
                    '%s "%s" %d %d %s %.1fms', client,
                    self.requestline.replace('"', "%22"), self._status, self._sent,
                    self._media, seconds * 1000,
                    extra=access_fields(client, self.requestline, self._status, self._sent,
                                        self._media, seconds),
                )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = int(code) if isinstance(code, int) else None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    # -- methods ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _refuse_method(self) -> None:
        # The body, if any, is not read: close rather than parse it as the next request.
        self.close_connection = True
        self._send_text(405, "only GET and HEAD are served\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self) -> None:
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body on GET would be read as the next request
        if self.path.startswith("/"):
            path, _, query = self.path.partition("#")[0].partition("?")
        else:  # absolute-form, as sent to a proxy: GET http://host/path
            parts = urlsplit(self.path)
            path, query = parts.path or "/", parts.query
        where = rules.route(path, query)
        if isinstance(where, rules.Refused):
            self._send_text(where.status, where.reason + "\n")
        elif isinstance(where, rules.Redirect):
            self._send_text(301, f"moved to {where.location}\n", {"Location": where.location})
        elif isinstance(where, rules.Page):
            self._page(where.directory, query)
        else:
            self._file(where.path, rules.content_type(where.path), {})

    def _page(self, directory: str, query: str) -> None:
        vary = {"Vary": "Accept"}
        media = rules.negotiate(self.headers.get("Accept"), rules.format_param(query))
        if media is None:
            offered = ", ".join(rules.PAGE_TYPES)
            self._send_text(406, f"this page is offered as: {offered}\n", vary)
            return
        index = layout.JSON_INDEX if media == rules.JSON_V1 else layout.HTML_INDEX
        shown = media + "; charset=utf-8" if media == rules.HTML else media
        # The same file as text/html and as v1+html: the tag tells them apart for caches.
        self._file(f"{directory}/{index}", shown, vary, tag=_ETAG_TAGS[media])

    # -- sending files ----------------------------------------------------------------------

    def _open(self, path: str) -> BinaryIO | None:
        """The regular file at ``path`` inside web/, or None; never a file outside web/."""
        root = self.server.root
        real = os.path.realpath(os.path.join(root, path))
        if not real.startswith(root + os.sep):
            return None  # a symlink on the way leads out of web/
        try:
            # O_NOFOLLOW: the path was just resolved; a symlink appearing there now is refused.
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory: no listings
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def _remote_file(self, remote: Remote, path: str, media: str, headers: dict[str, str],
                     tag: str) -> None:
        """``_file`` from a bucket: the object's own ETag and Last-Modified, its bytes
        streamed from a ranged GET (never held whole)."""
        try:
            found = remote.describe(path)
        except OSError as exc:
            log.warning("%s: %s", path, exc)
            self._send_text(502, "the storage did not answer\n", headers)
            return
        if found is None:
            self._send_text(404, "not found\n", headers)
            return
        size, etag_value, modified = found
        span = self._send_head_for(
            path, media, headers, f'"{etag_value}{tag}"', int(modified), size
        )
        if span is None or self.command == "HEAD":
            return
        first, length = span
        last = first + length - 1
        try:
            for chunk in remote.stream(path, first, last):
                self.wfile.write(chunk)
                self._sent += len(chunk)
        except OSError as exc:
            log.warning("%s: cut short: %s", path, exc)
        if self._sent < length:  # the length sent was a promise not kept: close
            self.close_connection = True

    def _file(self, path: str, media: str, headers: dict[str, str], tag: str = "") -> None:
        if self.server.remote is not None:
            self._remote_file(self.server.remote, path, media, headers, tag)
            return
        handle = self._open(path)
        if handle is None:
            self._send_text(404, "not found\n", headers)
            return
        with handle:
            info = os.fstat(handle.fileno())
            etag = f'"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}{tag}"'
            span = self._send_head_for(
                path, media, headers, etag, int(info.st_mtime), info.st_size
            )
            if span is None or self.command == "HEAD":
                return
            first, length = span
            self._sent = self.connection.sendfile(handle, first, length)
            if self._sent < length:  # the file shrank under us: the length was a lie
                self.close_connection = True

    def _send_head_for(
        self, path: str, media: str, headers: dict[str, str], etag: str, mtime: int,
        size: int,
    ) -> tuple[int, int] | None:
        """The status line and headers for a file of ``size`` bytes, on disk or in a
        bucket: (first byte, length) of the body to send, or None when there is none to
        send (304, 416, or nothing in the range)."""
        headers = {
            **headers, "ETag": etag, "Last-Modified": formatdate(mtime, usegmt=True),
            "Cache-Control": rules.cache_control(path),
        }
        if self._not_modified(etag, mtime):
            self._send_head(304, headers)
            return None
        wanted = self._wanted_range(etag, mtime, size)
        if wanted == rules.UNSATISFIABLE:
            self._send_text(416, "range not satisfiable\n",
                            {**headers, "Content-Range": f"bytes */{size}"})
            return None
        first, last, status = 0, size - 1, 200
        if isinstance(wanted, tuple):
            (first, last), status = wanted, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1
        headers |= {"Content-Type": media, "Content-Length": str(length),
                    "Accept-Ranges": "bytes"}
        self._send_head(status, headers)
        return (first, length) if length > 0 else None

    def _not_modified(self, etag: str, mtime: int) -> bool:
        # If-None-Match, when present, decides alone (RFC 9110 13.2.2).
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return rules.etag_matches(if_none_match, etag)
        since = self.headers.get("If-Modified-Since")
        return since is not None and rules.not_modified_since(since, mtime)

    def _wanted_range(self, etag: str, mtime: int, size: int) -> tuple[int, int] | str | None:
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() not in (
            etag, formatdate(mtime, usegmt=True)
        ):
            return None  # the client's copy is of another version: send it all
        return rules.parse_range(header, size)

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self._media = headers.get("Content-Type", "-").split(";", 1)[0]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self._send_head(status, {
            **(headers or {}),
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
        })
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)


def check_tree(web: Path) -> None:
    """Refuse to serve a directory that holds no mirror, saying what to do."""
    if not (web / layout.SIMPLE).is_dir():
        raise ServeError(
            f"{web / layout.SIMPLE} does not exist: this directory holds no mirror yet. "
            "Give the directory `mirror sync` writes to (--directory DIR or -c PATH), "
            "or run a sync first"
        )


def make_server(
    web: Path, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
    remote: Remote | None = None,
) -> MirrorServer:
    """A server bound to ``host:port`` (0: any free port) over ``web``, or the bucket
    ``remote``, not yet serving."""
    if remote is None:
        check_tree(web)
    else:
        try:
            remote.check()
            there = remote.is_file(layout.ROOT_PAGES[0])
        except OSError as exc:
            raise ServeError(str(exc)) from None
        if not there:
            raise ServeError(
                f"{remote.where} holds no {layout.ROOT_PAGES[0]}: no mirror there yet. "
                "Give the storage `mirror sync` publishes to, or run a sync first"
            )
    try:
        return MirrorServer(web, host, port, max_connections, remote)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "or --host (ports below 1024 need privileges)"
        ) from None


def serve_until_stopped(server: MirrorServer) -> None:
    """Serve until SIGTERM or SIGINT, then finish responses in flight and return.

    A second signal stops at once (KeyboardInterrupt).
    """
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        log.info("%s received: stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, name="serve-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("serving %s at %ssimple/", server.root, server.url)
        server.serve_forever(poll_interval=0.2)
        server.drain()
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
