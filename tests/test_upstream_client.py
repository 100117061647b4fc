"""Tests of upstream.Client against a canned index on loopback; no sleeping.

Through a proxy (the environment's), the canned server answers as the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror import __version__
from simplemirror.cli import config
from simplemirror.cli.config import Config
from simplemirror.simple.model import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE
from simplemirror.sync.plan import ProjectTodo
from simplemirror.upstream.client import (
    ACCEPT,
    Client,
    StalePage,
    TransientError,
    UpstreamError,
    check_response,
)
from simplemirror.upstream.filehosts import FileHostGuard
from tests.support.canned import Canned

ROOT = "/simple/"
FOO = "/simple/foo/"
SHA = "a" * 64


def make_config(tmp_path: Path, server: Canned, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "upstream": server.url(ROOT),
        "directory": str(tmp_path),
        "retries": 2,
        "retry_wait": 0,
        "retry_max_wait": 0,
        "stale_retries": 2,
        "stale_wait": 0,
    }
    values.update(overrides)
    return config.build({}, values)


@pytest.fixture(autouse=True)
def _no_sleeping(sleeps: list[float]) -> None:
    """No test here really waits for a backoff."""


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


@pytest.fixture
def client(tmp_path: Path, server: Canned) -> Client:
    return Client(make_config(tmp_path, server))


def add_json(
    server: Canned,
    path: str,
    data: object,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = JSON_CONTENT_TYPE,
) -> None:
    server.add(
        path,
        json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": content_type, **(headers or {})},
    )


def root_doc(serial: object = 42) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": "1.1"}
    if serial is not None:
        meta["_last-serial"] = serial
    return {
        "meta": meta,
        "projects": [{"name": "Foo", "_last-serial": 40}, {"name": "bar_baz", "_last-serial": 7}],
    }


def page_doc(
    name: str = "foo", serial: int | None = 40, url: str = "../../packages/foo-1.0.tar.gz"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": "1.1"}
    if serial is not None:
        meta["_last-serial"] = serial
    return {
        "meta": meta,
        "name": name,
        "files": [{"filename": "foo-1.0.tar.gz", "url": url, "hashes": {"sha256": SHA}}],
    }


def todo(serial: int | None = 40) -> ProjectTodo:
    return ProjectTodo("foo", "Foo", serial)


# -- fetch_root: request headers, ETags, serials ------------------------------


def test_fetch_root_sends_pep691_accept_and_user_agent(
    server: Canned, client: Client
) -> None:
    add_json(server, ROOT, root_doc())
    got = client.fetch_root(None)
    assert got is not None
    assert [(p.normalized, p.serial) for p in got.index.projects] == [
        ("foo", 40),
        ("bar-baz", 7),
    ]
    call = server.calls[0]
    assert call.header("Accept") == ACCEPT == (
        "application/vnd.pypi.simple.v1+json, "
        "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
    )
    assert call.header("User-Agent") == f"simplemirror/{__version__}"
    assert call.header("If-None-Match") is None


def test_fetch_root_uses_configured_user_agent(
    server: Canned, tmp_path: Path
) -> None:
    client = Client(make_config(tmp_path, server, user_agent="mirror-bot/9 (ops@example.test)"))
    add_json(server, ROOT, root_doc())
    client.fetch_root(None)
    assert server.calls[0].header("User-Agent") == "mirror-bot/9 (ops@example.test)"


def test_fetch_root_sends_if_none_match_and_304_returns_none(
    server: Canned, client: Client
) -> None:
    server.add(ROOT, status=304)
    assert client.fetch_root('"etag-1"') is None
    assert len(server.calls) == 1
    assert server.calls[0].header("If-None-Match") == '"etag-1"'


def test_fetch_root_returns_etag_of_200(server: Canned, client: Client) -> None:
    add_json(server, ROOT, root_doc(), headers={"ETag": '"etag-2"'})
    got = client.fetch_root('"etag-1"')
    assert got is not None
    assert got.etag == '"etag-2"'
    assert got.index.serial == 42


def test_fetch_root_without_etag_header(server: Canned, client: Client) -> None:
    add_json(server, ROOT, root_doc())
    got = client.fetch_root(None)
    assert got is not None
    assert got.etag is None


def test_root_serial_from_meta_wins_over_header(
    server: Canned, client: Client
) -> None:
    add_json(server, ROOT, root_doc(42), headers={"X-PyPI-Last-Serial": "99"})
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 42


def test_root_serial_from_header_when_meta_lacks_it(
    server: Canned, client: Client
) -> None:
    add_json(server, ROOT, root_doc(None), headers={"X-PyPI-Last-Serial": "77"})
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 77


def test_root_serial_given_as_string(server: Canned, client: Client) -> None:
    add_json(server, ROOT, root_doc("123"))
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 123


def test_root_without_any_serial(server: Canned, client: Client) -> None:
    add_json(server, ROOT, root_doc(None))
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial is None


# -- retries ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_then_succeed(
    server: Canned, client: Client, sleeps: list[float], status: int
) -> None:
    server.add(ROOT, status=status)
    server.add(ROOT, status=status)
    add_json(server, ROOT, root_doc())
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 42
    assert len(server.calls) == 3
    assert sleeps == [0, 0]  # retry_max_wait=0 caps the backoff, jitter included


def test_retries_exhausted_raise_transient_error_naming_the_url(
    server: Canned, client: Client
) -> None:
    server.add(ROOT, status=503)
    with pytest.raises(TransientError) as info:
        client.fetch_root(None)
    assert isinstance(info.value, UpstreamError)
    assert client.config.upstream in str(info.value)
    assert "503" in str(info.value)
    assert len(server.calls) == 3  # retries=2: one try and two more


def test_zero_retries_means_one_attempt(server: Canned, tmp_path: Path) -> None:
    client = Client(make_config(tmp_path, server, retries=0))
    server.add(ROOT, status=500)
    with pytest.raises(TransientError):
        client.fetch_root(None)
    assert len(server.calls) == 1


def test_429_retry_after_is_capped_at_retry_max_wait(
    server: Canned, tmp_path: Path, sleeps: list[float]
) -> None:
    client = Client(make_config(tmp_path, server, retry_wait=0, retry_max_wait=5))
    server.add(ROOT, status=429, headers={"Retry-After": "120"})
    add_json(server, ROOT, root_doc())
    assert client.fetch_root(None) is not None
    assert len(server.calls) == 2
    assert sleeps == [5.0]


def test_429_retry_after_below_the_cap_is_honoured(
    server: Canned, tmp_path: Path, sleeps: list[float]
) -> None:
    client = Client(make_config(tmp_path, server, retry_wait=0, retry_max_wait=5))
    server.add(ROOT, status=429, headers={"Retry-After": "2"})
    add_json(server, ROOT, root_doc())
    assert client.fetch_root(None) is not None
    # The backoff alone would be at most 1 s (jitter); Retry-After asks for 2.
    assert sleeps == [2.0]


def test_429_exhausted_keeps_retry_after_on_the_error(
    server: Canned, client: Client
) -> None:
    server.add(ROOT, status=429, headers={"Retry-After": "30"})
    with pytest.raises(TransientError) as info:
        client.fetch_root(None)
    assert info.value.retry_after == 30.0
    assert "429" in str(info.value)
    assert len(server.calls) == 3


def test_404_is_not_retried(server: Canned, client: Client) -> None:
    server.add(ROOT, status=404)
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    assert not isinstance(info.value, TransientError)
    assert client.config.upstream in str(info.value)
    assert "404" in str(info.value)
    assert len(server.calls) == 1


def test_connection_errors_are_retried(server: Canned, client: Client) -> None:
    server.add(ROOT, reset=True)
    server.add(ROOT, reset=True)
    add_json(server, ROOT, root_doc())
    got = client.fetch_root(None)
    assert got is not None
    assert len(server.calls) == 3


def test_connection_errors_exhausted(server: Canned, client: Client) -> None:
    server.add(ROOT, reset=True)
    with pytest.raises(TransientError):
        client.fetch_root(None)
    # Three attempts (retries=2); aiohttp sends a GET met by a reset once more at
    # once (RFC 9112 9.3.1.1), so each attempt is two requests.
    assert len(server.calls) == 6


def test_timeouts_are_retried(server: Canned, tmp_path: Path) -> None:
    client = Client(make_config(tmp_path, server, read_timeout=0.2))
    server.add(ROOT, stall=1.0)
    add_json(server, ROOT, root_doc())
    assert client.fetch_root(None) is not None
    assert len(server.calls) == 2


# -- malformed answers ---------------------------------------------------------


def test_malformed_json_is_an_upstream_error(
    server: Canned, client: Client
) -> None:
    server.add(ROOT, b'{"projects": [', headers={"Content-Type": JSON_CONTENT_TYPE})
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    assert "malformed JSON" in str(info.value)
    assert client.config.upstream in str(info.value)
    assert len(server.calls) == 1  # bad bytes are not worth another try


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00{not json",  # not UTF-8 text at all
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the parser's recursion limit
        b"",
    ],
    ids=["not-utf8", "too-deep", "empty"],
)
def test_undecodable_json_body_is_malformed_json(
    server: Canned, client: Client, body: bytes
) -> None:
    server.add(ROOT, body, headers={"Content-Type": JSON_CONTENT_TYPE})
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    assert "malformed JSON" in str(info.value)
    assert len(server.calls) == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_other_content_types_are_an_actionable_upstream_error(
    server: Canned, client: Client, content_type: str | None
) -> None:
    server.add(ROOT, b"<a href='foo/'>foo</a>", headers={"Content-Type": content_type})
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    message = str(info.value)
    assert client.config.upstream in message
    assert (content_type or "no content type") in message
    assert "PEP 691 JSON nor PEP 503 HTML" in message
    assert "check that the upstream URL" in message
    assert len(server.calls) == 1


def test_plain_application_json_is_accepted(
    server: Canned, client: Client
) -> None:
    add_json(server, ROOT, root_doc(), content_type="application/json; charset=utf-8")
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 42


def test_root_json_that_is_not_an_index(server: Canned, client: Client) -> None:
    add_json(server, ROOT, {"hello": "world"})
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    assert client.config.upstream in str(info.value)
    assert "projects" in str(info.value)


# -- fetch_page -----------------------------------------------------------------


def test_fetch_page_parses_the_page(server: Canned, client: Client) -> None:
    add_json(server, FOO, page_doc(serial=40), headers={"ETag": '"p1"'})
    got = client.fetch_page(todo(40))
    assert got.page.name == "foo"
    assert got.page.serial == 40
    assert got.etag == '"p1"'
    assert [f.url for f in got.page.files] == [server.url("/packages/foo-1.0.tar.gz")]
    assert server.calls[0].path == FOO
    assert server.calls[0].header("Accept") == ACCEPT
    assert server.calls[0].header("If-None-Match") is None


def test_credentials_in_the_upstream_url_are_sent_as_basic_auth(
    server: Canned, tmp_path: Path
) -> None:
    # A private index: the token lives in the configured URL, and every page below
    # it is asked for with it.
    upstream = server.url(ROOT).replace("http://", "http://bot:s3cret@")
    client = Client(make_config(tmp_path, server, upstream=upstream))
    add_json(server, ROOT, root_doc())
    add_json(server, FOO, page_doc(serial=40))
    client.fetch_root(None)
    client.fetch_page(todo(40))
    expected = "Basic " + base64.b64encode(b"bot:s3cret").decode()
    assert [c.header("Authorization") for c in server.calls] == [expected] * 2


def test_newer_page_than_promised_is_fine(server: Canned, client: Client) -> None:
    add_json(server, FOO, page_doc(serial=50))
    assert client.fetch_page(todo(40)).page.serial == 50
    assert len(server.calls) == 1


def test_stale_page_retried_then_stale_page_error(
    server: Canned, client: Client, sleeps: list[float]
) -> None:
    add_json(server, FOO, page_doc(serial=39))
    with pytest.raises(StalePage) as info:
        client.fetch_page(todo(40))
    assert "39" in str(info.value)
    assert "40" in str(info.value)
    assert client.page_url("foo") in str(info.value)
    assert len(server.calls) == 3  # stale_retries=2
    assert len(sleeps) == 2


def test_stale_retries_count_is_configurable(
    server: Canned, tmp_path: Path
) -> None:
    client = Client(make_config(tmp_path, server, stale_retries=4))
    add_json(server, FOO, page_doc(serial=1))
    with pytest.raises(StalePage):
        client.fetch_page(todo(40))
    assert len(server.calls) == 5


def test_stale_then_fresh_page_succeeds(server: Canned, client: Client) -> None:
    add_json(server, FOO, page_doc(serial=39))
    add_json(server, FOO, page_doc(serial=40))
    got = client.fetch_page(todo(40))
    assert got.page.serial == 40
    assert len(server.calls) == 2


def test_staleness_from_header_only_serial(server: Canned, client: Client) -> None:
    add_json(server, FOO, page_doc(serial=None), headers={"X-PyPI-Last-Serial": "38"})
    add_json(server, FOO, page_doc(serial=None), headers={"X-PyPI-Last-Serial": "41"})
    got = client.fetch_page(todo(40))
    assert got.page.serial == 41
    assert len(server.calls) == 2


def test_no_serial_anywhere_is_not_stale(server: Canned, client: Client) -> None:
    add_json(server, FOO, page_doc(serial=None))
    got = client.fetch_page(todo(40))
    assert got.page.serial is None
    assert len(server.calls) == 1


def test_server_error_inside_a_page_fetch_is_retried(
    server: Canned, client: Client
) -> None:
    server.add(FOO, status=502)
    add_json(server, FOO, page_doc(serial=40))
    assert client.fetch_page(todo(40)).page.name == "foo"
    assert len(server.calls) == 2


def test_page_for_another_project_is_an_error(
    server: Canned, client: Client
) -> None:
    add_json(server, FOO, page_doc(name="bar"))
    with pytest.raises(UpstreamError) as info:
        client.fetch_page(todo(40))
    assert not isinstance(info.value, StalePage)
    assert "'bar'" in str(info.value)
    assert "'foo'" in str(info.value)
    assert len(server.calls) == 1


def test_page_name_is_compared_normalized(server: Canned, client: Client) -> None:
    add_json(server, "/simple/bar-baz/", page_doc(name="Bar_Baz", serial=7))
    got = client.fetch_page(ProjectTodo("bar-baz", "bar_baz", 7))
    assert got.page.name == "bar-baz"


def test_page_that_is_not_a_project_page(server: Canned, client: Client) -> None:
    add_json(server, FOO, {"meta": {}, "name": "foo"})
    with pytest.raises(UpstreamError) as info:
        client.fetch_page(todo(40))
    assert "files" in str(info.value)


def test_relative_file_urls_resolve_against_the_url_after_redirect(
    server: Canned, client: Client
) -> None:
    final = server.url("/a/b/foo/")
    server.add(FOO, status=301, headers={"Location": final})
    add_json(server, final, page_doc(url="../files/foo-1.0.tar.gz"))
    got = client.fetch_page(todo(40))
    assert [f.url for f in got.page.files] == [server.url("/a/b/files/foo-1.0.tar.gz")]
    assert [c.path for c in server.calls] == [FOO, "/a/b/foo/"]


def test_page_url_stays_below_upstream(server: Canned, client: Client) -> None:
    assert client.page_url("foo") == server.url(FOO)
    assert client.page_url("bar-baz") == server.url("/simple/bar-baz/")


# -- HTML (PEP 503) answers --------------------------------------------------------------------

ROOT_HTML = (
    "<!DOCTYPE html>\n<html><head>"
    '<meta name="pypi:repository-version" content="1.1"></head><body>\n'
    '<a href="/simple/foo/">Foo</a><br/>\n<a href="/simple/bar-baz/">bar_baz</a><br/>\n'
    "</body></html>\n"
)


def page_html(serial: int | None = 40, href: str = "../../packages/foo-1.0.tar.gz") -> str:
    comment = f"<!--SERIAL {serial}-->\n" if serial is not None else ""
    return (
        "<!DOCTYPE html>\n<html><head>"
        '<meta name="pypi:repository-version" content="1.1">'
        '<meta name="pypi:project-status" content="archived"></head><body>\n'
        f'<a href="{href}#sha256={SHA}" data-requires-python="&gt;=3.8" '
        'data-yanked="caf\u00e9 broke">foo-1.0.tar.gz</a><br/>\n'
        f"</body></html>\n{comment}"
    )


def add_html(
    server: Canned,
    path: str,
    body: str | bytes,
    *,
    content_type: str = "text/html; charset=utf-8",
    headers: dict[str, str] | None = None,
    status: int = 200,
) -> None:
    server.add(
        path,
        body if isinstance(body, bytes) else body.encode(),
        headers={"Content-Type": content_type, **(headers or {})},
        status=status,
    )


@pytest.mark.parametrize(
    "content_type", ["text/html", "text/html; charset=utf-8", HTML_CONTENT_TYPE, "TEXT/HTML"]
)
def test_html_root_is_parsed(
    server: Canned, client: Client, content_type: str
) -> None:
    add_html(
        server,
        ROOT,
        ROOT_HTML + "<!--SERIAL 42-->",
        content_type=content_type,
        headers={"ETag": '"r1"', "X-PyPI-Last-Serial": "41"},
    )
    got = client.fetch_root(None)
    assert got is not None
    assert [(p.name, p.normalized, p.serial) for p in got.index.projects] == [
        ("Foo", "foo", None),
        ("bar_baz", "bar-baz", None),
    ]
    assert got.index.serial == 42  # the SERIAL comment wins over the header, like meta
    assert got.etag == '"r1"'


def test_html_root_serial_from_header(server: Canned, client: Client) -> None:
    add_html(server, ROOT, ROOT_HTML, headers={"X-PyPI-Last-Serial": "41"})
    got = client.fetch_root(None)
    assert got is not None
    assert got.index.serial == 41


def test_html_maintenance_page_as_root_is_an_upstream_error(
    server: Canned, client: Client
) -> None:
    # Read as an index, it would list no projects and make every project look removed.
    add_html(server, ROOT, "<html><body>Down for maintenance</body></html>")
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    message = str(info.value)
    assert client.config.upstream in message
    assert "not a simple index" in message
    assert "text/html" in message
    assert len(server.calls) == 1


def test_html_page_is_parsed(server: Canned, client: Client) -> None:
    add_html(server, FOO, page_html(serial=40), headers={"ETag": '"p1"'})
    got = client.fetch_page(todo(40))
    assert got is not None
    page = got.page
    assert (page.name, page.serial, page.status, page.versions) == ("foo", 40, "archived", None)
    assert page.rejected == ()
    [dist] = page.files
    assert dist.url == server.url("/packages/foo-1.0.tar.gz")
    assert dict(dist.hashes) == {"sha256": SHA}
    assert (dist.requires_python, dist.yanked_reason) == (">=3.8", "caf\u00e9 broke")
    assert got.etag == '"p1"'


def test_html_page_relative_links_follow_the_redirect(
    server: Canned, client: Client
) -> None:
    final = server.url("/a/b/foo/")
    server.add(FOO, status=302, headers={"Location": final})
    add_html(server, final, page_html(href="../files/foo-1.0.tar.gz"))
    got = client.fetch_page(todo(40))
    assert got is not None
    assert [f.url for f in got.page.files] == [server.url("/a/b/files/foo-1.0.tar.gz")]


def test_stale_html_page_retried_by_its_serial_comment(
    server: Canned, client: Client
) -> None:
    add_html(server, FOO, page_html(serial=39))
    add_html(server, FOO, page_html(serial=41))
    got = client.fetch_page(todo(40))
    assert got is not None
    assert got.page.serial == 41
    assert len(server.calls) == 2


def test_html_page_without_a_serial_uses_the_header(
    server: Canned, client: Client
) -> None:
    add_html(server, FOO, page_html(serial=None), headers={"X-PyPI-Last-Serial": "38"})
    with pytest.raises(StalePage):
        client.fetch_page(todo(40))
    assert len(server.calls) == 3


def test_html_error_page_for_a_project_is_an_upstream_error(
    server: Canned, client: Client
) -> None:
    add_html(server, FOO, "<html><body>Service Unavailable</body></html>")
    with pytest.raises(UpstreamError) as info:
        client.fetch_page(todo(40))
    assert not isinstance(info.value, StalePage)
    assert client.page_url("foo") in str(info.value)
    assert "not a simple index" in str(info.value)


def test_html_body_in_the_declared_charset_when_not_utf8(
    server: Canned, client: Client
) -> None:
    body = page_html().encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")  # so the declared charset is what decodes it
    add_html(server, FOO, body, content_type='text/html; charset="ISO-8859-1"')
    got = client.fetch_page(todo(40))
    assert got is not None
    assert got.page.files[0].yanked_reason == "caf\u00e9 broke"


def test_html_body_that_is_utf8_is_read_as_utf8_whatever_the_charset_says(
    server: Canned, client: Client
) -> None:
    add_html(server, FOO, page_html().encode(), content_type="text/html; charset=iso-8859-1")
    got = client.fetch_page(todo(40))
    assert got is not None
    assert got.page.files[0].yanked_reason == "caf\u00e9 broke"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",  # no charset to fall back on
        "text/html; charset=utf-8",
        "text/html; charset=no-such-charset",
        "text/html; charset=rot13",  # a codec, but not a text encoding
        "text/html; charset=ascii",
    ],
)
def test_undecodable_html_is_an_upstream_error(
    server: Canned, client: Client, content_type: str
) -> None:
    add_html(server, FOO, page_html().encode("latin-1"), content_type=content_type)
    with pytest.raises(UpstreamError) as info:
        client.fetch_page(todo(40))
    assert client.page_url("foo") in str(info.value)
    assert "HTML page" in str(info.value)
    assert len(server.calls) == 1  # bad bytes are not worth another try


def test_undecodable_html_root_is_an_upstream_error(
    server: Canned, client: Client
) -> None:
    add_html(server, ROOT, b"<a href='x/'>\xff\xfe</a>", content_type="text/html")
    with pytest.raises(UpstreamError) as info:
        client.fetch_root(None)
    assert client.config.upstream in str(info.value)


# -- fetch_page: conditional requests and body hashes -------------------------------------------


def test_fetch_page_sends_if_none_match_and_304_returns_none(
    server: Canned, client: Client
) -> None:
    server.add(FOO, status=304)
    assert client.fetch_page(todo(40), etag='"p1"') is None
    assert len(server.calls) == 1
    assert server.calls[0].header("If-None-Match") == '"p1"'


def test_fetch_page_with_etag_returns_the_new_page_on_200(
    server: Canned, client: Client
) -> None:
    add_json(server, FOO, page_doc(serial=41), headers={"ETag": '"p2"'})
    got = client.fetch_page(todo(40), etag='"p1"')
    assert got is not None
    assert (got.page.serial, got.etag) == (41, '"p2"')
    assert server.calls[0].header("If-None-Match") == '"p1"'


def test_304_older_than_the_root_promised_is_stale(
    server: Canned, client: Client
) -> None:
    # A lagging CDN node still holding the old page would confirm the old ETag.
    server.add(FOO, status=304, headers={"X-PyPI-Last-Serial": "39"})
    with pytest.raises(StalePage) as info:
        client.fetch_page(todo(40), etag='"p1"')
    assert "39" in str(info.value)
    assert len(server.calls) == 3


def test_304_then_fresh_after_stale(server: Canned, client: Client) -> None:
    server.add(FOO, status=304, headers={"X-PyPI-Last-Serial": "39"})
    server.add(FOO, status=304, headers={"X-PyPI-Last-Serial": "40"})
    assert client.fetch_page(todo(40), etag='"p1"') is None
    assert len(server.calls) == 2


def test_fetch_page_returns_sha256_of_the_body(
    server: Canned, client: Client
) -> None:
    json_body = json.dumps(page_doc(serial=40)).encode()
    html_body = page_html(serial=40).encode()
    server.add(FOO, json_body, headers={"Content-Type": JSON_CONTENT_TYPE})
    add_html(server, FOO, html_body)
    first = client.fetch_page(todo(40))
    second = client.fetch_page(todo(40))
    assert first is not None and second is not None
    assert first.sha256 == hashlib.sha256(json_body).hexdigest()
    assert second.sha256 == hashlib.sha256(html_body).hexdigest()
    assert first.etag is None  # the hash is what tells pages apart without ETags


def test_sha256_is_of_the_bytes_not_the_decoded_text(
    server: Canned, client: Client
) -> None:
    body = page_html().encode("latin-1")
    add_html(server, FOO, body, content_type="text/html; charset=latin-1")
    got = client.fetch_page(todo(40))
    assert got is not None
    assert got.sha256 == hashlib.sha256(body).hexdigest()


def test_a_netrc_gives_credentials_to_its_host_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Canned
) -> None:
    # trust_env: netrc (and proxies) come from the environment, host by host; a
    # redirect to another origin carries no credentials.
    other = Canned()
    try:
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        elsewhere = other.url(ROOT).replace("127.0.0.1", "localhost")
        add_json(server, ROOT, root_doc())
        server.add(FOO, status=302, headers={"Location": elsewhere + "foo/"})
        add_json(other, FOO, page_doc())
        client = Client(make_config(tmp_path, server, file_hosts=["localhost"]))
        assert client.fetch_root(None) is not None
        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert server.calls[0].header("Authorization") == expected
        assert client.fetch_page(todo(40)) is not None
        assert other.calls and other.calls[0].header("Authorization") is None
    finally:
        other.close()


def test_a_redirect_loop_ends_in_a_clear_error(
    server: Canned, client: Client
) -> None:
    url = client.config.upstream
    server.add(url, status=302, headers={"Location": url})
    with pytest.raises(UpstreamError, match="redirects"):
        client.fetch_root(None)
    assert len(server.calls) == 11


# -- through a proxy (the environment's): a loopback server that answers as one -------------

PROXIED = "http://index.invalid/simple/"


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Canned) -> Client:
    """A client whose environment names ``server`` as its proxy."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base)
    return Client(config.build({}, {
        "upstream": PROXIED, "directory": str(tmp_path), "retries": 2,
        "retry_wait": 0, "retry_max_wait": 0, "stale_retries": 0,
    }))


