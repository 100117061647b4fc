"""Which hosts may serve files (simplemirror.upstream.filehosts), with a fake resolver: no DNS,
no network. Downloads and redirects refused through the clients are at the end."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from simplemirror.cli import config
from simplemirror.simple.model import DistFile
from simplemirror.sync import download
from simplemirror.sync.plan import refuse_foreign_hosts
from simplemirror.upstream.client import Client, RefusedURL, UpstreamError
from simplemirror.upstream.filehosts import (
    AddressClass,
    FileHostGuard,
    address_class,
    file_url_refusal,
    url_origin,
)
from tests.support.canned import Canned
from tests.support.fuzz import random_strings

# A made-up DNS: a public-looking upstream, its file server, and hosts a hostile page
# might name to reach into the network the mirror runs in.
DNS: dict[str, tuple[str, ...]] = {
    "index.example": ("93.184.215.20",),
    "pub.example": ("93.184.215.14",),
    "files.example": ("93.184.215.15", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    "intranet.example": ("10.1.2.3",),
    "metadata.example": ("169.254.169.254",),
    "self.example": ("127.0.0.1", "::1"),
    "mixed.example": ("93.184.215.16", "192.168.0.9"),
    "mapped.example": ("::ffff:10.0.0.1",),
    "cgnat.example": ("100.64.0.1",),
    "zero.example": ("0.0.0.0",),
    "lan.example": ("192.168.7.7",),
}


class FakeDNS:
    """Answers from DNS (None for other names) and counts what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, host: str) -> Sequence[str] | None:
        self.asked.append(host)
        return DNS.get(host)


def refusal(url: str, upstream: str = "https://pub.example/simple/",
            hosts: Sequence[str] = ()) -> str | None:
    return file_url_refusal(url, upstream, frozenset(hosts), FakeDNS())


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", AddressClass.LOOPBACK), ("127.255.0.9", AddressClass.LOOPBACK),
    ("::1", AddressClass.LOOPBACK), ("0.0.0.0", AddressClass.LOOPBACK),
    ("::", AddressClass.LOOPBACK), ("::ffff:127.0.0.1", AddressClass.LOOPBACK),
    ("169.254.169.254", AddressClass.LINK_LOCAL), ("fe80::1", AddressClass.LINK_LOCAL),
    ("10.0.0.1", AddressClass.PRIVATE), ("172.16.5.4", AddressClass.PRIVATE),
    ("192.168.1.1", AddressClass.PRIVATE), ("fd00::5", AddressClass.PRIVATE),
    ("100.64.0.1", AddressClass.PRIVATE), ("::ffff:10.0.0.1", AddressClass.PRIVATE),
    ("198.51.100.7", AddressClass.PRIVATE),
    ("93.184.215.14", AddressClass.PUBLIC), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c",
                                             AddressClass.PUBLIC),
])
def test_address_classes(address: str, kind: AddressClass) -> None:
    assert address_class(address) is kind


# -- the default: any host, but not into the mirror's own network -----------------------


@pytest.mark.parametrize("url", [
    "https://files.example/packages/a-1.0.tar.gz",
    "http://FILES.example:8080/a-1.0.tar.gz",
    "https://pub.example/packages/a-1.0.tar.gz",  # the upstream's own host
    "https://unknown.example/a-1.0.tar.gz",  # no address: no connection reaches it either
])
def test_by_default_files_may_come_from_any_public_host(url: str) -> None:
    assert refusal(url) is None


