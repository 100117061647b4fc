"""Every request to upstream (the root, pages, files, metadata) goes through here, on aiohttp.

One client for the sync, its download processes and ``verify --repair``: aiohttp's
parser (C), proxies and netrc from the environment (``Environment``), TLS against
certifi's store. What aiohttp leaves open, this module closes:

- every request is bounded as a whole, not only each read: a page or the root within
  ``request-timeout``; a file must bring ``min-rate`` bytes a second over each window
  of ``min-rate-window`` seconds, the first of which also holds the request (so a
  server that sends ``102 Processing``, header lines or a body one byte at a time
  forever is cut off);
- a page's or the root's decoded size is capped while it is read (a gzip bomb);
- redirects are followed here, each hop asked of ``check`` before it is requested,
  and a redirect's body is never read;
- a file is read as its bytes are stored (no decoding), as pip does: a ``.tar.gz``
  served with ``Content-Encoding: gzip`` is still its own bytes.

Sessions are bound to the event loop they were made on: each process makes its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urljoin
from urllib.request import proxy_bypass

import certifi
from yarl import URL

# aiohttp makes two TLS contexts as it is imported, each loading the system's CA store:
# ~45 ms of CPU in every process, a tenth of a sync that changes nothing. Every TLS
# connection here has this module's own context (Http._tls), so aiohttp's are made
# without a store, and never used.
_OWN_STORE_LOADER = vars(ssl.SSLContext).get("set_default_verify_paths")
ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
try:
    import aiohttp
    from aiohttp import helpers
finally:
    if _OWN_STORE_LOADER is None:
        del ssl.SSLContext.set_default_verify_paths
    else:
        ssl.SSLContext.set_default_verify_paths = _OWN_STORE_LOADER  # type: ignore[method-assign]

MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A file is asked for as stored: no server should compress it on the way.
FILE_HEADERS = {"Accept-Encoding": "identity"}
PAGE_ENCODINGS = "gzip, deflate"


def _reads_from_the_heap() -> None:
    """asyncio reads a socket with ``recv(256 KiB)``: a fresh buffer each time, shrunk
    to what arrived. At glibc's default mmap threshold (128 KiB) every read of every
    answer cost an mmap, a page fault a 4 KiB arrived, an mremap and an munmap: 70 of
    the 100 us of system CPU a 100 KB file took. A higher threshold serves reads from
    the heap; the trim threshold above it keeps the heap's top from going back to the
    kernel (brk) after each one."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:  # glibc (musl's does nothing; others have none)
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        mallopt(-1, 4 << 20)  # M_TRIM_THRESHOLD


_reads_from_the_heap()


class TransportError(Exception):
    """The request did not get an answer: refused, reset, timed out or unreadable."""

    transient = True
    """Worth another try; false for a URL or redirect that will fail the same way."""


class DeadEnd(TransportError):
    """A URL that is not http(s), redirects without end, or an answer too large to take."""

    transient = False


@dataclass(frozen=True)
class Fetched:
    """A whole response: a Simple API page or the root."""

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: Mapping[str, str]
    """Looked up without regard to case."""
    body: bytes


@dataclass(frozen=True)
class Limits:
    connect_timeout: float
    read_timeout: float
    """For each read: a connection that goes silent this long is given up."""
    request_timeout: float
    """A page or the root, redirects, headers and body, within this many seconds."""
    min_rate: int
    """Bytes a second a file must keep up over each window; 0: no floor."""
    min_rate_window: float
    max_page_size: int
    max_root_size: int


