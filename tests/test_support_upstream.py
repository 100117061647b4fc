"""Tests of the test fixtures themselves: if these fail, integration test failures mean nothing."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import html
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support import dists
from tests.support._http import negotiate
from tests.support.dists import make_sdist, make_wheel
from tests.support.static import StaticServer, serve_tree
from tests.support.upstream import RequestRecord, Upstream, World

JSON_V1 = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> dict:
        return json.loads(self.body)


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    """One request, no redirect following, no exceptions for 4xx/5xx."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def get_json(url: str) -> Response:
    return fetch(url, {"Accept": JSON_V1})


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "1.10", "1.2"], requires_python=">=3.8")
    w.add_project("simple-pkg")
    return w


@pytest.fixture
def up(world: World) -> Iterator[Upstream]:
    with Upstream(world) as upstream:
        yield upstream
    assert upstream.errors == []


# --- distributions -------------------------------------------------------------------------------


def _record_digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_wheel_is_valid_and_record_is_correct() -> None:
    d = make_wheel("Foo__Bar.baz", "2.0", requires_python=">=3.9", requires_dist=["six>=1"])
    assert d.filename == "foo_bar_baz-2.0-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(d.content)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        info = "foo_bar_baz-2.0.dist-info"
        assert zf.read(f"{info}/METADATA") == d.metadata
        assert zf.read("foo_bar_baz/__init__.py") == b'__version__ = "2.0"\n'
        rows = list(csv.reader(io.StringIO(zf.read(f"{info}/RECORD").decode())))
        recorded = {row[0] for row in rows}
        assert recorded == set(names)
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = zf.read(path)
            assert digest == _record_digest(data)
            assert int(size) == len(data)
        assert b"Tag: py3-none-any" in zf.read(f"{info}/WHEEL")
    meta = d.metadata.decode()
    assert "Metadata-Version: 2.1\n" in meta
    assert "Name: Foo__Bar.baz\n" in meta
    assert "Version: 2.0\n" in meta
    assert "Requires-Python: >=3.9\n" in meta
    assert "Requires-Dist: six>=1\n" in meta


def test_sdist_layout() -> None:
    d = make_sdist("Foo-Bar", "1.0", requires_python=">=3.8")
    assert d.filename == "foo_bar-1.0.tar.gz"
    # gzip header bytes 4..8 are the mtime; 0 keeps the archive reproducible.
    assert d.content[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(d.content))) as tf:
        names = set(tf.getnames())
        assert {
            "foo_bar-1.0/PKG-INFO",
            "foo_bar-1.0/pyproject.toml",
            "foo_bar-1.0/setup.cfg",
            "foo_bar-1.0/foo_bar/__init__.py",
        } <= names
        pkg_info = tf.extractfile("foo_bar-1.0/PKG-INFO")
        assert pkg_info is not None and pkg_info.read() == d.metadata
        pyproject = tf.extractfile("foo_bar-1.0/pyproject.toml")
        assert pyproject is not None and b"setuptools.build_meta" in pyproject.read()
        assert all(m.mtime == dists.TAR_MTIME for m in tf.getmembers())


