"""GETs on an asyncio event loop: the transport of a download process.

The blocking transport (transport.py) runs in worker threads, and a process
whose five threads all wait on sockets spends a quarter of a sync's CPU
handing the GIL from one to the next at every system call. On one event loop
the same concurrency costs no hand-off at all: measured on loopback, 18,000
files (1 GB) fetched, hashed, written and renamed by ten connections on one
loop took 2.1 CPU s, against ~9 for the same in ten threads.

The rules are the blocking transport's, from the same pieces: ``prepare`` (which
URLs may be sent, Basic auth from the URL), ``parse_header_lines``, ``Inflater``
(gzip and deflate, never inflating more than asked), redirects, connect and
read timeouts, and one more try on a new connection when a kept-alive one
turns out to have been closed by the server while idle. HTTP/1.1 framing
(Content-Length, chunked, or to the close) is read here.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

from simplemirror.transport import (
    MAX_HEADERS,
    MAX_LINE,
    MAX_REDIRECTS,
    REDIRECTS,
    DeadEnd,
    Fetched,
    Inflater,
    Request,
    TransportError,
    _describe,
    _Headers,
    ca_bundle,
    informational,
    parse_header_lines,
    prepare,
)

# A piece of a body: bytes, or a view of bytes (see _Connection._take).
Buffer = bytes | memoryview

# Errors a socket, the TLS layer or a bad answer end a request in. ValueError: a
# host name IDNA cannot encode (UnicodeError) fails as the connection is made.
_FAILED = (OSError, TimeoutError, ValueError, http.client.HTTPException)


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered."""