def test_through_a_proxy_the_root_and_pages_are_read_alike(
    server: Canned, proxied: Client
) -> None:
    add_json(server, PROXIED, root_doc(), headers={"ETag": '"r"'})
    server.add(f"{PROXIED}foo/", status=304)
    got = proxied.fetch_root(None)
    assert got is not None and got.etag == '"r"'
    assert [p.normalized for p in got.index.projects] == ["foo", "bar-baz"]
    assert proxied.fetch_page(todo(40), etag='"p"') is None
    assert [c.path for c in server.calls] == [PROXIED, f"{PROXIED}foo/"]  # absolute: a proxy
    assert server.calls[1].header("If-None-Match") == '"p"'


def test_through_a_proxy_connection_errors_are_retried(
    server: Canned, proxied: Client, sleeps: list[float]
) -> None:
    server.add(PROXIED, reset=True)
    server.add(PROXIED, reset=True)  # aiohttp sends a GET met by a reset once more at once
    add_json(server, PROXIED, root_doc())
    assert proxied.fetch_root(None) is not None
    assert len(server.calls) == 3
    assert len(sleeps) == 1


async def read_file(client: Client, url: str) -> tuple[int, bytes]:
    async with client.stream(url) as stream:
        check_response(stream)
        return stream.status, b"".join([chunk async for chunk in stream.chunks()])


