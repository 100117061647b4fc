"""Unit tests for simplemirror.simple.render: the mirror's PEP 503 HTML and PEP 691 JSON pages."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from simplemirror.simple.model import HeldFile
from simplemirror.simple.render import (
    ProjectInfo,
    RootEntry,
    project_html,
    project_json,
    root_html,
    root_json,
)

# Where a project page is served: pages live at simple/<name>/ below the web root.
BASE = "https://mirror.example/mirror/"
PAGE = BASE + "simple/foo/"
ROOT = BASE + "simple/"

ODD_NAMES = [
    "foo bar-1.0.tar.gz",
    "foo#1-1.0.tar.gz",
    "foo%20-1.0.tar.gz",
    "foo+local-1.0+abc.tar.gz",
    "caf\u00e9-\u65e5\u672c-1.0.tar.gz",
    "a&b<c>\"d'e-1.0.zip",
    "q?x=1;y-1.0.zip",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def held(
    filename: str = "foo-1.0.tar.gz",
    *,
    content: bytes | None = None,
    requires_python: str | None = None,
    yanked: bool = False,
    yanked_reason: str | None = None,
    upload_time: str | None = None,
    metadata_hashes: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    size: int = 123,
) -> HeldFile:
    digest = sha256(content if content is not None else filename.encode())
    return HeldFile(
        project="foo",
        filename=filename,
        path=f"packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}",
        size=size,
        hashes={"sha256": digest, "md5": hashlib.md5(filename.encode()).hexdigest()},
        url=f"https://files.example/{filename}",
        requires_python=requires_python,
        yanked=yanked,
        yanked_reason=yanked_reason,
        upload_time=upload_time,
        metadata_hashes=metadata_hashes,
        extra=extra or {},
    )


def info(
    name: str = "foo",
    serial: int | None = 42,
    versions: tuple[str, ...] = ("1.0",),
    extra: Mapping[str, Any] | None = None,
) -> ProjectInfo:
    return ProjectInfo(name, serial, versions, extra or {})


@dataclass
class Anchor:
    attrs: dict[str, str | None]
    text: str = ""


class Page(HTMLParser):
    """The parts of a rendered page the tests look at, with entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[Anchor] = []
        self.metas: list[dict[str, str | None]] = []
        self.title = ""
        self.h1 = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(Anchor(dict(attrs)))
        elif tag == "meta":
            self.metas.append(dict(attrs))
        self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "a":
            self.anchors[-1].text += data
        elif self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1 += data


