"""The file transport: kept-alive connections, redirects, and no reuse of a half-read body."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from simplemirror import config, download
from simplemirror.download import VerificationError
from simplemirror.transport import Transport, TransportError
from simplemirror.upstream import Client, TransientError
from tests.support.canned import Canned

BODY = b"0123456789" * 10_000


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


def transport() -> Transport:
    return Transport(user_agent="t", connect_timeout=5, read_timeout=5, maxsize=2)


def read(t: Transport, url: str) -> tuple[int, bytes]:
    with t.stream(url) as stream:
        return stream.status, stream.raw.read()


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
        assert stream.raw.read1(100)  # then abandoned, like a download cut off
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
        assert stream.raw.read(len(BODY) // 2) == BODY[: len(BODY) // 2]
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
        assert (stream.url, stream.status, stream.raw.read()) == (server.url("/three"), 200,
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


def test_files_go_through_a_proxy_the_environment_sets(
    server: Canned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base)
    server.add("/packages/a.whl", b"via the proxy")
    cfg = config.build({}, {"upstream": "http://index.invalid/simple/",
                            "directory": str(tmp_path)})
    with Client(cfg).stream("http://files.invalid/packages/a.whl") as stream:
        assert stream.raw.read() == b"via the proxy"
    assert [call.path for call in server.calls] == ["http://files.invalid/packages/a.whl"]
