"""GETs on an asyncio event loop: the transport of a download process.

The blocking transport (transport.py) runs in worker threads, and a process
whose five threads all wait on sockets spends a quarter of a sync's CPU
handing the GIL from one to the next at every system call. On one event loop
the same concurrency costs no hand-off at all: measured on loopback, 18,000
files (1 GB) fetched, hashed, written and renamed by ten connections on one
loop took 2.1 CPU s, against ~9 for the same in ten threads.

The rules are the blocking transport's, from the same pieces: ``prepare`` (which
URLs may be sent, Basic auth from the URL), ``HeaderParser``, ``Inflater``
(gzip and deflate, never inflating more than asked), redirects, connect and
read timeouts, and one more try on a new connection when a kept-alive one
turns out to have been closed by the server while idle. HTTP/1.1 framing
(Content-Length, chunked, or to the close) is read here.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

from simplemirror.transport import (
    MAX_LINE,
    MAX_REDIRECTS,
    REDIRECTS,
    DeadEnd,
    Fetched,
    HeaderParser,
    Inflater,
    Request,
    TransportError,
    _describe,
    _Headers,
    ca_bundle,
    prepare,
)

# Errors a socket, the TLS layer or a short body can end in: the request failed.
_FAILED = (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError,
           http.client.HTTPException)


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered."""


