"""Unit tests for simplemirror.simple.model's HTML (PEP 503) parsing: RootIndex.from_html and
ProjectPage.from_html, including the data- attributes of PEPs 592, 658, 714 and 740 and
the PEP 792 meta tags. JSON parsing is tested in test_model.py."""

from __future__ import annotations

import hashlib
import re
from html import escape
from typing import Any
from urllib.parse import quote, unquote

import pytest

from simplemirror.simple.model import (
    MAX_FILENAME_BYTES,
    DistFile,
    HeldFile,
    ProjectPage,
    RootIndex,
    RootProject,
    UpstreamDataError,
)
from simplemirror.simple.render import ProjectInfo, RootEntry, project_html, root_html
from simplemirror.store import layout

PAGE_URL = "https://index.example/simple/foo/"
ROOT_URL = "https://index.example/simple/"
FILES = "https://files.example/packages/ab/cd"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SHA_A = sha256(b"file a")
SHA_B = sha256(b"file b")
MD5_A = hashlib.md5(b"file a").hexdigest()
META_SHA = sha256(b"Metadata-Version: 2.1\n")


def anchor(
    text: str = "foo-1.0.tar.gz",
    href: str | None = None,
    *,
    fragment: str | None = f"sha256={SHA_A}",
    **attrs: str | None,
) -> str:
    """An ``<a>`` as an index would write it; attribute values are escaped, None is bare.

    ``href`` defaults to an absolute URL ending in ``text``; keyword names map
    ``data_requires_python`` to ``data-requires-python``.
    """
    if href is None:
        href = f"{FILES}/{text}"
    if fragment is not None:
        href += f"#{fragment}"
    parts = [f'href="{escape(href)}"']
    for key, value in attrs.items():
        key = key.replace("_", "-")
        parts.append(key if value is None else f'{key}="{escape(value)}"')
    return f"<a {' '.join(parts)}>{escape(text)}</a><br />"


def document(*body: str, head: str = "", tail: str = "", meta: bool = True) -> str:
    version = '<meta name="pypi:repository-version" content="1.1">' if meta else ""
    return (
        f"<!DOCTYPE html>\n<html><head>{version}{head}<title>Links for foo</title></head>\n"
        f"<body><h1>Links for foo</h1>\n{chr(10).join(body)}\n</body></html>\n{tail}"
    )


def parse(
    text: str, *, page_url: str = PAGE_URL, name: str = "foo", header_serial: int | None = None
) -> ProjectPage:
    return ProjectPage.from_html(text, page_url=page_url, name=name, header_serial=header_serial)


def parse_one(a: str, *, head: str = "", page_url: str = PAGE_URL) -> DistFile:
    """Parse a page holding just anchor ``a``; fail if it was rejected."""
    page = parse(document(a, head=head), page_url=page_url)
    assert page.rejected == ()
    assert len(page.files) == 1
    return page.files[0]


def rejection(a: str) -> str:
    """Parse a page holding just anchor ``a``; assert it was rejected and return why."""
    page = parse(document(a))
    assert page.files == ()
    assert len(page.rejected) == 1
    return page.rejected[0][1]


def root(*body: str, tail: str = "", header_serial: int | None = None) -> RootIndex:
    return RootIndex.from_html(
        document(*body, tail=tail), page_url=ROOT_URL, header_serial=header_serial
    )


# -- RootIndex.from_html --------------------------------------------------------------------


def with_version(version: str, *body: str) -> str:
    return document(*body, meta=False, head=f'<meta name="pypi:repository-version" '
                    f'content="{version}">')


def test_root_and_page_of_an_unknown_major_version_are_refused() -> None:
    message = "upstream speaks Simple API version 2.0, which this simplemirror does not know"
    text = with_version("2.0", anchor())
    with pytest.raises(UpstreamDataError, match=re.escape(message)):
        RootIndex.from_html(text, page_url=ROOT_URL)
    with pytest.raises(UpstreamDataError, match=re.escape(f"{PAGE_URL}: {message}")):
        parse(text)


@pytest.mark.parametrize(
    ("version", "expected"), [("1.0", (1, 0)), ("1.99", (1, 99)), ("garbage", None)]
)
def test_a_known_major_version_is_parsed(version: str, expected: tuple[int, int]) -> None:
    text = with_version(version, anchor())
    assert RootIndex.from_html(text, page_url=ROOT_URL).api_version == expected
    page = parse(text)
    assert page.api_version == expected and len(page.files) == 1


