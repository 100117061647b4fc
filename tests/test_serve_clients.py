"""pip and uv install from a real mirror through `mirror serve` and through nginx running
the shipped systemd/nginx-simplemirror.conf; both servers negotiate pages alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from uv import find_uv_bin

from simplemirror.cli import config
from simplemirror.sync.run import Sync
from tests.support.serving import MirrorServe, NginxSite, Served
from tests.support.upstream import Upstream, World

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]

JSON = "application/vnd.pypi.simple.v1+json"
V1HTML = "application/vnd.pypi.simple.v1+html"
HTML = "text/html"
LATEST_JSON = "application/vnd.pypi.simple.latest+json"
LATEST_HTML = "application/vnd.pypi.simple.latest+html"
# What pip and uv send for index pages.
PIP_ACCEPT = f"{JSON}, {V1HTML}; q=0.1, text/html; q=0.01"
UV_ACCEPT = f"{JSON}, {V1HTML};q=0.2, text/html;q=0.01"

_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror directory synced once from a small world, shared by every test here."""
    world = World()
    world.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    world.add_project("app", ["0.1"], sdist=False, requires_dist=["foo-bar-baz>=2"])
    world.add_project("yanky", ["1.0", "2.0"])
    for f in world.project("yanky").files:
        if "2.0" in f.filename:
            world.yank("yanky", f.filename, "broken")
    directory = tmp_path_factory.mktemp("mirror")
    with Upstream(world) as up:
        cfg = config.build({}, {"upstream": up.url, "directory": str(directory), "workers": 4})
        assert Sync(cfg).run().exit_code == 0
    return directory