@pytest.mark.parametrize(("url", "kind", "address"), [
    ("https://intranet.example/a.tar.gz", "private", "10.1.2.3"),
    ("http://metadata.example/latest/a.tar.gz", "link-local", "169.254.169.254"),
    ("http://169.254.169.254/a.tar.gz", "link-local", "169.254.169.254"),
    ("http://self.example:8080/a.tar.gz", "loopback", "127.0.0.1"),
    ("http://127.0.0.1/a.tar.gz", "loopback", "127.0.0.1"),
    ("http://[::1]:9000/a.tar.gz", "loopback", "::1"),
    ("http://mixed.example/a.tar.gz", "private", "192.168.0.9"),
    ("http://mapped.example/a.tar.gz", "private", "::ffff:10.0.0.1"),
    ("http://cgnat.example/a.tar.gz", "private", "100.64.0.1"),
    ("http://zero.example/a.tar.gz", "loopback", "0.0.0.0"),
])
def test_a_public_upstream_may_not_send_the_mirror_into_its_own_network(
    url: str, kind: str, address: str
) -> None:
    why = refusal(url)
    assert why is not None
    host = urlsplit(url).hostname
    assert f"{host!r} resolves to a {kind} address ({address})" in why
    assert "file-hosts" in why and f"--file-host {host}" in why


def test_an_upstream_on_an_internal_address_may_use_files_on_one_of_the_same_kind() -> None:
    # The tests' own case: an upstream on loopback, files on another loopback name.
    assert refusal("http://self.example/a.tar.gz", "http://127.0.0.1:8080/simple/") is None
    assert refusal("http://127.0.0.2/a.tar.gz", "http://self.example/simple/") is None
    # An index inside a private network, with its file server beside it.
    assert refusal("http://lan.example/a.tar.gz", "http://intranet.example/simple/") is None
    # But not of another kind: a private upstream's page does not reach the mirror's
    # loopback or the link-local metadata service, nor a loopback upstream's the LAN.
    upstream = "http://intranet.example/simple/"
    assert "loopback" in (refusal("http://127.0.0.1/a.tar.gz", upstream) or "")
    assert "link-local" in (refusal("http://metadata.example/a.tar.gz", upstream) or "")
    assert "private" in (refusal("http://lan.example/a", "http://127.0.0.1/simple/") or "")


def test_the_upstream_is_resolved_only_when_a_file_host_is_internal() -> None:
    dns = FakeDNS()
    assert file_url_refusal("https://files.example/a", "https://index.example/s/", (), dns) is None
    assert dns.asked == ["files.example"]
    dns.asked.clear()
    assert file_url_refusal("http://lan.example/a", "https://index.example/s/", (), dns)
    assert dns.asked == ["lan.example", "index.example"]


# -- a list set: the complete list besides the upstream's own host ----------------------


def test_a_set_list_is_the_complete_list_besides_the_upstream() -> None:
    dns = FakeDNS()
    hosts = frozenset({"files.example", "intranet.example"})
    upstream = "https://index.example/simple/"
    assert file_url_refusal("https://files.example/a", upstream, hosts, dns) is None
    assert file_url_refusal("https://index.example/p/a", upstream, hosts, dns) is None
    # Listed by the operator: trusted wherever it is.
    assert file_url_refusal("http://intranet.example/a", upstream, hosts, dns) is None
    why = file_url_refusal("https://pub.example/a", upstream, hosts, dns)
    assert why is not None
    assert "'pub.example', which is neither the upstream's host nor in file-hosts" in why
    assert "--file-host pub.example" in why
    assert dns.asked == []  # nothing to resolve: the operator has decided


# -- whatever the list: only http(s), no credentials the operator did not give ------------


@pytest.mark.parametrize("url", [
    "ftp://files.example/a.tar.gz", "file:///etc/passwd", "https:///a.tar.gz",
    "gopher://files.example/a",
])
def test_only_http_urls_with_a_host(url: str) -> None:
    assert "not an http(s) URL" in (refusal(url) or "")
    assert "not an http(s) URL" in (refusal(url, hosts=["files.example"]) or "")


@pytest.mark.parametrize("url", [
    "https://user:secret@files.example/a.tar.gz",
    "https://user@files.example/a.tar.gz",
    "https://:pw@files.example/a.tar.gz",
    "https://other:pw@pub.example/a.tar.gz",  # the upstream's host, other credentials
    "https://me:pw@files.example/a.tar.gz",  # the upstream's credentials, another host
])
def test_credentials_go_only_where_the_operator_put_them(url: str) -> None:
    upstream = "https://me:pw@pub.example/simple/"
    for hosts in ((), ("files.example",)):
        assert "user name or password" in (refusal(url, upstream, hosts) or ""), url