def test_without_a_version_the_page_says_none() -> None:
    assert parse(document(anchor(), meta=False)).api_version is None
    assert root('<a href="x/">foo</a>').api_version == (1, 1)  # document()'s own



def test_root_names_come_from_the_link_text_and_are_normalized() -> None:
    index = root('<a href="/simple/foo-bar-baz/">Foo_Bar.Baz</a>', '<a href="django/">django</a>')
    assert index.projects == (
        RootProject("Foo_Bar.Baz", "foo-bar-baz", None),
        RootProject("django", "django", None),
    )
    assert (index.rejected, index.collisions) == ((), ())


def test_root_hrefs_are_not_trusted_for_the_name() -> None:
    # Pages are fetched by normalized name, so a link pointing elsewhere changes nothing.
    index = root('<a href="https://evil.example/other/">foo</a>')
    assert [p.normalized for p in index.projects] == ["foo"]


def test_root_names_are_unescaped_and_stripped() -> None:
    index = root('<a href="x/">\n  Foo&#95;Bar&period;baz  \n</a>')
    assert index.projects == (RootProject("Foo_Bar.baz", "foo-bar-baz", None),)


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "foo bar", "-foo", "caf\u00e9", "<script>", "foo!", ".hidden"]
)
def test_root_invalid_names_rejected_with_reason(name: str) -> None:
    index = root(f'<a href="x/">{escape(name)}</a>', '<a href="good/">good</a>')
    assert [p.normalized for p in index.projects] == ["good"]
    assert len(index.rejected) == 1
    assert index.rejected[0][0] == name
    assert "not a valid project name" in index.rejected[0][1]


def test_root_empty_link_text_rejected() -> None:
    index = root('<a href="x/"></a>', '<a href="good/">good</a>')
    assert [p.normalized for p in index.projects] == ["good"]
    assert index.rejected == (("", "not a valid project name (PEP 508)"),)


def test_root_collision_keeps_the_first_spelling() -> None:
    # HTML gives no serials to choose by: the first spelling listed stays.
    index = root('<a href="a/">Foo_Bar</a>', '<a href="b/">foo-bar</a>', '<a href="c/">x</a>')
    assert index.projects == (
        RootProject("Foo_Bar", "foo-bar", None),
        RootProject("x", "x", None),
    )
    assert index.collisions == (("foo-bar", "Foo_Bar"),)


def test_root_anchors_without_href_are_not_links() -> None:
    index = root('<a name="top">top</a>', '<a href="foo/">foo</a>')
    assert [p.normalized for p in index.projects] == ["foo"]


def test_root_serial_from_serial_comment_not_given_to_projects() -> None:
    index = root('<a href="foo/">foo</a>', tail="<!--SERIAL 12345-->\n", header_serial=7)
    assert index.serial == 12345
    assert index.projects[0].serial is None


def test_root_serial_too_large_falls_back_to_header() -> None:
    assert root('<a href="foo/">foo</a>', tail=f"<!--SERIAL {'9' * 5000}-->", header_serial=7
                ).serial == 7


def test_root_serial_falls_back_to_header_then_none() -> None:
    assert root('<a href="foo/">foo</a>', header_serial=7).serial == 7
    assert root('<a href="foo/">foo</a>').serial is None


def test_root_without_links_or_repository_version_is_not_an_index() -> None:
    # An error or maintenance page must not read as "upstream lists no projects".
    with pytest.raises(UpstreamDataError, match="not a simple index"):
        RootIndex.from_html(
            "<html><body><h1>Down for maintenance</h1></body></html>", page_url=ROOT_URL
        )


def test_root_with_repository_version_and_no_links_is_an_empty_index() -> None:
    index = root()
    assert (index.projects, index.rejected) == ((), ())


def test_root_rendered_by_simplemirror_parses_back() -> None:
    entries = [
        RootEntry("Foo_Bar.Baz", "foo-bar-baz", 3),
        RootEntry("django", "django", None),
        RootEntry("A-B", "a-b", 9),
    ]
    index = RootIndex.from_html(root_html(entries), page_url=ROOT_URL, header_serial=5)
    assert [(p.name, p.normalized) for p in index.projects] == [
        (e.name, e.normalized) for e in entries
    ]
    assert index.serial == 5
    assert (index.rejected, index.collisions) == ((), ())


