"""HTTPS: verified against the CA bundle, refused without it.

The public index is served over HTTPS, so pages and files are both fetched here from a
loopback server with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

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
