"""A hostile upstream's HTTP, through the one client, on a loopback server.

Each case is an answer no honest server gives, written by hand (Canned's ``raw``):
requests that would never end, bodies that would fill memory, redirects that would
carry the mirror elsewhere. Every writer here is bounded in count and time; the
client must give up well before the writer would.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.simple.model import JSON_CONTENT_TYPE
from simplemirror.sync import download
from simplemirror.sync.plan import ProjectTodo
from simplemirror.upstream.client import Client, TransientError, UpstreamError
from tests.support.canned import Canned

ROOT = "/simple/"
FOO = "/simple/foo/"
FILE = "/packages/foo-1.0.tar.gz"
Send = Callable[[bytes], None]


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


def make_client(tmp_path: Path, server: Canned, **overrides: Any) -> Client:
    values: dict[str, Any] = {
        "upstream": server.url(ROOT), "directory": str(tmp_path), "retries": 0,
        "stale_retries": 0, "request_timeout": 1.0, "min_rate": 1000,
        "min_rate_window": 1.0, "read_timeout": 5.0,
    }
    values.update(overrides)
    cfg = config.build({}, values)
    cfg.web.mkdir(parents=True, exist_ok=True)
    cfg.tmp.mkdir(parents=True, exist_ok=True)
    return Client(cfg)


def page_json() -> bytes:
    return json.dumps({
        "meta": {"api-version": "1.1", "_last-serial": 40}, "name": "foo",
        "files": [{"filename": "foo-1.0.tar.gz", "url": "../../packages/foo-1.0.tar.gz",
                   "hashes": {"sha256": "a" * 64}}],
    }).encode()


def fetch_file(client: Client, url: str, data_sha256: str, size: int | None = None) -> Any:
    wanted = download.Fetch.file(url, "foo-1.0.tar.gz", {"sha256": data_sha256}, size)
    return client.run(download.fetch(client, wanted))


def timed(what: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        what()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


# -- requests that would never end (issue 16, item 1) ------------------------------------------


def processing_forever(send: Send) -> None:
    for _ in range(40):  # 8 s at most: the client must give up long before
        send(b"HTTP/1.1 102 Processing\r\n\r\n")
        time.sleep(0.2)


def header_lines_forever(send: Send) -> None:
    send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
    for i in range(40):
        send(b"X-Filler-%d: y\r\n" % i)
        time.sleep(0.2)


def drip(send: Send) -> None:
    body = b"x" * 40
    send(b"HTTP/1.1 200 OK\r\nContent-Type: " + JSON_CONTENT_TYPE.encode()
         + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    for byte in body:  # one byte every 0.2 s: 8 s for the whole body
        send(bytes([byte]))
        time.sleep(0.2)


def trailers_forever(send: Send) -> None:
    send(b"HTTP/1.1 200 OK\r\nContent-Type: " + JSON_CONTENT_TYPE.encode()
         + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    for i in range(40):
        send(b"X-Trailer-%d: y\r\n" % i)
        time.sleep(0.2)


HANGS = {
    "102-processing": processing_forever,
    "endless-header-block": header_lines_forever,
    "one-byte-at-a-time": drip,
    "endless-trailers": trailers_forever,
}


@pytest.mark.parametrize("writer", HANGS.values(), ids=HANGS.keys())
def test_a_page_that_never_ends_is_given_up_within_request_timeout(
    server: Canned, tmp_path: Path, writer: Callable[[Send], None]
) -> None:
    server.add(FOO, raw=writer)
    client = make_client(tmp_path, server)
    error, elapsed = timed(lambda: client.fetch_page(ProjectTodo("foo", "foo", None)))
    assert isinstance(error, UpstreamError), error
    assert elapsed < 4.0


@pytest.mark.parametrize("writer", HANGS.values(), ids=HANGS.keys())
def test_a_file_that_never_ends_is_given_up_below_min_rate(
    server: Canned, tmp_path: Path, writer: Callable[[Send], None]
) -> None:
    server.add(FILE, raw=writer)
    client = make_client(tmp_path, server)
    error, elapsed = timed(lambda: fetch_file(client, server.url(FILE), "0" * 64))
    assert isinstance(error, UpstreamError), error
    assert elapsed < 4.0
    assert list(client.config.tmp.iterdir()) == []


def test_a_slow_file_above_min_rate_is_kept(server: Canned, tmp_path: Path) -> None:
    body = b"y" * 3000

    def steady(send: Send) -> None:  # 1000 bytes every 0.5 s: twice the floor
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 1000):
            send(body[i:i + 1000])
            time.sleep(0.5)

    server.add(FILE, raw=steady)
    client = make_client(tmp_path, server)
    got = fetch_file(client, server.url(FILE), hashlib.sha256(body).hexdigest(), len(body))
    assert (client.config.web / got.path).read_bytes() == body


def test_a_file_that_stalls_is_cut_off_a_window_after_the_last_one_it_met(
    server: Canned, tmp_path: Path
) -> None:
    body = b"z" * 5000

    def stalls(send: Send) -> None:  # a window's share at once and 0.6 s on, then 6 s of nothing
        send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        send(body[:1000])
        time.sleep(0.6)
        send(body[1000:2000])
        time.sleep(6.0)
        send(body[2000:])

    server.add(FILE, raw=stalls)
    client = make_client(tmp_path, server)
    error, elapsed = timed(
        lambda: fetch_file(client, server.url(FILE), hashlib.sha256(body).hexdigest())
    )
    assert isinstance(error, TransientError) and "min-rate" in str(error), error
    # Not at the first window's end (1 s): the share met at 0.6 s moved it to 1.6 s.
    assert elapsed >= 1.5
    assert list(client.config.tmp.iterdir()) == []


def test_the_message_says_which_setting_cut_a_download_off(
    server: Canned, tmp_path: Path
) -> None:
    server.add(FILE, raw=drip)
    client = make_client(tmp_path, server)
    with pytest.raises(TransientError, match="min-rate"):
        fetch_file(client, server.url(FILE), "0" * 64)


# -- bodies that would fill memory (issue 16, item 2) -------------------------------------------

BOMB = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KB


@pytest.mark.parametrize("where", ["root", "page"])
def test_a_gzip_bomb_is_cut_off_at_its_size_cap(
    server: Canned, tmp_path: Path, where: str
) -> None:
    headers: dict[str, str | None] = {
        "Content-Type": JSON_CONTENT_TYPE, "Content-Encoding": "gzip"
    }
    server.add(ROOT if where == "root" else FOO, BOMB, headers=headers)
    client = make_client(tmp_path, server, max_page_size=1 << 20, max_root_size=1 << 20)
    key = f"max-{where}-size"
    with pytest.raises(UpstreamError, match=key) as info:
        if where == "root":
            client.fetch_root(None)
        else:
            client.fetch_page(ProjectTodo("foo", "foo", None))
    assert not isinstance(info.value, TransientError)  # the same bytes next time
    assert len(server.calls) == 1


@pytest.mark.parametrize("body", ["gzip-bomb", "endless"])
def test_a_redirects_body_is_never_read(server: Canned, tmp_path: Path, body: str) -> None:
    sent: list[int] = []

    def redirect_with_a_body(send: Send) -> None:
        head = b"HTTP/1.1 302 Found\r\nLocation: /simple/foo-real/\r\n"
        if body == "gzip-bomb":
            send(head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(BOMB))
            send(BOMB)
            sent.append(len(BOMB))
            return
        send(head + b"Content-Length: 1500000000\r\n\r\n")  # 1.5 GB declared
        chunk = b"z" * (1 << 16)
        for _ in range(800):  # 50 MB at most, unless the client reads it all
            send(chunk)
            sent.append(len(chunk))

    server.add(FOO, raw=redirect_with_a_body)
    server.add("/simple/foo-real/", page_json(), headers={"Content-Type": JSON_CONTENT_TYPE})
    client = make_client(tmp_path, server)
    got = client.fetch_page(ProjectTodo("foo", "foo", None))
    assert got is not None and got.page.name == "foo"
    assert sum(sent) < 40 << 20  # the connection was dropped, not drained


# -- a .tar.gz served with Content-Encoding: gzip (issue 16, item 7) -----------------------------


def test_a_file_is_hashed_as_stored_whatever_its_content_encoding(
    server: Canned, tmp_path: Path
) -> None:
    # Apache's AddEncoding labels every .gz "Content-Encoding: gzip": the bytes are the
    # sdist itself, and the index's hash is of them (pip hashes them undecoded too).
    sdist = gzip.compress(b"a tarball, pretend\n" * 1000)
    server.add(FILE, sdist, headers={"Content-Encoding": "gzip"})
    client = make_client(tmp_path, server)
    got = fetch_file(client, server.url(FILE), hashlib.sha256(sdist).hexdigest(), len(sdist))
    assert (client.config.web / got.path).read_bytes() == sdist
    assert server.calls[0].header("Accept-Encoding") == "identity"


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["at-once", "each-chunk-late"])
def test_a_chunked_file_arrives_whole(server: Canned, tmp_path: Path, pause: float) -> None:
    # Honest servers send files chunked too (a proxy, a dynamic index). A chunk's closing
    # CRLF arriving after its data gives the reader an empty piece that is not the end:
    # once taken for the end, the file came back cut to its first chunk.
    pieces = [bytes([65 + i]) * 1000 for i in range(5)]
    body = b"".join(pieces)

    def chunked(send: Send) -> None:
        send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            send(b"%x\r\n" % len(piece) + piece)
            time.sleep(pause)
            send(b"\r\n")
        send(b"0\r\n\r\n")

    server.add(FILE, raw=chunked)
    client = make_client(tmp_path, server)
    got = fetch_file(client, server.url(FILE), hashlib.sha256(body).hexdigest())
    assert (client.config.web / got.path).read_bytes() == body


def test_a_redirect_to_an_unparsable_location_is_a_clear_error(
    server: Canned, tmp_path: Path
) -> None:
    # urljoin raises ValueError for it: once a traceback that ended the run.
    server.add(FILE, status=302, headers={"Location": "http://[::1/elsewhere"})
    client = make_client(tmp_path, server)
    with pytest.raises(UpstreamError, match="Location"):
        fetch_file(client, server.url(FILE), "0" * 64)


def test_a_body_past_max_file_size_is_not_asked_for_again(
    server: Canned, tmp_path: Path
) -> None:
    # With no size declared, max-file-size (16 GiB by default) bounds a body; each retry
    # could cost that much again.
    server.add(FILE, b"z" * 1000)
    client = make_client(tmp_path, server, max_file_size=100, retries=2, retry_wait=0.0)
    with pytest.raises(UpstreamError, match="max-file-size"):
        fetch_file(client, server.url(FILE), "0" * 64)
    assert [c.path for c in server.calls] == [FILE]
    assert list(client.config.tmp.iterdir()) == []


@pytest.mark.parametrize("status", [204, 203, 300])
def test_an_answer_that_is_not_200_is_no_file(
    server: Canned, tmp_path: Path, status: int
) -> None:
    # An empty body would hash as the empty file: a sibling without a hash (.asc) was
    # published empty.
    server.add(FILE, b"", status=status)
    client = make_client(tmp_path, server)
    empty = hashlib.sha256(b"").hexdigest()
    with pytest.raises(UpstreamError, match=f"HTTP {status}"):
        fetch_file(client, server.url(FILE), empty)
    assert list(client.config.web.rglob("*.tar.gz")) == []
