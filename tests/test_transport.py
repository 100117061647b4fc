"""The transport: kept-alive connections, redirects, decoded bodies, no reuse of a half-read one."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from simplemirror import config, download
from simplemirror.download import VerificationError
from simplemirror.plan import ProjectTodo
from simplemirror.transport import (
    DeadEnd,
    Transport,
    TransportError,
    _read_headers,
    _split,
    prepare,
)
from simplemirror.upstream import Client, TransientError
from tests.support.canned import Canned
from tests.support.fuzz import random_strings
from tests.support.spies import refuse_spinning_inflater

BODY = b"0123456789" * 10_000


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


def transport() -> Transport:
    return Transport(user_agent="t", connect_timeout=5, read_timeout=5)


def read(t: Transport, url: str) -> tuple[int, bytes]:
    with t.stream(url) as stream:
        return stream.status, stream.body.read()


def test_consecutive_requests_share_one_connection(server: Canned) -> None:
    server.add("/a", BODY)
    server.add("/b", b"b")
    t = transport()
    assert read(t, server.url("/a")) == (200, BODY)
    assert read(t, server.url("/b")) == (200, b"b")
    assert read(t, server.url("/a")) == (200, BODY)
    assert len({call.port for call in server.calls}) == 1


def test_a_body_left_unread_is_not_taken_for_the_next_answer(server: Canned) -> None:
    server.add("/big", BODY)
    server.add("/small", b"small")
    t = transport()
    with t.stream(server.url("/big")) as stream:
        assert stream.body.read1(100)  # then abandoned, like a download cut off
    assert read(t, server.url("/small")) == (200, b"small")
    assert len({call.port for call in server.calls}) == 2  # the first connection was dropped


def test_a_body_whose_rest_has_not_arrived_is_not_taken_for_the_next_answer(
    server: Canned,
) -> None:
    # The rest of /big comes only after /small has been asked for: on the same
    # connection it would be read as /small's answer. The abandoned connection
    # must be closed, not handed back to the pool.
    rest_may_come = threading.Event()
    server.add("/big", BODY, pause=rest_may_come)
    server.add("/small", b"small")
    t = transport()
    with t.stream(server.url("/big")) as stream:
        # All that has arrived: nothing waits on the socket to make it look dropped.
        half = b""
        while len(half) < len(BODY) // 2:
            half += stream.body.read1(len(BODY) // 2 - len(half))
        assert half == BODY[: len(BODY) // 2]
    timer = threading.Timer(0.3, rest_may_come.set)
    timer.start()
    try:
        assert read(t, server.url("/small")) == (200, b"small")
    finally:
        timer.cancel()
        rest_may_come.set()
    assert len({call.port for call in server.calls}) == 2


def test_a_download_cut_off_at_its_declared_size_leaves_the_next_one_sound(
    server: Canned, tmp_path: Path
) -> None:
    cfg = config.build({}, {"upstream": server.url("/simple/"), "directory": str(tmp_path),
                            "retries": 0, "workers": 1})
    cfg.web.mkdir(parents=True)
    cfg.tmp.mkdir(parents=True)
    client = Client(cfg)
    server.add("/big", BODY)
    server.add("/small", b"small")
    with pytest.raises(VerificationError, match="larger"):
        download.fetch_file(client, server.url("/big"), "big", expected_hashes={},
                            expected_size=10, web=cfg.web, tmp=cfg.tmp)
    got = download.fetch_file(
        client, server.url("/small"), "small",
        expected_hashes={"sha256": hashlib.sha256(b"small").hexdigest()},
        expected_size=5, web=cfg.web, tmp=cfg.tmp,
    )
    assert (cfg.web / got.path).read_bytes() == b"small"


def test_credentials_in_a_file_url_are_sent_as_basic_auth_to_that_host_only(
    server: Canned,
) -> None:
    # Relative file links on a page fetched as https://user:token@host/simple/x/
    # resolve to URLs that carry the credentials too.
    elsewhere = Canned()
    try:
        server.add("/f", status=302, headers={"Location": elsewhere.url("/g")})
        elsewhere.add("/g", b"here")
        t = transport()
        with_auth = server.url("/f").replace("http://", "http://bot:s3%40cret@")
        assert read(t, with_auth) == (200, b"here")
        expected = "Basic " + base64.b64encode(b"bot:s3@cret").decode()
        sent = [{k.lower(): v for k, v in c.headers.items()} for c in (*server.calls,
                                                                       *elsewhere.calls)]
        assert sent[0].get("authorization") == expected
        assert "authorization" not in sent[1]
    finally:
        elsewhere.close()


def test_redirects_are_followed_relative_and_absolute(server: Canned) -> None:
    server.add("/one", status=302, headers={"Location": "two"})
    server.add("/two", status=301, headers={"Location": server.url("/three")})
    server.add("/three", b"here")
    t = transport()
    with t.stream(server.url("/one")) as stream:
        assert (stream.url, stream.status, stream.body.read()) == (server.url("/three"), 200,
                                                                  b"here")


def test_a_redirect_loop_ends_with_an_error(server: Canned) -> None:
    server.add("/loop", status=302, headers={"Location": "/loop"})
    with pytest.raises(TransportError, match="redirects"):
        read(transport(), server.url("/loop"))
    assert len(server.calls) == 11


def test_refused_connection_is_transient_for_the_client(tmp_path: Path) -> None:
    probe = Canned()
    url = probe.url("/gone")
    probe.close()  # nothing listens on that port now
    cfg = config.build({}, {"upstream": url, "directory": str(tmp_path), "retries": 0})
    with pytest.raises(TransientError), Client(cfg).stream(url):
        pass


def test_only_http_urls(server: Canned) -> None:
    with pytest.raises(TransportError, match="not an http"):
        read(transport(), "ftp://127.0.0.1/x")


@pytest.fixture
def behind_proxy(server: Canned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Client:
    """A client whose environment names ``server`` as its HTTP proxy."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base)
    # files.invalid is listed: nothing to resolve (the proxy would, not this host).
    return Client(config.build({}, {"upstream": "http://index.invalid/simple/",
                                    "directory": str(tmp_path),
                                    "file_hosts": ["files.invalid"]}))


