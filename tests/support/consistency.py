"""Invariants a mirror directory must satisfy at every instant, even right after a kill -9.

These complement ``tree.assert_consistent`` (which starts from the root pages): they look
at everything on disk, including project pages the root does not list yet, the
content-addressed store and state.db, without using the mirror's own code.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urldefrag

from .dists import normalize
from .tree import _resolve, assert_consistent, html_links

__all__ = [
    "assert_mirror_invariants",
    "assert_packages_content_addressed",
    "assert_project_pages_sound",
    "assert_state_agrees_with_disk",
    "file_sha256",
    "read_runs",
]

METADATA_SUFFIX = ".metadata"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _connect(directory: Path) -> sqlite3.Connection:
    path = directory / "state.db"
    assert path.is_file(), f"{path} is missing"
    # A plain read-write connection: a WAL left by a killed writer is recovered on open,
    # exactly as the next `mirror sync` would.
    return sqlite3.connect(path, timeout=30)


def assert_packages_content_addressed(web: Path) -> int:
    """Every file under web/packages sits at the address of its own sha256.

    Layout: ``packages/<h[:2]>/<h[2:4]>/<h[4:]>/<filename>``; a ``<filename>.metadata``
    beside it is the PEP 658 file of that distribution (checked against the page's
    core-metadata hash by ``tree.assert_consistent``, not here). Anything else under
    packages/ (a stray temporary file, a directory at the wrong depth) is an error.
    Returns the number of distribution files checked.
    """
    packages = web / "packages"
    if not packages.exists():
        return 0
    checked = 0
    for path in sorted(packages.rglob("*")):
        rel = path.relative_to(packages).parts
        if path.is_dir():
            assert len(rel) <= 3, f"unexpected directory {path}"
            continue
        assert len(rel) == 4, f"file at the wrong depth: {path}"
        a, b, rest, filename = rel
        expected = a + b + rest
        assert len(a) == 2 and len(b) == 2 and len(expected) == 64, f"not an address: {path}"
        if filename.endswith(METADATA_SUFFIX):
            dist = path.with_name(filename[: -len(METADATA_SUFFIX)])
            assert dist.is_file(), f"metadata file without its distribution: {path}"
            assert path.stat().st_size > 0, f"empty metadata file: {path}"
            continue
        actual = file_sha256(path)
        assert actual == expected, f"{path}: content has sha256 {actual}, not its address"
        checked += 1
    return checked


def _page_dirs(web: Path) -> Iterator[Path]:
    simple = web / "simple"
    if simple.is_dir():
        yield from sorted(p for p in simple.iterdir() if p.is_dir())


def _root_listed(web: Path) -> set[str]:
    root = web / "simple" / "index.v1_json"
    if not root.exists():
        return set()
    return {normalize(p["name"]) for p in json.loads(root.read_text())["projects"]}


def _check_file(path: Path, sha256: str, size: int | None, where: str) -> None:
    assert path.is_file(), f"{where}: links to missing {path}"
    if size is not None:
        assert path.stat().st_size == size, f"{where}: size differs from the page"
    assert file_sha256(path) == sha256, f"{where}: bytes differ from the page's sha256"


def _check_metadata(path: Path, sha256: str | None, where: str) -> None:
    meta = path.with_name(path.name + METADATA_SUFFIX)
    assert meta.is_file(), f"{where}: advertised metadata missing"
    if sha256 is not None:
        assert file_sha256(meta) == sha256, f"{where}: metadata differs from the page"


def assert_project_pages_sound(web: Path, *, formats_agree: bool = True) -> dict[str, list[str]]:
    """Every project page on disk, listed by the root or not, is whole and its links resolve.

    Each page present parses completely (no truncated page); every file the JSON page lists
    is on disk with the advertised size and sha256, and every link of the HTML page
    resolves to a file whose sha256 is the one in its fragment; advertised .metadata files
    exist with their advertised hash. For a project the root lists, both pages exist and
    list the same files (unless ``formats_agree`` is False: a run killed between writing a
    project's HTML and JSON pages leaves each whole but of different generations, until
    the next run). A project the root does not list yet (its first pages were being
    written when the run died) may lack one page: no client has been pointed at it.
    Returns project -> file names on its JSON page (when there is one).
    """
    listed = _root_listed(web)
    result: dict[str, list[str]] = {}
    for page_dir in _page_dirs(web):
        name = page_dir.name
        rel_dir = f"simple/{name}"
        json_page, html_page = page_dir / "index.v1_json", page_dir / "index.html"
        if name in listed:
            assert json_page.is_file(), f"{name}: listed by the root, index.v1_json missing"
            assert html_page.is_file(), f"{name}: listed by the root, index.html missing"
        json_names: list[str] | None = None
        if json_page.is_file():
            text = json_page.read_text(encoding="utf-8")
            assert text.endswith("\n"), f"{name}: JSON page is truncated"
            doc = json.loads(text)
            assert doc["name"] == name, f"{name}: page names {doc['name']!r}"
            for f in doc["files"]:
                where = f"{name}: {f['filename']}"
                path = _resolve(web, rel_dir, f["url"])
                assert path.name == f["filename"], f"{where}: link names {path.name}"
                _check_file(path, f["hashes"]["sha256"], f["size"], where)
                if f["core-metadata"]:
                    _check_metadata(path, f["core-metadata"].get("sha256"), where)
            json_names = [f["filename"] for f in doc["files"]]
            result[name] = json_names
        html_names: list[str] | None = None
        if html_page.is_file():
            html_text = html_page.read_text(encoding="utf-8")
            assert html_text.rstrip().endswith("</html>"), f"{name}: HTML page is truncated"
            html_names = []
            for anchor in html_links(html_text):
                url, fragment = urldefrag(str(anchor.get("href")))
                path = _resolve(web, rel_dir, url)
                where = f"{name}: HTML link {path.name}"
                algorithm, _, digest = fragment.partition("=")
                assert algorithm == "sha256", f"{where}: no sha256 fragment"
                _check_file(path, digest, None, where)
                core = anchor.get("data-core-metadata")
                if core is not None:
                    algorithm, _, digest = core.partition("=")
                    _check_metadata(path, digest if algorithm == "sha256" else None, where)
                html_names.append(path.name)
        if name in listed and formats_agree:
            assert html_names == json_names, (
                f"{name}: HTML and JSON list different files: {html_names} != {json_names}"
            )
    return result


def assert_state_agrees_with_disk(directory: Path) -> int:
    """state.db is sound and every live (or staged) file row is on disk with its recorded
    size and sha256.

    Also: each live row with metadata hashes has its .metadata file with that sha256, and
    every page the pages table records as current exists. Returns the live row count.
    """
    web = directory / "web"
    conn = _connect(directory)
    try:
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        assert check == "ok", f"state.db integrity_check: {check}"
        rows = conn.execute(
            "SELECT project, filename, path, size, hashes, metadata_hashes FROM files"
            " WHERE removed_gen IS NULL"
        ).fetchall()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'staged_files'").fetchone():
            # Files a stopped run left for the next: on no page, but claimed all the same.
            rows += conn.execute(
                "SELECT project, filename, path, size, hashes, metadata_hashes"
                " FROM staged_files"
            ).fetchall()
        for project, filename, rel, size, hashes, metadata_hashes in rows:
            path = web / rel
            where = f"state.db row {project}/{filename} ({rel})"
            assert path.is_file(), f"{where}: not on disk"
            assert path.name == filename, f"{where}: path does not end in the file name"
            assert path.stat().st_size == size, f"{where}: size differs"
            assert file_sha256(path) == json.loads(hashes)["sha256"], f"{where}: sha256 differs"
            if metadata_hashes is not None:
                meta = path.with_name(path.name + METADATA_SUFFIX)
                expected = json.loads(metadata_hashes).get("sha256")
                assert meta.is_file(), f"{where}: metadata recorded but missing"
                if expected is not None:
                    assert file_sha256(meta) == expected, f"{where}: metadata sha256 differs"
        pages = conn.execute("SELECT path FROM pages WHERE removed_gen IS NULL").fetchall()
        for (rel,) in pages:
            assert (web / rel).is_file(), f"state.db records page {rel}, not on disk"
        return len(rows)
    finally:
        conn.close()


def read_runs(directory: Path) -> list[tuple[object, ...]]:
    """Every row of the runs table, in generation order."""
    conn = _connect(directory)
    try:
        return conn.execute("SELECT * FROM runs ORDER BY generation").fetchall()
    finally:
        conn.close()


def assert_mirror_invariants(directory: Path, *, killed: bool = False) -> None:
    """Everything that must hold after any run, however it ended.

    After a kill (``killed``), a project's two page formats may stand at different
    generations (each whole, every link sound); after a completed run they agree.
    """
    web = directory / "web"
    if (web / "simple" / "index.v1_json").exists() and not killed:
        assert_consistent(web)
    root_html = web / "simple" / "index.html"
    if root_html.exists():
        text = root_html.read_text(encoding="utf-8")
        assert text.rstrip().endswith("</html>"), "root HTML page is truncated"
        for anchor in html_links(text):
            target = web / "simple" / str(anchor["href"]) / "index.html"
            assert target.is_file(), f"root HTML links to a missing page {target}"
    assert_project_pages_sound(web, formats_agree=not killed)
    assert_packages_content_addressed(web)
    if (directory / "state.db").exists():
        assert_state_agrees_with_disk(directory)


def as_if_killed_before_commit(directory: Path, run: Callable[[], object]) -> None:
    """Call ``run`` (a sync), then put state.db and the root pages back as they were
    before, with the run's row still 'running': the disk holds the files and project
    pages the run wrote, state.db none of it, as after a kill -9 before the run's
    transaction committed (the root comes after the commit)."""
    names = ("state.db", "state.db-wal", "state.db-shm",
             "web/simple/index.html", "web/simple/index.v1_json")
    saved = {n: (directory / n).read_bytes() for n in names if (directory / n).exists()}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    run()
    for n in names:
        (directory / n).unlink(missing_ok=True)
    for n, data in saved.items():
        (directory / n).write_bytes(data)
    conn = _connect(directory)
    try:
        with conn:
            conn.execute(
                "INSERT INTO runs (started, upstream, outcome) VALUES (?, 'http://up.example/',"
                " 'running')",
                [started],
            )
    finally:
        conn.close()