def test_through_a_proxy_a_file_is_streamed_and_errors_are_upstream_errors(
    server: Canned, proxied: Client
) -> None:
    server.add("http://index.invalid/packages/a.whl", b"wheel" * 1000)
    server.add("http://index.invalid/packages/b.whl", status=404)
    got = proxied.run(read_file(proxied, "http://index.invalid/packages/a.whl"))
    assert got == (200, b"wheel" * 1000)
    with pytest.raises(UpstreamError, match="404"):
        proxied.run(read_file(proxied, "http://index.invalid/packages/b.whl"))


def test_through_a_proxy_errors_that_will_not_pass_are_upstream_errors_at_once(
    server: Canned, proxied: Client, sleeps: list[float]
) -> None:
    server.add(PROXIED, status=302, headers={"Location": PROXIED})
    with pytest.raises(UpstreamError, match="redirects") as info:
        proxied.fetch_root(None)
    assert not isinstance(info.value, TransientError)
    assert (len(server.calls), sleeps) == (11, [])


def test_through_a_proxy_a_broken_file_download_is_transient(
    server: Canned, proxied: Client
) -> None:
    url = "http://index.invalid/packages/a.whl"
    server.add(url, reset=True)
    with pytest.raises(TransientError, match=r"a\.whl"):
        proxied.run(read_file(proxied, url))