def test_files_go_through_a_proxy_the_environment_sets(
    server: Canned, behind_proxy: Client
) -> None:
    server.add("/packages/a.whl", b"via the proxy")
    with behind_proxy.stream("http://files.invalid/packages/a.whl") as stream:
        assert stream.body.read() == b"via the proxy"
    assert [call.path for call in server.calls] == ["http://files.invalid/packages/a.whl"]


def test_a_page_goes_through_a_proxy_the_environment_sets(
    server: Canned, behind_proxy: Client
) -> None:
    page = {"meta": {"api-version": "1.1"}, "name": "a", "files": []}
    server.add("/simple/a/", json.dumps(page).encode(),
               headers={"Content-Type": "application/vnd.pypi.simple.v1+json"})
    got = behind_proxy.fetch_page(ProjectTodo("a", "a", None))
    assert got is not None and got.page.name == "a"
    assert [call.path for call in server.calls] == ["http://index.invalid/simple/a/"]


# -- bodies: what Content-Encoding says, and what arrives --------------------------


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "wbits"),
    [("gzip", 16 + zlib.MAX_WBITS), ("x-gzip", 16 + zlib.MAX_WBITS),
     ("deflate", zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS)],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_compressed_bodies_are_decoded(server: Canned, encoding: str, wbits: int) -> None:
    server.add("/c", _deflate(BODY, wbits), headers={"Content-Encoding": encoding})
    server.add("/after", b"next")
    t = transport()
    assert read(t, server.url("/c")) == (200, BODY)
    assert read(t, server.url("/after")) == (200, b"next")
    assert len({call.port for call in server.calls}) == 1  # the connection was kept


def test_a_compressed_body_never_inflates_past_what_was_asked_for(server: Canned) -> None:
    bomb = b"\0" * 20_000_000  # ~20 KB on the wire
    server.add("/bomb", gzip.compress(bomb), headers={"Content-Encoding": "gzip"})
    total = 0
    with transport().stream(server.url("/bomb")) as stream:
        while chunk := stream.body.read1(65536):
            assert len(chunk) <= 65536
            total += len(chunk)
    assert total == len(bomb)


def test_a_compressed_body_cut_short_is_an_error(server: Canned) -> None:
    server.add("/cut", gzip.compress(BODY)[:-20], headers={"Content-Encoding": "gzip"})
    with pytest.raises(TransportError, match="ends early"):
        read(transport(), server.url("/cut"))


def test_bytes_after_a_compressed_body_are_an_error(server: Canned) -> None:
    server.add("/extra", gzip.compress(b"a") + b"junk", headers={"Content-Encoding": "gzip"})
    with pytest.raises(TransportError, match="after the compressed body"):
        read(transport(), server.url("/extra"))


