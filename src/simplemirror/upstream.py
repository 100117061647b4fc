"""Talking to the upstream index: sessions, the retry policy, root and project pages.

Parsing lives in model.py; this module only moves bytes and interprets HTTP:
status codes, ETags, serial headers, and which format (JSON or HTML) came back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from simplemirror.config import Config
from simplemirror.filehosts import FileHostGuard
from simplemirror.model import (
    HTML_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    ProjectPage,
    RootIndex,
    UpstreamDataError,
    parse_root_json,
    parse_serial,
)
from simplemirror.plan import ProjectTodo
from simplemirror.transport import Body, Fetched, Stream, Transport, TransportError

if TYPE_CHECKING:
    import requests

T = TypeVar("T")

log = logging.getLogger("simplemirror")

# Prefer JSON (it carries per-project serials, sizes and upload times), but
# take PEP 503 HTML from an index that offers nothing else.
ACCEPT = f"{JSON_CONTENT_TYPE}, {HTML_CONTENT_TYPE};q=0.2, text/html;q=0.1"
JSON_TYPES = frozenset({JSON_CONTENT_TYPE, "application/json"})
HTML_TYPES = frozenset({HTML_CONTENT_TYPE, "text/html"})
SERIAL_HEADER = "X-PyPI-Last-Serial"


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


def _environment_matters() -> bool:
    """Whether requests must consult the environment: proxies or a netrc file are set."""
    netrc = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    proxies = urllib.request.getproxies()
    proxies.pop("no", None)  # NO_PROXY: hosts that bypass a proxy, not a proxy
    return bool(proxies) or os.path.exists(netrc)


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


@contextmanager
def _requests_errors(url: str) -> Iterator[None]:
    """requests' failures, as ours: a connection, a timeout or a broken body is
    transient. Translated where requests is called, so that nothing else needs to
    know them, and a download process, which never uses requests, never loads it."""
    import requests

    try:
        yield
    except (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError
    ) as exc:
        raise TransientError(f"{url}: {exc}") from exc
    except requests.RequestException as exc:
        raise UpstreamError(f"{url}: {exc}") from exc


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


class _RawBody(Body):
    """A file body read through requests (proxies, netrc): its urllib3 response."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read1(self, n: int) -> bytes:
        import urllib3  # loaded with requests, which made this body

        try:
            return self._raw.read1(n, decode_content=True)  # type: ignore[no-any-return]
        except urllib3.exceptions.HTTPError as exc:  # a reset or timeout mid-body
            raise TransportError(str(exc)) from exc


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


