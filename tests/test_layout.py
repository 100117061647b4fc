"""Unit tests for simplemirror.store.layout: where files live and how pages link to them."""

from __future__ import annotations

import hashlib
import posixpath
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest

from simplemirror.store import layout
from tests.support.fuzz import random_strings

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


# -- file_path -----------------------------------------------------------------------------


def test_file_path_is_derived_from_the_digest() -> None:
    path = layout.file_path(SHA_A, "foo-1.0.tar.gz")
    parts = path.split("/")
    assert parts[0] == "packages"
    assert parts[-1] == "foo-1.0.tar.gz"
    # The directories spell out the whole digest, fanned out by its first bytes.
    assert "".join(parts[1:-1]) == SHA_A
    assert [len(p) for p in parts[1:-1]] == [2, 2, 60]
    assert path == f"packages/{SHA_A[:2]}/{SHA_A[2:4]}/{SHA_A[4:]}/foo-1.0.tar.gz"


def test_file_path_is_deterministic() -> None:
    assert layout.file_path(SHA_A, "x.whl") == layout.file_path(SHA_A, "x.whl")


def test_different_content_same_name_never_collides() -> None:
    a = layout.file_path(SHA_A, "foo-1.0.tar.gz")
    b = layout.file_path(SHA_B, "foo-1.0.tar.gz")
    assert a != b
    assert a.rsplit("/", 1)[0] != b.rsplit("/", 1)[0]


def test_same_content_different_names_share_a_directory() -> None:
    a = layout.file_path(SHA_A, "foo-1.0.tar.gz")
    b = layout.file_path(SHA_A, "foo-1.0.zip")
    assert a != b
    assert a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]


def test_file_path_keeps_filename_verbatim() -> None:
    name = "caf\u00e9 #1%+.tar.gz"
    assert layout.file_path(SHA_A, name).endswith("/" + name)


# -- metadata_path, pages ------------------------------------------------------------------


def test_metadata_path_is_file_path_plus_suffix() -> None:
    path = layout.file_path(SHA_A, "foo-1.0-py3-none-any.whl")
    assert layout.metadata_path(path) == path + ".metadata"
    # Same directory as the file, so the PEP 658 URL rule (file URL + ".metadata") holds.
    assert layout.metadata_path(path).rsplit("/", 1)[0] == path.rsplit("/", 1)[0]


def test_project_dir_and_pages() -> None:
    assert layout.project_dir("foo-bar") == "simple/foo-bar"
    html, json_page = layout.project_pages("foo-bar")
    assert html == "simple/foo-bar/index.html"
    assert json_page == "simple/foo-bar/index.v1_json"
    assert html != json_page
    assert layout.ROOT_PAGES == ("simple/index.html", "simple/index.v1_json")


# -- relative_url --------------------------------------------------------------------------


def resolve(from_dir: str, url: str) -> str:
    """Resolve ``url`` as a client would on the page in ``from_dir``; return the decoded path."""
    base = "https://m.example/prefix/"
    resolved = urlsplit(urljoin(f"{base}{from_dir}/", url))
    assert resolved.netloc == "m.example"
    assert resolved.path.startswith("/prefix/")
    return unquote(resolved.path.removeprefix("/prefix/"))


def test_relative_url_from_project_page() -> None:
    target = layout.file_path(SHA_A, "foo-1.0.tar.gz")
    url = layout.relative_url(layout.project_dir("foo"), target)
    assert url == "../../" + target
    assert resolve("simple/foo", url) == target


def test_relative_url_from_root() -> None:
    url = layout.relative_url("simple", "simple/foo/index.html")
    assert url == "foo/index.html"
    assert resolve("simple", url) == "simple/foo/index.html"


@pytest.mark.parametrize("from_dir", ["simple", "simple/foo", "packages/ab", "a/b/c/d"])
@pytest.mark.parametrize(
    "target",
    ["simple/foo/index.html", "simple/foobar/index.html", "simple/fo", "packages/ab/cd/ef/x.whl",
     "packages/abc/x", "a/b/c/d/e", "a/b", "simple", "x"],
)
def test_relative_url_agrees_with_relpath(from_dir: str, target: str) -> None:
    # Shared leading characters are not a shared directory ("simple/fo" vs "simple/foo").
    assert layout.relative_url(from_dir, target) == posixpath.relpath(target, from_dir)
    if not (from_dir + "/").startswith(target + "/"):  # a directory resolves with its slash
        assert resolve(from_dir, layout.relative_url(from_dir, target)) == target


@pytest.mark.parametrize(
    ("name", "encoded_fragment"),
    [
        ("a b.tar.gz", "a%20b.tar.gz"),
        ("a#b.tar.gz", "a%23b.tar.gz"),
        ("a%b.tar.gz", "a%25b.tar.gz"),
        ("a?b.tar.gz", "a%3Fb.tar.gz"),
        ("caf\u00e9.tar.gz", "caf%C3%A9.tar.gz"),
    ],
)
def test_relative_url_percent_encodes(name: str, encoded_fragment: str) -> None:
    target = layout.file_path(SHA_A, name)
    url = layout.relative_url("simple/foo", target)
    assert url.endswith("/" + encoded_fragment)
    assert resolve("simple/foo", url) == target


def test_relative_url_plus_round_trips() -> None:
    # '+' is an ordinary character in a URL path; whether or not it is encoded,
    # decoding the path must give the file name back (never a space).
    target = layout.file_path(SHA_A, "foo-1.0+local.tar.gz")
    url = layout.relative_url("simple/foo", target)
    assert resolve("simple/foo", url) == target
    assert " " not in unquote(url)


def test_url_path_encodes_as_quote_does() -> None:
    alphabet = "aZ09_.-~/+ #%?&=:@;é\u00a0\x00\x7f!$'()*,[]"
    for path in random_strings(3, alphabet, longest=10):
        assert layout.url_path(path) == quote(path, safe="/+"), path
