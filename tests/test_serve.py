"""mirror serve: the pure rules, and the handler against a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from simplemirror.report.logs import JsonFormatter
from simplemirror.serve import rules
from simplemirror.serve.server import MirrorServer, ServeError, make_server

JSON = rules.JSON_V1
V1HTML = rules.HTML_V1
# PEP 691's "latest" meta version: an alias the server answers with the version it serves.
LATEST_JSON = "application/vnd.pypi.simple.latest+json"
LATEST_HTML = "application/vnd.pypi.simple.latest+html"
PIP_ACCEPT = f"{JSON}, {V1HTML}; q=0.1, text/html; q=0.01"
WHEEL = "packages/ab/cd/ef01/foo_bar-1.0-py3-none-any.whl"
SDIST = "packages/12/34/5678/foo_bar-1.0.tar.gz"


# -- the Accept header ----------------------------------------------------------------------

def test_parse_accept_reads_types_and_qvalues_in_order():
    ranges = rules.parse_accept(PIP_ACCEPT)
    assert [(r.type, r.subtype, r.q) for r in ranges] == [
        ("application", "vnd.pypi.simple.v1+json", 1.0),
        ("application", "vnd.pypi.simple.v1+html", 0.1),
        ("text", "html", 0.01),
    ]


def test_parse_accept_lowercases_and_keeps_wildcards():
    ranges = rules.parse_accept("Text/HTML;Q=0.5, application/*, */*;q=0")
    assert [(r.type, r.subtype, r.q) for r in ranges] == [
        ("text", "html", 0.5), ("application", "*", 1.0), ("*", "*", 0.0),
    ]


@pytest.mark.parametrize("header", [
    "", ",,", "text", "*/html", "text/html;q=2", "text/html;q=0.0001", "text/html;q=abc",
    "text/html;q=-1", "text html", "/html", "text/",
])
def test_parse_accept_drops_invalid_entries(header: str):
    assert rules.parse_accept(header) == []


def test_parse_accept_ignores_parameters_other_than_q():
    (rng,) = rules.parse_accept("text/html; level=1; q=0.3")
    assert (rng.subtype, rng.q) == ("html", 0.3)


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "text/html"),
    ("", "text/html"),
    ("*/*", "text/html"),
    ("garbage", "text/html"),
    (PIP_ACCEPT, JSON),
    (f"{JSON}, {V1HTML};q=0.2, text/html;q=0.01", JSON),  # uv's
    ("text/html", "text/html"),
    (V1HTML, V1HTML),
    (f"text/html, {JSON};q=0.5", "text/html"),
    (f"text/html;q=0.4, {JSON};q=0.5", JSON),
    (f"{V1HTML};q=0.9, {JSON};q=0.8", V1HTML),
    # Equal q: a named type beats a wildcard, JSON beats HTML among named ones.
    (f"text/html, {JSON}", JSON),
    (f"{V1HTML}, text/html", V1HTML),
    (f"*/*, {JSON}", JSON),
    (f"{JSON}, */*", JSON),
    ("text/*", "text/html"),
    ("application/*", V1HTML),
    # The most specific range sets a type's q, so q=0 refuses it whatever else matches.
    (f"{JSON};q=0, */*", "text/html"),
    ("text/html;q=0, */*", V1HTML),
    (f"text/html;q=0, {V1HTML};q=0, */*;q=0.1", JSON),
    ("*/*;q=0.1, text/html;q=0.5", "text/html"),
    # Nothing acceptable.
    ("application/json", None),
    ("*/*;q=0", None),
    (f"{JSON};q=0, {V1HTML};q=0, text/html;q=0", None),
    ("image/png, text/plain", None),
    # "latest" names the v1 types (PEP 691), wherever v1 could be named.
    (LATEST_JSON, JSON),
    (LATEST_HTML, V1HTML),
    ("Application/VND.pypi.simple.LATEST+JSON", JSON),
    (f"{LATEST_JSON}, {LATEST_HTML};q=0.1, text/html;q=0.01", JSON),
    (f"{LATEST_HTML}, text/html", V1HTML),
    (f"text/html;q=0.4, {LATEST_JSON};q=0.5", JSON),
    (f"{LATEST_JSON};q=0, */*", "text/html"),
    (f"{LATEST_JSON};q=0, {LATEST_HTML};q=0, text/html;q=0", None),
    # A version this server does not have is not acceptable.
    ("application/vnd.pypi.simple.v2+json", None),
    ("application/vnd.pypi.simple.latest+xml", None),
])
def test_negotiate_by_accept(accept: str | None, expected: str | None):
    assert rules.negotiate(accept, None) == expected


@pytest.mark.parametrize(("fmt", "expected"), [
    (JSON, JSON),
    (V1HTML, V1HTML),
    ("text/html", "text/html"),
    ("Application/VND.pypi.simple.V1+JSON", JSON),
    (f"{JSON}; charset=utf-8", JSON),
    ("json", None),
    ("application/json", None),
    ("*/*", None),
    (LATEST_JSON, JSON),
    (LATEST_HTML, V1HTML),
    ("application/vnd.pypi.simple.Latest+JSON", JSON),
    ("application/vnd.pypi.simple.v2+json", None),
])
def test_format_overrides_accept(fmt: str, expected: str | None):
    # Whatever Accept says, ?format= decides.
    assert rules.negotiate("text/html", fmt) == expected
    assert rules.negotiate(PIP_ACCEPT, fmt) == expected


def test_an_empty_format_leaves_it_to_accept():
    assert rules.negotiate(PIP_ACCEPT, "") == JSON


@pytest.mark.parametrize(("query", "expected"), [
    (f"format={JSON}", JSON),
    ("format=application%2Fvnd.pypi.simple.v1%2Bjson", JSON),
    ("a=1&format=text/html&format=x", "text/html"),
    ("formats=x", None),
    ("format", None),
    ("", None),
])
def test_format_param(query: str, expected: str | None):
    assert rules.format_param(query) == expected


# -- routes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "query", "expected"), [
    ("/", "", rules.Redirect("/simple/")),
    ("/simple", "", rules.Redirect("/simple/")),
    ("/simple", "format=x", rules.Redirect("/simple/?format=x")),
    ("/simple/", "", rules.Page("simple")),
    ("/simple/foo-bar/", "", rules.Page("simple/foo-bar")),
    ("/simple/foo-bar", "", rules.Redirect("/simple/foo-bar/")),
    ("/simple/Foo_Bar/", "", rules.Redirect("/simple/foo-bar/")),
    ("/simple/Foo_Bar", "a=b", rules.Redirect("/simple/foo-bar/?a=b")),
    ("/simple/foo..bar/", "", rules.Redirect("/simple/foo-bar/")),
    ("/simple/FOO%5Fbar/", "", rules.Redirect("/simple/foo-bar/")),
    ("/simple/index.html", "", rules.File("simple/index.html")),
    ("/simple/index.v1_json", "", rules.File("simple/index.v1_json")),
    ("/simple/foo-bar/index.v1_json", "", rules.File("simple/foo-bar/index.v1_json")),
    ("/simple/foo-bar/other", "", rules.NOT_FOUND),
    ("/simple/Foo/index.html", "", rules.NOT_FOUND),
    ("/simple/a/b/c", "", rules.NOT_FOUND),
    ("/simple/-bad-/", "", rules.NOT_FOUND),
    ("/simple/no%20spaces/", "", rules.NOT_FOUND),
    (f"/{WHEEL}", "", rules.File(WHEEL)),
    ("/packages/ab/cd/ef01/foo%2Bbar.whl", "", rules.File("packages/ab/cd/ef01/foo+bar.whl")),
    ("/last-modified", "", rules.File("last-modified")),
    ("/packages/", "", rules.NOT_FOUND),
    ("/packages/ab/", "", rules.NOT_FOUND),
    ("/.hidden", "", rules.NOT_FOUND),
    ("/packages/ab/.page-123", "", rules.NOT_FOUND),
])
def test_route(path: str, query: str, expected: rules.Route):
    assert rules.route(path, query) == expected


@pytest.mark.parametrize("path", [
    "/packages/../state.db", "/packages/%2e%2e/state.db", "/packages/%2E%2E/x", "/simple/..",
    "/packages/./x", "/packages/a%2fb", "/packages/a%5cb", "/packages/a\\b", "/packages/a%00b",
    "/packages//x", "/packages/%ff", "relative/path",
])
def test_route_refuses_paths_that_could_leave_the_tree(path: str):
    where = rules.route(path)
    assert isinstance(where, rules.Refused)
    assert where.status == 400


# -- files, validators, ranges --------------------------------------------------------------

@pytest.mark.parametrize(("path", "expected"), [
    (WHEEL, "application/octet-stream"),
    (WHEEL + ".metadata", "text/plain; charset=utf-8"),
    (SDIST, "application/gzip"),
    ("packages/x/y/z/foo-1.0.zip", "application/zip"),
    ("packages/x/y/z/foo-1.0.tar.bz2", "application/x-bzip2"),
    (WHEEL + ".asc", "application/pgp-signature"),
    (WHEEL + ".provenance", "application/json"),
    ("packages/x/y/z/foo-1.0.EXE", "application/octet-stream"),
    ("simple/index.v1_json", JSON),
    ("simple/foo/index.html", "text/html; charset=utf-8"),
    ("last-modified", "text/plain; charset=utf-8"),
    ("packages/x/y/z/noextension", "application/octet-stream"),
])
def test_content_type(path: str, expected: str):
    assert rules.content_type(path) == expected


def test_cache_control_long_for_packages_short_for_pages():
    assert "immutable" in rules.cache_control(WHEEL)
    assert rules.cache_control("simple/foo/index.html") == "max-age=60"


@pytest.mark.parametrize(("header", "matches"), [
    ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True),
    ('"abd"', False), ("", False), ("abc", False),
])
def test_etag_matches(header: str, matches: bool):
    assert rules.etag_matches(header, '"abc"') is matches


def test_not_modified_since():
    mtime = 1_700_000_000
    assert rules.not_modified_since(formatdate(mtime, usegmt=True), mtime)
    assert rules.not_modified_since(formatdate(mtime + 5, usegmt=True), mtime)
    assert not rules.not_modified_since(formatdate(mtime - 1, usegmt=True), mtime)
    assert not rules.not_modified_since("yesterday", mtime)


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-3", (0, 3)),
    ("bytes=2-", (2, 9)),
    ("bytes=-3", (7, 9)),
    ("bytes=-30", (0, 9)),
    ("bytes=5-100", (5, 9)),
    ("BYTES = 1 - 1", (1, 1)),
    ("bytes=10-", rules.UNSATISFIABLE),
    ("bytes=20-30", rules.UNSATISFIABLE),
    ("bytes=-0", rules.UNSATISFIABLE),
    ("bytes=3-2", None),
    ("bytes=0-1,4-5", None),  # several ranges: the whole file
    ("bytes=", None),
    ("bytes=-", None),
    ("bytes=a-b", None),
    ("items=0-1", None),
    ("0-1", None),
])
def test_parse_range(header: str, expected: object):
    assert rules.parse_range(header, 10) == expected


HUGE = "9" * 5000  # past the 4300 digits int() reads


@pytest.mark.parametrize(("header", "expected"), [
    (f"bytes=0-{HUGE}", (0, 9)),  # a last position past the end means the end
    (f"bytes=3-{HUGE}", (3, 9)),
    (f"bytes=-{HUGE}", (0, 9)),  # a suffix longer than the file is all of it
    (f"bytes={HUGE}-", rules.UNSATISFIABLE),
    (f"bytes={HUGE}-{HUGE}", rules.UNSATISFIABLE),
    (f"bytes={'0' * 5000}7-{'0' * 5000}8", (7, 8)),  # leading zeros are just zeros
    (f"bytes={'0' * 5000}-", (0, 9)),
])
def test_parse_range_reads_numbers_of_any_length(header: str, expected: object):
    assert rules.parse_range(header, 10) == expected


def test_parse_range_on_an_empty_file_is_unsatisfiable():
    assert rules.parse_range("bytes=0-", 0) == rules.UNSATISFIABLE
    assert rules.parse_range("bytes=-5", 0) == rules.UNSATISFIABLE


# -- a real server --------------------------------------------------------------------------

ROOT_HTML = b"<!DOCTYPE html><html><body>root</body></html>\n"
ROOT_JSON = b'{"meta": {"api-version": "1.4"}, "projects": []}\n'
PAGE_HTML = b"<!DOCTYPE html><html><body>foo-bar</body></html>\n"
PAGE_JSON = b'{"meta": {"api-version": "1.4"}, "name": "foo-bar", "files": []}\n'
WHEEL_BYTES = bytes(range(256)) * 40


@pytest.fixture
def web(tmp_path: Path) -> Path:
    web = tmp_path / "mirror" / "web"
    files = {
        "simple/index.html": ROOT_HTML,
        "simple/index.v1_json": ROOT_JSON,
        "simple/foo-bar/index.html": PAGE_HTML,
        "simple/foo-bar/index.v1_json": PAGE_JSON,
        "simple/only-html/index.html": PAGE_HTML,
        WHEEL: WHEEL_BYTES,
        WHEEL + ".metadata": b"Metadata-Version: 2.1\nName: foo-bar\n",
        SDIST: b"\x1f\x8b not really gzip",
        "last-modified": b"20240101T00:00:00\n",
        "packages/00/00/empty/empty-1.0.zip": b"",
    }
    for rel, data in files.items():
        (web / rel).parent.mkdir(parents=True, exist_ok=True)
        (web / rel).write_bytes(data)
    (tmp_path / "mirror" / "state.db").write_bytes(b"secret state")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.whl").write_bytes(b"secret")
    (web / "packages" / "out.whl").symlink_to(tmp_path / "secret.txt")
    (web / "packages" / "outdir").symlink_to(tmp_path / "outside")
    (web / "packages" / "in.whl").symlink_to(web / WHEEL)
    return web


class Running:
    def __init__(self, server: MirrorServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connect()
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.drain(grace=5)
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def running(web: Path) -> Iterator[Running]:
    run = Running(make_server(web, "127.0.0.1", 0))
    yield run
    run.stop()


@pytest.mark.parametrize(("path", "accept", "body", "ctype"), [
    ("/simple/", None, ROOT_HTML, "text/html; charset=utf-8"),
    ("/simple/", PIP_ACCEPT, ROOT_JSON, JSON),
    ("/simple/foo-bar/", PIP_ACCEPT, PAGE_JSON, JSON),
    ("/simple/foo-bar/", "*/*", PAGE_HTML, "text/html; charset=utf-8"),
    ("/simple/foo-bar/", "text/html", PAGE_HTML, "text/html; charset=utf-8"),
    ("/simple/foo-bar/", V1HTML, PAGE_HTML, V1HTML),
    ("/simple/foo-bar/", f"text/html;q=0.2, {JSON};q=0.3", PAGE_JSON, JSON),
    ("/simple/foo-bar/", f"text/html;q=0.4, {JSON};q=0.3", PAGE_HTML, "text/html; charset=utf-8"),
    # Asked for "latest", answered with the version it is (PEP 691 requires it).
    ("/simple/", LATEST_JSON, ROOT_JSON, JSON),
    ("/simple/foo-bar/", LATEST_JSON, PAGE_JSON, JSON),
    ("/simple/foo-bar/", LATEST_HTML, PAGE_HTML, V1HTML),
])
def test_pages_are_negotiated(
    running: Running, path: str, accept: str | None, body: bytes, ctype: str
):
    status, headers, got = running.request(path, {"Accept": accept} if accept else {})
    assert (status, got, headers["Content-Type"]) == (200, body, ctype)
    assert headers["Vary"] == "Accept"
    assert headers["Content-Length"] == str(len(body))


def test_format_parameter_overrides_accept(running: Running):
    status, headers, body = running.request(f"/simple/foo-bar/?format={JSON}",
                                            {"Accept": "text/html"})
    assert (status, headers["Content-Type"], body) == (200, JSON, PAGE_JSON)
    status, headers, body = running.request("/simple/?format=text%2Fhtml", {"Accept": PIP_ACCEPT})
    assert (status, headers["Content-Type"], body) == (200, "text/html; charset=utf-8", ROOT_HTML)
    status, headers, body = running.request(f"/simple/foo-bar/?format={LATEST_HTML}",
                                            {"Accept": PIP_ACCEPT})
    assert (status, headers["Content-Type"], body) == (200, V1HTML, PAGE_HTML)
    status, headers, _ = running.request("/simple/foo-bar/?format=application/json")
    assert status == 406
    assert headers["Vary"] == "Accept"


def test_nothing_acceptable_is_406_naming_what_is_offered(running: Running):
    status, headers, body = running.request("/simple/foo-bar/", {"Accept": "application/json"})
    assert status == 406
    assert headers["Vary"] == "Accept"
    assert JSON.encode() in body and b"text/html" in body


def test_a_missing_representation_is_404(running: Running):
    status, headers, _ = running.request("/simple/only-html/", {"Accept": JSON})
    assert status == 404
    assert headers["Vary"] == "Accept"
    assert running.request("/simple/only-html/")[0] == 200
    assert running.request("/simple/nothing-here/")[0] == 404


def test_files_are_not_negotiated(running: Running):
    status, headers, body = running.request(f"/{WHEEL}", {"Accept": "application/json"})
    assert (status, body) == (200, WHEEL_BYTES)
    assert "Vary" not in headers
    status, headers, body = running.request("/simple/foo-bar/index.v1_json")
    assert (status, headers["Content-Type"], body) == (200, JSON, PAGE_JSON)


@pytest.mark.parametrize(("path", "location"), [
    ("/simple", "/simple/"),
    ("/", "/simple/"),
    ("/simple/foo-bar", "/simple/foo-bar/"),
    ("/simple/Foo_Bar/", "/simple/foo-bar/"),
    ("/simple/FOO.bar", "/simple/foo-bar/"),
    (f"/simple/Foo_Bar/?format={JSON}", f"/simple/foo-bar/?format={JSON}"),
    ("/simple?x=1&y=2", "/simple/?x=1&y=2"),
])
def test_redirects(running: Running, path: str, location: str):
    status, headers, _ = running.request(path)
    assert (status, headers["Location"]) == (301, location)


def test_a_redirect_then_negotiates(running: Running):
    status, headers, _ = running.request("/simple/Foo_Bar", {"Accept": PIP_ACCEPT})
    status, headers, body = running.request(headers["Location"], {"Accept": PIP_ACCEPT})
    assert (status, headers["Content-Type"], body) == (200, JSON, PAGE_JSON)


@pytest.mark.parametrize(("path", "ctype", "data"), [
    (f"/{WHEEL}", "application/octet-stream", WHEEL_BYTES),
    (f"/{WHEEL}.metadata", "text/plain; charset=utf-8", b"Metadata-Version: 2.1\nName: foo-bar\n"),
    (f"/{SDIST}", "application/gzip", b"\x1f\x8b not really gzip"),
    ("/last-modified", "text/plain; charset=utf-8", b"20240101T00:00:00\n"),
    ("/packages/in.whl", "application/octet-stream", WHEEL_BYTES),  # a link inside web/
])
def test_files_with_their_types(running: Running, path: str, ctype: str, data: bytes):
    status, headers, body = running.request(path)
    assert (status, headers["Content-Type"], body) == (200, ctype, data)
    assert "Content-Encoding" not in headers
    assert headers["Accept-Ranges"] == "bytes"


def test_package_files_are_cached_long_and_pages_briefly(running: Running):
    assert "immutable" in running.request(f"/{WHEEL}")[1]["Cache-Control"]
    assert running.request("/simple/foo-bar/")[1]["Cache-Control"] == "max-age=60"


def test_etag_and_if_none_match(running: Running, web: Path):
    _, headers, _ = running.request(f"/{WHEEL}")
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    status, headers304, body = running.request(f"/{WHEEL}", {"If-None-Match": etag})
    assert (status, body, headers304["ETag"]) == (304, b"", etag)
    assert running.request(f"/{WHEEL}", {"If-None-Match": f'"x", W/{etag}'})[0] == 304
    assert running.request(f"/{WHEEL}", {"If-None-Match": '"other"'})[0] == 200
    # A rewritten page gets a new tag, so a client's stale copy is replaced.
    page = web / "simple/foo-bar/index.html"
    _, before, _ = running.request("/simple/foo-bar/")
    page.write_bytes(PAGE_HTML + b"<!-- new -->\n")
    status, after, body = running.request("/simple/foo-bar/", {"If-None-Match": before["ETag"]})
    assert (status, body) == (200, PAGE_HTML + b"<!-- new -->\n")
    assert after["ETag"] != before["ETag"]


def test_each_representation_has_its_own_etag(running: Running):
    tags = {running.request("/simple/foo-bar/", {"Accept": accept})[1]["ETag"]
            for accept in ("text/html", V1HTML, JSON)}
    assert len(tags) == 3
    status, headers, _ = running.request(
        "/simple/foo-bar/", {"Accept": V1HTML, "If-None-Match": next(iter(tags))}
    )
    assert status in (200, 304)
    assert headers["Vary"] == "Accept"


def test_last_modified_and_if_modified_since(running: Running, web: Path):
    mtime = 1_700_000_000
    os.utime(web / WHEEL, (mtime, mtime))
    _, headers, _ = running.request(f"/{WHEEL}")
    assert headers["Last-Modified"] == formatdate(mtime, usegmt=True)
    since = {"If-Modified-Since": headers["Last-Modified"]}
    assert running.request(f"/{WHEEL}", since)[0] == 304
    older = {"If-Modified-Since": formatdate(mtime - 60, usegmt=True)}
    assert running.request(f"/{WHEEL}", older)[0] == 200
    # If-None-Match, when sent, decides alone.
    both = {**since, "If-None-Match": '"other"'}
    assert running.request(f"/{WHEEL}", both)[0] == 200


def test_head_sends_the_headers_of_get_without_a_body(running: Running):
    _, get_headers, _ = running.request("/simple/foo-bar/", {"Accept": JSON})
    status, headers, body = running.request("/simple/foo-bar/", {"Accept": JSON}, method="HEAD")
    assert (status, body) == (200, b"")
    for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Vary"):
        assert headers[name] == get_headers[name]


def test_ranges(running: Running):
    size = len(WHEEL_BYTES)
    status, headers, body = running.request(f"/{WHEEL}", {"Range": "bytes=100-199"})
    assert (status, body) == (206, WHEEL_BYTES[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{size}"
    assert headers["Content-Length"] == "100"
    status, headers, body = running.request(f"/{WHEEL}", {"Range": "bytes=-10"})
    assert (status, body) == (206, WHEEL_BYTES[-10:])
    status, headers, body = running.request(f"/{WHEEL}", {"Range": f"bytes={size - 5}-"})
    assert (status, body) == (206, WHEEL_BYTES[-5:])


def test_an_unsatisfiable_range_is_416(running: Running):
    size = len(WHEEL_BYTES)
    status, headers, _ = running.request(f"/{WHEEL}", {"Range": f"bytes={size}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
    assert running.request("/packages/00/00/empty/empty-1.0.zip", {"Range": "bytes=0-"})[0] == 416


def test_a_range_of_5000_digits_is_answered(
    running: Running, caplog: pytest.LogCaptureFixture
):
    size = len(WHEEL_BYTES)
    with caplog.at_level(logging.DEBUG, logger="simplemirror"):
        status, headers, body = running.request(f"/{WHEEL}", {"Range": f"bytes=0-{HUGE}"})
        assert (status, headers["Content-Range"], body) == (
            206, f"bytes 0-{size - 1}/{size}", WHEEL_BYTES
        )
        status, headers, _ = running.request(f"/{WHEEL}", {"Range": f"bytes={HUGE}-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_several_ranges_or_a_stale_if_range_get_the_whole_file(running: Running):
    status, _, body = running.request(f"/{WHEEL}", {"Range": "bytes=0-1,5-6"})
    assert (status, body) == (200, WHEEL_BYTES)
    _, headers, _ = running.request(f"/{WHEEL}")
    fresh = {"Range": "bytes=0-1", "If-Range": headers["ETag"]}
    assert running.request(f"/{WHEEL}", fresh)[:3:2] == (206, WHEEL_BYTES[:2])
    stale = {"Range": "bytes=0-1", "If-Range": '"old"'}
    assert running.request(f"/{WHEEL}", stale)[:3:2] == (200, WHEEL_BYTES)


@pytest.mark.parametrize("path", [
    "/packages/../../secret.txt", "/packages/%2e%2e/%2e%2e/secret.txt",
    "/packages/%2E%2e/state.db", "/simple/%2e%2e/%2e%2e/state.db", "/..%2fstate.db",
    "/packages/..%5c..%5csecret.txt", "/packages/a\\..\\b", "/packages/x%00.whl",
])
def test_paths_leaving_the_tree_are_refused(running: Running, path: str):
    status, _, body = running.request(path)
    assert status == 400
    assert b"secret" not in body


@pytest.mark.parametrize("path", [
    "/packages/out.whl", "/packages/outdir/x.whl", "/packages/", "/packages/ab/cd/",
    "/state.db", "/nothing", "/packages/ab/cd/ef01",
])
def test_symlinks_out_and_directories_are_404(running: Running, path: str):
    status, _, body = running.request(path)
    assert status == 404
    assert b"secret" not in body


def test_other_methods_are_refused(running: Running):
    status, headers, _ = running.request("/simple/", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


def test_keep_alive_serves_many_requests_on_one_connection(running: Running):
    conn = running.connect()
    try:
        conn.request("GET", "/simple/")
        conn.getresponse().read()
        first_socket = conn.sock
        for path in ("/simple/foo-bar/", f"/{WHEEL}", "/simple/Foo_Bar/", "/nothing", "/simple/"):
            conn.request("GET", path, headers={"Accept": PIP_ACCEPT})
            conn.getresponse().read()
            assert conn.sock is first_socket
    finally:
        conn.close()


def test_accepted_connections_have_tcp_nodelay(running: Running):
    conn = running.connect()
    try:
        conn.request("GET", "/simple/")
        conn.getresponse().read()
        with running.server._lock:
            socks = list(running.server._connections)
        assert socks
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks)
    finally:
        conn.close()


def test_a_large_file_streams_intact(running: Running, web: Path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = "packages/99/99/big/big-1.0-py3-none-any.whl"
    (web / path).parent.mkdir(parents=True)
    (web / path).write_bytes(data)
    status, headers, body = running.request(f"/{path}")
    assert (status, headers["Content-Length"]) == (200, str(len(data)))
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_one_log_line_per_request(running: Running):
    def send() -> None:
        running.request("/simple/foo-bar/", {"Accept": JSON})
        running.request("/simple/nope/")

    records = _log_records(send, 2)
    # Each line is written by the thread that served it: the two may come in either order.
    lines = sorted((r.getMessage() for r in records), key=lambda line: "/nope/" in line)
    assert len(lines) == 2
    assert '"GET /simple/foo-bar/ HTTP/1.1" 200 ' in lines[0]
    assert f" 200 {len(PAGE_JSON)} {JSON} " in lines[0]
    assert '"GET /simple/nope/ HTTP/1.1" 404 ' in lines[1]


def _log_records(send: Callable[[], None], count: int) -> list[logging.LogRecord]:
    """The log records ``send`` causes: ``count`` of them, and no more within 50 ms.

    The line is written once the response is out, so the client may be first: wait
    (5 s at most) for them."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("simplemirror")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        send()
        deadline = time.monotonic() + 5
        while len(records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and no further line follows
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return records


def _access_records(send: Callable[[], None], count: int) -> list[dict]:
    """The JSON log objects of the access lines ``send`` causes (``count`` of them)."""
    return [json.loads(JsonFormatter().format(r)) for r in _log_records(send, count)]


def test_json_access_lines_have_fields(running: Running):
    def send() -> None:
        running.request("/simple/foo-bar/?x=%22q%22", {"Accept": JSON})
        running.request(f"/{WHEEL}", method="HEAD")

    docs = sorted(_access_records(send, 2), key=lambda doc: doc["method"])
    assert len(docs) == 2
    get, head = docs
    assert {k: get[k] for k in ("client", "method", "path", "status", "bytes", "content_type")} \
        == {"client": "127.0.0.1", "method": "GET", "path": "/simple/foo-bar/?x=%22q%22",
            "status": 200, "bytes": len(PAGE_JSON), "content_type": JSON}
    assert isinstance(get["seconds"], float) and 0 <= get["seconds"] < 5
    # The message stays the text line, for people reading the JSON.
    assert get["message"].startswith('127.0.0.1 "GET /simple/foo-bar/?x=%22q%22 HTTP/1.1" 200 ')
    assert (head["method"], head["path"], head["status"], head["bytes"]) == (
        "HEAD", f"/{WHEEL}", 200, 0)


def test_json_access_line_of_a_request_that_cannot_be_parsed(running: Running):
    def send() -> None:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"GET /a /b HTTP/1.1\r\n\r\n")  # four words: no method, no path
            assert sock.recv(100).startswith(b"HTTP/1.1 400")

    (doc,) = _access_records(send, 1)
    assert (doc["method"], doc["path"], doc["status"]) == (None, None, 400)