def test_an_encoding_that_was_not_asked_for_is_a_dead_end(server: Canned) -> None:
    server.add("/br", b"\x8b\x00", headers={"Content-Encoding": "br"})
    with pytest.raises(DeadEnd, match="'br'"):
        read(transport(), server.url("/br"))


def test_a_body_shorter_than_declared_is_an_error(server: Canned) -> None:
    server.add("/short", b"x" * 100, length=1000)
    with pytest.raises(TransportError, match="900 bytes still to come"):
        read(transport(), server.url("/short"))


def test_an_empty_answer_leaves_the_connection_usable(server: Canned) -> None:
    server.add("/gone", status=304)
    server.add("/next", b"next")
    t = transport()
    assert t.get(server.url("/gone")).status == 304
    assert read(t, server.url("/next")) == (200, b"next")
    assert len({call.port for call in server.calls}) == 1


# -- connections -------------------------------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Canned) -> None:
    # The server hangs up after answering without saying so (as one does when
    # its keep-alive timeout runs out between two requests): the next request
    # must not fail for it.
    server.add("/first", b"first", close=True)
    server.add("/second", b"second")
    t = transport()
    assert read(t, server.url("/first")) == (200, b"first")
    time.sleep(0.1)  # the server's close has reached us
    assert read(t, server.url("/second")) == (200, b"second")
    assert len({call.port for call in server.calls}) == 2


def test_a_server_that_does_not_answer_in_time_is_a_transient_error(server: Canned) -> None:
    server.add("/slow", b"late", stall=1.0)
    t = Transport(user_agent="t", connect_timeout=5, read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TransportError, match="TimeoutError") as info:
        read(t, server.url("/slow"))
    assert info.value.transient
    assert time.monotonic() - started < 0.9


def test_each_thread_keeps_its_own_connection(server: Canned) -> None:
    server.add("/a", BODY)
    t = transport()
    results: list[tuple[int, bytes]] = []

    def twice() -> None:
        results.extend([read(t, server.url("/a")), read(t, server.url("/a"))])

    threads = [threading.Thread(target=twice) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(200, BODY)] * 6
    by_port: dict[int, int] = {}
    for call in server.calls:
        by_port[call.port] = by_port.get(call.port, 0) + 1
    assert sorted(by_port.values()) == [2, 2, 2]


def test_a_port_that_is_not_a_number_is_a_dead_end() -> None:
    with pytest.raises(DeadEnd, match="port"):
        read(transport(), "http://127.0.0.1:http/x")


# -- response headers ----------------------------------------------------------------


def test_headers_are_read_without_regard_to_case_first_of_a_repeat_kept() -> None:
    block = (
        b"Content-Type: text/html\r\n"
        b"ETAG: \"e1\"\r\n"
        b"X-Long: one\r\n"
        b"  two\r\n"  # an obsolete folded continuation
        b"not a header line\r\n"
        b"etag: \"e2\"\r\n"
        b"\r\n"
        b"body"
    )
    fp = io.BytesIO(block)
    headers = _read_headers(fp)
    assert headers.get("content-type") == "text/html"
    assert headers.get("ETag") == headers["etag"] == '"e1"'
    assert headers.get("x-long") == "one two"
    assert "Content-Type" in headers and "Location" not in headers
    assert headers.get("Location", "none") == "none"
    assert fp.read() == b"body"  # the body is left where it was


