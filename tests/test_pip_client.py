"""A real client (pip) installs from the tree the mirror produced."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simplemirror.cli import config
from simplemirror.sync.run import Sync
from tests.support.static import StaticServer
from tests.support.upstream import Upstream, World

pytestmark = pytest.mark.slow

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A mirror synced once from a small world, shared by the tests below."""
    world = World()
    world.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    world.add_project("yanky", ["1.0", "2.0"])
    for f in world.project("yanky").files:
        if "2.0" in f.filename:
            world.yank("yanky", f.filename, "broken")
    directory = tmp_path_factory.mktemp("mirror")
    with Upstream(world) as up:
        cfg = config.build({}, {"upstream": up.url, "directory": str(directory), "workers": 4})
        assert Sync(cfg).run().exit_code == 0
    yield directory / "web"


@pytest.fixture(scope="module")
def served(mirror: Path) -> Iterator[StaticServer]:
    with StaticServer(mirror) as server:
        yield server


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Isolated from any pip configuration on the machine (extra indexes, caches).
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1"}
    env.pop("PIP_INDEX_URL", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    env.pop("PIP_FIND_LINKS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def downloaded(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir())


def test_pip_downloads_pinned_and_unpinned_over_http(served: StaticServer, tmp_path: Path):
    index = f"{served.url}simple/"
    served.reset_requests()
    pip("download", "--no-deps", "--index-url", index, "-d", "pinned", "foo-bar-baz==1.0",
        cwd=tmp_path)
    pip("download", "--no-deps", "--index-url", index, "-d", "latest", "Foo_Bar.Baz",
        cwd=tmp_path)
    assert downloaded(tmp_path / "pinned") == ["foo_bar_baz-1.0-py3-none-any.whl"]
    assert downloaded(tmp_path / "latest") == ["foo_bar_baz-2.0-py3-none-any.whl"]
    # pip prefers PEP 691 JSON and the mirror offers it.
    page_requests = [r for r in served.requests if r.path == "/simple/foo-bar-baz/"]
    assert page_requests and all(JSON_TYPE in r.header("Accept") for r in page_requests)


def test_pip_skips_yanked_unless_pinned(served: StaticServer, tmp_path: Path):
    index = f"{served.url}simple/"
    pip("download", "--no-deps", "--index-url", index, "-d", "a", "yanky", cwd=tmp_path)
    pip("download", "--no-deps", "--index-url", index, "-d", "b", "yanky==2.0", cwd=tmp_path)
    assert downloaded(tmp_path / "a") == ["yanky-1.0-py3-none-any.whl"]
    assert downloaded(tmp_path / "b") == ["yanky-2.0-py3-none-any.whl"]


def test_pip_builds_an_sdist_from_the_mirror(served: StaticServer, tmp_path: Path):
    pytest.importorskip("setuptools")
    index = f"{served.url}simple/"
    pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
        "--index-url", index, "-d", "src", "foo-bar-baz==1.0", cwd=tmp_path)
    assert downloaded(tmp_path / "src") == ["foo_bar_baz-1.0.tar.gz"]


def test_pip_downloads_over_file_url(mirror: Path, tmp_path: Path):
    index = (mirror / "simple").as_uri() + "/"
    pip("download", "--no-deps", "--index-url", index, "-d", "dl", "foo-bar-baz==1.0",
        cwd=tmp_path)
    assert downloaded(tmp_path / "dl") == ["foo_bar_baz-1.0-py3-none-any.whl"]


def test_pip_installs_and_the_module_imports(served: StaticServer, tmp_path: Path):
    pip("install", "--no-deps", "--index-url", f"{served.url}simple/", "--target", "site",
        "foo-bar-baz", cwd=tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import foo_bar_baz; print(foo_bar_baz.__version__)"],
        cwd=tmp_path / "site", capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == "2.0"
