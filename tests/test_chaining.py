"""A simplemirror tree is itself an upstream: mirror B syncs from mirror A's served tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync
from tests.support.static import StaticServer
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World


def sync(upstream: str, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": upstream, "directory": str(directory), "retries": 0}
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def tree(web: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(web)): p.read_bytes()
        for p in sorted(web.rglob("*"))
        if p.is_file() and p.name != "last-modified"
    }


def test_mirror_of_a_mirror_is_the_same_tree(tmp_path: Path):
    world = World()
    world.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    world.add_project("tiny", ["0.1"], requires_python=">=3.8")
    world.yank("tiny", "tiny-0.1.tar.gz", "oops <b>")
    a, b = tmp_path / "a", tmp_path / "b"
    with Upstream(world) as up, StaticServer(a / "web") as served:
        assert sync(up.url, a).exit_code == 0
        assert sync(f"{served.url}simple/", b).exit_code == 0
        assert tree(b / "web") == tree(a / "web")

        # Changes flow down the chain, and a quiet chain stays quiet.
        world.add_release("tiny", "0.2")
        world.remove_file("Foo__Bar.baz", "foo_bar_baz-1.0.tar.gz")
        assert sync(up.url, a).exit_code == 0
        served.reset_requests()
        assert sync(f"{served.url}simple/", b).exit_code == 0
        assert tree(b / "web") == tree(a / "web")
        assert "tiny-0.2.tar.gz" in assert_consistent(b / "web")["tiny"]
        # B fetched only what changed: the root, two pages, and tiny 0.2's files.
        pages = sorted(r.path for r in served.requests if r.path.startswith("/simple/"))
        assert pages == ["/simple/", "/simple/foo-bar-baz/", "/simple/tiny/"]

        # (This server sends no ETag, so the root comes whole, with no changes.)
        served.reset_requests()
        before = tree(b / "web")
        assert sync(f"{served.url}simple/", b).changed == 0
        assert [r.path for r in served.requests] == ["/simple/"]
        assert tree(b / "web") == before