def test_too_many_headers_or_too_long_a_line_is_an_error() -> None:
    with pytest.raises(http.client.HTTPException, match="more than"):
        _read_headers(io.BytesIO(b"X: y\r\n" * 101 + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        _read_headers(io.BytesIO(b"X: " + b"y" * 70_000 + b"\r\n\r\n"))


def _raw_server(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """Answers one connection with ``answer`` byte for byte, then closes it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbo\r\n2;x=y\r\ndy\r\n0\r\n"
        b"Trailer: t\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody",  # no length: the body ends with the connection
        # A length that is not a number is no length: to the connection's end, again.
        b"HTTP/1.1 200 OK\r\nContent-Length: four\r\n\r\nbody",
    ],
    ids=["100-continue", "chunked", "until-close", "bad-length"],
)
def test_framings_other_than_content_length(answer: bytes) -> None:
    listener, thread = _raw_server(answer)
    with listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        assert read(transport(), url) == (200, b"body")
        thread.join(5)


def test_a_status_line_that_is_not_http_is_a_transport_error() -> None:
    listener, thread = _raw_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    with listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        with pytest.raises(TransportError, match="BadStatusLine"):
            read(transport(), url)
        thread.join(5)


@pytest.mark.parametrize(
    ("status", "encoding"), [(200, "deflate"), (304, "deflate"), (304, "gzip")],
    ids=["empty-deflate", "304-deflate", "304-gzip"],
)
def test_an_answer_without_a_body_is_empty_whatever_its_encoding(
    server: Canned, monkeypatch: pytest.MonkeyPatch, status: int, encoding: str
) -> None:
    refuse_spinning_inflater(monkeypatch)
    server.add("/e", status=status, headers={"Content-Encoding": encoding})
    assert read(transport(), server.url("/e")) == (status, b"")


def test_informational_answers_before_the_final_one_are_skipped() -> None:
    listener, thread = _raw_server(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
    )
    with listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        assert read(transport(), url) == (200, b"body")
        thread.join(5)


# -- splitting URLs: the plain-URL pattern gives what urlsplit gives -----------------


def _both(url: str) -> tuple[object, object]:
    def outcome(split: object) -> object:
        try:
            return split(url)  # type: ignore[operator]
        except ValueError:
            return ValueError

    expected = outcome(lambda u: tuple(urlsplit(u))[:4])
    return outcome(_split), expected


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/packages/ab/x-1.0.tar.gz", "https://files.example/a/b?c=d#e",
    "https://files.example", "https://files.example?q", "https://files.example#f",
    "https://files.example/?", "https://files.example/#", "https://u:p@files.example/x",
    "https://[::1]:8443/x", "https://[::1/x", "https://files.example/a[b]",
    "HTTPS://files.example/x", "https://files.example/a b", "https://files.example/a\tb",
    " https://files.example/x", "https://files.éxample/x", "https://files.example/é",
    "ftp://files.example/x", "https:/x", "https:///x", "https://files.example//x",
])
def test_split_agrees_with_urlsplit(url: str) -> None:
    got, expected = _both(url.replace("\\t", "\t"))
    assert got == expected


def test_split_agrees_with_urlsplit_on_random_urls() -> None:
    alphabet = "aZ0:/?#@[]\\.%-_~;= \t\r\n\x00\x7fé"
    starts = ["https://", "http://", "https://files.example/", "HTTP://", "//", ""]
    for url in random_strings(5, alphabet, starts=starts):
        got, expected = _both(url)
        assert got == expected, url


# -- prepare: what a GET sends, or why it cannot be sent -----------------------------

BASE = {"User-Agent": "t"}


@pytest.mark.parametrize(("url", "why"), [
    ("http://ho st/x", "control characters or spaces"),
    ("http://host\x7f/x", "control characters or spaces"),
    ("http://host:eighty/x", "port is not a number"),
    ("ftp://host/x", "not an http"),
    ("https:///x", "not an http"),
    ("http://host/a b", "control characters or spaces"),
])
def test_prepare_refuses_what_no_request_can_carry(url: str, why: str) -> None:
    with pytest.raises(DeadEnd, match=why):
        prepare(url, BASE, None)


@pytest.mark.parametrize("url", [
    "http://[::1]/simple/", "http://[::1]:8080/simple/", "https://[::1]/simple/",
    "https://[2001:db8::1]:8443/x", "http://127.0.0.1/simple/", "http://127.0.0.1:8080/x",
    "https://files.example/x",
])
def test_prepare_connects_where_urlsplit_says(url: str) -> None:
    # An IPv6 literal without a port was handed to http.client as "::1" with no
    # port, which it read as host ":" and port 1.
    parts = urlsplit(url)
    request = prepare(url, BASE, None)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(request.host, request.port)  # not connected: where it would connect
    assert (conn.host, conn.port) == (parts.hostname, parts.port or kind.default_port)


def test_prepare_sends_a_urls_credentials_to_its_own_origin_only() -> None:
    token = "Basic " + base64.b64encode(b"bot:s3@cret").decode()
    with_them = prepare("https://bot:s3%40cret@files.example:8443/a?b=c#f", BASE, None)
    assert (with_them.scheme, with_them.host, with_them.port) == ("https", "files.example", 8443)
    assert with_them.target == "/a?b=c"
    assert with_them.headers == {**BASE, "Authorization": token}
    # The origin's reading is cached: another origin, or the same host without
    # credentials, must not inherit them.
    assert prepare("https://files.example:8443/a", BASE, None).headers == BASE
    assert prepare("https://other.example/a", BASE, {"Accept": "x"}).headers == {
        **BASE, "Accept": "x"
    }
    assert BASE == {"User-Agent": "t"}  # the shared base is never changed in place