# -- ProjectPage.from_html: the page ---------------------------------------------------------


def test_page_name_is_the_callers_normalized_and_html_has_no_versions_or_extra() -> None:
    page = parse(document(anchor()), name="Foo_Bar")
    assert page.name == "foo-bar"
    assert page.versions is None
    assert page.extra == {}
    assert page.status is None


def test_page_every_attribute() -> None:
    dist = parse_one(
        anchor(
            "foo-1.0-py3-none-any.whl",
            data_requires_python=">=3.8, <4",
            data_yanked='broken <b>build</b> & "more"',
            data_core_metadata=f"sha256={META_SHA}",
            data_gpg_sig="true",
            data_provenance="https://index.example/integrity/foo/1.0/whl/provenance",
        )
    )
    assert dist == DistFile(
        filename="foo-1.0-py3-none-any.whl",
        url=f"{FILES}/foo-1.0-py3-none-any.whl",
        hashes={"sha256": SHA_A},
        requires_python=">=3.8, <4",
        yanked=True,
        yanked_reason='broken <b>build</b> & "more"',
        core_metadata={"sha256": META_SHA},
        gpg_sig=True,
        provenance="https://index.example/integrity/foo/1.0/whl/provenance",
    )


def test_page_plain_anchor_has_defaults() -> None:
    dist = parse_one(anchor())
    assert (dist.requires_python, dist.yanked, dist.yanked_reason) == (None, False, None)
    assert (dist.core_metadata, dist.gpg_sig, dist.provenance) == (False, None, None)
    assert (dist.size, dist.upload_time, dict(dist.extra)) == (None, None, {})


def test_requires_python_is_unescaped() -> None:
    # What PyPI writes: the specifier's ">" and "<" escaped in the attribute.
    text = document(
        f'<a href="{FILES}/foo-1.0.tar.gz#sha256={SHA_A}" '
        'data-requires-python="&gt;=3.8,&lt;4,!=3.9.*">foo-1.0.tar.gz</a>'
    )
    assert parse(text).files[0].requires_python == ">=3.8,<4,!=3.9.*"


def test_requires_python_unquoted_and_single_quoted_attributes() -> None:
    text = document(
        f"<a href='{FILES}/foo-1.0.tar.gz#sha256={SHA_A}' data-requires-python=&gt;=3.7>"
        "foo-1.0.tar.gz</a>"
    )
    assert parse(text).files[0].requires_python == ">=3.7"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, (False, None)),
        ({"data_yanked": None}, (True, None)),
        ({"data_yanked": ""}, (True, None)),
        ({"data_yanked": "security issue"}, (True, "security issue")),
        ({"data_yanked": "<script>&amp;"}, (True, "<script>&amp;")),
    ],
)
def test_yanked(attrs: dict[str, str | None], expected: tuple[bool, str | None]) -> None:
    dist = parse_one(anchor(**attrs))
    assert (dist.yanked, dist.yanked_reason) == expected


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, False),
        ({"data_core_metadata": "true"}, True),
        ({"data_core_metadata": f"sha256={META_SHA}"}, {"sha256": META_SHA}),
        ({"data_core_metadata": f"SHA256={META_SHA.upper()}"}, {"sha256": META_SHA}),
        # PEP 658 spelling, used when the PEP 714 one is absent.
        ({"data_dist_info_metadata": "true"}, True),
        ({"data_dist_info_metadata": f"sha256={META_SHA}"}, {"sha256": META_SHA}),
        # The PEP 714 name wins over the old one.
        ({"data_core_metadata": "true", "data_dist_info_metadata": f"sha256={SHA_B}"}, True),
        (
            {"data_core_metadata": f"sha256={META_SHA}", "data_dist_info_metadata": "true"},
            {"sha256": META_SHA},
        ),
        # Present with a hash the mirror cannot check: exists, unverified (as in JSON).
        ({"data_core_metadata": "frobnicate=abc"}, True),
        ({"data_core_metadata": "false"}, False),
        ({"data_core_metadata": None}, False),
    ],
)
def test_core_metadata(attrs: dict[str, str | None], expected: object) -> None:
    dist = parse_one(anchor(**attrs))
    if isinstance(expected, dict):
        assert isinstance(dist.core_metadata, dict)
        assert dict(dist.core_metadata) == expected
    else:
        assert dist.core_metadata is expected


