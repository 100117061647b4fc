"""Unit tests for simplemirror.simple.model: parsing the Simple Repository API's JSON (PEP 691).

HTML (PEP 503) parsing is tested in test_html_parse.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pytest

from simplemirror.simple import model
from simplemirror.simple.model import (
    MAX_FILENAME_BYTES,
    DistFile,
    HeldFile,
    ProjectPage,
    RootIndex,
    RootProject,
    UpstreamDataError,
    parse_root_json,
    parse_serial,
    read_serial,
    version_of,
)
from tests.support.fuzz import random_strings

PAGE_URL = "https://index.example/simple/foo/"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


SHA_A = sha256(b"file a")
SHA_B = sha256(b"file b")


def url_part(filename: str) -> str:
    """``filename`` as the last part of a URL that names that very file: percent-encoded,
    "/" included, or as it is when it holds a lone surrogate, which no escape carries."""
    try:
        return quote(filename, safe="")
    except UnicodeEncodeError:
        return filename


def file_entry(filename: str = "foo-1.0.tar.gz", **overrides: Any) -> dict[str, Any]:
    """A valid PEP 691 file entry; keyword arguments replace or add keys (None removes).

    Its URL names the same file, so that a name is judged by the name checks alone.
    """
    entry: dict[str, Any] = {
        "filename": filename,
        "url": f"https://files.example/packages/ab/cd/{url_part(filename)}",
        "hashes": {"sha256": SHA_A},
    }
    for key, value in overrides.items():
        key = key.replace("_", "-")
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


def page_data(*files: Any, name: str = "foo", **top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"meta": {"api-version": "1.1"}, "name": name, "files": list(files)}
    data.update(top)
    return data


def parse_page(*files: Any, page_url: str = PAGE_URL, **top: Any) -> ProjectPage:
    return ProjectPage.from_json_data(page_data(*files, **top), page_url=page_url)


def parse_one(entry: Any, page_url: str = PAGE_URL) -> DistFile:
    """Parse a page holding just ``entry`` and return the file, failing if it was rejected."""
    page = parse_page(entry, page_url=page_url)
    assert page.rejected == ()
    assert len(page.files) == 1
    return page.files[0]


def rejection(entry: Any) -> str:
    """Parse a page holding just ``entry``; assert it was rejected and return the reason."""
    page = parse_page(entry)
    assert page.files == ()
    assert len(page.rejected) == 1
    return page.rejected[0][1]


def root(projects: list[Any], meta: Any = None, **kwargs: Any) -> RootIndex:
    data: dict[str, Any] = {"projects": projects}
    if meta is not None:
        data["meta"] = meta
    return RootIndex.from_json_data(data, **kwargs)


# -- parse_serial ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (42, 42),
        (2**40, 2**40),
        ("42", 42),
        (" 17 ", 17),
        ("0", 0),
    ],
)
def test_parse_serial_accepts_ints_and_decimal_strings(value: object, expected: int) -> None:
    assert parse_serial(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, True, False, -1, "-1", "", "  ", "abc", "1.5", "1e3", "0x10", 1.0, 3.7, [], {}, "+3"],
)
def test_parse_serial_rejects_unusable_values(value: object) -> None:
    assert parse_serial(value) is None


def test_parse_serial_non_decimal_digit_string_is_none_not_an_exception() -> None:
    # "²".isdigit() is True, but int("²") raises: an upstream (a header value is
    # latin-1, and U+00B2 is in latin-1) must not be able to crash parsing this way.
    assert parse_serial("\u00b2") is None
    assert parse_serial("1\u00b2") is None


TOO_LARGE_SERIALS = [2**63, str(2**63), 10**30, "9" * 5000, " " + "9" * 100_000]


@pytest.mark.parametrize("value", TOO_LARGE_SERIALS, ids=lambda v: f"{len(str(v))} digits")
def test_a_serial_too_large_for_sqlite_is_refused_by_read_serial_none_for_parse_serial(
    value: object,
) -> None:
    # SQLite's INTEGER stops at 2**63 - 1; int() refuses more than 4300 digits.
    with pytest.raises(UpstreamDataError, match="too large"):
        read_serial(value)
    assert parse_serial(value) is None


def test_the_largest_serial_and_leading_zeros_are_read() -> None:
    assert read_serial(2**63 - 1) == parse_serial(str(2**63 - 1)) == 2**63 - 1
    assert read_serial("0" * 5000 + "7") == 7
    assert read_serial("0" * 5000) == 0
    assert read_serial(-1) is None and read_serial("x") is None and read_serial(None) is None


# -- RootIndex ---------------------------------------------------------------------------


def test_root_serial_as_int() -> None:
    index = root([], meta={"_last-serial": 1234})
    assert index.serial == 1234


def test_root_serial_as_string() -> None:
    index = root([], meta={"_last-serial": "1234"})
    assert index.serial == 1234


def test_root_serial_missing_is_none_without_header() -> None:
    assert root([]).serial is None
    assert root([], meta={"api-version": "1.1"}).serial is None


def test_root_serial_falls_back_to_header() -> None:
    assert root([], header_serial=77).serial == 77
    assert root([], meta={"api-version": "1.0"}, header_serial=77).serial == 77


def test_root_meta_serial_wins_over_header() -> None:
    assert root([], meta={"_last-serial": 5}, header_serial=77).serial == 5


@pytest.mark.parametrize("garbage", [True, False, -3, "-3", "soon", 1.5, None, [1]])
def test_root_unusable_meta_serial_uses_header_or_none(garbage: object) -> None:
    assert root([], meta={"_last-serial": garbage}).serial is None
    assert root([], meta={"_last-serial": garbage}, header_serial=9).serial == 9


def test_root_non_decimal_digit_serial_falls_back_instead_of_raising() -> None:
    index = root([{"name": "foo", "_last-serial": "\u00b2"}], meta={"_last-serial": "\u00b2"})
    assert index.serial is None
    assert index.projects[0].serial is None


def test_root_meta_not_an_object_is_ignored() -> None:
    assert root([], meta=["_last-serial", 5], header_serial=3).serial == 3


def test_root_project_serials() -> None:
    index = root(
        [
            {"name": "int", "_last-serial": 10},
            {"name": "str", "_last-serial": "11"},
            {"name": "missing"},
            {"name": "bool", "_last-serial": True},
            {"name": "negative", "_last-serial": -1},
            {"name": "garbage", "_last-serial": "yesterday"},
        ]
    )
    assert {p.normalized: p.serial for p in index.projects} == {
        "int": 10,
        "str": 11,
        "missing": None,
        "bool": None,
        "negative": None,
        "garbage": None,
    }
    assert index.rejected == ()


@pytest.mark.parametrize("serial", [2**63, "9" * 5000], ids=["2**63", "5000 digits"])
def test_a_root_entry_with_a_serial_too_large_is_rejected_and_held_back(serial: object) -> None:
    index = root([{"name": "Good", "_last-serial": 3}, {"name": "Bad_One", "_last-serial": serial}])
    assert index.projects == (RootProject("Good", "good", 3),)
    assert [entry for entry, _ in index.rejected] == ["Bad_One"]
    assert "too large" in index.rejected[0][1]
    assert index.held_back == ("bad-one",)  # listed: a copy held is not removed


@pytest.mark.parametrize("as_string", [False, True], ids=["number", "string"])
def test_a_root_with_a_number_of_5000_digits_costs_its_entry_only(as_string: bool) -> None:
    huge = "9" * 5000  # json.loads cannot read it as a number: it is spliced in as text
    text = f'"{huge}"' if as_string else huge
    body = (
        f'{{"meta": {{"api-version": "1.1", "_last-serial": {text}}}, "projects": ['
        f'{{"name": "good", "_last-serial": 3}}, {{"name": "bad", "_last-serial": {text}}}]}}'
    ).encode()
    index = RootIndex.from_json_data(parse_root_json(body), header_serial=40)
    assert index.projects == (RootProject("good", "good", 3),)
    assert [entry for entry, _ in index.rejected] == ["bad"] and index.held_back == ("bad",)
    assert index.serial == 40  # the meta's serial is unusable: the header's


def test_a_5000_digit_number_is_never_a_name_nor_a_serial() -> None:
    huge = "9" * 5000
    body = (
        f'{{"projects": [{{"name": {huge}}}, {{"name": "neg", "_last-serial": -{huge}}},'
        f' {{"name": "ok", "_last-serial": 12345678901234567890}}]}}'
    ).encode()
    index = RootIndex.from_json_data(parse_root_json(body))
    assert index.projects == (RootProject("neg", "neg", None),)  # negative: no serial
    assert index.rejected == (
        ("{'name': <a number of 5000 digits>}", "project entry without a string 'name'"),
        ("ok", "'_last-serial' is too large to be a serial (2**63 or more)"),
    )


def test_a_root_that_is_not_json_still_fails_to_parse() -> None:
    with pytest.raises(ValueError):
        parse_root_json(b'{"projects": [')


def test_root_project_serial_does_not_inherit_header_serial() -> None:
    index = root([{"name": "foo"}], header_serial=99)
    assert index.projects[0].serial is None


def test_root_projects_keep_display_name_and_normalize() -> None:
    index = root([{"name": "Foo_Bar.Baz", "_last-serial": 3}, {"name": "django"}])
    assert index.projects == (
        RootProject("Foo_Bar.Baz", "foo-bar-baz", 3),
        RootProject("django", "django", None),
    )


@pytest.mark.parametrize(
    "name", ["-foo", "foo-", "foo bar", "", "a/b", "../etc", "caf\u00e9", "foo!", ".hidden"]
)
def test_root_invalid_names_rejected_with_reason(name: str) -> None:
    index = root([{"name": name}, {"name": "good"}])
    assert [p.normalized for p in index.projects] == ["good"]
    assert len(index.rejected) == 1
    entry, reason = index.rejected[0]
    assert entry == name
    assert "not a valid project name" in reason


@pytest.mark.parametrize("entry", [{"name": 5}, {"name": None}, {}, "foo", 17, None, ["foo"]])
def test_root_entries_without_string_name_rejected(entry: object) -> None:
    index = root([entry, {"name": "good"}])
    assert [p.normalized for p in index.projects] == ["good"]
    assert len(index.rejected) == 1
    assert "without a string 'name'" in index.rejected[0][1]


def test_root_rejected_entry_text_is_truncated() -> None:
    index = root([{"name": "x" * 1000 + " invalid"}])
    assert len(index.rejected[0][0]) == 200


def test_root_collision_keeps_higher_serial_when_it_comes_second() -> None:
    index = root(
        [{"name": "Foo_Bar", "_last-serial": 5}, {"name": "foo-bar", "_last-serial": 9}]
    )
    assert index.projects == (RootProject("foo-bar", "foo-bar", 9),)
    assert index.collisions == (("Foo_Bar", "foo-bar"),)
    assert index.rejected == ()


def test_root_collision_keeps_higher_serial_when_it_comes_first() -> None:
    index = root(
        [{"name": "foo.bar", "_last-serial": 9}, {"name": "FOO-BAR", "_last-serial": 5}]
    )
    assert index.projects == (RootProject("foo.bar", "foo-bar", 9),)
    assert index.collisions == (("FOO-BAR", "foo.bar"),)


def test_root_collision_known_serial_beats_missing_serial() -> None:
    index = root([{"name": "Foo"}, {"name": "foo", "_last-serial": 4}])
    assert index.projects == (RootProject("foo", "foo", 4),)
    assert index.collisions == (("Foo", "foo"),)


def test_root_collision_of_three_spellings_keeps_one() -> None:
    index = root(
        [
            {"name": "a-b", "_last-serial": 1},
            {"name": "A_B", "_last-serial": 3},
            {"name": "a.b", "_last-serial": 2},
        ]
    )
    assert index.projects == (RootProject("A_B", "a-b", 3),)
    assert sorted(dropped for dropped, _ in index.collisions) == ["a-b", "a.b"]


def test_root_collision_does_not_disturb_other_projects() -> None:
    index = root(
        [
            {"name": "one", "_last-serial": 1},
            {"name": "Two", "_last-serial": 2},
            {"name": "two", "_last-serial": 7},
            {"name": "three", "_last-serial": 3},
        ]
    )
    assert {p.normalized: p.serial for p in index.projects} == {"one": 1, "two": 7, "three": 3}


@pytest.mark.parametrize(
    "data",
    [None, [], "projects", 5, {}, {"meta": {"_last-serial": 1}}, {"projects": None},
     {"projects": {"foo": {}}}, {"projects": "foo"}],
)
def test_root_not_usable_raises_upstream_data_error(data: object) -> None:
    with pytest.raises(UpstreamDataError):
        RootIndex.from_json_data(data)


# -- the Simple API version (PEP 629) ------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "2", " 2.1 ", "10.0"])
def test_root_and_page_of_an_unknown_major_version_are_refused(version: str) -> None:
    message = "upstream speaks Simple API version 2.0, which this simplemirror does not know"
    with pytest.raises(UpstreamDataError, match=message.replace("2.0", r"\d+\.\d")):
        root([{"name": "foo"}], meta={"api-version": version})
    with pytest.raises(UpstreamDataError, match=re.escape(f"{PAGE_URL}: upstream speaks")):
        parse_page(file_entry(), meta={"api-version": version})


def test_an_unknown_major_version_is_refused_before_the_shape_is_judged() -> None:
    # Version 2 may shape its documents otherwise: the version is what is wrong.
    with pytest.raises(UpstreamDataError, match=r"version 2\.0"):
        RootIndex.from_json_data({"meta": {"api-version": "2.0"}, "entries": []})
    with pytest.raises(UpstreamDataError, match=r"version 2\.0"):
        ProjectPage.from_json_data({"meta": {"api-version": "2.0"}}, page_url=PAGE_URL)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.0", (1, 0)), ("1.1", (1, 1)), ("1.4", (1, 4)), ("1.99", (1, 99)), (" 1.5 ", (1, 5)),
     ("0.9", (0, 9)), ("1", (1, 0)), (None, None), (1.1, None), ("one", None), ("1.x", None),
     ("", None), ("1" * 12 + ".0", None)],
)
def test_a_known_major_or_unusable_version_is_parsed_not_refused(
    version: object, expected: tuple[int, int] | None
) -> None:
    meta = {} if version is None else {"api-version": version}
    assert root([{"name": "foo"}], meta=meta).api_version == expected
    page = parse_page(file_entry(), meta=meta)
    assert page.api_version == expected and len(page.files) == 1


@pytest.mark.parametrize(
    ("version", "newer"),
    [((1, 5), True), ((1, 99), True), ((1, 4), False), ((1, 0), False), ((0, 9), False),
     (None, False)],
)
def test_newer_minor_than_this_mirror_knows(version: tuple[int, int] | None, newer: bool) -> None:
    assert model.API_VERSION == "1.4"
    assert model.newer_api_version(version) is newer


def test_upstream_data_error_is_a_value_error() -> None:
    assert issubclass(UpstreamDataError, ValueError)


# -- ProjectPage: the page itself ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, [], "x", {}, {"name": "foo"}, {"name": "foo", "files": None},
     {"name": "foo", "files": {"a": 1}}],
)
def test_page_without_files_list_raises(data: object) -> None:
    with pytest.raises(UpstreamDataError, match="simple/foo/"):
        ProjectPage.from_json_data(data, page_url=PAGE_URL)


@pytest.mark.parametrize("name", [None, 5, ["foo"]])
def test_page_without_string_name_raises(name: object) -> None:
    data: dict[str, Any] = {"files": []}
    if name is not None:
        data["name"] = name
    with pytest.raises(UpstreamDataError, match="name"):
        ProjectPage.from_json_data(data, page_url=PAGE_URL)


@pytest.mark.parametrize(
    ("given", "normalized"),
    [("Foo_Bar", "foo-bar"), ("FOO.bar", "foo-bar"), ("foo__-.bar", "foo-bar"), ("foo", "foo")],
)
def test_page_name_is_normalized(given: str, normalized: str) -> None:
    assert parse_page(name=given).name == normalized


def test_page_serial_from_meta_int_and_string() -> None:
    data = page_data()
    data["meta"]["_last-serial"] = 31
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL, header_serial=2).serial == 31
    data["meta"]["_last-serial"] = "32"
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL).serial == 32


def test_page_serial_header_fallback() -> None:
    data = page_data()
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL).serial is None
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL, header_serial=8).serial == 8
    data["meta"]["_last-serial"] = True
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL, header_serial=8).serial == 8


@pytest.mark.parametrize("serial", TOO_LARGE_SERIALS[:4], ids=lambda v: f"{len(str(v))} digits")
def test_page_serial_too_large_is_no_serial(serial: object) -> None:
    data = page_data()
    data["meta"]["_last-serial"] = serial
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL, header_serial=8).serial == 8
    assert ProjectPage.from_json_data(data, page_url=PAGE_URL).serial is None


def test_page_versions() -> None:
    assert parse_page().versions is None
    assert parse_page(versions=["1.0", "2.0b1"]).versions == ("1.0", "2.0b1")
    assert parse_page(versions=[]).versions == ()
    assert parse_page(versions="1.0").versions is None


def test_page_unknown_top_level_keys_kept_known_and_pep708_dropped() -> None:
    page = parse_page(
        file_entry(),
        versions=["1.0"],
        **{
            "project-status": {"status": "archived"},
            "x-custom": [1, {"a": None}],
            "tracks": ["https://other.example/simple/foo/"],
            "alternate-locations": ["https://mirror.example/simple/foo/"],
        },
    )
    # project-status is interpreted (PEP 792), so it is a field, not an extra.
    assert dict(page.extra) == {"x-custom": [1, {"a": None}]}
    assert page.status == "archived"


# -- ProjectPage: project status (PEP 792) ---------------------------------------------------


@pytest.mark.parametrize(
    "status", ["active", "archived", "quarantined", "deprecated", "some-future-status", "Odd Case"]
)
def test_project_status_kept_verbatim_even_when_unknown(status: str) -> None:
    page = parse_page(**{"project-status": {"status": status, "reason": "see <b>notes</b> & co"}})
    assert (page.status, page.status_reason) == (status, "see <b>notes</b> & co")
    assert "project-status" not in page.extra


def test_project_status_absent_is_none() -> None:
    page = parse_page(file_entry())
    assert (page.status, page.status_reason) == (None, None)


def test_project_status_without_reason() -> None:
    page = parse_page(**{"project-status": {"status": "quarantined"}})
    assert (page.status, page.status_reason) == ("quarantined", None)


@pytest.mark.parametrize(
    "value",
    [
        "archived",
        ["archived"],
        None,
        5,
        {},
        {"reason": "no status given"},
        {"status": None, "reason": "x"},
        {"status": 1, "reason": "x"},
        {"status": ["archived"]},
        {"status": True},
    ],
)
def test_malformed_project_status_is_ignored_not_fatal(value: object) -> None:
    page = parse_page(file_entry(), **{"project-status": value})
    assert (page.status, page.status_reason) == (None, None)
    assert [f.filename for f in page.files] == ["foo-1.0.tar.gz"]
    assert "project-status" not in page.extra


@pytest.mark.parametrize("reason", [5, None, ["why"], {"text": "why"}, True])
def test_non_string_status_reason_dropped_status_kept(reason: object) -> None:
    page = parse_page(**{"project-status": {"status": "deprecated", "reason": reason}})
    assert (page.status, page.status_reason) == ("deprecated", None)


def test_page_files_keep_upstream_order() -> None:
    page = parse_page(
        file_entry("foo-2.0.tar.gz"), file_entry("foo-1.0.tar.gz"), file_entry("foo-1.5.zip")
    )
    assert [f.filename for f in page.files] == ["foo-2.0.tar.gz", "foo-1.0.tar.gz", "foo-1.5.zip"]


def test_page_duplicate_filename_first_kept_second_rejected() -> None:
    first = file_entry("foo-1.0.tar.gz", hashes={"sha256": SHA_A})
    second = file_entry("foo-1.0.tar.gz", hashes={"sha256": SHA_B})
    other = file_entry("foo-2.0.tar.gz")
    page = parse_page(first, second, other)
    assert [(f.filename, f.hashes["sha256"]) for f in page.files] == [
        ("foo-1.0.tar.gz", SHA_A),
        ("foo-2.0.tar.gz", SHA_A),
    ]
    assert len(page.rejected) == 1
    assert page.rejected[0][0] == "foo-1.0.tar.gz"
    assert "listed twice" in page.rejected[0][1]


def test_page_bad_entry_rejected_others_kept() -> None:
    page = parse_page(
        file_entry("good-1.0.tar.gz"),
        file_entry("bad-1.0.tar.gz", hashes={"sha256": "nothex"}),
        "not an object",
        file_entry("good-2.0.tar.gz"),
    )
    assert [f.filename for f in page.files] == ["good-1.0.tar.gz", "good-2.0.tar.gz"]
    assert [label for label, _ in page.rejected] == ["bad-1.0.tar.gz", "'not an object'"]
    assert "hex" in page.rejected[0][1]
    assert "not an object" in page.rejected[1][1]


def test_rejected_duplicate_does_not_count_as_seen_when_first_was_rejected() -> None:
    bad = file_entry("foo-1.0.tar.gz", hashes={"sha256": "zz"})
    good = file_entry("foo-1.0.tar.gz", hashes={"sha256": SHA_B})
    page = parse_page(bad, good)
    assert [f.hashes["sha256"] for f in page.files] == [SHA_B]
    assert len(page.rejected) == 1


# -- ProjectPage: URLs ---------------------------------------------------------------------


def test_absolute_url_kept() -> None:
    url = "https://files.example/packages/ab/cd/foo-1.0.tar.gz"
    assert parse_one(file_entry(url=url)).url == url


def test_plain_http_url_accepted() -> None:
    url = "http://files.example/foo-1.0.tar.gz"
    assert parse_one(file_entry(url=url)).url == url


def test_host_relative_url_resolved_against_page_host() -> None:
    dist = parse_one(file_entry(url="/packages/ab/cd/foo-1.0.tar.gz"))
    assert dist.url == "https://index.example/packages/ab/cd/foo-1.0.tar.gz"


def test_relative_url_resolved_against_page_url() -> None:
    dist = parse_one(file_entry(url="../../packages/ab/cd/foo-1.0.tar.gz"))
    assert dist.url == "https://index.example/packages/ab/cd/foo-1.0.tar.gz"


def test_same_directory_relative_url() -> None:
    dist = parse_one(file_entry(url="foo-1.0.tar.gz"))
    assert dist.url == "https://index.example/simple/foo/foo-1.0.tar.gz"


def test_relative_url_depends_on_page_url() -> None:
    dist = parse_one(
        file_entry(url="../files/foo-1.0.tar.gz"), page_url="http://h.example:8080/idx/foo/"
    )
    assert dist.url == "http://h.example:8080/idx/files/foo-1.0.tar.gz"


def test_metadata_url_is_file_url_plus_suffix() -> None:
    dist = parse_one(file_entry(url="/p/foo-1.0.tar.gz"))
    assert dist.metadata_url == "https://index.example/p/foo-1.0.tar.gz.metadata"


def test_metadata_url_drops_fragment_of_file_url() -> None:
    # PEP 658: the metadata lives at the file's URL plus ".metadata"; appending the
    # suffix after a "#fragment" would silently fetch the distribution itself
    # (pip builds it from the URL without its fragment).
    dist = parse_one(file_entry(url=f"https://files.example/foo-1.0.tar.gz#sha256={SHA_A}"))
    assert dist.metadata_url == "https://files.example/foo-1.0.tar.gz.metadata"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "ftp://files.example/foo-1.0.tar.gz",
        "data:application/octet-stream;base64,AAAA",
        "gopher://files.example/foo",
    ],
)
def test_non_http_url_rejected(url: str) -> None:
    assert "http" in rejection(file_entry(url=url))


@pytest.mark.parametrize("url", [None, "", 5, ["https://x/"]])
def test_missing_or_non_string_url_rejected(url: object) -> None:
    entry = file_entry()
    if url is None:
        del entry["url"]
    else:
        entry["url"] = url
    assert "url" in rejection(entry)


# -- ProjectPage: file names ---------------------------------------------------------------


DOT = "starts with a dot"
SEPARATOR = "path separator or a control character"
FORMAT = "format character"
LONG = "longer than"
# Each name with the reason of the one check that must refuse it. Its URL names the
# same file (see file_entry), so that no other check refuses it first: removing
# that one check lets the name through, or refuses it for another reason.
HOSTILE_NAMES = [
    ("../x", DOT),
    ("..", DOT),
    (".", DOT),
    (".hidden", DOT),
    (".metadata", DOT),
    ("..\\x", DOT),
    ("a/b", SEPARATOR),
    ("/etc/passwd", SEPARATOR),
    ("x/../../y", SEPARATOR),
    ("a\\b", SEPARATOR),
    ("a\0b", SEPARATOR),
    ("a\nb", SEPARATOR),
    ("a\rb", SEPARATOR),
    ("a\tb", SEPARATOR),
    ("a\x1bb", SEPARATOR),
    ("a\x7fb", SEPARATOR),
    ("foo-1.0\u202ezg.rat.whl", FORMAT),  # right-to-left override: shows "foo-1.0lhw.tar.gz"
    ("foo\u2066-1.0\u2069.tar.gz", FORMAT),  # left-to-right isolate
    ("foo-1.0\u2028.tar.gz", FORMAT),  # line separator
    ("foo-1.0\u2029.tar.gz", FORMAT),  # paragraph separator
    ("foo\u200b-1.0.tar.gz", FORMAT),  # zero-width space
    ("\ufefffoo-1.0.tar.gz", FORMAT),  # byte order mark
    ("x" * (MAX_FILENAME_BYTES + 1), LONG),
    ("\u00e9" * (MAX_FILENAME_BYTES // 2 + 1), LONG),
]


@pytest.mark.parametrize(("filename", "reason"), HOSTILE_NAMES)
def test_hostile_filenames_rejected(filename: str, reason: str) -> None:
    assert reason in rejection(file_entry(filename))


@pytest.mark.parametrize(
    "control", [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)]
)
def test_every_bidirectional_control_and_line_separator_in_a_filename_rejected(
    control: str,
) -> None:
    assert FORMAT in rejection(file_entry(f"foo{control}-1.0.tar.gz"))


@pytest.mark.parametrize("filename", [None, "", 5, ["a"]])
def test_missing_or_non_string_filename_rejected(filename: object) -> None:
    # The URL's last part is empty, as the empty name is: only the name's check refuses it.
    entry = file_entry(url="https://files.example/packages/")
    if filename is None:
        del entry["filename"]
    else:
        entry["filename"] = filename
    assert "missing or empty 'filename'" in rejection(entry)


def test_filename_length_limit_is_in_bytes() -> None:
    assert MAX_FILENAME_BYTES + len(".metadata") == 255
    longest = "x" * (MAX_FILENAME_BYTES - len(".tar.gz")) + ".tar.gz"
    assert parse_one(file_entry(longest)).filename == longest
    # Fewer characters than the limit, more bytes: rejected.
    wide = "\u00e9" * (MAX_FILENAME_BYTES // 2 - 2) + "-1.0.zip"
    assert len(wide) < MAX_FILENAME_BYTES < len(wide.encode())
    assert "longer" in rejection(file_entry(wide))


def test_c1_control_characters_in_filename_rejected() -> None:
    # U+0080..U+009F are control characters (Unicode category Cc) just like
    # U+0000..U+001F and U+007F; U+0085 is even a line break for str.splitlines.
    for control in ["\x80", "\x85", "\x9f"]:
        assert SEPARATOR in rejection(file_entry(f"foo{control}-1.0.tar.gz"))


def test_lone_surrogate_in_filename_rejected() -> None:
    # json.loads('"\\ud800"') yields a lone surrogate; such a name cannot be
    # encoded as UTF-8, so it can be neither written to disk nor put on a page.
    name = "foo-1.0\ud800.tar.gz"
    assert "not valid Unicode" in rejection(file_entry(name))


@pytest.mark.parametrize(
    "filename",
    [
        "foo-1.0.tar.gz",
        "foo-1.0-py3-none-any.whl",
        "foo bar#1%2+3.tar.gz",
        "caf\u00e9-1.0.tar.gz",
        "a<b>&\"'.zip",
        "foo..bar-1.0.tar.gz",
        # Letters of any script, marks and spaces are names, not controls.
        "\u65e5\u672c\u8a9e-1.0.tar.gz",
        "\u0645\u0631\u062d\u0628\u0627-1.0.tar.gz",  # right-to-left letters, no override
        "cafe\u0301-1.0.tar.gz",  # a combining accent
        "a\u00a0b-1.0.zip",  # no-break space
    ],
)
def test_ordinary_and_odd_but_safe_filenames_accepted(filename: str) -> None:
    assert parse_one(file_entry(filename)).filename == filename


# -- ProjectPage: hashes -------------------------------------------------------------------


def test_uppercase_hex_and_algorithm_normalized_to_lowercase() -> None:
    dist = parse_one(file_entry(hashes={"SHA256": SHA_A.upper()}))
    assert dict(dist.hashes) == {"sha256": SHA_A}


def test_several_verifiable_hashes_kept() -> None:
    dist = parse_one(file_entry(hashes={"sha256": SHA_A, "md5": md5(b"file a").upper()}))
    assert dict(dist.hashes) == {"sha256": SHA_A, "md5": md5(b"file a")}


def test_unknown_algorithm_ignored() -> None:
    dist = parse_one(file_entry(hashes={"sha256": SHA_A, "frobnicate": "not even hex"}))
    assert dict(dist.hashes) == {"sha256": SHA_A}


def test_extendable_output_algorithm_ignored() -> None:
    dist = parse_one(file_entry(hashes={"sha256": SHA_A, "shake_128": "00" * 16}))
    assert dict(dist.hashes) == {"sha256": SHA_A}


@pytest.mark.parametrize(
    "hashes",
    [
        {"sha256": "g" * 64},
        {"sha256": SHA_A[:-1] + "z"},
        {"sha256": " " + SHA_A[1:]},
        {"sha256": SHA_A[:63]},
        {"sha256": SHA_A + "0"},
        {"sha256": ""},
        {"sha256": 12345},
        {"sha256": None},
        {"sha256": SHA_A, "md5": "0" * 31},
    ],
)
def test_malformed_digest_rejects_entry(hashes: dict[str, Any]) -> None:
    reason = rejection(file_entry(hashes=hashes))
    assert "hex digest" in reason or "wrong length" in reason


@pytest.mark.parametrize(
    "hashes", [{}, {"frobnicate": SHA_A}, {"shake_256": SHA_A}, None, "sha256=" + SHA_A, [SHA_A]]
)
def test_no_verifiable_hash_rejects_entry(hashes: object) -> None:
    entry = file_entry()
    if hashes is None:
        del entry["hashes"]
    else:
        entry["hashes"] = hashes
    rejection(entry)


# -- ProjectPage: size, yanked, requires-python, upload-time ------------------------------


@pytest.mark.parametrize("size", [-1, True, False, "10", 1.5, [10]])
def test_bad_size_rejects_entry(size: object) -> None:
    assert "size" in rejection(file_entry(size=size))


def test_valid_sizes() -> None:
    assert parse_one(file_entry(size=0)).size == 0
    assert parse_one(file_entry(size=123456)).size == 123456
    assert parse_one(file_entry()).size is None


@pytest.mark.parametrize(
    ("yanked", "expected"),
    [
        (False, (False, None)),
        (True, (True, None)),
        ("broken build", (True, "broken build")),
        ("<b>\"quoted\" & 'odd'</b>", (True, "<b>\"quoted\" & 'odd'</b>")),
    ],
)
def test_yanked(yanked: object, expected: tuple[bool, str | None]) -> None:
    dist = parse_one(file_entry(yanked=yanked))
    assert (dist.yanked, dist.yanked_reason) == expected


def test_not_yanked_when_absent() -> None:
    dist = parse_one(file_entry())
    assert (dist.yanked, dist.yanked_reason) == (False, None)


def test_requires_python_and_upload_time() -> None:
    dist = parse_one(
        file_entry(requires_python=">=3.8, <4", upload_time="2024-01-02T03:04:05.123456Z")
    )
    assert dist.requires_python == ">=3.8, <4"
    assert dist.upload_time == "2024-01-02T03:04:05.123456Z"
    bare = parse_one(file_entry())
    assert (bare.requires_python, bare.upload_time) == (None, None)


def test_non_string_requires_python_and_upload_time_ignored() -> None:
    dist = parse_one(file_entry(requires_python=3, upload_time=1700000000))
    assert (dist.requires_python, dist.upload_time) == (None, None)


# -- ProjectPage: core metadata (PEP 658 / 714) ---------------------------------------------


META_SHA = sha256(b"Metadata-Version: 2.1\n")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, False),
        ({"core-metadata": False}, False),
        ({"core-metadata": True}, True),
        ({"core-metadata": {"sha256": META_SHA.upper()}}, {"sha256": META_SHA}),
        # A dict whose algorithms are all unknown still says the metadata exists.
        ({"core-metadata": {"frobnicate": "x"}}, True),
        ({"core-metadata": {}}, True),
        # The PEP 658 spellings, used when core-metadata is absent.
        ({"data-dist-info-metadata": True}, True),
        ({"data-dist-info-metadata": {"sha256": META_SHA}}, {"sha256": META_SHA}),
        ({"dist-info-metadata": {"sha256": META_SHA}}, {"sha256": META_SHA}),
        ({"data-dist-info-metadata": False}, False),
        # The PEP 714 name wins over the old ones.
        ({"core-metadata": False, "data-dist-info-metadata": True}, False),
        (
            {"core-metadata": {"sha256": META_SHA}, "data-dist-info-metadata": {"sha256": SHA_B}},
            {"sha256": META_SHA},
        ),
        ({"core-metadata": True, "dist-info-metadata": False}, True),
    ],
)
def test_core_metadata(keys: dict[str, Any], expected: object) -> None:
    entry = file_entry()
    entry.update(keys)
    dist = parse_one(entry)
    if isinstance(expected, dict):
        assert isinstance(dist.core_metadata, dict)
        assert dict(dist.core_metadata) == expected
    else:
        assert dist.core_metadata is expected


def test_malformed_core_metadata_hash_rejects_entry() -> None:
    reason = rejection(file_entry(core_metadata={"sha256": "nothex"}))
    assert "core-metadata" in reason


# -- ProjectPage: gpg-sig and provenance (PEP 503/691, PEP 740) ----------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", None), (1, None), (0, None), ({}, None)],
)
def test_gpg_sig_only_a_json_boolean_counts(value: object, expected: bool | None) -> None:
    assert parse_one(file_entry(gpg_sig=value)).gpg_sig is expected


def test_gpg_sig_absent_or_null_is_none() -> None:
    assert parse_one(file_entry()).gpg_sig is None
    entry = file_entry()
    entry["gpg-sig"] = None
    assert parse_one(entry).gpg_sig is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "https://index.example/integrity/foo/1.0/foo-1.0.tar.gz/provenance",
            "https://index.example/integrity/foo/1.0/foo-1.0.tar.gz/provenance",
        ),
        ("http://other.example/p", "http://other.example/p"),
        ("/integrity/foo/provenance", "https://index.example/integrity/foo/provenance"),
        ("../../integrity/foo/provenance", "https://index.example/integrity/foo/provenance"),
        ("provenance.json", "https://index.example/simple/foo/provenance.json"),
        ("//cdn.example/p", "https://cdn.example/p"),
    ],
)
def test_provenance_resolved_against_the_page_url(value: str, expected: str) -> None:
    assert parse_one(file_entry(provenance=value)).provenance == expected


@pytest.mark.parametrize(
    "value",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "ftp://files.example/p",
        "data:application/json,{}",
        "http://",  # another scheme than the page's, so urljoin cannot supply a host
        "",
        5,
        True,
        ["https://index.example/p"],
        {"url": "https://index.example/p"},
    ],
)
def test_unusable_provenance_is_none_and_the_file_is_kept(value: object) -> None:
    dist = parse_one(file_entry(provenance=value))
    assert dist.provenance is None
    assert dist.filename == "foo-1.0.tar.gz"
    assert "provenance" not in dist.extra


def test_provenance_absent_or_null_is_none() -> None:
    assert parse_one(file_entry()).provenance is None
    entry = file_entry()
    entry["provenance"] = None
    assert parse_one(entry).provenance is None


# -- ProjectPage: per-file extra keys ------------------------------------------------------


def test_unknown_file_keys_kept_known_and_dropped_keys_not() -> None:
    entry = file_entry(
        size=10,
        yanked="why",
        requires_python=">=3",
        upload_time="2024-01-01T00:00:00Z",
        core_metadata=True,
        data_dist_info_metadata=True,
        dist_info_metadata=True,
        gpg_sig=True,
        provenance="https://index.example/integrity/foo/1.0/foo-1.0.tar.gz/provenance",
    )
    entry["x-custom"] = {"nested": [1, 2]}
    entry["unknown_underscored"] = None
    dist = parse_one(entry)
    assert dict(dist.extra) == {"x-custom": {"nested": [1, 2]}, "unknown_underscored": None}


# -- version_of --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "version"),
    [
        ("foo-1.0.tar.gz", "1.0"),
        ("foo-1.0.zip", "1.0"),
        ("foo_bar-2.3.4-py3-none-any.whl", "2.3.4"),
        ("foo-1.0-1-cp311-cp311-manylinux_2_17_x86_64.whl", "1.0"),
        # Versions come back PEP 440 normalized.
        ("foo-1.0RC1.tar.gz", "1.0rc1"),
        ("foo-01.02.tar.gz", "1.2"),
        ("Foo-1!2.0.post1.tar.gz", "1!2.0.post1"),
    ],
)
def test_version_of_dists(filename: str, version: str) -> None:
    assert version_of(filename) == version


@pytest.mark.parametrize(
    "filename",
    [
        "foo-1.0.exe",
        "foo-1.0-py2.7.egg",
        "foo-1.0.tar.bz2",
        "foo.whl",
        "foo-1.0.whl",
        "foo-notaversion.tar.gz",
        "foo.tar.gz",
        "README",
    ],
)
def test_version_of_non_dists_is_none(filename: str) -> None:
    assert version_of(filename) is None


# -- HeldFile.matches --------------------------------------------------------------------


def held(filename: str = "foo-1.0.tar.gz", **hashes: str) -> HeldFile:
    return HeldFile(
        project="foo",
        filename=filename,
        path=f"packages/xx/yy/zz/{filename}",
        size=6,
        hashes=hashes or {"sha256": SHA_A},
        url=f"https://files.example/{filename}",
    )


def dist(filename: str = "foo-1.0.tar.gz", **hashes: str) -> DistFile:
    return DistFile(filename=filename, url=f"https://files.example/{filename}", hashes=hashes)


def test_matches_same_name_same_hash() -> None:
    assert held(sha256=SHA_A).matches(dist(sha256=SHA_A))


def test_matches_fails_on_different_hash() -> None:
    assert not held(sha256=SHA_A).matches(dist(sha256=SHA_B))


def test_matches_fails_on_different_filename() -> None:
    assert not held("foo-1.0.tar.gz", sha256=SHA_A).matches(dist("foo-1.0.zip", sha256=SHA_A))


def test_matches_needs_a_common_algorithm() -> None:
    assert not held(sha256=SHA_A).matches(dist(md5=md5(b"file a")))


def test_matches_uses_common_algorithms_only() -> None:
    copy = held(sha256=SHA_A, md5=md5(b"file a"))
    assert copy.matches(dist(md5=md5(b"file a")))
    assert copy.matches(dist(sha256=SHA_A, sha512=hashlib.sha512(b"x").hexdigest()))


def test_matches_fails_when_any_common_hash_disagrees() -> None:
    copy = held(sha256=SHA_A, md5=md5(b"file a"))
    assert not copy.matches(dist(sha256=SHA_A, md5=md5(b"other")))
    assert not copy.matches(dist(sha256=SHA_B, md5=md5(b"file a")))


@pytest.mark.parametrize(
    "url",
    [
        "https://files.example/packages/other-1.0.tar.gz",
        "https://files.example/packages/foo-1.0.tar.gz/",
        "https://files.example/download?file=foo-1.0.tar.gz",
        "https://files.example/packages/..%2Ffoo-1.0.tar.gz",
    ],
)
def test_filename_must_match_the_last_part_of_its_url(url: str) -> None:
    assert "does not match" in rejection(file_entry("foo-1.0.tar.gz", url=url))


def test_percent_encoded_url_matches_its_filename() -> None:
    url = "https://files.example/p/foo%2Bbar-1.0%2Blocal.tar.gz#sha256=" + SHA_A
    assert parse_one(file_entry("foo+bar-1.0+local.tar.gz", url=url)).url == url


def test_parsing_a_root_as_it_is_read_gives_the_same_index_as_parsing_it_whole():
    body = json.dumps({
        "meta": {"api-version": "1.1", "_last-serial": 40},
        "projects": [
            {"name": "django", "_last-serial": 10},
            {"name": "Foo_Bar.Baz", "_last-serial": "11"},
            {"name": "foo-bar-baz", "_last-serial": 12},  # the same project, newer
            {"name": "-not valid-", "_last-serial": 13},
            {"name": 7, "_last-serial": 14},
            {"_last-serial": 15},
            "just a string",
            {"name": "no-serial"},
            {"name": "bad-serial", "_last-serial": -3},
        ],
    }).encode()
    streamed = RootIndex.from_json_data(parse_root_json(body))
    assert streamed == RootIndex.from_json_data(json.loads(body))
    assert streamed.projects == (
        RootProject("django", "django", 10),
        RootProject("foo-bar-baz", "foo-bar-baz", 12),
        RootProject("no-serial", "no-serial", None),
        RootProject("bad-serial", "bad-serial", None),
    )
    assert streamed.collisions == (("Foo_Bar.Baz", "foo-bar-baz"),)
    assert len(streamed.rejected) == 4 and streamed.serial == 40


# -- resolving file URLs: the fast paths give what urljoin and urlsplit give --------


def _resolve_by_urljoin(value: str, page_url: str) -> tuple[str, str] | None:
    if not value:
        return None
    absolute = urljoin(page_url, value)
    parts = urlsplit(absolute)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return absolute, parts.path


def _outcome(fn: Any, value: str, page_url: str) -> object:
    try:
        return fn(value, page_url)
    except ValueError:
        return ValueError


_PAGES = [
    "https://index.example/simple/proj/", "http://Index.Example:8080/a/./b/../simple/proj/",
    "https://u:p@index.example/simple/proj/?q#f", "file:///srv/simple/proj/",
    "https:///simple/proj/", "https://[::1]:8443/simple/proj/",
]


@pytest.mark.parametrize("value", [
    "https://files.example/packages/ab/cd/x-1.0.tar.gz",
    "http://files.example:8080/p/x-1.0-py3-none-any.whl", "https://files.example:/x.whl",
    "/packages/ab/x-1.0.tar.gz", "/packages/./ab/x.whl", "/packages/../x.whl", "/a/b/..",
    "/a/b/.", "//files.example/x.whl", "/x%20y.whl", "/x;y.whl", "/x.whl?", "/x.whl#",
    "/x.whl#sha256=ab", "https://files.example/x.whl?a=b", "https://files.example/a;b",
    "HTTPS://files.example/x.whl", "https://files.example", "https://@files.example/x",
    "https://files.example/x y.whl", "/x\ty.whl", "/x\ny.whl", " /x.whl", "/x.whl ",
    "../../packages/x.whl", "x.whl", "ftp://files.example/x.whl", "https://[::1]/x.whl",
    "https://files..example/x", "https://-/x", "/é.whl", "https://files.example//x//y.whl",
    "https://files.example/.x/../y.whl",
])
@pytest.mark.parametrize("page_url", _PAGES)
def test_resolving_file_urls_agrees_with_urljoin(value: str, page_url: str) -> None:
    value = value.replace("\\t", "\t").replace("\\n", "\n")
    assert _outcome(model._resolve, value, page_url) == _outcome(
        _resolve_by_urljoin, value, page_url
    )


def test_resolving_random_file_urls_agrees_with_urljoin() -> None:
    alphabet = "aB0:/?#;@[]\\.%-_~+= \t\r\n\x00\x7fé"
    starts = ["https://files.example", "http://h:1", "/", "//", "", "./", "../", "https://"]
    values = random_strings(11, alphabet, starts=starts)
    for value, page_url in zip(values, itertools.cycle(_PAGES), strict=False):
        assert _outcome(model._resolve, value, page_url) == _outcome(
            _resolve_by_urljoin, value, page_url
        ), (value, page_url)


def test_an_algorithm_this_openssl_will_not_compute_is_not_verifiable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a FIPS build: hashlib lists md5, but making one raises ValueError.
    real_new = hashlib.new

    def fips_new(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "md5":
            raise ValueError("[digital envelope routines] unsupported")
        return real_new(name, *args, **kwargs)

    monkeypatch.setattr(hashlib, "new", fips_new)
    assert model._digest_size("md5") is None
    assert model._digest_size("sha256") == 32
    assert model._digest_size("no-such-algorithm") is None