def test_relative_links_of_an_upstream_given_with_credentials_carry_them() -> None:
    upstream = "https://me:pw@pub.example/simple/"
    assert refusal("https://me:pw@pub.example/packages/a.tar.gz", upstream) is None


# -- the guard: one answer for each origin, each host resolved once -----------------------


def test_the_guard_resolves_each_host_once_and_ignores_paths() -> None:
    dns = FakeDNS()
    guard = FileHostGuard("https://index.example/simple/", (), dns)
    for i in range(50):
        assert guard.refusal(f"https://files.example/packages/{i}/a-{i}.tar.gz") is None
        assert guard.refusal(f"https://lan.example/{i}.tar.gz") is not None
    assert sorted(dns.asked) == ["files.example", "index.example", "lan.example"]


def test_refuse_foreign_hosts_splits_a_page_by_the_policy() -> None:
    def dist(name: str, url: str) -> DistFile:
        return DistFile(filename=name, url=url, hashes={"sha256": "0" * 64})

    files = [
        dist("a-1.tar.gz", "https://index.example/packages/a-1.tar.gz"),
        dist("b-1.tar.gz", "https://FILES.example:8443/b-1.tar.gz"),
        dist("c-1.tar.gz", "https://evil.example/c-1.tar.gz"),
    ]
    listed = FileHostGuard("https://index.example/simple/", {"files.example"}, FakeDNS())
    allowed, refused = refuse_foreign_hosts(files, listed.refusal)
    assert [d.filename for d in allowed] == ["a-1.tar.gz", "b-1.tar.gz"]
    assert [name for name, _ in refused] == ["c-1.tar.gz"]
    assert "evil.example" in refused[0][1] and "file-hosts" in refused[0][1]
    # Unset: evil.example has no address here, so only the guard could stop it, and
    # does not; a name resolving into the LAN is stopped.
    files.append(dist("d-1.tar.gz", "http://lan.example/d-1.tar.gz"))
    default = FileHostGuard("https://index.example/simple/", (), FakeDNS())
    allowed, refused = refuse_foreign_hosts(files, default.refusal)
    assert [d.filename for d in allowed] == ["a-1.tar.gz", "b-1.tar.gz", "c-1.tar.gz"]
    assert [name for name, _ in refused] == ["d-1.tar.gz"]


# -- url_origin: decided once per origin, so it must parse as the whole URL does ----------


def _authority(url: str) -> tuple[object, ...] | type[ValueError]:
    try:
        parts = urlsplit(url)
        return (parts.scheme, parts.username, parts.password, parts.hostname, parts.port)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("url", [
    "https://Files.Example/packages/a/b/x.whl",
    "https://user:pw@files.example:8443/x.whl",
    "https://files.example?x/y", "https://files.example#frag/x", "https://files.example",
    "http://evil.example\\@files.example/x", "https://files.example\\@evil.example/x",
    "//files.example/x", "files.example/x", "ht tp://files.example/x", "a:b://files.example/",
    " https://files.example/x", "\thttps://files.example/x", "https://files.ex\tample/x",
    "https://files.example\r\n/x", "https://[::1]:8080/x", "https://[::1/x", "https://]::1[/x",
    "HTTPS://FILES.EXAMPLE/X", "https://@/x", "https://:80/x", "https:///x", "",
    "https://files.example/x?y#z", "https://u:p@h:1@files.example/x", "https://h:99999/x",
])
def test_url_origin_parses_as_the_whole_url(url: str) -> None:
    assert _authority(url_origin(url)) == _authority(url)


