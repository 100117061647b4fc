"""HTTPS: verified against the CA bundle, refused without it.

The public index is served over HTTPS, so pages and files are both fetched here from a
loopback server with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from simplemirror.upstream.httpclient import Http, Limits, TransportError

BODY = b"a wheel, pretend\n" * 5000


def _self_signed(where: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (.ci/run installs it)")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The server's certificate and key: its own CA."""
    return _self_signed(tmp_path_factory.mktemp("tls"))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_url(certificate: tuple[Path, Path]) -> Iterator[str]:
    cert, key = certificate
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/packages/x.whl"
    server.shutdown()
    server.server_close()


def limits() -> Limits:
    return Limits(
        connect_timeout=5, read_timeout=5, request_timeout=30, min_rate=0, min_rate_window=30,
        max_page_size=1 << 20, max_root_size=1 << 20,
    )


def page_get(url: str) -> bytes:
    """Twice, the second time on the kept-alive TLS connection."""

    async def get() -> bytes:
        http = Http(user_agent="t", limits=limits(), connections=2)
        try:
            first = await http.get(url)
            second = await http.get(url)
            assert first.status == second.status == 200 and first.body == second.body
            return first.body
        finally:
            await http.close()

    return asyncio.run(get())


def file_get(url: str) -> bytes:
    async def get() -> bytes:
        http = Http(user_agent="t", limits=limits(), connections=2)
        try:
            async with http.stream(url) as stream:
                assert stream.status == 200
                return b"".join([chunk async for chunk in stream.chunks()])
        finally:
            await http.close()

    return asyncio.run(get())


@pytest.mark.parametrize("get", [page_get, file_get], ids=["page", "file"])
def test_https_is_verified_against_the_ca_bundle(
    https_url: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, get: object
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    assert get(https_url) == BODY  # type: ignore[operator]


@pytest.mark.parametrize("get", [page_get, file_get], ids=["page", "file"])
def test_a_certificate_the_bundle_does_not_vouch_for_is_refused(
    https_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, get: object
) -> None:
    other_ca, _ = _self_signed(tmp_path)  # a bundle of another CA than the server's
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        get(https_url)  # type: ignore[operator]


def test_importing_the_client_leaves_other_tls_contexts_their_default_store(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp is imported with the loading of the default CA store turned off (see
    httpclient); afterwards a default context loads it as before (OpenSSL reads
    SSL_CERT_FILE as it loads)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 1


def test_the_ca_bundle_is_loaded_only_once_tls_is_needed(
    https_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Loading it costs every process ~20 ms: a plain-http upstream never pays."""
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))

    async def both() -> None:
        client = Http(user_agent="t", limits=limits(), connections=2)
        try:
            got = await client.get(f"http://127.0.0.1:{plain.server_address[1]}/simple/")
            assert got.body == BODY
            with pytest.raises(FileNotFoundError):
                await client.get(https_url)
        finally:
            await client.close()

    try:
        asyncio.run(both())
    finally:
        plain.shutdown()
        plain.server_close()


# -- through an https proxy tunnel (CONNECT), and redirects that leave TLS ----------------


class _Tunnel(socketserver.ThreadingTCPServer):
    """An HTTP proxy that only tunnels (CONNECT), as corporate proxies do for https: it
    sees where the client goes, never what it says."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.connects: list[str] = []


class _TunnelHandler(socketserver.StreamRequestHandler):
    server: _Tunnel

    def handle(self) -> None:
        request = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # the rest of the CONNECT request's head
        if len(request) < 2 or request[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Only CONNECT\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.connects.append(request[1])
        host, port = request[1].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as far:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            back = threading.Thread(target=_pipe, args=(far, self.connection), daemon=True)
            back.start()
            _pipe(self.connection, far)
            back.join(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def tunnel(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Tunnel]:
    proxy = _Tunnel()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.parametrize("get", [page_get, file_get], ids=["page", "file"])
def test_through_a_proxy_an_https_upstream_is_tunnelled_and_still_verified(
    https_url: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
    tunnel: _Tunnel, get: object,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    assert get(https_url) == BODY  # type: ignore[operator]
    port = https_url.split(":")[2].split("/")[0]
    assert tunnel.connects and set(tunnel.connects) == {f"127.0.0.1:{port}"}


def test_through_a_proxy_tunnel_a_certificate_is_checked_end_to_end(
    https_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tunnel: _Tunnel
) -> None:
    # The proxy could be anyone: TLS is with the index, not with it.
    other_ca, _ = _self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        page_get(https_url)
    assert tunnel.connects


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Plain http: records each request's Authorization header and answers BODY."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("get", [page_get, file_get], ids=["page", "file"])
def test_a_netrc_password_never_follows_a_redirect_from_https_to_plain_http(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    get: object,
) -> None:
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    downgrade = f"http://127.0.0.1:{plain.server_address[1]}/packages/x.whl"

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        seen: ClassVar[list[str | None]] = []

        def do_GET(self) -> None:
            self.seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", downgrade)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    threading.Thread(target=secure.serve_forever, daemon=True).start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    try:
        assert get(f"https://127.0.0.1:{secure.server_address[1]}/x.whl") == BODY  # type: ignore[operator]
        # Over TLS the index gets its password; the plain hop, on the same host, does not.
        assert Redirect.seen and all(a and a.startswith("Basic ") for a in Redirect.seen)
        assert _Recorder.seen and _Recorder.seen == [None] * len(_Recorder.seen)
    finally:
        for server in (plain, secure):
            server.shutdown()
            server.server_close()