def test_malformed_core_metadata_hash_rejects_the_file() -> None:
    assert "core-metadata" in rejection(anchor(data_core_metadata="sha256=nothex"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("TRUE", True), ("yes", None), ("", None), (None, None)],
)
def test_gpg_sig(value: str | None, expected: bool | None) -> None:
    assert parse_one(anchor(data_gpg_sig=value)).gpg_sig is expected


def test_gpg_sig_absent_is_none() -> None:
    assert parse_one(anchor()).gpg_sig is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://index.example/integrity/p", "https://index.example/integrity/p"),
        ("/integrity/p", "https://index.example/integrity/p"),
        ("javascript:alert(1)", None),
        ("file:///etc/passwd", None),
        ("", None),
    ],
)
def test_provenance(value: str, expected: str | None) -> None:
    dist = parse_one(anchor(data_provenance=value))
    assert dist.provenance == expected


# -- hash fragments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fragment", "hashes"),
    [
        (f"sha256={SHA_A}", {"sha256": SHA_A}),
        (f"md5={MD5_A}", {"md5": MD5_A}),
        (f"SHA256={SHA_A.upper()}", {"sha256": SHA_A}),
        (
            f"sha512={hashlib.sha512(b'x').hexdigest()}",
            {"sha512": hashlib.sha512(b"x").hexdigest()},
        ),
    ],
)
def test_hash_from_the_fragment_and_the_url_without_it(
    fragment: str, hashes: dict[str, str]
) -> None:
    dist = parse_one(anchor(fragment=fragment))
    assert dict(dist.hashes) == hashes
    assert dist.url == f"{FILES}/foo-1.0.tar.gz"
    assert dist.metadata_url == f"{FILES}/foo-1.0.tar.gz.metadata"


@pytest.mark.parametrize("fragment", [None, "", "sha256", "frobnicate=abcd", f"shake_128={SHA_A}"])
def test_no_verifiable_hash_rejected_like_json(fragment: str | None) -> None:
    assert "no hash" in rejection(anchor(fragment=fragment))


@pytest.mark.parametrize(
    "fragment",
    [f"sha256={SHA_A[:-1]}z", f"sha256={SHA_A[:63]}", f"sha256={SHA_A}0", "sha256=", "md5=0"],
)
def test_malformed_digest_rejected(fragment: str) -> None:
    reason = rejection(anchor(fragment=fragment))
    assert "hex digest" in reason or "wrong length" in reason


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://files.example/p/foo-1.0.tar.gz", "https://files.example/p/foo-1.0.tar.gz"),
        ("http://files.example/foo-1.0.tar.gz", "http://files.example/foo-1.0.tar.gz"),
        ("/packages/ab/foo-1.0.tar.gz", "https://index.example/packages/ab/foo-1.0.tar.gz"),
        ("../../packages/ab/foo-1.0.tar.gz", "https://index.example/packages/ab/foo-1.0.tar.gz"),
        ("foo-1.0.tar.gz", "https://index.example/simple/foo/foo-1.0.tar.gz"),
        ("//cdn.example/foo-1.0.tar.gz", "https://cdn.example/foo-1.0.tar.gz"),
        # HTML strips whitespace around a URL attribute.
        ("  /p/foo-1.0.tar.gz\n", "https://index.example/p/foo-1.0.tar.gz"),
    ],
)
def test_hrefs_resolved_against_the_page_url(href: str, url: str) -> None:
    assert parse_one(anchor(href=href)).url == url


def test_base_href_is_honoured() -> None:
    head = '<base href="https://cdn.example/mirror/simple/foo/">'
    dist = parse_one(anchor(href="../../files/foo-1.0.tar.gz"), head=head)
    assert dist.url == "https://cdn.example/mirror/files/foo-1.0.tar.gz"


def test_base_href_whitespace_is_stripped() -> None:
    head = '<base href="\n  https://cdn.example/x/  ">'
    assert parse_one(anchor(href="foo-1.0.tar.gz"), head=head).url == (
        "https://cdn.example/x/foo-1.0.tar.gz"
    )


def test_relative_base_href_is_resolved_against_the_page_url() -> None:
    dist = parse_one(anchor(href="foo-1.0.tar.gz"), head='<base href="/dl/">')
    assert dist.url == "https://index.example/dl/foo-1.0.tar.gz"