def ca_bundle() -> str:
    """The CA bundle to verify against: the environment's override (as requests and
    pip read it), or certifi's."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where()
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc or type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the connection ended with part of the body still to come ({exc})"
    # str() alone may say nothing at all; the type says what failed.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")


def target(url: str) -> URL:
    """The URL to request, as given (no re-quoting); DeadEnd for one no request can carry.

    URLs come from upstream's pages; one with a space or a line break in it could
    smuggle a second request onto a kept-alive connection.
    """
    if _UNSENDABLE.search(url):
        raise DeadEnd(f"{url}: has control characters or spaces, which no request may carry")
    if not url.startswith(("http://", "https://")):
        raise DeadEnd(f"{url}: not an http(s) URL")
    try:
        parsed = URL(url, encoded=True)
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise DeadEnd(f"{url}: {exc}") from None
    if not parsed.raw_host:
        raise DeadEnd(f"{url}: not an http(s) URL")
    return parsed


class Stream:
    """A file's response, its body read as it arrives (``chunks``):
    ``async with http.stream(url) as stream``.

    The rate floor: each window of ``min-rate-window`` seconds (the first also holds the
    request) must bring ``min-rate`` bytes a second, or the request is cut off. Its
    deadline is one timer, moved on only when it comes due and a window was met since:
    moving it at every window met, through asyncio.timeout inside an
    asynccontextmanager, cost a tenth of the Python a download process ran.
    """

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: Mapping[str, str]
    _task: asyncio.Task[Any]
    _cancelling: int

    def __init__(
        self, http: Http, url: str, check: Callable[[str], Awaitable[None]] | None
    ) -> None:
        self.url = self._asked = url
        self._http = http
        self._check = check
        self._response: aiohttp.ClientResponse | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._met: float | None = None
        """When the last window was met: the next one is due a window after it."""
        self._overdue = False

    async def __aenter__(self) -> Stream:
        limits = self._http.limits
        if limits.min_rate:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            self._task = task
            self._cancelling = task.cancelling()
            self._timer = loop.call_at(loop.time() + limits.min_rate_window, self._due)
        try:
            self.url, self._response = await self._http._open(
                self._asked, FILE_HEADERS, self._check, False, self._http.file_timeout
            )
        except BaseException as exc:
            self._end(exc)
            raise
        self.status = self._response.status
        self.headers = self._response.headers
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.release()
        self._end(exc)

    def _due(self) -> None:
        loop = self._task.get_loop()
        if self._met is not None and self._met + self._http.limits.min_rate_window > loop.time():
            self._timer = loop.call_at(
                self._met + self._http.limits.min_rate_window, self._due
            )
            return
        self._timer = None
        self._overdue = True
        self._task.cancel()

    def _end(self, exc: BaseException | None) -> None:
        """The floor's timer stopped; its cut-off (the cancellation it caused) and a read
        that went silent (aiohttp's timeout) raised as TransportError."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._overdue:
            self._overdue = False
            # Only this floor's cancellation, not one of the task's own (a stop).
            if self._task.uncancel() <= self._cancelling and isinstance(
                exc, asyncio.CancelledError
            ):
                limits = self._http.limits
                raise TransportError(
                    f"{self._asked}: slower than min-rate ({limits.min_rate} bytes/s over "
                    f"{limits.min_rate_window:g} s)"
                ) from None
        if isinstance(exc, TimeoutError):
            raise TransportError(f"{self._asked}: {_describe(exc)}") from exc

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes | memoryview]:
        """The body as it arrives, up to ``size`` bytes at a time.

        Each piece as the socket gave it (readchunk): read(n) and readany join what is
        buffered into new bytes, a copy and, for large ones, fresh memory to fault in.
        """
        assert self._response is not None
        content = self._response.content
        loop = asyncio.get_running_loop()
        limits = self._http.limits
        share = limits.min_rate * limits.min_rate_window
        got = 0
        try:
            while True:
                chunk, end_of_chunk = await content.readchunk()
                if not chunk:
                    if end_of_chunk:
                        continue  # a chunk's end, told apart from its data: not the body's
                    return
                got += len(chunk)
                if share and got >= share:  # this window is met: the next one starts
                    got = 0
                    self._met = loop.time()
                if len(chunk) <= size:
                    yield chunk
                    continue
                view = memoryview(chunk)
                for start in range(0, len(chunk), size):
                    yield view[start:start + size]
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{self.url}: {_describe(exc)}") from exc


