"""Talking to the upstream index: sessions, the retry policy, root and project pages.

Parsing lives in simple/model.py; this module only moves bytes and interprets HTTP:
status codes, ETags, serial headers, and which format (JSON or HTML) came back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urljoin

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from simplemirror.cli.config import Config
from simplemirror.simple.model import (
    HTML_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    ProjectPage,
    RootIndex,
    UpstreamDataError,
    parse_root_json,
    parse_serial,
)
from simplemirror.sync.plan import ProjectTodo
from simplemirror.upstream.filehosts import FileHostGuard
from simplemirror.upstream.httpclient import Fetched, Http, Limits, Stream, TransportError

T = TypeVar("T")

log = logging.getLogger("simplemirror")

# Prefer JSON (it carries per-project serials, sizes and upload times), but
# take PEP 503 HTML from an index that offers nothing else.
ACCEPT = f"{JSON_CONTENT_TYPE}, {HTML_CONTENT_TYPE};q=0.2, text/html;q=0.1"
JSON_TYPES = frozenset({JSON_CONTENT_TYPE, "application/json"})
HTML_TYPES = frozenset({HTML_CONTENT_TYPE, "text/html"})
SERIAL_HEADER = "X-PyPI-Last-Serial"
# How often a blocking wait looks for a stop request (seconds).
STOP_POLL = 0.2


class UpstreamError(Exception):
    """A request to upstream failed for good; the message says which and why."""


class TransientError(UpstreamError):
    """A failure worth another try: 429, 5xx, a reset or a timeout."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedURL(UpstreamError):
    """A download the file-host policy refuses (filehosts): trying again will not help."""


class NotFound(UpstreamError):
    """Upstream answered 404 or 410: there is nothing at that URL, and asking again won't help."""


# A root URL answering 404 is most often one without the Simple API's path.
NOT_A_ROOT = "is that the index's Simple API root? (does the URL end in /simple/?)"


class Interrupted(Exception):
    """The run was told to stop (SIGTERM, SIGINT); not an upstream fault."""


class StalePage(UpstreamError):
    """The project page is older than the root index promised (CDN lag)."""


def backoff(first: float, ceiling: float) -> wait_base:
    """Exponential backoff from ``first`` seconds, plus up to ``first`` of jitter."""
    return wait_exponential(multiplier=first, max=ceiling) + wait_random(0, first)


def _retry_after(response: Fetched | Stream) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    # Only the delta-seconds form; an HTTP date falls back to the computed backoff.
    return float(value) if value.isascii() and value.isdigit() else None


def listing_of_a_tree(rejected: Iterable[tuple[str, str]]) -> bool:
    """Whether a root's refused entries show a directory listing of a mirror's tree.

    No index lists ``simple/`` (not a project name); a web server listing the directory
    that holds ``simple/`` (the root of a static mirror, given without /simple/) does.
    """
    return any(entry == "simple/" for entry, _ in rejected)


def check_response(response: Fetched | Stream) -> None:
    """Raise TransientError or UpstreamError for a response that is not a success."""
    status = response.status
    if status == 429 or status >= 500:
        raise TransientError(f"{response.url}: HTTP {status}", _retry_after(response))
    if status in (404, 410):
        raise NotFound(f"{response.url}: HTTP {status}")
    if status >= 400:
        raise UpstreamError(f"{response.url}: HTTP {status}")


def _upstream_error(exc: TransportError) -> UpstreamError:
    return TransientError(str(exc)) if exc.transient else UpstreamError(str(exc))


class _FileStream:
    """Client.stream's ``async with``: Http's, a TransportError raised as an
    UpstreamError. A class, as Stream is, not an asynccontextmanager: that one runs an
    async generator for every file."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def __aenter__(self) -> Stream:
        try:
            return await self._stream.__aenter__()
        except TransportError as exc:
            raise _upstream_error(exc) from exc

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stream.__aexit__(kind, exc, tb)
        except TransportError as error:
            raise _upstream_error(error) from error
        if isinstance(exc, TransportError):
            raise _upstream_error(exc) from exc


@dataclass(frozen=True)
class RootResponse:
    index: RootIndex
    etag: str | None
    sha256: str
    """Of the body: the same bytes next time mean the same root."""


@dataclass(frozen=True)
class PageResponse:
    page: ProjectPage
    etag: str | None
    """The page's ETag, to send back as If-None-Match next time; None when not given."""
    sha256: str
    """sha256 (hex) of the response body, so that a caller can tell an unchanged page
    from an upstream that gives neither ETags nor serials."""