def test_requests_is_gone() -> None:
    # One HTTP client: nothing the mirror runs loads requests or urllib3.
    code = (
        "import sys, simplemirror.cli.main, simplemirror.sync.run, simplemirror.check.verify; "
        "print(sorted(m for m in ('requests', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- behaviour the removed transports' tests held, through the one client ------------------


def test_credentials_in_the_upstream_url_go_to_its_host_only(
    server: Canned, tmp_path: Path
) -> None:
    other = Canned()
    try:
        upstream = server.url(ROOT).replace("http://", "http://alice:s%40cret@")
        elsewhere = other.url(FOO).replace("127.0.0.1", "localhost")
        add_json(server, ROOT, root_doc())
        server.add(FOO, status=302, headers={"Location": elsewhere})
        add_json(other, FOO, page_doc())
        client = Client(make_config(tmp_path, server, upstream=upstream,
                                    file_hosts=["localhost"]))
        assert client.fetch_root(None) is not None
        expected = "Basic " + base64.b64encode(b"alice:s@cret").decode()
        assert server.calls[0].header("Authorization") == expected
        assert client.fetch_page(todo(40)) is not None
        assert other.calls[0].header("Authorization") is None
    finally:
        other.close()


@pytest.mark.parametrize("bad", ["foo bar/", "foo\r\nX-Injected: 1/", "foo\tbar/"])
def test_a_url_no_request_may_carry_is_refused_and_nothing_is_sent(
    server: Canned, client: Client, bad: str, sleeps: list[float]
) -> None:
    with pytest.raises(UpstreamError, match="control characters or spaces") as info:
        client.run(client.fetch(server.url(ROOT) + bad))
    assert not isinstance(info.value, TransientError)
    assert server.calls == [] and sleeps == []


def test_a_gzip_compressed_page_is_decoded_and_hashed_as_sent(
    server: Canned, client: Client
) -> None:
    import gzip

    body = json.dumps(page_doc()).encode()
    server.add(FOO, gzip.compress(body), headers={
        "Content-Type": JSON_CONTENT_TYPE, "Content-Encoding": "gzip",
    })
    got = client.fetch_page(todo(40))
    assert got is not None and got.page.name == "foo"
    assert "gzip" in (server.calls[0].header("Accept-Encoding") or "")
    assert got.sha256 == hashlib.sha256(body).hexdigest()  # of the decoded document


def test_a_cancelled_download_leaves_nothing_in_tmp(server: Canned, tmp_path: Path) -> None:
    import asyncio
    import threading

    from simplemirror.sync import download

    pause = threading.Event()
    server.add("/packages/a.whl", b"x" * 100_000, pause=pause)  # half, then waits
    client = Client(make_config(tmp_path, server))
    client.config.tmp.mkdir(parents=True)

    async def cancel_mid_body() -> None:
        job = asyncio.ensure_future(download.fetch_to(
            client, server.url("/packages/a.whl"), expected_hashes={}, expected_size=None,
            path_for_sha256=lambda sha: sha,
        ))
        while not list(client.config.tmp.iterdir()):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    try:
        client.run(cancel_mid_body())
    finally:
        pause.set()
    assert list(client.config.tmp.iterdir()) == []


def test_a_name_is_looked_up_off_the_event_loop_and_once(
    server: Canned, tmp_path: Path
) -> None:
    # getaddrinfo blocks: on the loop, a slow resolver would stall every transfer.
    looked_up: list[tuple[str, bool]] = []

    def resolve(host: str) -> tuple[str, ...]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        looked_up.append((host, on_loop))
        return ("127.0.0.1",)

    # The root redirects to a name (the same server): that hop's host is looked up.
    moved = server.url("/moved/").replace("127.0.0.1", "localhost")
    server.add(ROOT, status=302, headers={"Location": moved})
    add_json(server, "/moved/", root_doc())
    client = Client(make_config(tmp_path, server))
    client.file_guard = FileHostGuard(client.config.upstream, (), resolve)
    assert client.fetch_root(None) is not None
    assert client.fetch_root(None) is not None
    client.close()
    assert looked_up == [("localhost", False)]
