"""Checks that a published tree is consistent, independently of the mirror's own code.

Every link on every page must resolve to a file on disk whose bytes match the
hashes and size the page advertises; the root must list exactly the project
pages that exist; both formats of a page must list the same files.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def html_links(text: str) -> list[dict[str, str | None]]:
    parser = _Links()
    parser.feed(text)
    return parser.links


def _resolve(web: Path, page_dir: str, url: str) -> Path:
    assert "://" not in url and not url.startswith("/"), f"link is not relative: {url}"
    rel = posixpath.normpath(posixpath.join(page_dir, unquote(url)))
    assert not rel.startswith(".."), f"link escapes the tree: {url}"
    return web / rel


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(web: Path) -> dict[str, list[str]]:
    """Check the whole tree; return project name -> file names listed on its page."""
    root = json.loads((web / "simple" / "index.v1_json").read_text())
    root_html = html_links((web / "simple" / "index.html").read_text())
    listed = {p["name"] for p in root["projects"]}
    hrefs = {str(a["href"]).rstrip("/") for a in root_html}
    assert len(root_html) == len(listed), "root HTML and JSON list different projects"
    result: dict[str, list[str]] = {}
    for href in sorted(hrefs):
        page_dir = f"simple/{href}"
        doc = json.loads((web / page_dir / "index.v1_json").read_text())
        assert doc["name"] == href
        html_files = {
            str(a.get("href")).split("#")[0].rsplit("/", 1)[-1]: a
            for a in html_links((web / page_dir / "index.html").read_text())
        }
        names = []
        for f in doc["files"]:
            path = _resolve(web, page_dir, f["url"])
            assert path.is_file(), f"{href}: {f['filename']} links to missing {path}"
            assert path.name == f["filename"]
            assert path.stat().st_size == f["size"], f"{href}: size of {f['filename']}"
            assert _sha256(path) == f["hashes"]["sha256"], f"{href}: {f['filename']} corrupt"
            if f["core-metadata"]:
                meta = path.with_name(path.name + ".metadata")
                assert meta.is_file(), f"{href}: advertised metadata missing for {f['filename']}"
                assert _sha256(meta) == f["core-metadata"]["sha256"]
            anchor = html_files.get(f["url"].rsplit("/", 1)[-1])
            assert anchor is not None, f"{href}: {f['filename']} missing from the HTML page"
            url, fragment = urldefrag(str(anchor["href"]))
            assert _resolve(web, page_dir, url) == path
            assert fragment == f"sha256={f['hashes']['sha256']}"
            assert ("data-core-metadata" in anchor) == bool(f["core-metadata"])
            assert ("data-yanked" in anchor) == bool(f["yanked"])
            names.append(f["filename"])
        assert len(html_files) == len(names), f"{href}: HTML and JSON list different files"
        result[href] = names
    return result


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file below ``directory`` with its mtime and content hash."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, _sha256(p))
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