def test_drain_closes_idle_connections_at_once(web: Path):
    run = Running(make_server(web, "127.0.0.1", 0))
    conn = run.connect()
    conn.request("GET", "/simple/")
    conn.getresponse().read()
    started = time.monotonic()
    run.stop()  # the idle keep-alive connection must not hold it up
    assert time.monotonic() - started < 3
    conn.request("GET", "/simple/")
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.getresponse()
    conn.close()


def test_a_web_root_that_is_a_symlink_is_served(web: Path, tmp_path: Path):
    link = tmp_path / "web-link"
    link.symlink_to(web)
    run = Running(make_server(link, "127.0.0.1", 0))
    try:
        assert run.request("/simple/")[2] == ROOT_HTML
        assert run.request("/packages/out.whl")[0] == 404
    finally:
        run.stop()


def test_make_server_refuses_a_directory_without_a_mirror(tmp_path: Path):
    with pytest.raises(ServeError, match="run a sync first"):
        make_server(tmp_path / "web", "127.0.0.1", 0)


def test_make_server_says_when_the_port_is_taken(web: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServeError, match="choose another --port"):
            make_server(web, "127.0.0.1", taken.getsockname()[1])


# -- the command ----------------------------------------------------------------------------

def _mirror(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simplemirror", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _listening_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "serving " in line:
            return int(line.rsplit(":", 1)[1].split("/", 1)[0])
    proc.kill()
    raise AssertionError(f"mirror serve did not start: {proc.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_mirror_serve_stops_cleanly_on_a_signal(web: Path, signum: int):
    proc = _mirror("--directory", str(web.parent), "--port", "0")
    try:
        port = _listening_port(proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/simple/foo-bar/", headers={"Accept": JSON})
        assert conn.getresponse().read() == PAGE_JSON  # and the connection stays open
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"{signal.Signals(signum).name} received: stopping" in err


def test_mirror_serve_log_format_json_gives_each_request_its_fields(web: Path):
    proc = _mirror("--directory", str(web.parent), "--port", "0", "--log-format", "json")
    try:
        assert proc.stderr is not None
        started = json.loads(proc.stderr.readline())
        assert started["message"].startswith("serving ")
        port = int(started["message"].rsplit(":", 1)[1].split("/", 1)[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/simple/foo-bar/", headers={"Accept": JSON})
        assert conn.getresponse().read() == PAGE_JSON
        conn.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    docs = [json.loads(line) for line in err.splitlines()]
    (access,) = [doc for doc in docs if "status" in doc]
    assert (access["method"], access["path"], access["status"], access["bytes"],
            access["content_type"]) == ("GET", "/simple/foo-bar/", 200, len(PAGE_JSON), JSON)
    assert access["client"] == "127.0.0.1" and access["seconds"] >= 0


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:"))
               .split()[1])


def _threads_settle(pid: int, most: int, within: float = 5.0) -> bool:
    """Whether the process soon runs at most ``most`` threads (an unbounded server
    would keep one for each of the clients waiting)."""
    deadline = time.monotonic() + within
    while _threads(pid) > most:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _answered(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(100)
    except TimeoutError:
        return b""


def test_mirror_serve_serves_at_most_max_connections_and_the_rest_wait(web: Path):
    proc = _mirror("--directory", str(web.parent), "--port", "0", "--max-connections", "2")
    sockets: list[socket.socket] = []
    try:
        port = _listening_port(proc)
        idle_threads = _threads(proc.pid)
        held = []
        for _ in range(2):  # two keep-alive connections, answered once, then idle
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/simple/")
            assert conn.getresponse().read() == ROOT_HTML
            held.append(conn)
        for _ in range(8):  # and more clients asking
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /simple/ HTTP/1.1\r\nHost: x\r\n\r\n")
            sockets.append(sock)

        assert _answered(sockets[0], 0.5) == b""  # waiting in the listen backlog
        assert _threads(proc.pid) <= idle_threads + 2  # a thread per connection served
        held[0].close()  # a place frees up: the first one waiting is served
        assert _answered(sockets[0], 10).startswith(b"HTTP/1.1 200")
        # The freed connection's thread may still be ending as the next one starts.
        assert _threads_settle(proc.pid, idle_threads + 2)

        proc.send_signal(signal.SIGTERM)  # at the cap, with clients waiting: still stops
        _, err = proc.communicate(timeout=20)
        held[1].close()
    finally:
        for sock in sockets:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_mirror_serve_refuses_max_connections_below_1(web: Path):
    proc = _mirror("--directory", str(web.parent), "--max-connections", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--max-connections" in err


def test_mirror_serve_without_a_mirror_exits_1(tmp_path: Path):
    proc = _mirror("--directory", str(tmp_path), "--port", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "run a sync first" in err


@pytest.mark.parametrize("args", [["--port", "70000"], []])
def test_mirror_serve_usage_errors_exit_2(web: Path, args: list[str]):
    directory = ["--directory", str(web.parent)] if args else []
    proc = _mirror(*directory, *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--port" in err or "no mirror directory" in err


def test_mirror_serve_reads_the_directory_from_the_config(web: Path, tmp_path: Path):
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(f'[mirror]\ndirectory = "{web.parent}"\n')
    proc = _mirror("-c", str(cfg), "--port", "0", "--host", "127.0.0.1")
    try:
        port = _listening_port(proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/simple/")
        assert conn.getresponse().read() == ROOT_HTML
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0
