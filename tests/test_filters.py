"""The [filters] table and what it keeps of a page: pure, no network, no disk."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli.config import ConfigError, load
from simplemirror.cli.main import main
from simplemirror.filter.rules import FilterError, Filters, parse
from simplemirror.filter.select import Selection, Tally, select
from simplemirror.filter.tags import Environment, expand_platform
from simplemirror.simple.model import DistFile, HeldFile, ProjectPage

NOW = datetime(2026, 1, 31, tzinfo=UTC).timestamp()
DAY = 86400


def when(days_ago: float) -> str:
    return datetime.fromtimestamp(NOW - days_ago * DAY, UTC).isoformat().replace("+00:00", "Z")


def dist(filename: str, *, yanked: bool = False, size: int = 100, age: float | None = 30,
         requires_python: str | None = None) -> DistFile:
    digest = hashlib.sha256(filename.encode()).hexdigest()
    return DistFile(
        filename=filename, url=f"https://files.example/{filename}", hashes={"sha256": digest},
        yanked=yanked, size=size, upload_time=None if age is None else when(age),
        requires_python=requires_python,
    )


def page(*files: DistFile, versions: tuple[str, ...] | None = None) -> ProjectPage:
    return ProjectPage("demo", files, versions, 1)


def held(d: DistFile) -> HeldFile:
    return HeldFile("demo", d.filename, "packages/x", d.size or 0, d.hashes, d.url)


def kept(filters: Filters, p: ProjectPage, have: tuple[DistFile, ...] = ()) -> list[str]:
    return [d.filename for d in choose(filters, p, have).page.files]


def choose(filters: Filters, p: ProjectPage, have: tuple[DistFile, ...] = ()) -> Selection:
    return select(filters, p, {d.filename: held(d) for d in have}, NOW)


def why(selection: Selection) -> dict[str, str]:
    return {d.filename: key for d, key in selection.dropped}


# -- reading the table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"include-projects": ["django", "("]}, "include-projects", "not a regular expression"),
        ({"exclude-projects": "django"}, "exclude-projects", "list of strings"),
        ({"prereleases": "no"}, "prereleases", "true or false"),
        ({"latest-versions": 0}, "latest-versions", "at least 1"),
        ({"latest-versions": True}, "latest-versions", "whole number"),
        ({"max-file-size": -5}, "max-file-size", "bytes"),
        ({"min-age": "7 days"}, "min-age", "not an interval"),
        ({"min-age": 7}, "min-age", "duration"),
        ({"min-age-exempt": ["x"]}, "min-age-exempt", "without min-age"),
        ({"min-age": "1d", "min-age-exempt": ["-bad-"]}, "min-age-exempt", "-bad-"),
        ({"environments": []}, "environments", "list of tables"),
        ({"environments": ["3.12"]}, "environments[0]", "table"),
        ({"environments": [{"python": "3"}]}, "environments[0].python", "like \"3.12\""),
        ({"environments": [{"python": "3.12", "os": "linux"}]}, "environments[0]", "'os'"),
        ({"environments": [{"python": "3.12", "implementation": "jy"}]},
         "environments[0].implementation", "cp (CPython) or pp"),
        ({"environments": [{"python": "3.12"}, {"python": "3.12", "platforms":
                                                 ["manylinux_2_28_x86-64"]}]},
         "environments[1].platforms", "'manylinux_2_28_x86-64' is not a platform tag"),
        ({"environments": [{"python": "3.12", "platforms": ["windows"]}]},
         "environments[0].platforms", "win_amd64"),
        ({"prerelease": False}, "prerelease", "did you mean 'prereleases'"),
    ],
)
def test_a_value_that_cannot_be_used_is_named_by_its_key(
    table: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(FilterError) as caught:
        parse(table)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"[filters] {key}: ") and words in str(caught.value)


def test_a_bad_filter_is_a_configuration_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text('[mirror]\nupstream = "https://i.example/simple/"\ndirectory = "d"\n'
                    '[filters]\nmin-age = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[filters\] min-age: 'soon' is not an interval"):
        load(path)
    assert main(["sync", "-c", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "[filters] min-age" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_misspelt_filters_table_is_refused_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text('[mirror]\nupstream = "https://i.example/simple/"\ndirectory = "d"\n'
                    '[filter]\nprereleases = false\n')
    with pytest.raises(ConfigError, match=r"unknown table \[filter\]; did you mean \[filters\]"):
        load(path)


def test_the_table_loads_into_typed_filters_and_says_what_is_in_force(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(
        '[mirror]\nupstream = "https://i.example/simple/"\ndirectory = "d"\n'
        '[filters]\ninclude-projects = ["dj.*"]\nprereleases = false\nlatest-versions = 3\n'
        'environments = [{ python = "3.12", platforms = ["win_amd64"] }]\n'
        'min-age = "2d"\nmin-age-exempt = ["My_Pkg"]\nmax-file-size = 1000\n'
    )
    filters = load(path).filters
    assert filters.min_age == 2 * DAY and filters.min_age_exempt == {"my-pkg"}
    assert filters.environments == (Environment((3, 12), "cp", ("win_amd64",)),)
    assert filters.in_force() == {
        "include-projects": ["dj.*"], "prereleases": False, "latest-versions": 3,
        "environments": [{"python": "3.12", "implementation": "cp", "platforms": ["win_amd64"]}],
        "max-file-size": 1000, "min-age": "2d", "min-age-exempt": ["my-pkg"],
    }
    # The file filters' fingerprint ignores project filters; both change with a setting.
    assert filters.fingerprint() != filters.file_fingerprint()
    narrower = parse({**_table(filters), "latest-versions": 2})
    assert narrower.file_fingerprint() != filters.file_fingerprint()
    assert parse({**_table(filters), "include-projects": ["x"]}).file_fingerprint() == (
        filters.file_fingerprint()
    )
    assert Filters().fingerprint() is None and not Filters().active


def _table(filters: Filters) -> dict[str, Any]:
    return filters.in_force()


# -- projects -------------------------------------------------------------------------


def test_project_regexes_match_whole_normalized_names_and_exclude_wins() -> None:
    filters = parse({"include-projects": ["django", "django-.*"],
                     "exclude-projects": ["django-nightly"]})
    assert filters.wants_project("django") and filters.wants_project("django-rest")
    assert not filters.wants_project("mydjango")  # the whole name, not a part of it
    assert not filters.wants_project("django-nightly")
    only_excluding = parse({"exclude-projects": ["bad.*"]})
    assert only_excluding.wants_project("good") and not only_excluding.wants_project("bad-x")
    assert not only_excluding.narrows_files and only_excluding.narrows_projects


# -- platforms ------------------------------------------------------------------------


def test_a_glibc_platform_takes_every_older_manylinux_and_plain_linux() -> None:
    accepted = expand_platform("manylinux_2_28_x86_64")
    assert accepted[0] == "manylinux_2_28_x86_64"
    for tag in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
                "manylinux1_x86_64", "manylinux_2_5_x86_64", "linux_x86_64"):
        assert tag in accepted
    assert "manylinux_2_29_x86_64" not in accepted
    assert "manylinux_2_16_aarch64" not in expand_platform("manylinux_2_28_aarch64")
    assert expand_platform("manylinux2014_aarch64") == expand_platform("manylinux_2_17_aarch64")
    assert "musllinux_1_1_x86_64" in expand_platform("musllinux_1_2_x86_64")
    assert "macosx_10_9_universal2" in expand_platform("macosx_11_0_arm64")
    assert "macosx_10_9_x86_64" not in expand_platform("macosx_11_0_arm64")
    assert expand_platform("win_amd64") == ("win_amd64",)


def test_an_environment_takes_the_wheels_its_installer_would() -> None:
    linux312 = Environment((3, 12), "cp", ("manylinux_2_28_x86_64",))
    takes = ["demo-1.0-py3-none-any.whl", "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
             "demo-1.0-cp39-abi3-manylinux2014_x86_64.whl",
             "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    refuses = ["demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
               "demo-1.0-cp312-cp312-win_amd64.whl", "demo-1.0-py2-none-any.whl",
               "demo-1.0-cp312-cp312-manylinux_2_34_x86_64.whl",
               "demo-1.0-cp312-cp312-manylinux_2_28_aarch64.whl"]
    filters = Filters(environments=(linux312,))
    assert kept(filters, page(*map(dist, takes + refuses))) == takes
    # No platforms: any platform, the Python and ABI still decide.
    any312 = Filters(environments=(Environment((3, 12)),))
    assert kept(any312, page(*map(dist, takes + refuses))) == takes + refuses[1:2] + refuses[3:]
    pypy = Filters(environments=(Environment((3, 10), "pp", ("manylinux_2_28_x86_64",)),))
    assert kept(pypy, page(dist("demo-1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl"),
                           dist("demo-1.0-cp310-cp310-manylinux_2_17_x86_64.whl"))) == [
        "demo-1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl"]


def test_environments_keep_sdists_meet_requires_python_and_drop_other_formats() -> None:
    filters = Filters(environments=(Environment((3, 12), "cp", ("win_amd64",)),))
    files = page(
        dist("demo-1.0.tar.gz"), dist("demo-1.0.zip"),
        dist("demo-0.9.tar.gz", requires_python="<3"),
        dist("demo-2.0.tar.gz", requires_python=">=3.12.4"),  # some 3.12 meets it
        dist("demo-2.1.tar.gz", requires_python="not a specifier"),  # installers ignore it
        dist("demo-1.0-py2.7.egg"), dist("demo-1.0.win-amd64.exe"),
        dist("demo-1.0-not-a-wheel.whl"),
    )
    selection = choose(filters, files)
    assert [d.filename for d in selection.page.files] == [
        "demo-1.0.tar.gz", "demo-1.0.zip", "demo-2.0.tar.gz", "demo-2.1.tar.gz"]
    assert set(why(selection).values()) == {"environments"} and len(selection.dropped) == 4


def test_sdists_false_and_max_file_size() -> None:
    files = page(dist("demo-1.0.tar.gz", size=50), dist("demo-1.0-py3-none-any.whl", size=500),
                 dist("demo-1.0-cp312-cp312-win_amd64.whl", size=5000))
    assert kept(Filters(sdists=False), files) == ["demo-1.0-py3-none-any.whl",
                                                   "demo-1.0-cp312-cp312-win_amd64.whl"]
    selection = choose(Filters(max_file_size=500), files)
    assert why(selection) == {"demo-1.0-cp312-cp312-win_amd64.whl": "max-file-size"}
    unknown = page(DistFile("demo-1.0.tar.gz", "https://f.example/demo-1.0.tar.gz",
                            {"sha256": "0" * 64}))
    assert kept(Filters(max_file_size=1), unknown) == ["demo-1.0.tar.gz"]


# -- versions -------------------------------------------------------------------------


def test_prereleases_go_unless_a_project_has_nothing_else() -> None:
    filters = Filters(prereleases=False)
    mixed = page(dist("demo-1.0.tar.gz"), dist("demo-2.0rc1.tar.gz"),
                 dist("demo-2.0.dev3-py3-none-any.whl"), dist("demo-1.1.post1.tar.gz"),
                 versions=("1.0", "1.1.post1", "2.0.dev3", "2.0rc1"))
    selection = choose(filters, mixed)
    assert [d.filename for d in selection.page.files] == ["demo-1.0.tar.gz",
                                                            "demo-1.1.post1.tar.gz"]
    assert selection.page.versions == ("1.0", "1.1.post1")
    assert set(why(selection).values()) == {"prereleases"}
    only_pre = page(dist("demo-0.1a1.tar.gz"), dist("demo-0.2b1.tar.gz"))
    assert kept(filters, only_pre) == ["demo-0.1a1.tar.gz", "demo-0.2b1.tar.gz"]


def test_latest_versions_counts_versions_with_a_file_not_yanked() -> None:
    files = page(
        dist("demo-1.0.tar.gz"), dist("demo-1.1.tar.gz"),
        dist("demo-1.2.tar.gz"), dist("demo-1.2-py3-none-any.whl", yanked=True),
        dist("demo-1.3.tar.gz", yanked=True), dist("demo-1.3-py3-none-any.whl", yanked=True),
        dist("demo-1.10.tar.gz"),
        dist("demo-2.0.tar.gz", yanked=True),
        dist("odd-name.tar"),  # no version to rank: not among the newest
        versions=("1.0", "1.1", "1.2", "1.3", "1.10", "2.0"),
    )
    selection = choose(Filters(latest_versions=2), files)
    # 2.0 (yanked, newer), 1.10, 1.3 (yanked, newer than the second), 1.2 (half-yanked).
    assert [d.filename for d in selection.page.files] == [
        "demo-1.2.tar.gz", "demo-1.2-py3-none-any.whl", "demo-1.3.tar.gz",
        "demo-1.3-py3-none-any.whl", "demo-1.10.tar.gz", "demo-2.0.tar.gz"]
    assert selection.page.versions == ("1.2", "1.3", "1.10", "2.0")
    assert why(selection) == {"demo-1.0.tar.gz": "latest-versions",
                              "demo-1.1.tar.gz": "latest-versions",
                              "odd-name.tar": "latest-versions"}


def test_latest_versions_counts_after_the_other_filters() -> None:
    # The newest release has only a Windows wheel: on Linux, the one before is the newest.
    filters = Filters(latest_versions=1, environments=(Environment(
        (3, 12), "cp", ("manylinux_2_28_x86_64",)),), prereleases=False)
    files = page(dist("demo-1.0-py3-none-any.whl"), dist("demo-2.0-cp312-cp312-win_amd64.whl"),
                 dist("demo-0.9-py3-none-any.whl"), dist("demo-3.0b1-py3-none-any.whl"))
    assert kept(filters, files) == ["demo-1.0-py3-none-any.whl"]


def test_nothing_left_out_leaves_the_page_as_upstream_gave_it() -> None:
    p = page(dist("demo-1.0.tar.gz"), versions=("0.5", "1.0"))  # 0.5: a release with no files
    assert choose(Filters(prereleases=False), p).page is p
    assert choose(Filters(include_projects=("demo",)), p).page is p


# -- the cooldown ---------------------------------------------------------------------


def test_min_age_holds_back_young_files_and_says_when_they_are_due() -> None:
    filters = Filters(min_age=7 * DAY)
    old, young, younger = (dist("demo-1.0.tar.gz", age=30), dist("demo-2.0.tar.gz", age=2),
                           dist("demo-2.0-py3-none-any.whl", age=1))
    selection = choose(filters, page(old, young, younger, versions=("1.0", "2.0")))
    assert [d.filename for d in selection.page.files] == ["demo-1.0.tar.gz"]
    assert selection.page.versions == ("1.0",)  # no phantom version while 2.0 waits
    assert selection.held_back == (young, younger)
    assert selection.due == int(NOW + 5 * DAY) + 1  # the older of the two, five days on


def test_min_age_fails_closed_without_upload_time_unless_exempt() -> None:
    undated = dist("demo-1.0.tar.gz", age=None)
    selection = choose(Filters(min_age=DAY), page(undated))
    assert selection.page.files == () and selection.held_back == (undated,)
    assert selection.due is None  # never due on its own: only a new page can date it
    exempt = Filters(min_age=DAY, min_age_exempt=frozenset({"demo"}))
    assert kept(exempt, page(undated, dist("demo-2.0.tar.gz", age=0))) == [
        "demo-1.0.tar.gz", "demo-2.0.tar.gz"]
    unreadable = DistFile("demo-1.0.tar.gz", "https://f.example/demo-1.0.tar.gz",
                          {"sha256": "1" * 64}, upload_time="last tuesday")
    assert choose(Filters(min_age=DAY), page(unreadable)).held_back == (unreadable,)


def test_min_age_never_takes_back_a_file_the_mirror_holds() -> None:
    young = dist("demo-2.0.tar.gz", age=1)
    assert kept(Filters(min_age=7 * DAY), page(young), have=(young,)) == ["demo-2.0.tar.gz"]
    # Other bytes under the same name are a new file: they wait.
    other = HeldFile("demo", young.filename, "packages/y", 1, {"sha256": "2" * 64}, young.url)
    selection = select(Filters(min_age=7 * DAY), page(young), {young.filename: other}, NOW)
    assert selection.held_back == (young,)


def test_a_release_waiting_out_the_cooldown_does_not_count_for_latest_versions() -> None:
    filters = Filters(min_age=7 * DAY, latest_versions=1)
    files = page(dist("demo-1.0.tar.gz", age=30), dist("demo-2.0.tar.gz", age=1))
    assert kept(filters, files) == ["demo-1.0.tar.gz"]


def test_tally_counts_files_and_bytes_kept_left_out_and_held_back() -> None:
    tally = Tally()
    tally.add(choose(Filters(sdists=False, min_age=DAY), page(
        dist("demo-1.0.tar.gz", size=10), dist("demo-1.0-py3-none-any.whl", size=20),
        dist("demo-2.0-py3-none-any.whl", size=40, age=0))))
    assert tally.to_data() == {
        "files_kept": 1, "bytes_kept": 20, "files_left_out": 1, "bytes_left_out": 10,
        "left_out_by": {"sdists": {"files": 1, "bytes": 10}},
        "files_held_back": 1, "bytes_held_back": 40,
    }
