"""Streaming GETs of files straight over urllib3 connection pools.

A mirror's bulk is many small files. requests' per-call work (preparing the
request, merging settings, cookies, hooks, building its Response) costs about as
much CPU as a 100 KB transfer on a fast link, so file bodies skip it: one pool
per host, shared by the worker threads, each connection kept alive. Pages and the
root still go through requests (upstream.Client.get), once per project.

TLS is verified against the same CA bundle requests would use. When the
environment sets proxies or a netrc file, requests handles those and the Client
streams files through it instead (see Client.stream).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH

MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class TransportError(Exception):
    """The request did not get an answer: refused, reset, timed out or unreadable."""


@dataclass
class Stream:
    """A response whose body is still to be read."""

    url: str
    """The URL that answered, after redirects."""
    status: int
    headers: Mapping[str, str]
    raw: urllib3.BaseHTTPResponse
    """Read the body with ``raw.read1(n, decode_content=True)``."""


def ca_bundle() -> str:
    """The CA bundle requests would verify against: its environment overrides, or certifi's."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or DEFAULT_CA_BUNDLE_PATH
    )


class Transport:
    """Connection pools by scheme and host; safe to share between threads."""

    def __init__(
        self, *, user_agent: str, connect_timeout: float, read_timeout: float, maxsize: int
    ) -> None:
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"}
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._maxsize = maxsize
        self._pools: dict[tuple[str, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def _pool(self, scheme: str, netloc: str) -> urllib3.HTTPConnectionPool:
        pool = self._pools.get((scheme, netloc))
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get((scheme, netloc))
            if pool is None:
                options = {
                    "maxsize": self._maxsize,
                    "block": False,  # never wait for a connection: open one more
                    "timeout": self._timeout,
                    "retries": False,  # the Client's retry policy decides
                }
                if scheme == "https":
                    options.update(cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle())
                pool = urllib3.connection_from_url(f"{scheme}://{netloc}", **options)
                self._pools[(scheme, netloc)] = pool
        return pool

    @contextmanager
    def stream(self, url: str) -> Iterator[Stream]:
        """GET ``url`` following redirects; the connection is reused if the body was read."""
        response = self._follow(url)
        try:
            yield response
        finally:
            # Read to its end, the body has already given its connection back to
            # the pool. Otherwise the rest of it would be taken for the answer to
            # the next request on that connection: close it instead.
            raw = response.raw
            if not raw.isclosed():
                raw.close()
            raw.release_conn()

    def _follow(self, url: str) -> Stream:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TransportError(f"{url}: not an http(s) URL")
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            headers = self._headers
            if parts.username is not None:
                # As requests does: credentials in the URL are sent as Basic auth, to
                # that URL's host only (a redirect elsewhere carries none).
                credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                headers = {**headers, **urllib3.make_headers(basic_auth=credentials)}
            try:
                raw = self._pool(parts.scheme, parts.netloc.rpartition("@")[2]).urlopen(
                    "GET",
                    target,
                    headers=headers,
                    redirect=False,
                    preload_content=False,
                    decode_content=True,
                    assert_same_host=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise TransportError(f"{url}: {exc}") from exc
            if raw.status not in REDIRECTS or "Location" not in raw.headers:
                return Stream(url, raw.status, raw.headers, raw)
            location = raw.headers["Location"]
            raw.drain_conn()
            raw.release_conn()
            url = urljoin(url, location)
        raise TransportError(f"{url}: more than {MAX_REDIRECTS} redirects")
