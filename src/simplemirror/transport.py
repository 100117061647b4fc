"""GETs over kept-alive http.client connections: every page and file of a sync.

A mirror's bulk is many small requests: three per project on an index of tiny
projects (its page, a file, the file's metadata). Every layer above the
standard library's http.client costs CPU on each of them: measured on loopback,
a small page cost ~470 us of CPU through requests, ~270 us through a urllib3
pool and ~180 us straight over http.client, parsing included. So this module is
that thin layer and no thicker: one connection per host per thread (the worker
threads each keep their own alive, nothing is shared or locked), redirects,
connect and read timeouts, gzip/deflate bodies, Basic auth from the URL.

TLS is verified against the CA bundle requests would use. When the environment
sets proxies or a netrc file, requests handles those and upstream.Client goes
through it instead.
"""

from __future__ import annotations

import base64
import functools
import http.client
import os
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import certifi

MAX_REDIRECTS = 10
MAX_HEADERS = 100
MAX_LINE = 65536
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Raised by a connection the server closed while it sat idle in our hands: the
# request is sent again once, on a new connection (a GET can be repeated).
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class TransportError(Exception):
    """The request did not get an answer: refused, reset, timed out or unreadable."""

    transient = True
    """Worth another try; false for a URL or redirect that will fail the same way."""


class DeadEnd(TransportError):
    """A URL that is not http(s), or redirects without end: trying again will not help."""

    transient = False


class Body(Protocol):
    """A response body, read as it arrives and decoded (gzip, deflate)."""

    def read1(self, n: int) -> bytes:
        """What has arrived, at most ``n`` bytes (at least one unless the body is over)."""
        ...

    def read(self) -> bytes:
        """All that is left."""
        parts = []
        while chunk := self.read1(1 << 20):
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class Stream:
    """A response whose body is still to be read."""

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: Mapping[str, str]
    """Looked up without regard to case."""
    body: Body


@dataclass(frozen=True)
class Fetched:
    """A whole response: a Simple API page or the root."""

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: Mapping[str, str]
    body: bytes