class _Connection:
    def __init__(self, key: tuple[str, str, int], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.reused = False

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class AsyncBody:
    """A response body as it arrives, decoded (gzip, deflate)."""

    def __init__(self, conn: _Connection, url: str, status: int, headers: _Headers,
                 read_timeout: float) -> None:
        self._conn = conn
        self._url = url
        self._timeout = read_timeout
        self._inflater = Inflater(headers.get("content-encoding"), url)
        encoding = (headers.get("transfer-encoding") or "").lower()
        self._chunked = encoding == "chunked"
        self._chunk_left = 0
        self._left: int | None = None
        """Bytes still to come of a Content-Length body; None for chunked or to-the-close."""
        length = headers.get("content-length")
        if status in (204, 304) or 100 <= status < 200:
            self._left = 0
        elif length and not self._chunked:
            try:
                self._left = max(int(length), 0)
            except ValueError:
                self._left = None
        connection = (headers.get("connection") or "").lower()
        self.keep_alive = "close" not in connection and (self._chunked or self._left is not None)
        """The connection can carry another request once this body is read."""
        self.complete = self._left == 0
        """The whole body was read."""

    async def _read(self, n: int) -> bytes:
        reader = self._conn.reader
        async with asyncio.timeout(self._timeout):
            return await reader.read(n)

    async def _readline(self) -> bytes:
        async with asyncio.timeout(self._timeout):
            return await self._conn.reader.readline()

    async def _raw(self, n: int) -> bytes:
        if self.complete:
            return b""
        try:
            if self._chunked:
                return await self._chunk(n)
            if self._left is None:  # to the close
                data = await self._read(n)
                self.complete = not data
                return data
            data = await self._read(min(n, self._left))
        except _FAILED as exc:
            raise TransportError(f"{self._url}: {_describe(exc)}") from exc
        if not data:
            raise TransportError(
                f"{self._url}: connection closed with {self._left} bytes still to come"
            )
        self._left -= len(data)
        self.complete = self._left == 0
        return data

    async def _chunk(self, n: int) -> bytes:
        if not self._chunk_left:
            line = await self._readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while (await self._readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields: nothing here needs them
                self.complete = True
                return b""
            self._chunk_left = size
        data = await self._read(min(n, self._chunk_left))
        if not data:
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= len(data)
        if not self._chunk_left and (await self._readline()) not in (b"\r\n", b"\n"):
            raise http.client.HTTPException("a chunk does not end in a line break")
        return data

    async def read1(self, n: int) -> bytes:
        """What has arrived, at most ``n`` bytes (at least one unless the body is over)."""
        inflater = self._inflater
        if not inflater.encoded:
            return await self._raw(n)
        while True:
            if inflater.done:
                inflater.ended(await self._raw(1 << 16))
                return b""
            data = await self._raw(n) if inflater.wants_input else b""
            if inflater.wants_input and not data:
                inflater.ended(b"")
            if out := inflater.decode(data, n):
                return out

    async def read(self) -> bytes:
        """All that is left."""
        parts = []
        while chunk := await self.read1(1 << 20):
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class AsyncStream:
    """A response whose body is still to be read."""

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: _Headers
    """Looked up without regard to case."""
    body: AsyncBody


class AsyncTransport:
    """Kept-alive connections by scheme, host and port, for the tasks of one event loop."""

    def __init__(self, *, user_agent: str, connect_timeout: float, read_timeout: float) -> None:
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._context: ssl.SSLContext | None = None

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._context is None:
                self._context = ssl.create_default_context(cafile=ca_bundle())
            tls = self._context
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_LINE + 2,
            )
        return _Connection(key, reader, writer)

    def _release(self, conn: _Connection, body: AsyncBody) -> None:
        if body.complete and body.keep_alive and conn.usable:
            conn.reused = True
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            # The rest of an unread body would be taken for the next answer.
            conn.close()

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncStream]:
        """GET ``url`` following redirects; its connection is kept if the body was read."""
        stream, conn = await self._follow(url, headers)
        try:
            yield stream
        finally:
            self._release(conn, stream.body)

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """GET ``url`` following redirects, the whole body read."""
        async with self.stream(url, headers) as stream:
            return Fetched(stream.url, stream.status, stream.headers, await stream.body.read())

    async def _follow(
        self, url: str, extra: Mapping[str, str] | None
    ) -> tuple[AsyncStream, _Connection]:
        for _ in range(MAX_REDIRECTS + 1):
            request = prepare(url, self._headers, extra)
            stream, conn = await self._exchange(url, request)
            location = stream.headers.get("location")
            if stream.status not in REDIRECTS or location is None:
                return stream, conn
            # A redirect's own body is small; reading it keeps the connection.
            try:
                await stream.body.read()
            finally:
                self._release(conn, stream.body)
            url = urljoin(url, location)
        raise DeadEnd(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _exchange(self, url: str, request: Request) -> tuple[AsyncStream, _Connection]:
        """Send ``request`` and read the answer's head, on a kept-alive connection if
        there is one, on a new one if that turns out to be closed."""
        scheme = request.scheme
        port = request.port or (443 if scheme == "https" else 80)
        key = (scheme, request.host, port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                break
            conn.close()
        else:
            conn = None
        for _ in range(2):
            if conn is None:
                try:
                    conn = await self._connect(key)
                except _FAILED as exc:
                    raise TransportError(f"{url}: {_describe(exc)}") from exc
            try:
                status, headers = await self._send(conn, request, port)
                return AsyncStream(url, status, headers, AsyncBody(
                    conn, url, status, headers, self._read_timeout)), conn
            except _Stale as exc:
                conn.close()
                if not conn.reused:
                    raise TransportError(f"{url}: {exc}") from None
                conn = None  # closed while idle: once more, on a new connection
            except _FAILED as exc:
                conn.close()
                raise TransportError(f"{url}: {_describe(exc)}") from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable: the second try is on a new connection")

    async def _send(
        self, conn: _Connection, request: Request, port: int
    ) -> tuple[int, _Headers]:
        host = request.host if ":" not in request.host else f"[{request.host}]"
        default = 443 if request.scheme == "https" else 80
        lines = [f"GET {request.target} HTTP/1.1",
                 f"Host: {host}" if port == default else f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        try:
            conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except UnicodeEncodeError as exc:
            raise DeadEnd(f"{request.target}: a header is not Latin-1 ({exc})") from None
        reader = conn.reader
        try:
            # One timeout for the whole head: it is a few hundred bytes, and a
            # timer a line cost more than the parsing.
            async with asyncio.timeout(self._read_timeout):
                while True:
                    line = await reader.readline()
                    if not line:
                        raise _Stale("the server closed the connection without answering")
                    status = _status(line)
                    parser = HeaderParser()
                    while not parser.feed(await reader.readline()):
                        pass
                    if status != http.client.CONTINUE:
                        return status, parser.headers
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Stale(_describe(exc)) from exc


def _status(line: bytes) -> int:
    """The status code of a status line, as http.client reads it."""
    try:
        version, code, *_ = line.decode("iso-8859-1").split(None, 2)
        if not version.startswith("HTTP/1.") and version not in ("HTTP/1.0", "HTTP/0.9"):
            raise ValueError(version)
        status = int(code)
        if not 100 <= status <= 999 or len(code) != 3:
            raise ValueError(code)
    except ValueError:
        raise http.client.BadStatusLine(repr(line[:80])) from None
    return status
