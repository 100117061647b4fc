"""The event-loop transport: the blocking transport's cases (test_transport.py), awaited.

Each test runs its coroutine with asyncio.run (no plugin). The server is Canned
where it can say what is needed; framings and faults it cannot produce (chunked
bodies, 1xx answers, a connection closed or reset just as it is reused) come
from Raw, a scripted socket server below.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TypeVar

import pytest

from simplemirror.async_transport import AsyncTransport
from simplemirror.transport import DeadEnd, TransportError
from tests.support.canned import Canned
from tests.support.spies import refuse_spinning_inflater

BODY = b"0123456789" * 10_000
T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


@pytest.fixture(autouse=True)
def no_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_spinning_inflater(monkeypatch)


def run(test: Callable[[AsyncTransport], Awaitable[T]], *, read_timeout: float = 5.0) -> T:
    """``test(transport)`` on a new event loop; the transport is closed after."""

    async def main() -> T:
        t = AsyncTransport(user_agent="t", connect_timeout=5, read_timeout=read_timeout)
        try:
            return await test(t)
        finally:
            t.close()

    return asyncio.run(main())


async def read(
    t: AsyncTransport, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    async with t.stream(url, headers) as stream:
        return stream.status, await stream.body.read()


def ports(server: Canned) -> int:
    """How many connections the requests came on."""
    return len({call.port for call in server.calls})


# -- a scripted server ---------------------------------------------------------------


class Raw:
    """Runs ``script(self, conn, n)`` for its n-th connection (from 0), in a thread of its own.

    For answers byte for byte, and for what a server does between two requests.
    """

    def __init__(self, script: Callable[[Raw, socket.socket, int], None]) -> None:
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []
        """Each request's head, as received."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            n, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn, contextlib.suppress(OSError):
            self._script(self, conn, n)

    def request(self, conn: socket.socket) -> bytes:
        """The next request's head; b"" when the client closed the connection instead."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return b""
            head += data
        self.requests.append(head)
        return head

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self._listener.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[Raw, socket.socket, int], None]], Raw]]:
    made: list[Raw] = []

    def make(script: Callable[[Raw, socket.socket, int], None]) -> Raw:
        made.append(Raw(script))
        return made[-1]

    yield make
    for server in made:
        server.close()


def answering(*answers: bytes) -> Callable[[Raw, socket.socket, int], None]:
    """Each connection: every request answered with the next of ``answers``; then closed."""

    def script(server: Raw, conn: socket.socket, n: int) -> None:
        for answer in answers:
            if not server.request(conn):
                return
            conn.sendall(answer)

    return script


def reset(conn: socket.socket) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), not an orderly close."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def chunked(*chunks: bytes, headers: tuple[str, ...] = ()) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return (f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{head}\r\n".encode()
            + framed + b"0\r\n\r\n")


# -- connections ---------------------------------------------------------------------


def test_consecutive_requests_share_one_connection(server: Canned) -> None:
    server.add("/a", BODY)
    server.add("/b", b"b")

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        return [await read(t, server.url(p)) for p in ("/a", "/b", "/a")]

    assert run(scenario) == [(200, BODY), (200, b"b"), (200, BODY)]
    assert ports(server) == 1


def test_concurrent_requests_each_take_a_connection_then_leave_it_to_the_next(
    server: Canned,
) -> None:
    server.add("/a", BODY)
    url = server.url("/a")

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        together = await asyncio.gather(*(read(t, url) for _ in range(3)))
        return [*together, *[await read(t, url) for _ in range(3)]]

    assert run(scenario) == [(200, BODY)] * 6
    assert ports(server) == 3  # the three kept connections served the later three


def test_a_body_left_unread_is_not_taken_for_the_next_answer(server: Canned) -> None:
    server.add("/big", BODY)
    server.add("/small", b"small")

    async def scenario(t: AsyncTransport) -> tuple[int, bytes]:
        async with t.stream(server.url("/big")) as stream:
            assert await stream.body.read1(100)  # then abandoned, like a download cut off
        return await read(t, server.url("/small"))

    assert run(scenario) == (200, b"small")
    assert ports(server) == 2  # the first connection was dropped


def test_a_body_whose_rest_has_not_arrived_is_not_taken_for_the_next_answer(
    server: Canned,
) -> None:
    # The rest of /big comes only after /small has been asked for: on the same
    # connection it would be read as /small's answer.
    rest_may_come = threading.Event()
    server.add("/big", BODY, pause=rest_may_come)
    server.add("/small", b"small")

    async def scenario(t: AsyncTransport) -> tuple[int, bytes]:
        async with t.stream(server.url("/big")) as stream:
            half = b""
            while len(half) < len(BODY) // 2:
                half += await stream.body.read1(len(BODY) // 2 - len(half))
            assert half == BODY[: len(BODY) // 2]
        timer = threading.Timer(0.3, rest_may_come.set)
        timer.start()
        try:
            return await read(t, server.url("/small"))
        finally:
            timer.cancel()
            rest_may_come.set()

    assert run(scenario) == (200, b"small")
    assert ports(server) == 2


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Canned) -> None:
    # The server hangs up after answering, without saying so.
    server.add("/first", b"first", close=True)
    server.add("/second", b"second")

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        first = await read(t, server.url("/first"))
        await asyncio.sleep(0.1)  # the server's close has reached the loop
        return [first, await read(t, server.url("/second"))]

    assert run(scenario) == [(200, b"first"), (200, b"second")]
    assert ports(server) == 2


@pytest.mark.parametrize("hang_up", [socket.socket.close, reset], ids=["close", "reset"])
def test_a_kept_connection_that_fails_as_it_is_reused_is_tried_again_on_a_new_one(
    raw: Callable[..., Raw], hang_up: Callable[[socket.socket], None]
) -> None:
    # The server's keep-alive timeout runs out just as the next request is sent:
    # it takes the request, then closes (or resets) without answering.
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        if n == 0:
            server.request(conn)
            conn.sendall(ok(b"first"))
            server.request(conn)
            hang_up(conn)
        else:
            server.request(conn)
            conn.sendall(ok(b"second"))

    up = raw(script)

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        return [await read(t, up.url + "/1"), await read(t, up.url + "/2")]

    assert run(scenario) == [(200, b"first"), (200, b"second")]
    assert up.connections == 2
    assert [r.split(b" ", 2)[1] for r in up.requests] == [b"/1", b"/2", b"/2"]


def test_a_new_connection_closed_without_an_answer_is_an_error_at_once(
    raw: Callable[..., Raw],
) -> None:
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        server.request(conn)

    up = raw(script)
    with pytest.raises(TransportError, match="without answering") as info:
        run(lambda t: read(t, up.url + "/x"))
    assert info.value.transient
    assert up.connections == 1  # not tried again: a new connection is no stale one


def test_a_kept_connection_is_tried_again_only_once(raw: Callable[..., Raw]) -> None:
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        server.request(conn)
        if n == 0:
            conn.sendall(ok(b"first"))
            server.request(conn)  # then closed without an answer, as on every connection

    up = raw(script)

    async def scenario(t: AsyncTransport) -> None:
        assert await read(t, up.url + "/1") == (200, b"first")
        await read(t, up.url + "/2")

    with pytest.raises(TransportError, match="without answering"):
        run(scenario)
    assert up.connections == 2


# -- redirects -----------------------------------------------------------------------


def test_redirects_are_followed_relative_and_absolute(server: Canned) -> None:
    server.add("/one", status=302, headers={"Location": "two"})
    server.add("/two", status=301, headers={"Location": server.url("/three")})
    server.add("/three", b"here")

    async def scenario(t: AsyncTransport) -> tuple[str, int, bytes]:
        async with t.stream(server.url("/one")) as stream:
            return stream.url, stream.status, await stream.body.read()

    assert run(scenario) == (server.url("/three"), 200, b"here")
    assert [c.path for c in server.calls] == ["/one", "/two", "/three"]
    assert ports(server) == 1  # a redirect's body is read, its connection kept


@pytest.mark.parametrize("hops", [10, 11])
def test_ten_redirects_are_followed_not_eleven(server: Canned, hops: int) -> None:
    for i in range(hops):
        server.add(f"/r{i}", status=307, headers={"Location": f"/r{i + 1}"})
    server.add(f"/r{hops}", b"end")
    if hops == 10:
        assert run(lambda t: read(t, server.url("/r0"))) == (200, b"end")
    else:
        with pytest.raises(DeadEnd, match="more than 10 redirects"):
            run(lambda t: read(t, server.url("/r0")))
    assert len(server.calls) == 11


def test_a_redirect_loop_is_a_dead_end(server: Canned) -> None:
    server.add("/loop", status=302, headers={"Location": "/loop"})
    with pytest.raises(DeadEnd, match="redirects"):
        run(lambda t: read(t, server.url("/loop")))
    assert len(server.calls) == 11


def test_a_redirect_to_a_url_that_is_not_http_is_a_dead_end(server: Canned) -> None:
    server.add("/f", status=302, headers={"Location": "ftp://127.0.0.1/f"})
    with pytest.raises(DeadEnd, match="not an http"):
        run(lambda t: read(t, server.url("/f")))


def test_credentials_in_a_url_are_sent_as_basic_auth_to_that_host_only(
    server: Canned,
) -> None:
    elsewhere = Canned()
    try:
        server.add("/f", status=302, headers={"Location": "/same-host"})
        server.add("/same-host", status=302, headers={"Location": elsewhere.url("/g")})
        elsewhere.add("/g", b"here")
        with_auth = server.url("/f").replace("http://", "http://bot:s3%40cret@")
        assert run(lambda t: read(t, with_auth)) == (200, b"here")
        expected = "Basic " + base64.b64encode(b"bot:s3@cret").decode()
        assert [c.header("Authorization") for c in server.calls] == [expected, expected]
        assert [c.header("Authorization") for c in elsewhere.calls] == [None]
    finally:
        elsewhere.close()


# -- what may be sent ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/a b", "/a\r\nX-Smuggled: 1", "/a\x00b", "/a?q=1 HTTP/1.1\r\nHost: x", "/a\x7f",
     "/a\x0bb"],
    ids=["space", "crlf-and-space", "nul", "query", "del", "vertical-tab"],
)
def test_a_url_with_spaces_or_control_characters_is_a_dead_end_and_nothing_is_sent(
    path: str,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}{path}"
        with pytest.raises(DeadEnd, match="control characters or spaces"):
            run(lambda t: read(t, url), read_timeout=1)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was even opened


def test_line_breaks_and_tabs_in_a_url_never_reach_the_request(raw: Callable[..., Raw]) -> None:
    # urlsplit drops them (as browsers do): what is left is sent, on one request line.
    up = raw(answering(ok(b"a")))
    assert run(lambda t: read(t, up.url + "/a\r\nX-Smuggled:\t1")) == (200, b"a")
    request_line, *header_lines = up.requests[0].split(b"\r\n")
    assert request_line == b"GET /aX-Smuggled:1 HTTP/1.1"
    assert not [line for line in header_lines if line.lower().startswith(b"x-smuggled")]


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://127.0.0.1/x", "not an http"), ("http:///x", "not an http"),
     ("http://127.0.0.1:http/x", "port"), ("http://127.0.0.1:99999/x", "port")],
)
def test_urls_no_request_can_be_made_of_are_dead_ends(url: str, message: str) -> None:
    with pytest.raises(DeadEnd, match=message):
        run(lambda t: read(t, url))


def test_a_header_that_is_not_latin1_is_a_dead_end(server: Canned) -> None:
    server.add("/a", b"a")
    with pytest.raises(DeadEnd, match="Latin-1"):
        run(lambda t: read(t, server.url("/a"), {"X-Name": "snow\N{SNOWMAN}"}))
    assert server.calls == []


def test_the_request_says_who_asks_and_what_it_takes(server: Canned) -> None:
    server.add("/a", b"a")
    assert run(lambda t: read(t, server.url("/a"), {"Accept": "x/y"})) == (200, b"a")
    call = server.calls[0]
    assert (call.header("User-Agent"), call.header("Accept-Encoding"), call.header("Accept")) == (
        "t", "gzip, deflate", "x/y")
    assert call.header("Host") == server.base.removeprefix("http://")


def test_get_reads_the_whole_answer_its_headers_without_regard_to_case(server: Canned) -> None:
    server.add("/r", status=301, headers={"Location": "/a"})
    server.add("/a", BODY, headers={"ETag": '"e1"'})
    got = run(lambda t: t.get(server.url("/r")))
    assert (got.url, got.status, got.body) == (server.url("/a"), 200, BODY)
    assert got.headers.get("etag") == got.headers["ETAG"] == '"e1"'
    assert "Content-Length" in got.headers and "Location" not in got.headers


# -- bodies: what Content-Encoding says, and what arrives ----------------------------


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


ENCODINGS = pytest.mark.parametrize(
    ("encoding", "wbits"),
    [("gzip", 16 + zlib.MAX_WBITS), ("x-gzip", 16 + zlib.MAX_WBITS),
     ("deflate", zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS)],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)


@ENCODINGS
def test_compressed_bodies_are_decoded(server: Canned, encoding: str, wbits: int) -> None:
    server.add("/c", _deflate(BODY, wbits), headers={"Content-Encoding": encoding})
    server.add("/after", b"next")

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        return [await read(t, server.url("/c")), await read(t, server.url("/after"))]

    assert run(scenario) == [(200, BODY), (200, b"next")]
    assert ports(server) == 1  # the connection was kept


@ENCODINGS
def test_a_compressed_body_comes_in_pieces_no_larger_than_asked_for(
    server: Canned, encoding: str, wbits: int
) -> None:
    server.add("/c", _deflate(BODY, wbits), headers={"Content-Encoding": encoding})

    async def scenario(t: AsyncTransport) -> list[bytes]:
        pieces = []
        async with t.stream(server.url("/c")) as stream:
            while piece := await stream.body.read1(777):
                pieces.append(piece)
        return pieces

    pieces = run(scenario)
    assert b"".join(pieces) == BODY
    assert max(map(len, pieces)) == 777


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 16 + zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS)],
    ids=["gzip", "deflate-raw"],
)
def test_a_compressed_body_never_inflates_past_what_was_asked_for(
    server: Canned, encoding: str, wbits: int
) -> None:
    bomb = b"\0" * 20_000_000  # ~20 KB on the wire
    server.add("/bomb", _deflate(bomb, wbits), headers={"Content-Encoding": encoding})

    async def scenario(t: AsyncTransport) -> tuple[int, int]:
        total = largest = 0
        async with t.stream(server.url("/bomb")) as stream:
            while chunk := await stream.body.read1(65536):
                largest = max(largest, len(chunk))
                total += len(chunk)
        return total, largest

    assert run(scenario) == (len(bomb), 65536)


def test_a_compressed_body_cut_short_is_an_error(server: Canned) -> None:
    server.add("/cut", gzip.compress(BODY)[:-20], headers={"Content-Encoding": "gzip"})
    with pytest.raises(TransportError, match="ends early"):
        run(lambda t: read(t, server.url("/cut")))


@pytest.mark.parametrize("at_once", [True, False], ids=["same-read", "next-read"])
def test_bytes_after_a_compressed_body_are_an_error(server: Canned, at_once: bool) -> None:
    packed = gzip.compress(b"a")
    server.add("/extra", packed + b"junk", headers={"Content-Encoding": "gzip"})

    async def scenario(t: AsyncTransport) -> None:
        async with t.stream(server.url("/extra")) as stream:
            # Asked for exactly the compressed stream, the junk comes with the next read.
            size = 1 << 16 if at_once else len(packed)
            while await stream.body.read1(size):
                pass

    with pytest.raises(TransportError, match="after the compressed body"):
        run(scenario)


def test_an_encoding_that_was_not_asked_for_is_a_dead_end(server: Canned) -> None:
    server.add("/br", b"\x8b\x00", headers={"Content-Encoding": "br"})
    server.add("/next", b"next")

    async def scenario(t: AsyncTransport) -> tuple[int, bytes]:
        with pytest.raises(DeadEnd, match="'br'"):
            await read(t, server.url("/br"))
        return await read(t, server.url("/next"))

    assert run(scenario) == (200, b"next")
    assert ports(server) == 2  # the unread body went with its connection


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_empty_body_said_to_be_compressed_is_empty(server: Canned, encoding: str) -> None:
    server.add("/empty", b"", headers={"Content-Encoding": encoding})
    server.add("/next", b"next")

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        return [await read(t, server.url("/empty")), await read(t, server.url("/next"))]

    assert run(scenario) == [(200, b""), (200, b"next")]
    assert ports(server) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_304_that_names_a_content_encoding_is_still_an_empty_answer(
    server: Canned, encoding: str
) -> None:
    # The encoding of the representation it stands for, which some servers repeat.
    server.add("/page", status=304, headers={"Content-Encoding": encoding, "ETag": '"e"'})
    got = run(lambda t: t.get(server.url("/page"), {"If-None-Match": '"e"'}))
    assert (got.status, got.body) == (304, b"")


def test_a_body_shorter_than_declared_is_an_error(server: Canned) -> None:
    server.add("/short", b"x" * 100, length=1000)
    with pytest.raises(TransportError, match="900 bytes still to come") as info:
        run(lambda t: read(t, server.url("/short")))
    assert info.value.transient


def test_a_body_reset_midway_is_an_error(raw: Callable[..., Raw]) -> None:
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        server.request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        time.sleep(0.05)
        reset(conn)

    up = raw(script)
    with pytest.raises(TransportError) as info:
        run(lambda t: read(t, up.url + "/x"))
    assert info.value.transient


def test_a_plain_body_comes_in_pieces_no_larger_than_asked_for(server: Canned) -> None:
    server.add("/a", BODY[:1000])

    async def scenario(t: AsyncTransport) -> list[bytes]:
        async with t.stream(server.url("/a")) as stream:
            return [piece async for piece in _pieces(stream.body.read1, 7)]

    pieces = run(scenario)
    assert b"".join(pieces) == BODY[:1000] and max(map(len, pieces)) == 7


async def _pieces(read1: Callable[[int], Awaitable[bytes]], n: int) -> AsyncIterator[bytes]:
    while piece := await read1(n):
        yield piece


@pytest.mark.parametrize("status", [304, 204])
def test_an_empty_answer_leaves_the_connection_usable(server: Canned, status: int) -> None:
    server.add("/gone", status=status)
    server.add("/next", b"next")

    async def scenario(t: AsyncTransport) -> tuple[int, tuple[int, bytes]]:
        got = await t.get(server.url("/gone"))
        assert got.body == b""
        return got.status, await read(t, server.url("/next"))

    assert run(scenario) == (status, (200, b"next"))
    assert ports(server) == 1


# -- timeouts and refusals -----------------------------------------------------------


def test_a_server_that_does_not_answer_in_time_is_a_transient_error(server: Canned) -> None:
    server.add("/slow", b"late", stall=1.0)
    started = time.monotonic()
    with pytest.raises(TransportError, match="TimeoutError") as info:
        run(lambda t: read(t, server.url("/slow")), read_timeout=0.2)
    assert info.value.transient
    assert time.monotonic() - started < 0.9


def test_a_body_that_stops_arriving_is_a_transient_error(server: Canned) -> None:
    never = threading.Event()
    server.add("/stuck", BODY, pause=never)  # half the body, then nothing for 5 s
    started = time.monotonic()
    try:
        with pytest.raises(TransportError, match="TimeoutError") as info:
            run(lambda t: read(t, server.url("/stuck")), read_timeout=0.2)
    finally:
        never.set()
    assert info.value.transient
    assert time.monotonic() - started < 2.0


def test_each_wait_has_the_whole_read_timeout(raw: Callable[..., Raw]) -> None:
    # Six pieces 0.1 s apart: 0.5 s in all, more than the 0.3 s read timeout, but
    # no single wait is that long. The deadline moves with each wait.
    pieces = [b"x" * 10] * 6

    def script(server: Raw, conn: socket.socket, n: int) -> None:
        server.request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n")
        for piece in pieces:
            time.sleep(0.1)
            conn.sendall(piece)

    up = raw(script)
    assert run(lambda t: read(t, up.url + "/x"), read_timeout=0.3) == (200, b"x" * 60)


def test_a_stall_after_quick_answers_times_out_on_time(raw: Callable[..., Raw]) -> None:
    # Many quick waits on one connection, then one that never ends: the deadline
    # left by the quick ones must not hide it, nor end it early.
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        for _ in range(20):
            server.request(conn)
            conn.sendall(ok(b"quick"))
        server.request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        time.sleep(3)

    up = raw(script)

    async def scenario(t: AsyncTransport) -> float:
        for _ in range(20):
            assert await read(t, up.url + "/q") == (200, b"quick")
        started = time.monotonic()
        with pytest.raises(TransportError, match="TimeoutError"):
            await read(t, up.url + "/stall")
        return time.monotonic() - started

    waited = run(scenario, read_timeout=0.4)
    assert 0.35 < waited < 1.5


def test_a_refused_connection_is_a_transient_error() -> None:
    probe = Canned()
    url = probe.url("/gone")
    probe.close()  # nothing listens on that port now
    with pytest.raises(TransportError, match="ConnectionRefusedError") as info:
        run(lambda t: read(t, url))
    assert info.value.transient


# -- framings and heads ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbo\r\n2;x=y\r\ndy\r\n0\r\n"
        b"Trailer: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n"
        b"4\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody",  # no length: the body ends with the connection
        # A length that is not a number is no length: to the connection's end, again.
        b"HTTP/1.1 200 OK\r\nContent-Length: four\r\n\r\nbody",
        b"HTTP/1.1 200\r\ncontent-length: 4\r\n\r\nbody",  # no reason phrase
    ],
    ids=["100-continue", "chunked", "chunked-over-length", "until-close", "bad-length",
         "no-reason"],
)
def test_framings(raw: Callable[..., Raw], answer: bytes) -> None:
    up = raw(answering(answer))
    assert run(lambda t: read(t, up.url + "/x")) == (200, b"body")


def test_a_negative_length_is_no_length(raw: Callable[..., Raw]) -> None:
    # As the blocking transport (and http.client) read it: to the connection's end.
    up = raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nbody"))
    assert run(lambda t: read(t, up.url + "/x")) == (200, b"body")


def test_informational_answers_before_the_final_one_are_skipped(raw: Callable[..., Raw]) -> None:
    up = raw(answering(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok(b"body")
    ))
    assert run(lambda t: read(t, up.url + "/x")) == (200, b"body")


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_headers_are_read_without_regard_to_case_first_of_a_repeat_kept(
    raw: Callable[..., Raw], eol: bytes
) -> None:
    head = [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/html",
        b'ETAG: "e1"',
        b"X-Long: one",
        b"  two",  # an obsolete folded continuation
        b"not a header line",
        b'etag: "e2"',
        b"Content-Length: 4",
        b"Content-Length: 99",
    ]
    up = raw(answering(eol.join(head) + eol + eol + b"body"))

    async def scenario(t: AsyncTransport) -> tuple[Mapping[str, str], bytes]:
        async with t.stream(up.url + "/x") as stream:
            return stream.headers, await stream.body.read()

    headers, body = run(scenario)
    assert body == b"body"
    assert headers.get("content-type") == "text/html"
    assert headers.get("ETag") == headers["etag"] == '"e1"'
    assert headers.get("x-long") == "one two"
    assert "Content-Type" in headers and "Location" not in headers
    assert headers.get("Location", "none") == "none"


def test_chunked_bodies_keep_their_connection_and_come_in_pieces_as_asked(
    raw: Callable[..., Raw],
) -> None:
    up = raw(answering(
        chunked(b"body", b"x" * 10)[:-5] + b"0;ext=1\r\nTrailer: t\r\n\r\n",
        chunked(gzip.compress(BODY), headers=("Content-Encoding: gzip",)),
        ok(b"last"),
    ))

    async def scenario(t: AsyncTransport) -> list[object]:
        async with t.stream(up.url + "/1") as stream:
            pieces = [piece async for piece in _pieces(stream.body.read1, 3)]
        return [pieces, await read(t, up.url + "/2"), await read(t, up.url + "/3")]

    pieces, second, third = run(scenario)
    assert b"".join(pieces) == b"body" + b"x" * 10  # type: ignore[arg-type]
    assert max(map(len, pieces)) == 3  # type: ignore[arg-type]
    assert (second, third) == ((200, BODY), (200, b"last"))
    assert up.connections == 1


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nbody\r\n0\r\n\r\n", b"4\r\nbodyXX\r\n0\r\n\r\n", b"8\r\nbody", b"4\r\nbody\r\n"],
    ids=["bad-size", "no-line-break", "cut-in-a-chunk", "no-last-chunk"],
)
def test_broken_chunked_bodies_are_errors(raw: Callable[..., Raw], body: bytes) -> None:
    up = raw(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body))
    with pytest.raises(TransportError):
        run(lambda t: read(t, up.url + "/x"))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", None),
        (b"HTTP/1.1 OK 200\r\n\r\n", "BadStatusLine"),
        (b"HTTP/2 200\r\n\r\n", "BadStatusLine"),
        (b"ICY 200 OK\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", None),
    ],
    ids=["not-http", "no-code", "http2", "icy", "many-headers", "long-line"],
)
def test_an_answer_that_is_not_http_1_is_a_transport_error(
    raw: Callable[..., Raw], answer: bytes, message: str | None
) -> None:
    up = raw(answering(answer))
    with pytest.raises(TransportError, match=message) as info:
        run(lambda t: read(t, up.url + "/x"))
    assert not isinstance(info.value, DeadEnd)


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"y" * 300_000],
    ids=["banner", "endless-head"],
)
def test_a_head_that_never_ends_is_a_transport_error(
    raw: Callable[..., Raw], answer: bytes
) -> None:
    # The server sends this, then waits with the connection open (as an SSH server does).
    def script(server: Raw, conn: socket.socket, n: int) -> None:
        server.request(conn)
        conn.sendall(answer)
        conn.recv(1)  # until the client gives up

    up = raw(script)
    started = time.monotonic()
    with pytest.raises(TransportError):
        run(lambda t: read(t, up.url + "/x"), read_timeout=0.5)
    assert time.monotonic() - started < 3


# -- whether an answer leaves its connection for the next request --------------------------


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (ok(b"body"), True),
        (ok(b"body", "Connection: close"), False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nbody", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody", True),
    ],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive"],
)
def test_an_answer_says_whether_its_connection_carries_the_next(
    raw: Callable[..., Raw], answer: bytes, kept: bool
) -> None:
    # The server would answer a second request on the same connection either way:
    # only what the first answer said decides whether the client sends it there.
    up = raw(answering(answer, ok(b"next")))

    async def scenario(t: AsyncTransport) -> list[tuple[int, bytes]]:
        return [await read(t, up.url + "/1"), await read(t, up.url + "/2")]

    first, second = run(scenario)
    assert first == (200, b"body")
    assert second == ((200, b"next") if kept else (200, b"body"))
    assert up.connections == (1 if kept else 2)


def test_a_body_read_slower_than_it_arrives_is_held_back_and_comes_whole(
    server: Canned, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many times the connection's high-water mark: reading pauses while that much is
    # unread and resumes as it is taken, and no byte is lost or doubled.
    from simplemirror import async_transport

    held: list[int] = []
    received = async_transport._Connection.buffer_updated

    def recording(self: async_transport._Connection, nbytes: int) -> None:
        received(self, nbytes)
        held.append(self._buffered)

    monkeypatch.setattr(async_transport._Connection, "buffer_updated", recording)
    big = bytes(range(256)) * (4 * 1024 * 16)  # 16 MiB
    server.add("/big", big)

    async def scenario(t: AsyncTransport) -> bytes:
        pieces = []
        async with t.stream(server.url("/big")) as stream:
            await asyncio.sleep(0.2)  # time enough for all of it to arrive, unread
            while piece := await stream.body.read1(1 << 16):
                pieces.append(bytes(piece))
        return b"".join(pieces)

    assert run(scenario) == big
    high = async_transport._HIGH_WATER
    assert high < max(held) <= high + async_transport._RECEIVE  # held back, not all of it