class Environment:
    """Proxies and netrc credentials, read from the environment once, as curl and pip
    take them (aiohttp's own ``trust_env`` reads them again, in a thread, for every
    request: a third of a small request's CPU). ``NO_PROXY`` alone sets no proxy."""

    def __init__(self) -> None:
        self._proxies = helpers.proxies_from_env()
        self._netrc = helpers.netrc_from_env()
        self._by_origin: dict[tuple[str, str], dict[str, Any]] = {}

    def for_url(self, url: URL) -> dict[str, Any]:
        """The proxy and credentials arguments of a request to ``url``."""
        origin = (url.scheme, url.host or "")
        found = self._by_origin.get(origin)
        if found is None:
            found = {}
            proxy = self._proxies.get(url.scheme)
            if proxy is not None and not (url.host and proxy_bypass(url.host)):
                found.update(proxy=proxy.proxy, proxy_auth=proxy.proxy_auth)
            if self._netrc is not None and url.host:
                with contextlib.suppress(LookupError):
                    found["auth"] = helpers.basicauth_from_netrc(self._netrc, url.host)
            self._by_origin[origin] = found
        if "auth" in found and url.user is not None:
            # Credentials in the URL are the ones to send (as curl and requests do).
            return {k: v for k, v in found.items() if k != "auth"}
        return found