# Reading pauses while this much has arrived unread: a slow disk or a busy loop
# must not let a fast server fill memory.
_HIGH_WATER = 1 << 20
_RECEIVE = 1 << 18
MAX_HEAD = MAX_LINE + MAX_HEADERS * 1024


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: what arrives is kept as the pieces it came in.

    Not asyncio's StreamReader: it copies every byte into a buffer and out again,
    and reads a response head line by line. A body's pieces are handed on as they
    arrived, and a head is cut from them whole. Received into one buffer of the
    connection's own: a fresh 256 KiB bytes object for every receive cost the
    allocator an mmap, an mremap and a munmap each time, and the kernel its page
    faults.
    """

    def __init__(
        self, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop, read_timeout: float
    ) -> None:
        self.key = key
        self._read_timeout = read_timeout
        self.reused = False
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        """When the wait for ``_waiter`` times out (the loop's clock)."""
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = memoryview(bytearray(_RECEIVE))

    # -- asyncio.BufferedProtocol ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._chunks.append(self._buffer[:nbytes].tobytes())
        self._buffered += nbytes
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the transport ----------------------------------------------------

    @property
    def usable(self) -> bool:
        """Idle and still open: nothing unasked-for has arrived, the server has not closed."""
        transport = self._transport
        return (transport is not None and not transport.is_closing() and not self._eof
                and not self._chunks)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def _arrival(self) -> None:
        """Wait for more bytes, or the end: at most the read timeout, as a blocking
        socket's every receive would.

        The wait's deadline is kept here and one timer of the connection's checks
        it: most waits end in a millisecond, and a timer made and cancelled for
        each cost more than the rest of the wait.
        """
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        self._deadline = self._loop.time() + self._read_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        await waiter

    def _check_deadline(self) -> None:
        """The timer: end a wait that has lasted the read timeout; for a later wait,
        check again at its deadline."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait sets a timer
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._waiter = None
        waiter.set_exception(TimeoutError(f"no answer for {self._read_timeout} s"))

    def _joined(self) -> bytes:
        chunks = self._chunks
        if len(chunks) > 1 or (chunks and isinstance(chunks[0], memoryview)):
            data = b"".join(chunks)
            chunks.clear()
            chunks.append(data)
        return chunks[0] if chunks else b""  # type: ignore[return-value]

    def _take(self, n: int) -> bytes | memoryview:
        """The next ``n`` bytes at most. Cut from a piece as a view: a response's head
        and body most often come in one piece, and slicing it as bytes copied the body
        (a copy of every byte of every file)."""
        chunks = self._chunks
        chunk = chunks[0]
        if len(chunk) <= n:
            chunks.popleft()
        else:
            view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
            chunks[0] = view[n:]
            chunk = view[:n]
        self._buffered -= len(chunk)
        return chunk

    def _ended(self) -> None:
        if self._error is not None:
            raise self._error

    async def head(self) -> bytes:
        """The next response head, up to and with the blank line that ends it.

        Raises _Stale when the connection ended before a byte of it came.
        """
        while True:
            data = self._joined()
            # The blank line is CRLF, or from a few servers a bare LF. The head is
            # often in one piece with much of the body: search only the head.
            end = data.find(b"\n\r\n", 0, MAX_HEAD)
            bare = data.find(b"\n\n", 0, MAX_HEAD if end < 0 else end)
            if bare >= 0:
                return bytes(self._take(bare + 2))
            if end >= 0:
                return bytes(self._take(end + 3))
            if len(data) > MAX_HEAD:
                raise http.client.LineTooLong("response head")
            if data[:5] != b"HTTP/"[: len(data)]:
                # Not HTTP (a banner, garbage): no point waiting for the rest.
                raise http.client.BadStatusLine(repr(data[:80]))
            if self._eof:
                if data:
                    raise http.client.IncompleteRead(data)
                if self._error is None or isinstance(
                    self._error, ConnectionResetError | BrokenPipeError
                ):
                    raise _Stale("the server closed the connection without answering")
                self._ended()
            await self._arrival()

    async def readline(self) -> bytes:
        """A line (a chunk's size, a trailer), with its line ending."""
        while True:
            data = self._joined()
            end = data.find(b"\n")
            if end >= 0:
                return bytes(self._take(end + 1))
            if len(data) > MAX_LINE:
                raise http.client.LineTooLong("chunk line")
            if self._eof:
                self._ended()
                return bytes(self._take(len(data))) if data else b""
            await self._arrival()

    async def read(self, n: int) -> Buffer:
        """What has arrived, at most ``n`` bytes; b"" only at the connection's end."""
        while not self._chunks:
            if self._eof:
                self._ended()
                return b""
            await self._arrival()
        return self._take(n)


class AsyncBody:
    """A response body as it arrives, decoded (gzip, deflate)."""

    def __init__(self, conn: _Connection, url: str, status: int, headers: _Headers,
                 http10: bool = False) -> None:
        self._conn = conn
        self._url = url
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
                self._left = int(length)
            except ValueError:
                self._left = None
            if self._left is not None and self._left < 0:
                self._left = None  # as http.client: no length, read to the close
        connection = (headers.get("connection") or "").lower()
        # HTTP/1.0 closes after each answer unless it says it will not.
        persistent = "keep-alive" in connection if http10 else "close" not in connection
        self.keep_alive = persistent and (self._chunked or self._left is not None)
        """The connection can carry another request once this body is read."""
        self.complete = self._left == 0
        """The whole body was read."""

    async def _raw(self, n: int) -> Buffer:
        if self.complete:
            return b""
        try:
            if self._chunked:
                return await self._chunk(n)
            if self._left is None:  # to the close
                data = await self._conn.read(n)
                self.complete = not data
                return data
            data = await self._conn.read(min(n, self._left))
        except _FAILED as exc:
            raise TransportError(f"{self._url}: {_describe(exc)}") from exc
        if not data:
            raise TransportError(
                f"{self._url}: connection closed with {self._left} bytes still to come"
            )
        self._left -= len(data)
        self.complete = self._left == 0
        return data

    async def _chunk(self, n: int) -> Buffer:
        if not self._chunk_left:
            line = await self._conn.readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while (await self._conn.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields: nothing here needs them
                self.complete = True
                return b""
            self._chunk_left = size
        data = await self._conn.read(min(n, self._chunk_left))
        if not data:
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= len(data)
        if not self._chunk_left and (await self._conn.readline()) not in (b"\r\n", b"\n"):
            raise http.client.HTTPException("a chunk does not end in a line break")
        return data

    async def read1(self, n: int) -> Buffer:
        """What has arrived, at most ``n`` bytes (at least one unless the body is over),
        as bytes or a memoryview of them."""
        inflater = self._inflater
        if not inflater.encoded:
            return await self._raw(n)
        while True:
            if inflater.done:
                inflater.ended(await self._raw(1 << 16))
                return b""
            wants_input = inflater.wants_input
            data = await self._raw(n) if wants_input else b""
            if wants_input and not data:
                inflater.ended(b"")
                return b""
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
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(key, loop, self._read_timeout), host, port,
                ssl=tls, server_hostname=host if tls else None,
            )
        return conn

    def _release(self, conn: _Connection, body: AsyncBody) -> None:
        if body.complete and body.keep_alive and conn.usable:
            conn.reused = True
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            # The rest of an unread body would be taken for the next answer.
            conn.close()

    def stream(
        self, url: str, headers: Mapping[str, str] | None = None,
        check: Callable[[str], None] | None = None,
    ) -> _Streaming:
        """GET ``url`` following redirects, as ``async with``; its connection is kept
        if the body was read. ``check`` as Transport.stream's."""
        return _Streaming(self, url, headers, check)

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """GET ``url`` following redirects, the whole body read."""
        async with self.stream(url, headers) as stream:
            return Fetched(stream.url, stream.status, stream.headers, await stream.body.read())

    async def _follow(
        self, url: str, extra: Mapping[str, str] | None,
        check: Callable[[str], None] | None = None,
    ) -> tuple[AsyncStream, _Connection]:
        for _ in range(MAX_REDIRECTS + 1):
            if check is not None:
                check(url)
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
                status, headers, http10 = await self._send(conn, request, port)
                return AsyncStream(url, status, headers, AsyncBody(
                    conn, url, status, headers, http10)), conn
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
    ) -> tuple[int, _Headers, bool]:
        """Send the request, read the answer's head: its status, headers, and whether
        it is HTTP/1.0."""
        host = request.host if ":" not in request.host else f"[{request.host}]"
        default = 443 if request.scheme == "https" else 80
        lines = [f"GET {request.target} HTTP/1.1",
                 f"Host: {host}" if port == default else f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        try:
            conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except UnicodeEncodeError as exc:
            raise DeadEnd(f"{request.target}: a header is not Latin-1 ({exc})") from None
        while True:
            # The head ends in its blank line: the last two pieces are that line's
            # and what follows its line break (nothing).
            lines = (await conn.head()).split(b"\n")
            status, http10 = _status(lines[0])
            if not informational(status):
                return status, parse_header_lines(lines[1:-2]), http10


class _Streaming:
    """AsyncTransport.stream's context. A class, not asynccontextmanager: that one
    drives an async generator and ends it by raising StopAsyncIteration, a cost
    paid on every file."""

    __slots__ = ("_check", "_headers", "_open", "_transport", "_url")

    def __init__(
        self, transport: AsyncTransport, url: str, headers: Mapping[str, str] | None,
        check: Callable[[str], None] | None = None,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = headers
        self._check = check
        self._open: tuple[AsyncStream, _Connection] | None = None

    async def __aenter__(self) -> AsyncStream:
        self._open = await self._transport._follow(self._url, self._headers, self._check)
        return self._open[0]

    async def __aexit__(self, *_: object) -> None:
        if self._open is not None:
            stream, conn = self._open
            self._open = None
            self._transport._release(conn, stream.body)


def _status(line: bytes) -> tuple[int, bool]:
    """The status code of a status line, as http.client reads it; and whether HTTP/1.0."""
    try:
        version, code, *_ = line.decode("iso-8859-1").split(None, 2)
        if not version.startswith("HTTP/1.") and version not in ("HTTP/1.0", "HTTP/0.9"):
            raise ValueError(version)
        status = int(code)
        if not 100 <= status <= 999 or len(code) != 3:
            raise ValueError(code)
    except ValueError:
        raise http.client.BadStatusLine(repr(line[:80])) from None
    return status, version in ("HTTP/1.0", "HTTP/0.9")