def test_provenance_resolved_against_base_href() -> None:
    dist = parse_one(
        anchor(data_provenance="prov/foo"), head='<base href="https://cdn.example/x/">'
    )
    assert dist.provenance == "https://cdn.example/x/prov/foo"


def test_first_base_with_href_wins_even_after_the_links() -> None:
    # As in a browser: one base URL for the whole document, from the first <base href>.
    text = document(
        anchor(href="foo-1.0.tar.gz"),
        '<base target="_top"><base href="https://one.example/d/"><base href="https://two/">',
    )
    assert parse(text).files[0].url == "https://one.example/d/foo-1.0.tar.gz"


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)//foo-1.0.tar.gz",
        "file:///etc/foo-1.0.tar.gz",
        "ftp://files.example/foo-1.0.tar.gz",
        "data:text/plain,foo-1.0.tar.gz",
    ],
)
def test_non_http_hrefs_rejected(href: str) -> None:
    assert "http" in rejection(anchor(href=href))


def test_base_href_to_another_scheme_cannot_smuggle_files() -> None:
    text = document(anchor(href="foo-1.0.tar.gz"), head='<base href="file:///etc/">')
    page = parse(text)
    assert page.files == ()
    assert "http" in page.rejected[0][1]


def test_empty_href_rejected() -> None:
    assert "url" in rejection(anchor(href="", fragment=f"sha256={SHA_A}"))


@pytest.mark.parametrize(
    "href",
    [
        "https://files.example/packages/other-1.0.tar.gz",
        "https://files.example/packages/foo-1.0.tar.gz/",
        "https://files.example/download?file=foo-1.0.tar.gz",
        "https://files.example/packages/..%2Ffoo-1.0.tar.gz",
    ],
)
def test_link_text_must_match_the_last_part_of_its_url(href: str) -> None:
    assert "does not match" in rejection(anchor("foo-1.0.tar.gz", href=href))


def test_percent_encoded_href_matches_its_text() -> None:
    href = f"{FILES}/foo%2Bbar-1.0%2Blocal.tar.gz"
    assert parse_one(anchor("foo+bar-1.0+local.tar.gz", href=href)).url == href


# -- hostile and odd link texts -----------------------------------------------------------------


# Each with the reason of the one check that must refuse it; the href names the same
# file, so that no other check refuses it first (see test_model.HOSTILE_NAMES).
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("../x", "starts with a dot"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a/b", "path separator or a control character"),
        ("a\\b", "path separator or a control character"),
        ("a\x1bb", "path separator or a control character"),
        ("a\x7fb", "path separator or a control character"),
        ("a\x85b", "path separator or a control character"),
        ("foo-1.0\u202ezg.rat.whl", "format character"),
        ("foo-1.0\u2028.tar.gz", "format character"),
        ("x" * (MAX_FILENAME_BYTES + 1), "longer than"),
    ],
)
def test_hostile_link_texts_rejected(text: str, reason: str) -> None:
    assert reason in rejection(anchor(text, href=f"{FILES}/{quote(text, safe='')}"))


def test_link_text_is_unescaped_and_may_be_split_by_markup() -> None:
    text = document(
        f'<a href="{FILES}/a%3Cb%3E%26.zip#sha256={SHA_A}">a&lt;b&gt;&amp;.zip</a>',
        f'<a href="{FILES}/foo-2.0.tar.gz#sha256={SHA_B}"><b>foo</b>-2.0<!-- x -->.tar.gz</a>',
    )
    page = parse(text)
    assert [f.filename for f in page.files] == ["a<b>&.zip", "foo-2.0.tar.gz"]
    assert page.rejected == ()


def test_duplicate_links_first_kept_second_rejected() -> None:
    page = parse(
        document(
            anchor(fragment=f"sha256={SHA_A}"),
            anchor(fragment=f"sha256={SHA_B}"),
            anchor("foo-2.0.tar.gz"),
        )
    )
    assert [(f.filename, f.hashes["sha256"]) for f in page.files] == [
        ("foo-1.0.tar.gz", SHA_A),
        ("foo-2.0.tar.gz", SHA_A),
    ]
    assert page.rejected == (("foo-1.0.tar.gz", "listed twice on the page; the first is kept"),)