class Client:
    """HTTP access to upstream. Safe to share between threads: each has its own connections."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._local = threading.local()
        self.transport = Transport(
            user_agent=config.user_agent,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        self.via_requests = _environment_matters()
        """The environment sets proxies or a netrc file, which requests knows how to
        apply: every request goes through it. Otherwise, over the transport."""
        self.stop = threading.Event()
        """Set to make every request, retry and download end soon (Interrupted)."""
        self.file_guard = FileHostGuard(config.upstream, config.file_hosts)
        """Which hosts may serve files: asked for each download and each of its redirects."""

    def pause(self, seconds: float) -> None:
        """Wait between attempts; a stop request cuts the wait short."""
        self.stop.wait(seconds)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stopping")

    def session(self) -> requests.Session:
        """This thread's requests session, for when ``via_requests``."""
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.headers["User-Agent"] = self.config.user_agent
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                session.verify = bundle
            # One thread, one connection at a time; keep a few per host alive.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
        """GET a whole document (the root, a page), following redirects."""
        if self.via_requests:
            with _requests_errors(url):
                response = self.session().get(url, headers=headers, timeout=self.timeout)
                return Fetched(
                    response.url, response.status_code, response.headers, response.content
                )
        try:
            return self.transport.get(url, headers)
        except TransportError as exc:
            raise _upstream_error(exc) from exc

    def check_file_url(self, url: str) -> None:
        """Raise RefusedURL unless the file-host policy lets a download ask ``url``."""
        why = self.file_guard.refusal(url)
        if why is not None:
            raise RefusedURL(f"{url}: refused: {why}")

    def _check_redirect(self, response: requests.Response, **_: Any) -> None:
        """A requests hook: the policy for a redirect's target, before requests follows it."""
        if response.is_redirect:
            try:
                self.check_file_url(urljoin(response.url, response.headers["location"]))
            except RefusedURL:
                response.close()
                raise

    @contextmanager
    def stream(self, url: str) -> Iterator[Stream]:
        """GET a file's body to be read as it arrives (the file-host policy applies)."""
        if self.via_requests:
            self.check_file_url(url)
            hooks = {"response": self._check_redirect}
            with (
                _requests_errors(url),
                self.session().get(
                    url, stream=True, timeout=self.timeout, hooks=hooks
                ) as response,
            ):
                yield Stream(
                    response.url, response.status_code, response.headers, _RawBody(response.raw)
                )
            return
        try:
            with self.transport.stream(url, check=self.check_file_url) as stream:
                yield stream
        except TransportError as exc:
            raise _upstream_error(exc) from exc

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.config.connect_timeout, self.config.read_timeout)

    def retrying(self, what: Callable[[], T], *, also: type[BaseException] | None = None) -> T:
        """Call ``what`` with the configured retries and exponential backoff with jitter.

        ``also`` names one more exception type worth retrying (a failed hash check).
        """
        should_retry = retry_test(also)

        def attempt() -> T:
            self.check_stop()
            return what()

        return _first_then_retrying(
            attempt, lambda: Retrying(**self.retry_policy(should_retry), sleep=self.pause),
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

    def _get(
        self,
        url: str,
        etag: str | None,
        parse_json: Callable[[bytes], object] = json.loads,
        same_as: str | None = None,
    ) -> _Answer | Fetched:
        """GET a Simple API document (PEP 691 JSON or PEP 503 HTML); see ``interpret``."""
        headers = document_headers(etag)
        return self.retrying(lambda: interpret(self.fetch(url, headers), url, parse_json, same_as))

    def fetch_root(self, etag: str | None, sha256: str | None = None) -> RootResponse | None:
        """The root index, or None when it is unchanged since ``etag`` (304), or its
        bytes are those whose hash is ``sha256`` (an upstream that sends no ETags).

        A large root takes seconds to parse and compare; the same bytes need neither.
        """
        try:
            got = self._get(self.config.upstream, etag, parse_root_json, same_as=sha256)
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

    def fetch_page(self, todo: ProjectTodo, etag: str | None = None) -> PageResponse | None:
        """A project's page, at least as new as the root promised.

        With ``etag``, None means upstream answered 304: the page is the one that
        ETag came from. A 304 whose serial header is older than the root promised
        is stale like any other answer; without that header a 304 cannot be
        checked, so send only the ETag of a page at least as new as ``todo.serial``.
        A stale page (CDN lag) is asked for again with backoff, then StalePage.
        """
        url = self.page_url(todo.name)

        def attempt() -> PageResponse | None:
            self.check_stop()
            return page_response(self._get(url, etag), todo, url)

        return _first_then_retrying(
            attempt, lambda: Retrying(**self.stale_policy(), sleep=self.pause), is_stale
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


def _first_then_retrying(
    attempt: Callable[[], T],
    retrying: Callable[[], Retrying],
    should_retry: Callable[[BaseException], bool],
) -> T:
    """``attempt()``; on a failure worth retrying, hand over to tenacity.

    The common case, success at once, skips tenacity's machinery: it costs more
    than a small request on loopback. The first failure is replayed to tenacity
    as its first attempt, so counts, waits and Retry-After stay as configured.
    """
    try:
        return attempt()
    except BaseException as exc:
        if not should_retry(exc):
            raise
        first_failure: BaseException | None = exc

    def replay_then_attempt() -> T:
        nonlocal first_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure
        return attempt()

    return retrying()(replay_then_attempt)
