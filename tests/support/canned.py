"""A loopback HTTP server that answers each path with canned responses, in order.

For unit tests of the HTTP client, on a real socket. Answers
added for one path are given in turn and the last one repeats; every request is
recorded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str | None] = field(default_factory=dict)
    """Sent as given; None leaves a header out (Content-Type, say)."""
    reset: bool = False
    """Drop the connection (TCP reset) instead of answering."""
    pause: threading.Event | None = None
    """Send half the body, then wait (5 s at most) for this event before the rest."""
    stall: float = 0.0
    """Seconds to wait before answering at all."""
    close: bool = False
    """Close the connection after the answer without saying so (Connection: close)."""
    length: int | None = None
    """The Content-Length to declare, when it is not the body's."""
    raw: Callable[[Callable[[bytes], None]], None] | None = None
    """Write the whole answer by hand instead, status line and all, through the
    function it is given (which flushes, and raises ConnectionError once the client
    has gone): for answers no well-behaved server gives. Keep it bounded."""


@dataclass(frozen=True)
class Call:
    path: str
    """With its query; the absolute URL when the client took this server for a proxy."""
    headers: dict[str, str]
    port: int
    """The client's port: requests on one kept-alive connection share it."""

    def header(self, name: str) -> str | None:
        """A request header, whatever its case."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # Tests reset and abandon connections on purpose; only surprises are printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class Canned:
    def __init__(self) -> None:
        self._answers: dict[str, list[Answer]] = {}
        self.calls: list[Call] = []
        """Every request, in order."""
        self._lock = threading.Lock()
        canned = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                answer = canned._next(
                    Call(self.path, dict(self.headers.items()), self.client_address[1])
                )
                if answer.stall:
                    time.sleep(answer.stall)
                if answer.raw is not None:
                    self.close_connection = True

                    def send(data: bytes) -> None:
                        self.wfile.write(data)
                        self.wfile.flush()

                    with contextlib.suppress(ConnectionError):
                        answer.raw(send)
                    return
                if answer.reset:
                    # SO_LINGER 0: close() sends a reset, not an orderly end.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                headers = {"Content-Type": "application/octet-stream", **answer.headers}
                for key, value in headers.items():
                    if value is not None:
                        self.send_header(key, value)
                length = len(answer.body) if answer.length is None else answer.length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if answer.close or answer.length is not None:
                    self.close_connection = True
                if answer.pause is None:
                    self.wfile.write(answer.body)
                    return
                half = len(answer.body) // 2
                self.wfile.write(answer.body[:half])
                self.wfile.flush()
                answer.pause.wait(5.0)
                with contextlib.suppress(ConnectionError):  # the client gave up on it
                    self.wfile.write(answer.body[half:])
                    self.wfile.flush()

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def add(
        self,
        url: str,
        body: bytes = b"",
        *,
        status: int = 200,
        headers: dict[str, str | None] | None = None,
        reset: bool = False,
        pause: threading.Event | None = None,
        stall: float = 0.0,
        close: bool = False,
        length: int | None = None,
        raw: Callable[[Callable[[bytes], None]], None] | None = None,
    ) -> None:
        """Queue an answer for ``url`` (a full URL of this server, or a path)."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            self._answers.setdefault(path, []).append(
                Answer(
                    status, body, dict(headers or {}), reset, pause, stall, close, length, raw
                )
            )

    def _next(self, call: Call) -> Answer:
        with self._lock:
            self.calls.append(call)
            parts = urlsplit(call.path)
            queued = self._answers.get(parts.path + (f"?{parts.query}" if parts.query else ""))
            if not queued:
                return Answer(404, b"no canned answer for " + call.path.encode())
            return queued.pop(0) if len(queued) > 1 else queued[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