@pytest.fixture(scope="module", params=["serve", "nginx"])
def server(
    request: pytest.FixtureRequest, mirror: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp(f"server-{request.param}")
    served: MirrorServe | NginxSite
    served = MirrorServe(mirror, work) if request.param == "serve" else NginxSite(
        mirror / "web", work
    )
    with served:
        yield served
    if isinstance(served, MirrorServe):
        assert served.returncode == 0, served.log.read_text()


def _offline_env(**extra: str) -> dict[str, str]:
    """The environment less anything that could send a client elsewhere: no index or
    find-links settings from the machine, no proxies."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("PIP_", "UV_")) and key.lower() not in _PROXY_VARIABLES
    }
    return {**env, **extra}


def pip(*args: str, cwd: Path) -> None:
    env = _offline_env(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def uv_install(index: str, target: Path, *requirements: str, cwd: Path) -> None:
    env = _offline_env(
        UV_CACHE_DIR=str(cwd / "uv-cache"), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1"
    )
    result = subprocess.run(
        [find_uv_bin(), "pip", "install", "--no-config", "--python", sys.executable,
         "--default-index", index, "--target", str(target), "--link-mode", "copy",
         *requirements],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def installed(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.endswith(".dist-info"))


def test_pip_downloads_and_installs_with_dependencies(server: Served, tmp_path: Path):
    pip("download", "--no-deps", "--index-url", server.index, "-d", "dl", "Foo_Bar.Baz==1.0",
        cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "foo_bar_baz-1.0-py3-none-any.whl"
    ]
    pip("install", "--index-url", server.index, "--target", "site", "app", "yanky",
        cwd=tmp_path)
    assert installed(tmp_path / "site") == [
        "app-0.1.dist-info", "foo_bar_baz-2.0.dist-info", "yanky-1.0.dist-info"
    ]


def test_pip_builds_an_sdist_fetched_through_the_server(server: Served, tmp_path: Path):
    pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
        "--index-url", server.index, "-d", "src", "foo-bar-baz==2.0", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["foo_bar_baz-2.0.tar.gz"]


def test_uv_installs_with_dependencies(server: Served, tmp_path: Path):
    uv_install(server.index, tmp_path / "site", "app", "yanky", cwd=tmp_path)
    assert installed(tmp_path / "site") == [
        "app-0.1.dist-info", "foo_bar_baz-2.0.dist-info", "yanky-1.0.dist-info"
    ]
    uv_install(server.index, tmp_path / "pinned", "yanky==2.0", "foo-bar-baz==1.0", cwd=tmp_path)
    assert installed(tmp_path / "pinned") == ["foo_bar_baz-1.0.dist-info", "yanky-2.0.dist-info"]
    result = subprocess.run(
        [sys.executable, "-c", "import foo_bar_baz; print(foo_bar_baz.__version__)"],
        cwd=tmp_path / "site", capture_output=True, text=True, check=True, timeout=60,
    )
    assert result.stdout.strip() == "2.0"


def test_pip_and_uv_were_sent_json_pages(server: Served, tmp_path: Path):
    pip("download", "--no-deps", "--index-url", server.index, "-d", "dl", "yanky",
        cwd=tmp_path)
    uv_install(server.index, tmp_path / "site", "yanky", cwd=tmp_path)
    pages = [r for r in server.requests() if r.uri == "/simple/yanky/"]
    assert len(pages) >= 2  # one from each client
    assert all(r.status == 200 and r.page == "json" for r in pages), pages


def get(server: Served, path: str, accept: str | None) -> tuple[int, str, bytes, str]:
    """Status, Content-Type, body and Vary of one request."""
    request = urllib.request.Request(server.url + path)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (response.status, response.headers["Content-Type"], response.read(),
                    response.headers.get("Vary", ""))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read(), exc.headers["Vary"]


@pytest.mark.parametrize("path", ["simple/", "simple/foo-bar-baz/"])
def test_json_to_clients_that_prefer_it_and_html_to_others(server: Served, path: str):
    for accept in (PIP_ACCEPT, UV_ACCEPT, JSON, f"text/html;q=0.5, {JSON}"):
        status, ctype, body, vary = get(server, path, accept)
        assert (status, ctype) == (200, JSON), accept
        assert json.loads(body)["meta"]["api-version"]
        assert "Accept" in vary
    for accept in (None, "*/*", HTML, "text/html,application/xhtml+xml,*/*;q=0.8"):
        status, ctype, body, vary = get(server, path, accept)
        assert (status, ctype.split(";")[0]) == (200, HTML), accept
        assert body.startswith(b"<!DOCTYPE html>")
        assert "Accept" in vary
    status, ctype, body, _ = get(server, path, V1HTML)
    assert (status, ctype) == (200, V1HTML)
    assert body.startswith(b"<!DOCTYPE html>")


@pytest.mark.parametrize(("accept", "query", "expected"), [
    (f"{JSON};q=0, */*", "", HTML),
    ("text/html;q=0, */*", "", V1HTML),
    ("application/*", "", V1HTML),
    (f"{V1HTML};q=0.9, {JSON}", "", JSON),
    (f"{V1HTML}, {JSON};q=0.9", "", V1HTML),
    (f"{JSON};q=0.5, {V1HTML};q=0.4, text/html;q=0.3", "", JSON),
    (f"{V1HTML};q=0.5, text/html;q=0.4", "", V1HTML),
    (HTML, f"format={JSON}", JSON),
    (PIP_ACCEPT, "format=application%2Fvnd.pypi.simple.v1%2Bhtml", V1HTML),
    (PIP_ACCEPT, "format=text/html", HTML),
    ("application/json", "", 406),
    (HTML, "format=application/json", 406),
    # PEP 691's "latest" alias, answered with the concrete type.
    (LATEST_JSON, "", JSON),
    (LATEST_HTML, "", V1HTML),
    (f"{LATEST_JSON}, {LATEST_HTML};q=0.2, text/html;q=0.01", "", JSON),
    (f"{LATEST_HTML}, {HTML}", "", V1HTML),
    (f"{LATEST_JSON};q=0, */*", "", HTML),
    (HTML, f"format={LATEST_JSON}", JSON),
    (PIP_ACCEPT, "format=application%2Fvnd.pypi.simple.latest%2Bhtml", V1HTML),
    ("application/vnd.pypi.simple.v2+json", "", 406),
])
def test_both_servers_negotiate_alike(server: Served, accept: str, query: str, expected: object):
    status, ctype, _, vary = get(server, f"simple/foo-bar-baz/?{query}", accept)
    assert "Accept" in vary
    if expected == 406:
        assert status == 406
    else:
        assert (status, ctype.split(";")[0]) == (200, expected)


@pytest.mark.parametrize(("path", "location"), [
    ("simple", "/simple/"),
    ("simple/foo-bar-baz", "/simple/foo-bar-baz/"),
    ("simple?format=text/html", "/simple/?format=text/html"),
])
def test_both_servers_add_the_trailing_slash(server: Served, path: str, location: str):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(server.url + path, timeout=30)
    assert caught.value.code == 301
    assert caught.value.headers["Location"] == location


def test_files_have_their_types_and_long_cache_lifetimes(server: Served):
    _, _, body, _ = get(server, "simple/foo-bar-baz/", JSON)
    files = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
    base = server.url + "simple/foo-bar-baz/"
    for filename, ctype in (("foo_bar_baz-1.0-py3-none-any.whl", "application/octet-stream"),
                            ("foo_bar_baz-1.0.tar.gz", "application/gzip")):
        url = urllib.parse.urljoin(base, files[filename])
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == ctype
            assert "immutable" in response.headers["Cache-Control"]
            assert response.headers["ETag"]
            assert "Content-Encoding" not in response.headers
            response.read()
        with urllib.request.urlopen(url + ".metadata" if filename.endswith(".whl") else url,
                                    timeout=30) as response:
            assert response.headers["Content-Type"].startswith(
                "text/plain" if filename.endswith(".whl") else "application/gzip"
            )
    request = urllib.request.Request(urllib.parse.urljoin(base, files[
        "foo_bar_baz-1.0-py3-none-any.whl"]), headers={"Range": "bytes=0-3"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert (response.status, response.read()) == (206, b"PK\x03\x04")


@pytest.mark.parametrize("path", ["packages/", "simple/foo-bar-baz/nothing", "state.db",
                                  "simple/no-such-project/"])
def test_both_servers_hide_what_is_not_published(server: Served, path: str):
    assert get(server, path, None)[0] == 404