def test_bad_link_rejected_others_kept_in_order() -> None:
    page = parse(document(anchor("foo-2.0.tar.gz"), anchor("foo-1.5.zip", fragment=None), anchor()))
    assert [f.filename for f in page.files] == ["foo-2.0.tar.gz", "foo-1.0.tar.gz"]
    assert [label for label, _ in page.rejected] == ["foo-1.5.zip"]


def test_anchors_without_href_ignored_and_unclosed_anchors_still_count() -> None:
    text = document(
        '<a name="top">foo-0.1.tar.gz</a>',
        f'<a href="{FILES}/foo-1.0.tar.gz#sha256={SHA_A}">foo-1.0.tar.gz',
        f'<a href="{FILES}/foo-2.0.tar.gz#sha256={SHA_B}">foo-2.0.tar.gz',
    )
    page = parse(text)
    assert [f.filename for f in page.files] == ["foo-1.0.tar.gz", "foo-2.0.tar.gz"]
    assert page.rejected == ()


def test_links_inside_script_and_comments_are_not_links() -> None:
    text = document(
        f'<script>document.write(\'<a href="{FILES}/evil-1.0.tar.gz#sha256={SHA_A}">'
        "evil-1.0.tar.gz</a>');</script>",
        f'<!-- <a href="{FILES}/old-1.0.tar.gz#sha256={SHA_A}">old-1.0.tar.gz</a> -->',
        anchor(),
    )
    assert [f.filename for f in parse(text).files] == ["foo-1.0.tar.gz"]


def test_repeated_attribute_first_wins() -> None:
    text = document(
        f'<a href="{FILES}/foo-1.0.tar.gz#sha256={SHA_A}" href="https://evil.example/x" '
        'data-requires-python="&gt;=3.8" data-requires-python="&lt;2">foo-1.0.tar.gz</a>'
    )
    dist = parse(text).files[0]
    assert (dist.url, dist.requires_python) == (f"{FILES}/foo-1.0.tar.gz", ">=3.8")


# -- meta, serial, not-an-index -------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["active", "archived", "quarantined", "deprecated", "newfangled"]
)
def test_project_status_from_meta(status: str) -> None:
    head = (
        f'<meta name="pypi:project-status" content="{status}">'
        '<meta name="pypi:project-status-reason" content="moved to &lt;bar&gt;">'
    )
    page = parse(document(anchor(), head=head))
    assert (page.status, page.status_reason) == (status, "moved to <bar>")


def test_project_status_without_reason_and_reason_without_status() -> None:
    only_status = parse(document(head='<meta name="pypi:project-status" content="archived">'))
    assert (only_status.status, only_status.status_reason) == ("archived", None)
    # A reason for no status is as malformed as JSON's status-less object.
    only_reason = parse(document(head='<meta name="pypi:project-status-reason" content="x">'))
    assert (only_reason.status, only_reason.status_reason) == (None, None)


def test_project_status_meta_without_content_ignored() -> None:
    page = parse(document(head='<meta name="pypi:project-status">'))
    assert page.status is None


@pytest.mark.parametrize(
    ("tail", "header", "expected"),
    [
        ("<!--SERIAL 4242-->\n", None, 4242),
        ("<!--SERIAL 4242-->\n", 17, 4242),
        ("<!-- SERIAL 99 -->", 17, 99),
        ("", 17, 17),
        ("", None, None),
        ("<!--SERIAL soon-->", 17, 17),
        ("<!--serial of nothing 5-->", None, None),
        # The trailing comment is the page's; one earlier on is not.
        ("<!--SERIAL 1-->\n<!--SERIAL 5-->", None, 5),
        # Too large to be a serial (past SQLite's INTEGER; past what int() reads).
        (f"<!--SERIAL {2**63 - 1}-->", 17, 2**63 - 1),
        (f"<!--SERIAL {2**63}-->", 17, 17),
        (f"<!--SERIAL {'9' * 5000}-->", 17, 17),
        (f"<!--SERIAL {'9' * 5000}-->", None, None),
    ],
)
def test_page_serial(tail: str, header: int | None, expected: int | None) -> None:
    assert parse(document(anchor(), tail=tail), header_serial=header).serial == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body>Service Unavailable</body></html>",
        "Down for maintenance",
        '{"name": "foo", "files": []}',
    ],
)
def test_page_without_links_or_repository_version_is_not_a_page(text: str) -> None:
    with pytest.raises(UpstreamDataError, match=r"simple/foo/.*not a simple index"):
        parse(text)