def test_builds_are_deterministic() -> None:
    # Bypass the lru_cache so we really build twice.
    w1 = dists._build_wheel.__wrapped__("pkg", "1.0", None, ())
    w2 = dists._build_wheel.__wrapped__("pkg", "1.0", None, ())
    s1 = dists._build_sdist.__wrapped__("pkg", "1.0", None)
    s2 = dists._build_sdist.__wrapped__("pkg", "1.0", None)
    assert w1 == w2
    assert s1 == s2
    # A fresh interpreter must agree too: hashes are compared across runs.
    code = (
        "import hashlib;from tests.support.dists import make_wheel, make_sdist;"
        "print(hashlib.sha256(make_wheel('pkg','1.0').content).hexdigest());"
        "print(hashlib.sha256(make_sdist('pkg','1.0').content).hexdigest())"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [hashlib.sha256(w1.content).hexdigest(), hashlib.sha256(s1.content).hexdigest()]


# --- world ---------------------------------------------------------------------------------------


def test_world_serials() -> None:
    w = World(start_serial=500)
    p = w.add_project("A_b", ["1.0"])
    assert (w.serial, p.serial, p.normalized, p.name) == (501, 501, "a-b", "A_b")
    w.add_project("other")
    w.yank("a-b", "a_b-1.0.tar.gz", "broken")
    assert (w.serial, p.serial) == (503, 503)
    assert p.file("a_b-1.0.tar.gz").yanked == "broken"
    w.add_release("A.B", "2.0")
    assert p.versions == ["1.0", "2.0"] and p.serial == 504
    w.remove_file("a-b", "a_b-2.0.tar.gz")
    w.remove_project("other")
    assert w.serial == 506 and set(w.projects) == {"a-b"}
    with pytest.raises(ValueError):
        w.add_project("a.b")


# --- upstream: index pages -----------------------------------------------------------------------


def test_root_json_and_html(up: Upstream, world: World) -> None:
    r = fetch(up.url, {"Accept": PIP_ACCEPT})
    assert r.status == 200
    assert r.headers["Content-Type"] == JSON_V1
    assert r.headers["X-PyPI-Last-Serial"] == str(world.serial)
    doc = r.json()
    assert doc["meta"] == {"api-version": "1.1", "_last-serial": world.serial}
    assert doc["projects"] == [
        {"name": "Foo__Bar.baz", "_last-serial": world.project("foo-bar-baz").serial},
        {"name": "simple-pkg", "_last-serial": world.project("simple-pkg").serial},
    ]
    h = fetch(up.url)
    assert h.headers["Content-Type"] == "text/html"
    assert b'<a href="/simple/foo-bar-baz/">Foo__Bar.baz</a>' in h.body
    assert h.headers["X-PyPI-Last-Serial"] == str(world.serial)


def test_etag_and_304(up: Upstream, world: World) -> None:
    page = up.page_url("foo-bar-baz")
    first = get_json(page)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert get_json(page).headers["ETag"] == etag
    again = fetch(page, {"Accept": JSON_V1, "If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert fetch(page, {"If-None-Match": etag}).status == 200  # HTML has its own ETag
    world.add_release("Foo__Bar.baz", "3.0")
    changed = fetch(page, {"Accept": JSON_V1, "If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    root_etag = get_json(up.url).headers["ETag"]
    assert fetch(up.url, {"Accept": JSON_V1, "If-None-Match": root_etag}).status == 304


def test_project_page_json(up: Upstream, world: World) -> None:
    world.yank("foo-bar-baz", "foo_bar_baz-1.0-py3-none-any.whl", "bad <build>")
    project = world.project("foo-bar-baz")
    project.extra_meta["_x-meta"] = 1
    project.extra["x-top"] = True
    extra_file = world.add_file(
        "foo-bar-baz", "foo_bar_baz-9.0.zip", b"zzz", extra={"x-unknown": {"a": 1}}
    )
    r = get_json(up.page_url("Foo__Bar.baz"))
    assert r.headers["Content-Type"] == JSON_V1
    doc = r.json()
    assert doc["meta"] == {"api-version": "1.1", "_last-serial": project.serial, "_x-meta": 1}
    assert r.headers["X-PyPI-Last-Serial"] == str(project.serial)
    assert doc["name"] == "foo-bar-baz" and doc["x-top"] is True
    assert doc["versions"] == ["1.0", "1.2", "1.10", "9.0"]
    files = {f["filename"]: f for f in doc["files"]}
    wheel = files["foo_bar_baz-1.0-py3-none-any.whl"]
    upfile = project.file("foo_bar_baz-1.0-py3-none-any.whl")
    assert upfile.metadata is not None
    meta_hash = {"sha256": hashlib.sha256(upfile.metadata).hexdigest()}
    assert wheel["hashes"] == {"sha256": hashlib.sha256(upfile.content).hexdigest()}
    assert wheel["size"] == len(upfile.content)
    assert wheel["requires-python"] == ">=3.8"
    assert wheel["yanked"] == "bad <build>"
    assert wheel["core-metadata"] == wheel["data-dist-info-metadata"] == meta_hash
    assert wheel["upload-time"].endswith("Z") and "T" in wheel["upload-time"]
    sdist = files["foo_bar_baz-1.0.tar.gz"]
    assert sdist["yanked"] is False and sdist["core-metadata"] is False
    assert files[extra_file.filename]["x-unknown"] == {"a": 1}
    assert fetch(wheel["url"]).body == upfile.content
    assert fetch(wheel["url"] + ".metadata").body == upfile.metadata
    assert fetch(sdist["url"] + ".metadata").status == 404


def test_project_page_html(up: Upstream, world: World) -> None:
    world.yank("foo-bar-baz", "foo_bar_baz-1.0-py3-none-any.whl", 'a "quoted" <reason>')
    world.yank("foo-bar-baz", "foo_bar_baz-1.2.tar.gz")
    project = world.project("foo-bar-baz")
    r = fetch(up.page_url("foo-bar-baz"))
    assert r.headers["Content-Type"] == "text/html"
    text = r.body.decode()
    wheel = project.file("foo_bar_baz-1.0-py3-none-any.whl")
    assert f'{wheel.path}#sha256={wheel.sha256}"' in text
    assert 'data-requires-python="&gt;=3.8"' in text
    assert 'data-yanked="a &quot;quoted&quot; &lt;reason&gt;"' in text
    assert 'data-yanked=""' in text
    assert f'data-core-metadata="sha256={wheel.metadata_sha256}"' in text
    assert f'data-dist-info-metadata="sha256={wheel.metadata_sha256}"' in text
    assert f"<!--SERIAL {project.serial}-->" in text
    v1html = fetch(up.page_url("foo-bar-baz"), {"Accept": "application/vnd.pypi.simple.v1+html"})
    assert v1html.headers["Content-Type"] == "application/vnd.pypi.simple.v1+html"


def test_redirects_and_404(up: Upstream) -> None:
    r = fetch(up.base + "/simple/Foo__Bar.baz/")
    assert r.status == 301 and r.headers["Location"] == "/simple/foo-bar-baz/"
    r = fetch(up.base + "/simple/foo-bar-baz")
    assert r.status == 301 and r.headers["Location"] == "/simple/foo-bar-baz/"
    assert fetch(up.base + "/simple").headers["Location"] == "/simple/"
    assert fetch(up.base + "/simple/nope/").status == 404
    assert fetch(up.base + "/packages/aa/bb/cc/x.whl").status == 404


def test_serial_knobs(up: Upstream, world: World) -> None:
    up.serial_as_string = True
    doc = get_json(up.url).json()
    assert doc["meta"]["_last-serial"] == str(world.serial)
    assert all(isinstance(p["_last-serial"], str) for p in doc["projects"])
    assert get_json(up.page_url("simple-pkg")).json()["meta"]["_last-serial"] == str(
        world.project("simple-pkg").serial
    )
    up.send_serial_header = False
    assert "X-PyPI-Last-Serial" not in get_json(up.url).headers


def test_serial_text_knobs_send_serials_verbatim(up: Upstream, world: World) -> None:
    huge = "9" * 5000  # more digits than json (or int()) reads by default
    up.root_serial_text = str(2**63)
    up.entry_serial_text["simple-pkg"] = huge
    up.page_serial_text["foo-bar-baz"] = huge
    up.header_serial_text = huge
    root = get_json(up.url)
    assert root.headers["X-PyPI-Last-Serial"] == huge
    assert f'"_last-serial": {2**63}' in root.body.decode()
    assert f'{{"name": "simple-pkg", "_last-serial": {huge}}}' in root.body.decode()
    # The others are untouched.
    other = world.project("foo-bar-baz")
    assert f'{{"name": "Foo__Bar.baz", "_last-serial": {other.serial}}}' in root.body.decode()
    page = get_json(up.page_url("foo-bar-baz"))
    assert f'"_last-serial": {huge}}}, "name"' in page.body.decode()
    html_page = fetch(up.page_url("foo-bar-baz"), {"Accept": "text/html"}).body.decode()
    assert f"<!--SERIAL {huge}-->" in html_page
    assert f"<!--SERIAL {2**63}-->" in fetch(up.url, {"Accept": "text/html"}).body.decode()
    up.serial_as_string = True
    assert f'"_last-serial": "{huge}"}}' in get_json(up.page_url("foo-bar-baz")).body.decode()


def test_stale_counter(up: Upstream, world: World) -> None:
    current = world.project("simple-pkg").serial
    up.stale["simple-pkg"] = 2
    seen = []
    for _ in range(3):
        r = get_json(up.page_url("simple-pkg"))
        seen.append((r.json()["meta"]["_last-serial"], int(r.headers["X-PyPI-Last-Serial"])))
    assert seen == [(current - 1, current - 1)] * 2 + [(current, current)]
    assert up.stale == {}


def test_json_disabled(up: Upstream) -> None:
    up.json_enabled = False
    r = fetch(up.page_url("simple-pkg"), {"Accept": PIP_ACCEPT})
    assert r.headers["Content-Type"] == "application/vnd.pypi.simple.v1+html"
    assert fetch(up.url, {"Accept": JSON_V1}).headers["Content-Type"] == "text/html"


# --- upstream: files -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["absolute", "host-relative", "relative"])
def test_url_styles_resolve_to_same_bytes(up: Upstream, world: World, style: str) -> None:
    up.url_style = style  # type: ignore[assignment]
    page = up.page_url("foo-bar-baz")
    files = get_json(page).json()["files"]
    if style == "absolute":
        assert files[0]["url"].startswith(up.base + "/packages/")
    elif style == "host-relative":
        assert files[0]["url"].startswith("/packages/")
    else:
        assert files[0]["url"].startswith("../../packages/")
    for f in files:
        expected = world.project("foo-bar-baz").file(f["filename"]).content
        assert fetch(urljoin(page, f["url"])).body == expected
    html_text = fetch(page).body.decode()
    hrefs = re.findall(r'<a href="([^"#]+)', html_text)
    assert len(hrefs) == len(files)
    for href, f in zip(hrefs, files, strict=True):
        assert fetch(urljoin(page, html.unescape(href))).body == fetch(urljoin(page, f["url"])).body


def test_file_download_and_head(up: Upstream, world: World) -> None:
    upfile = world.project("simple-pkg").file("simple_pkg-1.0-py3-none-any.whl")
    url = up.file_url("simple-pkg", upfile.filename)
    r = fetch(url)
    assert r.status == 200 and r.body == upfile.content
    assert r.headers["Content-Type"] == "application/octet-stream"
    head = fetch(url, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(upfile.content)


def test_corrupt_truncate_fail(up: Upstream, world: World) -> None:
    upfile = world.project("simple-pkg").file("simple_pkg-1.0-py3-none-any.whl")
    url = up.file_url("simple-pkg", upfile.filename)
    up.corrupt.add(upfile.filename)
    body = fetch(url).body
    assert len(body) == len(upfile.content) and body != upfile.content
    assert sum(a != b for a, b in zip(body, upfile.content, strict=True)) == 1
    up.corrupt.clear()

    up.truncate.add(upfile.filename)
    with pytest.raises(http.client.IncompleteRead):
        fetch(url)
    up.truncate.clear()

    up.fail[urlsplit(url).path] = 2
    assert [fetch(url).status for _ in range(3)] == [503, 503, 200]
    up.fail["/simple/"] = 1
    assert fetch(up.url).status == 503 and fetch(up.url).status == 200


def test_status_reset_delay_slow_knobs(up: Upstream, world: World) -> None:
    upfile = world.project("simple-pkg").file("simple_pkg-1.0-py3-none-any.whl")
    url = up.file_url("simple-pkg", upfile.filename)
    path = urlsplit(url).path

    up.status[path] = (429, {"Retry-After": "7"}, 2)
    first, second, third = fetch(url), fetch(url), fetch(url)
    assert (first.status, first.headers["Retry-After"]) == (429, "7")
    assert second.status == 429 and third.status == 200 and third.body == upfile.content
    assert path not in up.status

    up.reset[path] = 1
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        fetch(url)
    assert fetch(url).body == upfile.content

    up.delay[path] = (0.3, 1)
    start = time.perf_counter()
    assert fetch(url).body == upfile.content
    assert time.perf_counter() - start >= 0.3
    start = time.perf_counter()
    fetch(url)
    assert time.perf_counter() - start < 0.25

    up.slow_chunk, up.slow_pause = 100, 0.02
    up.slow_body[path] = 1
    start = time.perf_counter()
    assert fetch(url).body == upfile.content
    assert time.perf_counter() - start >= 0.02 * (len(upfile.content) // 100)
    assert path not in up.slow_body
    assert [r.path for r in up.requests].count(path) == 8


def test_reset_mid_body_knob(up: Upstream, world: World) -> None:
    upfile = world.project("simple-pkg").file("simple_pkg-1.0-py3-none-any.whl")
    url = up.file_url("simple-pkg", upfile.filename)
    path = urlsplit(url).path
    up.reset_mid_body[path] = 1
    with pytest.raises((ConnectionError, http.client.IncompleteRead)):
        fetch(url)
    assert path not in up.reset_mid_body
    assert fetch(url).body == upfile.content
    assert [r.path for r in up.requests].count(path) == 2


def test_oversize_and_replaced_bodies(up: Upstream, world: World) -> None:
    upfile = world.project("simple-pkg").file("simple_pkg-1.0-py3-none-any.whl")
    url = up.file_url("simple-pkg", upfile.filename)
    up.oversize.add(upfile.filename)
    body = fetch(url).body
    assert body.startswith(upfile.content) and len(body) > upfile.size
    assert fetch(url + ".metadata").body == upfile.metadata
    up.oversize.clear()

    up.root_body = b"{not json"
    r = get_json(up.url)
    assert (r.status, r.body, r.headers["Content-Type"]) == (200, b"{not json", JSON_V1)
    up.root_body = None
    up.root_content_type = "text/plain"
    r = get_json(up.url)
    assert r.headers["Content-Type"] == "text/plain" and "projects" in r.json()
    up.root_content_type = None

    up.page_body["simple-pkg"] = (b"<html></html>", "text/html")
    r = get_json(up.page_url("simple-pkg"))
    assert (r.body, r.headers["Content-Type"]) == (b"<html></html>", "text/html")
    assert get_json(up.page_url("Foo__Bar.baz")).json()["name"] == "foo-bar-baz"
    up.page_body.clear()
    assert get_json(up.page_url("simple-pkg")).json()["name"] == "simple-pkg"


def test_hostile_file_hash_is_advertised_verbatim(up: Upstream, world: World) -> None:
    world.add_file("evil", "evil-1.0.tar.gz", b"payload", hashes={"sha256": "0" * 64}, size=3)
    doc = get_json(up.page_url("evil")).json()
    (entry,) = doc["files"]
    assert entry["hashes"] == {"sha256": "0" * 64} and entry["size"] == 3
    assert fetch(urljoin(up.url, entry["url"])).body == b"payload"


def test_removal_is_visible(up: Upstream, world: World) -> None:
    url = up.file_url("simple-pkg", "simple_pkg-1.0.tar.gz")
    before = world.serial
    world.remove_file("simple-pkg", "simple_pkg-1.0.tar.gz")
    assert fetch(url).status == 404
    world.remove_project("simple-pkg")
    assert world.serial == before + 2
    assert fetch(up.page_url("simple-pkg")).status == 404
    names = [p["name"] for p in get_json(up.url).json()["projects"]]
    assert names == ["Foo__Bar.baz"]


def test_requests_are_recorded(up: Upstream) -> None:
    up.reset_requests()
    fetch(up.url, {"Accept": JSON_V1, "X-Test": "1"})
    fetch(up.page_url("simple-pkg"), method="HEAD")
    assert [(r.method, r.path) for r in up.requests] == [
        ("GET", "/simple/"),
        ("HEAD", "/simple/simple-pkg/"),
    ]
    first = up.requests[0]
    assert isinstance(first, RequestRecord)
    assert first.headers["accept"] == JSON_V1 and first.header("X-Test") == "1"
    up.reset_requests()
    assert up.requests == []


def test_keep_alive_is_fast(up: Upstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        start = time.perf_counter()
        for _ in range(40):
            conn.request("GET", "/simple/simple-pkg/", headers={"Accept": JSON_V1})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        elapsed = time.perf_counter() - start
        assert conn.sock is sock, "server closed a keep-alive connection"
    finally:
        conn.close()
    # With Nagle/delayed-ACK stalls this takes ~1.6 s; without, a few ms.
    assert elapsed < 1.0


def test_stop_with_idle_keep_alive_connection(world: World) -> None:
    before = threading.active_count()
    with Upstream(world) as upstream:
        conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
        conn.request("GET", "/simple/")
        conn.getresponse().read()
        # Left open on purpose: stop() must still wake and end the handler thread.
        start = time.perf_counter()
    assert time.perf_counter() - start < 2
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    conn.close()
    assert upstream.errors == []


def test_handler_error_does_not_kill_server(world: World) -> None:
    with Upstream(world) as upstream:

        def boom(media: str) -> None:
            raise RuntimeError("boom")

        upstream.render_root = boom  # type: ignore[method-assign, assignment]
        assert fetch(upstream.url).status == 500
        assert fetch(upstream.page_url("simple-pkg")).status == 200
        assert len(upstream.errors) == 1 and "boom" in upstream.errors[0]


def test_negotiate() -> None:
    offered = [JSON_V1, "application/vnd.pypi.simple.v1+html", "text/html"]
    assert negotiate(PIP_ACCEPT, offered, "text/html") == JSON_V1
    assert negotiate(None, offered, "text/html") == "text/html"
    assert negotiate("*/*", offered, "text/html") == "text/html"
    assert negotiate(f"text/html, {JSON_V1};q=0.5", offered, "text/html") == "text/html"
    assert negotiate(f"text/html;q=0.5, {JSON_V1}", offered, "text/html") == JSON_V1
    assert negotiate(f"{JSON_V1};q=0, text/html;q=0.1", offered, "text/html") == "text/html"
    assert negotiate(f"text/html, {JSON_V1}", offered, "text/html") == JSON_V1  # tie: server pref


# --- static tree server --------------------------------------------------------------------------


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    web = tmp_path / "web"
    (web / "simple" / "foo").mkdir(parents=True)
    (web / "simple" / "index.html").write_text("<html>root</html>")
    (web / "simple" / "index.v1_json").write_text('{"root": true}')
    (web / "simple" / "foo" / "index.html").write_text("<html>foo</html>")
    (web / "simple" / "foo" / "index.v1_json").write_text('{"foo": true}')
    (web / "packages" / "ab").mkdir(parents=True)
    (web / "packages" / "ab" / "foo-1.0.tar.gz").write_bytes(b"\x1f\x8bdata")
    (tmp_path / "secret").write_text("do not serve")
    (web / "packages" / "link").symlink_to(tmp_path / "secret")
    return web


def test_static_negotiation(web_dir: Path) -> None:
    with serve_tree(web_dir) as base:
        assert base.startswith("http://127.0.0.1:") and base.endswith("/")
        r = fetch(base + "simple/", {"Accept": PIP_ACCEPT})
        assert (r.headers["Content-Type"], r.body) == (JSON_V1, b'{"root": true}')
        r = fetch(base + "simple/foo/", {"Accept": f"text/html, {JSON_V1}; q=0.9"})
        assert (r.headers["Content-Type"], r.body) == ("text/html", b"<html>foo</html>")
        r = fetch(base + "simple/foo/")
        assert (r.headers["Content-Type"], r.body) == ("text/html", b"<html>foo</html>")
        r = fetch(base + "simple/foo/", {"Accept": JSON_V1})
        assert r.body == b'{"foo": true}'
        r = fetch(base + "simple/foo")
        assert r.status == 301 and r.headers["Location"] == "/simple/foo/"
        r = fetch(base + "packages/ab/foo-1.0.tar.gz")
        assert r.body == b"\x1f\x8bdata"
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert fetch(base + "packages/ab/missing.whl").status == 404
        assert fetch(base + "packages/ab/foo-1.0.tar.gz", method="HEAD").body == b""


def test_static_refuses_escapes(web_dir: Path) -> None:
    with StaticServer(web_dir) as server:
        for path in ("/../secret", "/simple/%2e%2e/%2e%2e/secret", "/packages/link"):
            assert fetch(server.url.rstrip("/") + path).status == 404, path
        assert server.requests[0].path == "/../secret"
        assert server.errors == []


def test_serve_tree_records_into_given_list(web_dir: Path) -> None:
    seen: list[RequestRecord] = []
    with serve_tree(web_dir, requests=seen) as base:
        fetch(base + "simple/", {"Accept": JSON_V1})
    assert [(r.method, r.path, r.headers["accept"]) for r in seen] == [("GET", "/simple/", JSON_V1)]


# --- real pip ------------------------------------------------------------------------------------


def _pip_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_CACHE_DIR="1",
        PYTHONNOUSERSITE="1",
        NO_PROXY="127.0.0.1",
        HOME=str(tmp_path),
    )
    return env


def _check_import(target: Path, module: str, version: str) -> None:
    code = f"import {module}; print({module}.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == version


def _run_pip(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=_pip_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, textwrap.shorten(proc.stdout + proc.stderr, 4000)


@pytest.mark.slow
def test_pip_installs_generated_wheel(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    wheel = make_wheel("Demo_Pkg.x", "1.4.2", requires_python=">=3.8")
    (links / wheel.filename).write_bytes(wheel.content)
    target = tmp_path / "target"
    _run_pip(
        [
            "install",
            "--no-index",
            "--find-links",
            str(links),
            "--target",
            str(target),
            "demo-pkg.x",
        ],
        tmp_path,
    )
    assert (target / "demo_pkg_x-1.4.2.dist-info" / "METADATA").read_bytes() == wheel.metadata
    _check_import(target, "demo_pkg_x", "1.4.2")


def _can_build_sdists() -> bool:
    # setuptools older than 70.1 needs the separate "wheel" package for bdist_wheel, and with
    # --no-build-isolation pip will not fetch it for us.
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_sdists(), reason="needs setuptools (>=70.1, or with wheel)")
def test_pip_builds_sdist_from_upstream(tmp_path: Path) -> None:
    world = World()
    world.add_project("Sdist.Only", ["0.3"], wheel=False, requires_python=">=3.8")
    target = tmp_path / "target"
    with Upstream(world) as upstream:
        _run_pip(
            [
                "install",
                "--index-url",
                upstream.url,
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "--target",
                str(target),
                "sdist-only==0.3",
            ],
            tmp_path,
        )
        fetched = upstream.paths("GET")
    assert "/simple/sdist-only/" in fetched
    assert any(p.endswith("/sdist_only-0.3.tar.gz") for p in fetched)
    _check_import(target, "sdist_only", "0.3")