@dataclass(frozen=True)
class _Answer:
    """A successful GET of a Simple API document, decoded but not yet interpreted."""

    response: Fetched
    media: str
    """The content type without parameters, lowercased."""
    document: object
    """Decoded JSON, or the HTML text when ``media`` is in HTML_TYPES."""
    sha256: str
    """Of the body, hashed once: callers keep it to recognise the same bytes next time."""

    def parse(self, from_html: Callable[[str], T], from_json: Callable[[object], T]) -> T:
        """The document read by whichever of the two its media type calls for."""
        if self.media in HTML_TYPES:
            assert isinstance(self.document, str)
            return from_html(self.document)
        return from_json(self.document)


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def decode_html(body: bytes, content_type: str, url: str) -> str:
    """HTML text: UTF-8 if it is, else the declared charset; UpstreamError when neither fits."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    charset = _charset(content_type)
    if charset is None:
        raise UpstreamError(f"{url}: HTML page is not UTF-8 and declares no charset")
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError) as exc:
        # LookupError: an unknown charset, or a codec that is not a text encoding.
        raise UpstreamError(f"{url}: HTML page cannot be decoded as {charset!r} ({exc})") from None


def document_headers(etag: str | None) -> dict[str, str]:
    """The headers of a GET for a Simple API document (the root, a page)."""
    headers = {"Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    return headers


def interpret(
    response: Fetched,
    url: str,
    parse_json: Callable[[bytes], object] = json.loads,
    same_as: str | None = None,
) -> _Answer | Fetched:
    """A Simple API document from its response, decoded but not yet interpreted.

    A 304 Not Modified comes back as the bare response, for its headers; so does
    a body whose sha256 is ``same_as``, unparsed.
    """
    if response.status == 304:
        return response
    check_response(response)
    digest = hashlib.sha256(response.body).hexdigest()
    if digest == same_as:
        return response
    content_type = response.headers.get("Content-Type", "")
    media = content_type.split(";")[0].strip().lower()
    if media in HTML_TYPES:
        text = decode_html(response.body, content_type, url)
        return _Answer(response, media, text, digest)
    if media not in JSON_TYPES:
        raise UpstreamError(
            f"{url}: answered {media or 'no content type'}, neither PEP 691 JSON nor "
            "PEP 503 HTML; check that the upstream URL is the root of a simple index"
        )
    try:
        # From the bytes: JSON is UTF-8, and guessing another charset for
        # bytes that are not would garble names.
        return _Answer(response, media, parse_json(response.body), digest)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and bytes that are not UTF-8 text.
        raise UpstreamError(f"{url}: malformed JSON ({_json_problem(exc)})") from None


def _json_problem(exc: Exception) -> str:
    # Python's words for a number too long to read suggest a Python setting; an
    # operator needs to know what upstream sent.
    if "integer string conversion" in str(exc):
        return "a number of more digits than this mirror reads"
    return str(exc)


def page_response(got: _Answer | Fetched, todo: ProjectTodo, url: str) -> PageResponse | None:
    """``todo``'s page from what its GET brought (see ``Client.fetch_page``)."""

    def check_fresh(serial: int | None) -> None:
        if todo.serial is not None and serial is not None and serial < todo.serial:
            raise StalePage(
                f"{url}: page serial {serial} is older than the root's {todo.serial}"
            )

    if not isinstance(got, _Answer):
        check_fresh(parse_serial(got.headers.get(SERIAL_HEADER)))
        return None
    response = got.response
    header_serial = parse_serial(response.headers.get(SERIAL_HEADER))
    try:
        page = got.parse(
            lambda text: ProjectPage.from_html(
                text, page_url=response.url, name=todo.name, header_serial=header_serial
            ),
            lambda data: ProjectPage.from_json_data(
                data, page_url=response.url, header_serial=header_serial
            ),
        )
    except UpstreamDataError as exc:
        raise UpstreamError(str(exc)) from None
    except Exception as exc:
        # Something in the page that the parser did not expect to meet: still this
        # project's failure, not the run's (this runs in download processes too).
        raise UpstreamError(
            f"{url}: the page could not be parsed ({type(exc).__name__}: {exc})"
        ) from None
    if page.name != todo.name:
        raise UpstreamError(
            f"{url}: the page is for project {page.name!r}, not {todo.name!r}"
        )
    check_fresh(page.serial)
    return PageResponse(page, response.headers.get("ETag"), got.sha256)