def test_page_with_repository_version_and_no_links_has_no_files() -> None:
    page = parse(document())
    assert (page.files, page.rejected) == ((), ())


# -- one validation for both formats ------------------------------------------------------------


@pytest.mark.parametrize(
    ("html_attrs", "json_entry"),
    [
        ({}, {}),
        (
            {"data_requires_python": ">=3", "data_yanked": "why", "data_gpg_sig": "false"},
            {"requires-python": ">=3", "yanked": "why", "gpg-sig": False},
        ),
        (
            {"data_core_metadata": f"sha256={META_SHA}", "data_provenance": "/prov"},
            {"core-metadata": {"sha256": META_SHA}, "provenance": "/prov"},
        ),
        ({"fragment": "sha256=zz"}, {"hashes": {"sha256": "zz"}}),
        ({"fragment": None}, {"hashes": {}}),
        ({"href": "ftp://x/foo-1.0.tar.gz"}, {"url": "ftp://x/foo-1.0.tar.gz"}),
        ({"href": f"{FILES}/bar-1.0.tar.gz"}, {"url": f"{FILES}/bar-1.0.tar.gz"}),
    ],
)
def test_html_and_json_give_the_same_file_or_the_same_reason(
    html_attrs: dict[str, Any], json_entry: dict[str, Any]
) -> None:
    entry: dict[str, Any] = {
        "filename": "foo-1.0.tar.gz",
        "url": f"{FILES}/foo-1.0.tar.gz",
        "hashes": {"sha256": SHA_A},
    }
    entry.update(json_entry)
    from_json = ProjectPage.from_json_data({"name": "foo", "files": [entry]}, page_url=PAGE_URL)
    from_html = parse(document(anchor(**html_attrs)))
    assert from_html.files == from_json.files
    assert from_html.rejected == from_json.rejected


# -- round trip through simplemirror's own renderer --------------------------------------------


def held(filename: str, data: bytes, **kwargs: Any) -> HeldFile:
    digest = sha256(data)
    return HeldFile(
        project="foo-bar",
        filename=filename,
        path=layout.file_path(digest, filename),
        size=len(data),
        hashes={"sha256": digest, "md5": hashlib.md5(data).hexdigest()},
        url=f"https://upstream.example/{filename}",
        **kwargs,
    )


def test_page_rendered_by_simplemirror_parses_back_to_the_same_files() -> None:
    files = [
        held(
            "foo_bar-1.0-py3-none-any.whl",
            b"wheel",
            requires_python=">=3.8, <4",
            metadata_hashes={"sha256": META_SHA},
        ),
        held("foo-bar-1.0.tar.gz", b"sdist", yanked=True, yanked_reason="<b>\"bad\" & 'worse'</b>"),
        held("foo bar#1%2+3.zip", b"odd", yanked=True, metadata_hashes={"md5": "0" * 32}),
        held("caf\u00e9-0.1.tar.gz", b"cafe", requires_python="!=3.0.*,<4"),
    ]
    info = ProjectInfo(name="foo-bar", serial=77, versions=("0.1", "1.0"), extra={})
    mirror_page = "https://mirror.example/prefix/simple/foo-bar/"
    page = ProjectPage.from_html(
        project_html(info, files), page_url=mirror_page, name="foo-bar", header_serial=77
    )

    assert page.rejected == ()
    assert page.name == "foo-bar"
    assert page.serial == 77
    got = {f.filename: f for f in page.files}
    assert list(got) == [f.filename for f in files]
    for h in files:
        dist = got[h.filename]
        # Relative links resolve to the stored file, whatever the odd characters.
        assert unquote(dist.url) == f"https://mirror.example/prefix/{h.path}"
        assert dict(dist.hashes) == {"sha256": h.hashes["sha256"]}  # the page gives one
        assert h.matches(dist)
        assert (dist.requires_python, dist.yanked, dist.yanked_reason) == (
            h.requires_python,
            h.yanked,
            h.yanked_reason,
        )
        if h.metadata_hashes is None:
            assert dist.core_metadata is False
        elif "sha256" in h.metadata_hashes:
            assert dist.core_metadata == {"sha256": h.metadata_hashes["sha256"]}
        else:
            assert dist.core_metadata is True