class Http:
    """The HTTP client of one process (one event loop): ``connections`` at most at once,
    ``per_host`` of them to any one host, and with ``rate``, no more than that many
    requests a second, evenly spaced, the first at ``not_before`` (``time.monotonic``)."""

    def __init__(
        self, *, user_agent: str, limits: Limits, connections: int, per_host: int = 0,
        rate: float | None = None, not_before: float = 0.0,
    ) -> None:
        self.limits = limits
        self._user_agent = user_agent
        self._connections = connections
        self._per_host = per_host
        self._interval = 1 / rate if rate else 0.0
        self._next_slot = not_before
        self._session: aiohttp.ClientSession | None = None
        self._environment: Environment | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._page_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        # A file's rate floor cuts a silent connection off before a read timeout could
        # (when its window is no longer), so a file's reads go without aiohttp's read
        # timer, which each read started again.
        floor_first = limits.min_rate and limits.min_rate_window <= limits.read_timeout
        self.file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect_timeout,
            sock_read=None if floor_first else limits.read_timeout,
        )

    def _tls(self) -> ssl.SSLContext:
        """The context of every TLS connection (to an https URL, or through an https
        proxy), made for the first: loading the CA bundle costs ~20 ms of CPU, which a
        process that only ever talks plain http need not pay."""
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context(cafile=ca_bundle())
        return self._tls_context

    def paced_until(self, pending: int) -> float:
        """When ``pending`` more requests would have had their turns at this rate
        (``time.monotonic``); now, without a rate."""
        now = time.monotonic()
        if not self._interval:
            return now
        return max(now, self._next_slot) + pending * self._interval

    async def _pace(self) -> None:
        """Wait for this request's turn: one every ``1 / rate`` seconds, never a burst."""
        if not self._interval:
            return
        now = time.monotonic()
        turn = max(now, self._next_slot)
        self._next_slot = turn + self._interval
        if turn > now:
            await asyncio.sleep(turn - now)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, limit_per_host=self._per_host
                ),
                timeout=self._page_timeout,
                headers={"User-Agent": self._user_agent, "Accept-Encoding": PAGE_ENCODINGS},
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),  # an index sets none worth keeping
                read_bufsize=1 << 18,
                # The parser's own caps on a header block (aiohttp's defaults, said here
                # because they are part of what bounds an answer); 1xx answers and
                # trailers are bounded by the deadlines instead.
                max_line_size=8190, max_field_size=8190, max_headers=128,
            )
            self._environment = Environment()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _open(
        self, url: str, headers: Mapping[str, str] | None,
        check: Callable[[str], Awaitable[None]] | None, decompress: bool,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[str, aiohttp.ClientResponse]:
        """GET ``url``, following redirects; each hop is ``check``-ed before it is asked."""
        session = self._get_session()
        environment = self._environment
        assert environment is not None
        secure = url.startswith("https:")
        for _ in range(MAX_REDIRECTS + 1):
            if check is not None:
                await check(url)
            asked = target(url)
            proxy = environment.for_url(asked)
            auth = proxy.get("auth")
            if auth is not None:  # as a header: aiohttp deprecates its auth= argument
                proxy = {k: v for k, v in proxy.items() if k != "auth"}
                if secure and asked.scheme != "https":
                    # An https index's password never crosses the network in clear, not
                    # even to its own host: a redirect to plain http goes without it.
                    auth = None
            await self._pace()  # each hop is a request, a retry too
            through = proxy.get("proxy")
            if asked.scheme == "https" or (through is not None and through.scheme == "https"):
                proxy = {**proxy, "ssl": self._tls()}
            try:
                response = await session.get(
                    asked, allow_redirects=False, auto_decompress=decompress, timeout=timeout,
                    headers=headers if auth is None
                    else {**(headers or {}), "Authorization": auth.encode()},
                    **proxy,
                )
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise TransportError(f"{url}: {_describe(exc)}") from exc
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or location is None:
                return url, response
            response.close()  # its body is never read: it could be anything, of any size
            try:
                url = urljoin(url, location)
            except ValueError:
                raise DeadEnd(f"{url}: redirects to an unusable Location, {location!r}") from None
        raise DeadEnd(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def get(
        self, url: str, headers: Mapping[str, str] | None = None, *, root: bool = False,
        check: Callable[[str], Awaitable[None]] | None = None,
    ) -> Fetched:
        """GET a whole document (the root, a page), its decoded size capped."""
        limit = self.limits.max_root_size if root else self.limits.max_page_size
        key = "max-root-size" if root else "max-page-size"
        seconds = self.limits.request_timeout
        with _timeouts(url, f"no whole answer within request-timeout ({seconds:g} s)"):
            async with asyncio.timeout(seconds):
                final, response = await self._open(url, headers, check, True, self._page_timeout)
                try:
                    body = b""
                    if 200 <= response.status < 300:
                        body = await _read_capped(final, response, limit, key)
                finally:
                    response.release()
        return Fetched(final, response.status, response.headers, body)

    def stream(
        self, url: str, check: Callable[[str], Awaitable[None]] | None = None
    ) -> Stream:
        """GET a file, its body to be read as it arrives, as stored (not decoded):
        ``async with``."""
        return Stream(self, url, check)


@contextlib.contextmanager
def _timeouts(url: str, overdue: str) -> Iterator[None]:
    """A timeout as a TransportError: a read that went silent (aiohttp's), or the whole
    request past its deadline (``overdue`` says which)."""
    try:
        yield
    except TimeoutError as exc:
        if isinstance(exc, aiohttp.ServerTimeoutError):
            raise TransportError(f"{url}: {_describe(exc)}") from exc
        raise TransportError(f"{url}: {overdue}") from None


async def _read_capped(
    url: str, response: aiohttp.ClientResponse, limit: int, key: str
) -> bytes:
    """The decoded body, read in chunks; DeadEnd once it passes ``limit`` bytes."""
    parts = []
    size = 0
    try:
        while chunk := await response.content.readany():
            size += len(chunk)
            if size > limit:
                raise DeadEnd(
                    f"{url}: the answer is larger than {key} ({limit} bytes) once decoded; "
                    f"raise {key} if that is right"
                )
            parts.append(chunk)
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"{url}: {_describe(exc)}") from exc
    return b"".join(parts)