def retry_test(also: type[BaseException] | None = None) -> Callable[[BaseException], bool]:
    """Which failures the configured retries are for: transient ones, and ``also``."""

    def should_retry(exc: BaseException) -> bool:
        return isinstance(exc, TransientError) or (also is not None and isinstance(exc, also))

    return should_retry


def is_stale(exc: BaseException) -> bool:
    return isinstance(exc, StalePage)


def log_retry(state: RetryCallState) -> None:
    """tenacity's ``before_sleep``: say, at DEBUG (``-v``), what failed and how long until
    the next try. tenacity calls it only when a retry is coming, never on the hot path of
    a request that succeeds."""
    exc = state.outcome.exception() if state.outcome is not None else None
    log.debug(
        "attempt %d failed, trying again in %.1f s: %s",
        state.attempt_number, state.upcoming_sleep, exc,
    )


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for blocking callers, running in a daemon thread.

    A daemon, so that a stopping run is never held by a request in flight: what it
    was writing is a temporary file, cleared by the next run, never published.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="http", daemon=True).start()
        return _loop


class Client:
    """HTTP access to upstream, and its rules: retries, page URLs, the file-host policy.

    Its coroutines (``get_root``, ``get_page``, download.download_todo) are the one way
    every process speaks to upstream. Blocking callers (the sync's coordinating
    thread, verify --repair) hand them to ``background_loop`` (``submit``, ``run``);
    a download process awaits them on its own loop.
    """

    def __init__(
        self, config: Config, connections: int | None = None, *, not_before: float = 0.0
    ) -> None:
        """``connections``: this process's share of ``workers`` (all of them by default);
        it gets the same share of ``connections-per-host`` and ``max-requests-per-second``,
        its first request at ``not_before`` at the earliest (``time.monotonic``)."""
        self.config = config
        self.connections = connections or config.workers
        """This process's share of ``workers``: connections and requests at once."""
        rate = config.max_requests_per_second
        # Rounded down, so that the shares never add up to more than the setting;
        # never 0, aiohttp's "no limit" (there are never more processes than it).
        self.per_host = max(1, config.connections_per_host * self.connections // config.workers)
        """This process's share of ``connections-per-host``."""
        self.rate = rate * self.connections / config.workers if rate else None
        """This process's share of ``max-requests-per-second``; None: no limit."""
        self.http = Http(
            user_agent=config.user_agent,
            limits=Limits(
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                request_timeout=config.request_timeout,
                min_rate=config.min_rate,
                min_rate_window=config.min_rate_window,
                max_page_size=config.max_page_size,
                max_root_size=config.max_root_size,
            ),
            connections=self.connections,
            per_host=self.per_host,
            rate=self.rate,
            not_before=not_before,
        )
        self.stop = threading.Event()
        """Set to make every request, retry and download end soon (Interrupted)."""
        self.file_guard = FileHostGuard(config.upstream, config.file_hosts)
        """Which hosts may serve anything: asked for each request and each of its redirects."""
        self._turns: asyncio.Semaphore | None = None

    # -- for blocking callers --------------------------------------------------

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``work`` on this process's background loop; its Future, to wait on."""
        return asyncio.run_coroutine_threadsafe(work, background_loop())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.submit(work).result()

    def run_until_stopped(self, work: Coroutine[Any, Any, T]) -> T:
        return self.result(self.submit(work))

    def result(self, future: Future[T]) -> T:
        """``future.result()``, given up (Interrupted) as soon as a stop is asked for: a
        request under way can take up to request-timeout to end by itself."""
        while not concurrent.futures.wait([future], timeout=STOP_POLL).done:
            if self.stop.is_set():
                future.cancel()
                raise Interrupted("stopping")
        return future.result()

    def fetch_root(self, etag: str | None, sha256: str | None = None) -> RootResponse | None:
        """``get_root``, waited for."""
        return self.run_until_stopped(self.get_root(etag, sha256))

    def fetch_page(self, todo: ProjectTodo, etag: str | None = None) -> PageResponse | None:
        """``get_page``, waited for."""
        return self.run_until_stopped(self.get_page(todo, etag))

    def close(self) -> None:
        """Close the background loop's connections (not a download process's: ``aclose``)."""
        self.run(self.aclose())

    # -- coroutines -------------------------------------------------------------

    async def aclose(self) -> None:
        await self.http.close()

    async def in_turn(self, work: Awaitable[T]) -> T:
        """Await ``work`` when fewer than ``connections`` others are under way: the
        parent hands over far more than that, and each would hold a temporary file."""
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.connections)
        try:
            await self._turns.acquire()
        except BaseException:
            # Cancelled while waiting its turn (a stop, an error): ``work`` never began,
            # and is closed so that Python does not warn of a coroutine never awaited.
            if isinstance(work, Coroutine):
                work.close()
            raise
        try:
            return await work
        finally:
            self._turns.release()

    async def pause(self, seconds: float) -> None:
        """Wait between attempts; a stop request cuts the wait short."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.stop.is_set() and (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, 0.2))

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stopping")

    async def fetch(
        self, url: str, headers: Mapping[str, str] | None = None, *, root: bool = False
    ) -> Fetched:
        """GET a whole document (the root, a page), following redirects the policy allows."""
        try:
            return await self.http.get(url, headers, root=root, check=self.allow)
        except TransportError as exc:
            raise _upstream_error(exc) from exc

    async def allow(self, url: str) -> None:
        """``check_file_url``, off the event loop the first time an origin is seen: that
        may look a name up, and getaddrinfo blocks (a slow resolver would stall every
        transfer of this process meanwhile)."""
        known, why = self.file_guard.known(url)
        if not known:
            await asyncio.to_thread(self.check_file_url, url)
        elif why is not None:
            raise RefusedURL(f"{url}: refused: {why}")

    def check_file_url(self, url: str) -> None:
        """Raise RefusedURL unless the host policy lets a request ask ``url``."""
        why = self.file_guard.refusal(url)
        if why is not None:
            raise RefusedURL(f"{url}: refused: {why}")

    def stream(self, url: str) -> _FileStream:
        """GET a file's body to be read as it arrives (the file-host policy applies):
        ``async with``."""
        return _FileStream(self.http.stream(url, check=self.allow))

    async def retrying(
        self, what: Callable[[], Awaitable[T]], *, also: type[BaseException] | None = None
    ) -> T:
        """Await ``what()`` with the configured retries and exponential backoff with jitter.

        ``also`` names one more exception type worth retrying (a failed hash check).
        """
        should_retry = retry_test(also)

        async def attempt() -> T:
            self.check_stop()
            return await what()

        return await _first_then_retrying(
            attempt, lambda: AsyncRetrying(**self.retry_policy(should_retry), sleep=self.pause),
            should_retry,
        )

    def retry_policy(self, should_retry: Callable[[BaseException], bool]) -> dict[str, Any]:
        """The configured retries of the failures ``should_retry`` picks (tenacity's
        arguments, but ``sleep``). Built only once a first attempt has failed."""
        computed_wait: wait_base | None = None  # built on the first retry: most calls need none

        def wait(state: RetryCallState) -> float:
            nonlocal computed_wait
            if computed_wait is None:
                computed_wait = backoff(self.config.retry_wait, self.config.retry_max_wait)
            exc = state.outcome.exception() if state.outcome else None
            hint = getattr(exc, "retry_after", None)
            computed = computed_wait(state)
            # Honour Retry-After, but never wait past the configured ceiling.
            return min(max(hint, computed), self.config.retry_max_wait) if hint else computed

        return {
            "stop": stop_after_attempt(self.config.retries + 1)
            | stop_after_delay(self.config.retry_max_time),
            "wait": wait,
            "retry": retry_if_exception(should_retry),
            "before_sleep": log_retry,
            "reraise": True,
        }

    async def _get(
        self,
        url: str,
        etag: str | None,
        parse_json: Callable[[bytes], object] = json.loads,
        same_as: str | None = None,
        root: bool = False,
    ) -> _Answer | Fetched:
        """GET a Simple API document (PEP 691 JSON or PEP 503 HTML); see ``interpret``."""
        headers = document_headers(etag)

        async def attempt() -> _Answer | Fetched:
            return interpret(await self.fetch(url, headers, root=root), url, parse_json, same_as)

        return await self.retrying(attempt)

    async def get_root(
        self, etag: str | None, sha256: str | None = None
    ) -> RootResponse | None:
        """The root index, or None when it is unchanged since ``etag`` (304), or its
        bytes are those whose hash is ``sha256`` (an upstream that sends no ETags).

        A large root takes seconds to parse and compare; the same bytes need neither.
        """
        try:
            got = await self._get(
                self.config.upstream, etag, parse_root_json, same_as=sha256, root=True
            )
        except NotFound as exc:
            raise NotFound(f"{exc}; {NOT_A_ROOT}") from None
        if not isinstance(got, _Answer):
            return None
        response = got.response
        header_serial = parse_serial(response.headers.get(SERIAL_HEADER))
        try:
            index = got.parse(
                lambda text: RootIndex.from_html(
                    text, page_url=response.url, header_serial=header_serial
                ),
                lambda data: RootIndex.from_json_data(data, header_serial=header_serial),
            )
        except UpstreamDataError as exc:
            raise UpstreamError(f"{self.config.upstream}: {exc} (answered {got.media})") from None
        if listing_of_a_tree(index.rejected):
            raise UpstreamError(
                f"{self.config.upstream} lists a directory simple/, as a web server's listing "
                f"of a mirror's files does: give its Simple API root, "
                f"{urljoin(self.config.upstream, 'simple/')}"
            )
        return RootResponse(
            index, response.headers.get("ETag"), got.sha256
        )

    def page_url(self, name: str) -> str:
        return urljoin(self.config.upstream, f"{name}/")

    async def get_page(
        self, todo: ProjectTodo, etag: str | None = None
    ) -> PageResponse | None:
        """A project's page, at least as new as the root promised.

        With ``etag``, None means upstream answered 304: the page is the one that
        ETag came from. A 304 whose serial header is older than the root promised
        is stale like any other answer; without that header a 304 cannot be
        checked, so send only the ETag of a page at least as new as ``todo.serial``.
        A stale page (CDN lag) is asked for again with backoff, then StalePage.
        """
        url = self.page_url(todo.name)

        async def attempt() -> PageResponse | None:
            self.check_stop()
            return page_response(await self._get(url, etag), todo, url)

        return await _first_then_retrying(
            attempt, lambda: AsyncRetrying(**self.stale_policy(), sleep=self.pause), is_stale
        )

    def stale_policy(self) -> dict[str, Any]:
        """How a stale page is asked for again (tenacity's arguments, but ``sleep``)."""
        return {
            "stop": stop_after_attempt(self.config.stale_retries + 1),
            "wait": backoff(self.config.stale_wait, self.config.retry_max_wait),
            "retry": retry_if_exception(is_stale),
            "before_sleep": log_retry,
            "reraise": True,
        }


async def _first_then_retrying(
    attempt: Callable[[], Awaitable[T]],
    retrying: Callable[[], AsyncRetrying],
    should_retry: Callable[[BaseException], bool],
) -> T:
    """``await attempt()``; on a failure worth retrying, hand over to tenacity.

    The common case, success at once, skips tenacity's machinery: it costs more
    than a small request on loopback. The first failure is replayed to tenacity
    as its first attempt, so counts, waits and Retry-After stay as configured.
    """
    try:
        return await attempt()
    except BaseException as exc:
        if not should_retry(exc):
            raise
        first_failure: BaseException | None = exc

    async def replay_then_attempt() -> T:
        nonlocal first_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        return await attempt()

    return await retrying()(replay_then_attempt)