def _describe(exc: BaseException) -> str:
    # str() alone says "timed out" or nothing at all; the type says what failed.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def ca_bundle() -> str:
    """The CA bundle requests would verify against: its environment overrides, or certifi's."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where()  # what requests.utils.DEFAULT_CA_BUNDLE_PATH is
    )


class _Timeouts:
    """connect() with the connect timeout, then every read with the read timeout."""

    read_timeout: float
    sock: socket.socket

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)


class _Headers(dict[str, str]):
    """Response headers by lowercased name; of a repeated one, the first (as email's get)."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        value = self.get(name)
        return failobj if value is None else [value]


def parse_header_lines(lines: list[bytes]) -> _Headers:
    """A response's header lines (line endings kept or not; not the blank line that
    ends the block), by lowercased name.

    http.client hands these lines to the email package, which works out MIME
    structure no HTTP response needs: about a fifth of the CPU of a small GET.
    """
    if len(lines) > MAX_HEADERS:
        raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    last = ""
    for line in lines:
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        text = line.decode("iso-8859-1")
        if text[:1] in (" ", "\t"):  # an obsolete folded continuation (RFC 9112 5.2)
            if last:
                headers[last] = f"{headers[last]} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        if not colon:
            continue  # not a header; email's parser would skip it too
        last = name.strip().lower()
        if last in headers:
            last = ""  # a continuation must not extend the first of two
        else:
            headers[last] = value.strip()
    return _Headers(headers)


def informational(status: int) -> bool:
    """A 1xx answer that comes before the real one (100 Continue, 103 Early Hints...).

    101 Switching Protocols is not one: nothing here asks to switch.
    """
    return 100 <= status < 200 and status != 101


def _read_headers(fp: BinaryIO) -> _Headers:
    """The header block, read line by line up to its blank line."""
    lines: list[bytes] = []
    # Read no further than a line too many or a line too long: parse_header_lines
    # refuses either.
    while len(lines) <= MAX_HEADERS:
        line = fp.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            break
        lines.append(line)
        if len(line) > MAX_LINE:
            break
    return parse_header_lines(lines)


class _Response(http.client.HTTPResponse):
    """http.client's response, its headers read by _read_headers.

    begin() is the standard library's (3.11-3.13), but for that one call.
    """

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            if not informational(status):
                break
            _read_headers(self.fp)  # type: ignore[arg-type]
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = _read_headers(self.fp)  # type: ignore[assignment,arg-type]
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"  # type: ignore[union-attr]
        self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


class _HTTPConnection(_Timeouts, http.client.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(_Timeouts, http.client.HTTPSConnection):
    response_class = _Response


class Inflater:
    """Content-Encoding undone as the body arrives: gzip, deflate, or nothing to do.

    Never gives more than ``n`` decoded bytes at once, however well the input
    compresses: a small hostile body cannot inflate into memory. Pure: whoever
    reads the body (a blocking socket, an event loop) hands the raw bytes in.
    """

    def __init__(self, encoding: str | None, url: str) -> None:
        encoding = (encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise DeadEnd(f"{url}: unsupported Content-Encoding {encoding!r} (gzip and "
                          "deflate were asked for)")
        self._url = url
        self.encoded = encoding != "identity"
        """False: the raw bytes are the body."""
        # "deflate" is zlib-wrapped by the standard, raw from some servers: which
        # one is told by the first byte, so its decompressor waits for it.
        self._inflate = (
            zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip") else None
        )
        self._fed = False

    @property
    def wants_input(self) -> bool:
        """Nothing held back: the next ``decode`` needs more raw bytes."""
        return self._inflate is None or (
            not self._inflate.unconsumed_tail and not self._inflate.eof
        )

    @property
    def done(self) -> bool:
        """The compressed stream has ended."""
        return self._inflate is not None and self._inflate.eof and not self._inflate.unconsumed_tail

    def decode(self, data: bytes | memoryview, n: int) -> bytes:
        """Up to ``n`` decoded bytes from ``data`` (raw bytes just read, or b"" to go on
        with what an earlier call held back); b"" when more input is needed."""
        if data:
            self._fed = True
        if self._inflate is None:
            if not data:
                return b""
            wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
            self._inflate = zlib.decompressobj(wbits)
        inflate = self._inflate
        try:
            out = inflate.decompress(data or inflate.unconsumed_tail, n)
        except zlib.error as exc:
            raise TransportError(f"{self._url}: body cannot be decompressed ({exc})") from exc
        if inflate.unused_data:
            raise TransportError(f"{self._url}: bytes after the compressed body")
        return out

    def ended(self, more: bytes) -> None:
        """The raw body ended (``more`` is what was read after the stream's end)."""
        if not self._fed:
            return  # no body at all (a 304 says Content-Encoding too): nothing to decode
        if more:
            raise TransportError(f"{self._url}: bytes after the compressed body")
        if not self.done:
            raise TransportError(f"{self._url}: the compressed body ends early")


class _Decoded(Body):
    """A body as it arrives over http.client, decoded by an Inflater."""

    def __init__(self, response: http.client.HTTPResponse, url: str) -> None:
        self._response = response
        self._url = url
        self._inflater = Inflater(response.getheader("Content-Encoding"), url)

    @property
    def complete(self) -> bool:
        """The whole body was read: the connection can carry the next request."""
        return self._response.isclosed()

    def _raw(self, n: int) -> bytes:
        response = self._response
        try:
            data = response.read1(n)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{self._url}: {_describe(exc)}") from exc
        if response.length == 0:
            # http.client's read1 never marks a Content-Length body as done;
            # closing the response (not the socket) frees the connection.
            response.close()
        elif not data and response.length:
            raise TransportError(
                f"{self._url}: connection closed with {response.length} bytes still to come"
            )
        return data

    def read1(self, n: int) -> bytes:
        inflater = self._inflater
        if not inflater.encoded:
            return self._raw(n)
        while True:
            if inflater.done:
                inflater.ended(b"" if self.complete else self._raw(1 << 16))
                return b""
            wants_input = inflater.wants_input
            data = self._raw(n) if wants_input else b""
            if wants_input and not data:
                inflater.ended(b"")
                return b""
            if out := inflater.decode(data, n):
                return out


@dataclass(frozen=True)
class Request:
    """A GET, ready to send."""

    scheme: str
    host: str
    port: int
    target: str
    """The path and query, as sent on the request line."""
    headers: Mapping[str, str]


def prepare(url: str, base: Mapping[str, str], extra: Mapping[str, str] | None) -> Request:
    """What GET ``url`` sends: DeadEnd for a URL no request can be made of.

    URLs come from upstream's pages; one with a space or a line break in it
    could smuggle a second request onto a kept-alive connection, so such a URL
    is refused rather than sent (as http.client refuses it).
    """
    scheme, netloc, path, query = _split(url)
    try:
        host, port, authorization = _origin(scheme, netloc)
    except _Unusable as exc:
        raise DeadEnd(f"{url}: {exc}") from None
    target = path or "/"
    if query:
        target += "?" + query
    if _UNSENDABLE.search(target):
        raise DeadEnd(f"{url}: has control characters or spaces, which no request may carry")
    headers = {**base, **extra} if extra else base
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    return Request(scheme, host, port, target, headers)


def _split(url: str) -> tuple[str, str, str, str]:
    """urlsplit's scheme, netloc, path and query of ``url``.

    A URL of plain characters (what pages give) is split by one pattern: urlsplit
    is several times slower, and every request split one.
    """
    plain = _PLAIN_URL.fullmatch(url) if url.isascii() else None
    if plain is not None:
        return plain[1], plain[2], plain[3] or "", plain[4] or ""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path, parts.query


# No control characters, spaces or brackets, which urlsplit removes or checks.
_PLAIN_URL = re.compile(
    r"(https?)://([^/?#\[\]\x00-\x20\x7f]*)(/[^?#\x00-\x20\x7f]*)?"
    r"(?:\?([^#\x00-\x20\x7f]*))?(?:#[^\x00-\x20\x7f]*)?"
)


class _Unusable(Exception):
    """Why no request can be made to an origin."""


@functools.lru_cache(maxsize=64)
def _origin(scheme: str, netloc: str) -> tuple[str, int, str | None]:
    """An origin's host, port, and Authorization header value (None without credentials).

    Cached: a sync's many thousand URLs share a handful of origins, and each of
    urlsplit's host, port and user attributes parses the netloc again.
    """
    parts = SplitResult(scheme, netloc, "", "", "")
    try:
        port = parts.port
    except ValueError:
        raise _Unusable("the port is not a number") from None
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise _Unusable("not an http(s) URL")
    if _UNSENDABLE.search(host):
        raise _Unusable("has control characters or spaces, which no request may carry")
    if port is None:
        # Given no port, http.client looks for one after the host's last colon,
        # which an IPv6 literal ("::1") always has.
        port = 443 if scheme == "https" else 80
    if parts.username is None:
        return host, port, None
    # As requests does: credentials in the URL are sent as Basic auth, to that
    # URL's host only (a redirect elsewhere carries none).
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return host, port, "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")


class Transport:
    """Connections by scheme and host, one set per thread; safe to share between threads."""

    def __init__(
        self, *, user_agent: str, connect_timeout: float, read_timeout: float
    ) -> None:
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def _connections(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        try:
            return self._local.connections  # type: ignore[no-any-return]
        except AttributeError:
            self._local.connections = {}
            return self._local.connections  # type: ignore[no-any-return]

    def _tls(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = ssl.create_default_context(cafile=ca_bundle())
            return self._context

    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        connections = self._connections()
        key = (scheme, f"{host}:{port}")
        conn = connections.get(key)
        if conn is None:
            if scheme == "https":
                conn = _HTTPSConnection(
                    host, port, timeout=self._connect_timeout, context=self._tls()
                )
            else:
                conn = _HTTPConnection(host, port, timeout=self._connect_timeout)
            conn.read_timeout = self._read_timeout  # type: ignore[attr-defined]
            connections[key] = conn
        return conn

    @contextmanager
    def stream(
        self, url: str, headers: Mapping[str, str] | None = None,
        check: Callable[[str], None] | None = None,
    ) -> Iterator[Stream]:
        """GET ``url`` following redirects; its connection is kept if the body was read.

        ``check`` is called with ``url`` and each redirect's target before it is
        asked, and raises to refuse it.
        """
        stream, conn = self._follow(url, headers, check)
        body = stream.body
        assert isinstance(body, _Decoded)
        try:
            yield stream
        finally:
            # Read to its end, the body has left the connection ready for the next
            # request. Otherwise the rest of it would be taken for the answer to
            # the next request on that connection: close it instead.
            if not body.complete:
                conn.close()

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """GET ``url`` following redirects, the whole body read."""
        with self.stream(url, headers) as stream:
            return Fetched(stream.url, stream.status, stream.headers, stream.body.read())

    def _follow(
        self, url: str, extra: Mapping[str, str] | None,
        check: Callable[[str], None] | None = None,
    ) -> tuple[Stream, http.client.HTTPConnection]:
        for _ in range(MAX_REDIRECTS + 1):
            if check is not None:
                check(url)
            request = prepare(url, self._headers, extra)
            conn = self._connection(request.scheme, request.host, request.port)
            try:
                response = self._request(conn, request.target, request.headers)
                body = _Decoded(response, url)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(f"{url}: {_describe(exc)}") from exc
            except TransportError:
                conn.close()
                raise
            location = response.getheader("Location")
            if response.status not in REDIRECTS or location is None:
                return Stream(url, response.status, response.headers, body), conn
            # A redirect's own body is small; reading it keeps the connection.
            try:
                body.read()
            except TransportError:
                conn.close()
            url = urljoin(url, location)
        raise DeadEnd(f"{url}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _request(
        conn: http.client.HTTPConnection, target: str, headers: Mapping[str, str]
    ) -> http.client.HTTPResponse:
        reused = conn.sock is not None
        try:
            conn.request("GET", target, headers=headers)
            return conn.getresponse()
        except _STALE:
            conn.close()
            if not reused:
                raise
        except BaseException:
            conn.close()
            raise
        try:
            conn.request("GET", target, headers=headers)
            return conn.getresponse()
        except BaseException:
            conn.close()
            raise