def parse_html(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def resolved_path(page_url: str, href: str) -> str:
    """The decoded path, relative to BASE, that ``href`` on ``page_url`` points at."""
    url = urlsplit(urljoin(page_url, href))
    assert url.netloc == "mirror.example"
    base_path = urlsplit(BASE).path
    assert url.path.startswith(base_path)
    return unquote(url.path[len(base_path):])


def assert_percent_encoded(url: str) -> None:
    """Nothing in ``url`` that a client would have to guess about."""
    assert re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*", url), url
    assert all(re.match(r"%[0-9A-F]{2}", url[i:]) for i, c in enumerate(url) if c == "%"), url


# -- project_html --------------------------------------------------------------------------


def test_html_link_is_relative_and_resolves_to_the_file() -> None:
    f = held()
    page = parse_html(project_html(info(), [f]))
    (anchor,) = page.anchors
    href = anchor.attrs["href"]
    assert href is not None
    assert href.startswith("../../packages/")
    assert resolved_path(PAGE, href) == f.path
    assert anchor.text == f.filename


def test_html_link_carries_sha256_fragment() -> None:
    f = held()
    (anchor,) = parse_html(project_html(info(), [f])).anchors
    href = anchor.attrs["href"] or ""
    assert urlsplit(href).fragment == f"sha256={f.hashes['sha256']}"
    assert href.count("#") == 1


@pytest.mark.parametrize("filename", ODD_NAMES)
def test_html_odd_filenames_are_percent_encoded_and_round_trip(filename: str) -> None:
    f = held(filename)
    text = project_html(info(), [f])
    (anchor,) = parse_html(text).anchors
    href = anchor.attrs["href"] or ""
    path, _, fragment = href.partition("#")
    assert fragment == f"sha256={f.hashes['sha256']}"
    assert_percent_encoded(path)
    assert " " not in path and "#" not in path and "?" not in path
    assert resolved_path(PAGE, href) == f.path
    assert anchor.text == filename


def test_html_escapes_markup_in_filename_and_attributes() -> None:
    nasty = "x\"><script>alert('1')</script>&amp;.tar.gz"
    f = held(
        nasty,
        requires_python='>=3.8,<4;"\'&',
        yanked=True,
        yanked_reason='<b>broken</b> "really" & \'badly\'',
    )
    text = project_html(info(), [f])
    assert "<script>" not in text
    assert "<b>" not in text
    page = parse_html(text)
    (anchor,) = page.anchors
    assert anchor.text == nasty
    assert anchor.attrs["data-requires-python"] == '>=3.8,<4;"\'&'
    assert anchor.attrs["data-yanked"] == '<b>broken</b> "really" & \'badly\''
    assert resolved_path(PAGE, anchor.attrs["href"] or "") == f.path


def test_html_escapes_project_name_in_title_and_heading() -> None:
    text = project_html(info("a&b<c>"), [])
    assert "<c>" not in text
    page = parse_html(text)
    assert page.title == "Links for a&b<c>"
    assert page.h1 == "Links for a&b<c>"


def test_html_title_and_repository_version() -> None:
    page = parse_html(project_html(info("foo-bar"), []))
    assert page.title == "Links for foo-bar"
    assert {"name": "pypi:repository-version", "content": "1.4"} in page.metas
    assert page.anchors == []


def test_html_requires_python_only_when_set() -> None:
    with_rp, without = parse_html(
        project_html(info(), [held("a-1.tar.gz", requires_python=">=3.9"), held("b-1.tar.gz")])
    ).anchors
    assert with_rp.attrs["data-requires-python"] == ">=3.9"
    assert "data-requires-python" not in without.attrs


def test_html_yanked_with_reason_without_reason_and_not_yanked() -> None:
    files = [
        held("a-1.tar.gz", yanked=True, yanked_reason="security"),
        held("b-1.tar.gz", yanked=True),
        held("c-1.tar.gz"),
    ]
    text = project_html(info(), files)
    reasoned, reasonless, live = parse_html(text).anchors
    assert reasoned.attrs["data-yanked"] == "security"
    # Present with an empty value (PEP 592), not missing and not valueless.
    assert reasonless.attrs["data-yanked"] == ""
    assert 'data-yanked=""' in text
    assert "data-yanked" not in live.attrs


def test_html_metadata_attributes_only_when_metadata_held() -> None:
    meta = sha256(b"Metadata-Version: 2.1\n")
    with_meta, without = parse_html(
        project_html(
            info(), [held("a-1.tar.gz", metadata_hashes={"sha256": meta}), held("b-1.tar.gz")]
        )
    ).anchors
    assert with_meta.attrs["data-core-metadata"] == f"sha256={meta}"
    assert with_meta.attrs["data-dist-info-metadata"] == f"sha256={meta}"
    assert "data-core-metadata" not in without.attrs
    assert "data-dist-info-metadata" not in without.attrs


def test_html_metadata_without_sha256_is_true() -> None:
    (anchor,) = parse_html(
        project_html(info(), [held(metadata_hashes={"md5": "0" * 32})])
    ).anchors
    assert anchor.attrs["data-core-metadata"] == "true"
    assert anchor.attrs["data-dist-info-metadata"] == "true"


def test_html_keeps_file_order() -> None:
    names = ["z-1.tar.gz", "a-1.tar.gz", "m-1.tar.gz"]
    anchors = parse_html(project_html(info(), [held(n) for n in names])).anchors
    assert [a.text for a in anchors] == names


# -- project_json --------------------------------------------------------------------------


def load_project(files: list[HeldFile], **kwargs: Any) -> dict[str, Any]:
    doc = json.loads(project_json(info(**kwargs), files))
    assert isinstance(doc, dict)
    return doc


def test_json_meta_name_versions() -> None:
    doc = load_project([], name="foo-bar", serial=99, versions=("1.0", "2.0rc1"))
    assert doc["meta"] == {"api-version": "1.4", "_last-serial": 99}
    assert doc["name"] == "foo-bar"
    assert doc["versions"] == ["1.0", "2.0rc1"]
    assert doc["files"] == []


def test_json_no_serial_no_last_serial_key() -> None:
    doc = load_project([], serial=None)
    assert doc["meta"] == {"api-version": "1.4"}


def test_json_serial_zero_is_kept() -> None:
    assert load_project([], serial=0)["meta"]["_last-serial"] == 0


def test_json_versions_empty_list_kept() -> None:
    assert load_project([], versions=())["versions"] == []


def test_json_file_entry() -> None:
    f = held(
        requires_python=">=3.8",
        upload_time="2024-05-06T07:08:09.123456Z",
        size=4567,
    )
    (entry,) = load_project([f])["files"]
    assert entry == {
        "filename": "foo-1.0.tar.gz",
        "url": "../../packages/" + f.path.removeprefix("packages/"),
        "hashes": dict(f.hashes),
        "requires-python": ">=3.8",
        "size": 4567,
        "upload-time": "2024-05-06T07:08:09.123456Z",
        "yanked": False,
        "core-metadata": False,
    }
    assert resolved_path(PAGE, entry["url"]) == f.path


@pytest.mark.parametrize("filename", ODD_NAMES)
def test_json_odd_filenames_round_trip(filename: str) -> None:
    f = held(filename)
    (entry,) = load_project([f])["files"]
    assert entry["filename"] == filename
    assert_percent_encoded(entry["url"])
    assert "#" not in entry["url"]
    assert resolved_path(PAGE, entry["url"]) == f.path


def test_json_strings_round_trip_exactly() -> None:
    odd = 'quote " backslash \\ newline \n tab \t nul-ish \x01 ls \u2028 </script> \u00e9\u65e5'
    f = held(
        "f-1.0.tar.gz", requires_python=odd, yanked=True, yanked_reason=odd, upload_time=odd
    )
    text = project_json(info(extra={"x-note": odd}), [f])
    # One document, one line: nothing in a value can break out of its string.
    assert text.endswith("\n") and text.count("\n") == 1
    doc = json.loads(text)
    (entry,) = doc["files"]
    assert entry["requires-python"] == odd
    assert entry["yanked"] == odd
    assert entry["upload-time"] == odd
    assert doc["x-note"] == odd
    text.encode("utf-8")  # strict: must be encodable for writing out


def test_json_yanked_values() -> None:
    files = [
        held("a-1.tar.gz", yanked=True, yanked_reason="broken"),
        held("b-1.tar.gz", yanked=True),
        held("c-1.tar.gz"),
    ]
    entries = load_project(files)["files"]
    assert [e["yanked"] for e in entries] == ["broken", True, False]


def test_json_core_metadata_and_never_old_names() -> None:
    meta = {"sha256": sha256(b"Metadata-Version: 2.1\n")}
    text = project_json(info(), [held("a-1.tar.gz", metadata_hashes=meta), held("b-1.tar.gz")])
    assert "dist-info-metadata" not in text
    with_meta, without = json.loads(text)["files"]
    assert with_meta["core-metadata"] == meta
    assert without["core-metadata"] is False


def test_json_upload_time_omitted_when_unknown() -> None:
    (entry,) = load_project([held(upload_time=None)])["files"]
    assert "upload-time" not in entry
    assert entry["size"] == 123


def test_json_requires_python_null_when_unknown() -> None:
    (entry,) = load_project([held()])["files"]
    assert entry["requires-python"] is None


def test_json_extra_file_keys_passed_through_but_cannot_override() -> None:
    f = held(extra={"x-custom": {"a": [1, None]}, "filename": "evil", "url": "https://evil/"})
    (entry,) = load_project([f])["files"]
    assert entry["x-custom"] == {"a": [1, None]}
    assert entry["filename"] == "foo-1.0.tar.gz"
    assert entry["url"].startswith("../../packages/")


def test_json_extra_page_keys_passed_through_but_cannot_override() -> None:
    extra = {
        "project-status": {"status": "quarantined"},
        "name": "evil",
        "files": [{"filename": "evil"}],
        "meta": {"api-version": "9.9"},
        "versions": ["666"],
    }
    f = held()
    doc = load_project([f], extra=extra, versions=("1.0",))
    assert doc["project-status"] == {"status": "quarantined"}
    assert doc["name"] == "foo"
    assert doc["meta"]["api-version"] == "1.4"
    assert doc["versions"] == ["1.0"]
    assert [e["filename"] for e in doc["files"]] == ["foo-1.0.tar.gz"]


def test_json_keeps_file_order() -> None:
    names = ["z-1.tar.gz", "a-1.tar.gz", "m-1.tar.gz"]
    entries = load_project([held(n) for n in names])["files"]
    assert [e["filename"] for e in entries] == names


def test_html_and_json_link_to_the_same_file() -> None:
    f = held("weird name #1.tar.gz")
    (anchor,) = parse_html(project_html(info(), [f])).anchors
    (entry,) = load_project([f])["files"]
    assert (anchor.attrs["href"] or "").partition("#")[0] == entry["url"]


# -- root pages ----------------------------------------------------------------------------


def test_root_html_links_to_normalized_names() -> None:
    entries = [RootEntry("Foo_Bar", "foo-bar", 3), RootEntry("django", "django", None)]
    page = parse_html(root_html(entries))
    assert [(a.attrs["href"], a.text) for a in page.anchors] == [
        ("foo-bar/", "Foo_Bar"),
        ("django/", "django"),
    ]
    assert urljoin(ROOT, page.anchors[0].attrs["href"] or "") == ROOT + "foo-bar/"
    assert {"name": "pypi:repository-version", "content": "1.4"} in page.metas


def test_root_html_escapes_display_name() -> None:
    text = root_html([RootEntry("<i>&\"x'</i>", "x", None)])
    assert "<i>" not in text
    (anchor,) = parse_html(text).anchors
    assert anchor.text == "<i>&\"x'</i>"


def test_root_html_empty() -> None:
    assert parse_html(root_html([])).anchors == []


def test_root_json() -> None:
    entries = [
        RootEntry("Foo_Bar", "foo-bar", 3),
        RootEntry("django", "django", None),
        RootEntry("zero", "zero", 0),
    ]
    doc = json.loads(root_json(entries, 1234))
    assert doc == {
        "meta": {"api-version": "1.4", "_last-serial": 1234},
        "projects": [
            {"name": "Foo_Bar", "_last-serial": 3},
            {"name": "django"},
            {"name": "zero", "_last-serial": 0},
        ],
    }


def test_root_json_without_serial() -> None:
    doc = json.loads(root_json([], None))
    assert doc == {"meta": {"api-version": "1.4"}, "projects": []}


def test_root_json_odd_display_name_round_trips() -> None:
    name = 'a"b\\c</script>\u00e9'
    doc = json.loads(root_json([RootEntry(name, "abc", None)], None))
    assert doc["projects"] == [{"name": name}]


def test_root_accepts_any_iterable() -> None:
    entries = (RootEntry(n, n, None) for n in ["a", "b"])
    assert [p["name"] for p in json.loads(root_json(entries, None))["projects"]] == ["a", "b"]


def test_root_json_is_exactly_what_json_dumps_gives_for_the_document():
    import json

    from simplemirror.simple.render import API_VERSION, RootEntry, root_json

    names = ["plain", 'quo"te', "back\\slash", "ctrl\x01\x1f", "ünïcode", "emoji-\U0001f600",
             "line\u2028sep", "tab\there", "</script>"]
    entries = [RootEntry(n, n.lower(), i if i % 3 else None) for i, n in enumerate(names)]
    for serial in (None, 42):
        meta: dict[str, object] = {"api-version": API_VERSION}
        if serial is not None:
            meta["_last-serial"] = serial
        doc = {"meta": meta, "projects": [
            {"name": e.name, **({} if e.serial is None else {"_last-serial": e.serial})}
            for e in entries
        ]}
        expected = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
        assert root_json(entries, serial) == expected
        assert root_json([], serial) == json.dumps(
            {"meta": meta, "projects": []}, ensure_ascii=False, separators=(",", ":")) + "\n"