def test_url_origin_agrees_with_urlsplit_on_random_urls() -> None:
    alphabet = "aB:/?#@[]\\.%-_ \t\r\n\x00\x7f1é"
    schemes = ["https://", "http://", "h:", "//", "", "x+y://"]
    for url in random_strings(7, alphabet, starts=schemes, longest=12):
        assert _authority(url_origin(url)) == _authority(url), url


# -- through the clients: the first URL and every redirect hop, before it is asked --------


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


def make_config(tmp_path: Path, upstream: str, **overrides: object) -> config.Config:
    values = {"upstream": upstream, "directory": str(tmp_path), "retries": 2,
              "retry_wait": 0, "retry_max_wait": 0, **overrides}
    cfg = config.build({}, values)
    cfg.tmp.mkdir(parents=True, exist_ok=True)
    return cfg


REDIRECTS = {
    # Unset list, loopback upstream: the link-local metadata address is not reachable.
    "default": ({}, "http://169.254.169.254/latest/a.whl"),
    # Set list: a host not on it, although loopback like the upstream.
    "listed": ({"file_hosts": ["files.example"]}, "http://localhost:{port}/elsewhere/a.whl"),
}


@pytest.mark.parametrize("case", REDIRECTS, ids=REDIRECTS)
def test_a_redirect_to_a_refused_host_is_not_followed(
    server: Canned, tmp_path: Path, case: str
) -> None:
    overrides, target = REDIRECTS[case]
    target = target.format(port=urlsplit(server.base).port)
    server.add("/packages/a.whl", status=302, headers={"Location": target})
    cfg = make_config(tmp_path, server.url("/simple/"), **overrides)
    client = Client(cfg)

    with pytest.raises(RefusedURL, match="refused") as info:
        client.run(download.fetch_to(
            client, server.url("/packages/a.whl"), expected_hashes={}, expected_size=None,
            path_for_sha256=lambda sha: sha,
        ))
    assert target in str(info.value)
    # Asked once, never retried, and the target never asked at all.
    assert [c.path for c in server.calls] == ["/packages/a.whl"]
    assert list(cfg.tmp.iterdir()) == []


def test_a_redirect_of_a_page_to_a_refused_host_is_not_followed(
    server: Canned, tmp_path: Path
) -> None:
    # Pages and the root answer to the same policy as files, hop by hop.
    target = f"http://localhost:{urlsplit(server.base).port}/elsewhere/"
    server.add("/simple/", status=302, headers={"Location": target})
    client = Client(make_config(tmp_path, server.url("/simple/"), file_hosts=["files.example"]))
    with pytest.raises(RefusedURL, match="'localhost'"):
        client.fetch_root(None)
    assert [c.path for c in server.calls] == ["/simple/"]


def test_a_refused_first_url_is_never_asked(server: Canned, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, server.url("/simple/"), file_hosts=["files.example"])
    client = Client(cfg)
    url = server.url("/x.whl").replace("127.0.0.1", "localhost")
    with pytest.raises(UpstreamError, match="'localhost'"):
        client.run(read(client, url))
    assert server.calls == []


async def read(client: Client, url: str) -> None:
    async with client.stream(url) as stream:
        async for _ in stream.chunks():
            pass


PROXIED = "http://index.invalid/simple/"


def test_through_a_proxy_a_redirect_to_a_host_not_listed_is_not_followed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Canned
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base)  # the canned server answers as the proxy
    client = Client(make_config(tmp_path, PROXIED, file_hosts=["files.invalid"]))
    server.add("http://index.invalid/packages/a.whl", status=302,
               headers={"Location": "http://files.invalid/a.whl"})
    server.add("http://files.invalid/a.whl", status=302,
               headers={"Location": "http://elsewhere.invalid/a.whl"})
    server.add("http://elsewhere.invalid/a.whl", b"x")
    with pytest.raises(RefusedURL, match=r"'elsewhere\.invalid'"):
        client.run(read(client, "http://index.invalid/packages/a.whl"))
    asked = [call.path for call in server.calls]
    assert asked == ["http://index.invalid/packages/a.whl", "http://files.invalid/a.whl"]
