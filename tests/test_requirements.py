"""The requirements filter: requirements.txt, pylock.toml and uv.lock read; their dependency
closure worked out from PEP 658 metadata for the configured environments; a lock's files
kept exactly, a hash that does not match refused and named; the closure installed offline
by pip and uv from the mirror."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.filter.closure import Requires, resolve
from simplemirror.filter.requirements import RequirementsError, Wanted, read
from simplemirror.filter.rules import Filters, parse
from simplemirror.simple.model import DistFile, HeldFile, ProjectPage
from simplemirror.sync.run import RunSummary, Sync
from tests.support.tree import assert_consistent
from tests.support.upstream import Upstream, World

SHA = "a" * 64

# -- reading the files ------------------------------------------------------------------


def test_requirements_txt_pins_hashes_includes_and_what_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "more.txt").write_text("base>=1  # from an include\n")
    (tmp_path / "requirements.txt").write_text(
        "# pinned by a tool\n"
        "--index-url https://index.example/simple/\n"
        "-r more.txt\n"
        "App==1.0 \\\n"
        f"    --hash=sha256:{SHA} \\\n"
        f"    --hash=sha256:{'B' * 64}\n"
        'requests[Socks]>=2.0 ; python_version >= "3.8"\n'
        "-c constraints.txt\n"
        "-e .\n"
        "./vendored/thing\n"
        "git+https://git.example/x.git#egg=x\n"
        "direct @ https://files.example/direct-1.0.tar.gz\n"
        "\n"
    )
    found = read(["requirements.txt"], tmp_path)
    assert [str(w) for w in found.wanted] == [
        "base>=1", "app==1.0", 'requests[socks]>=2.0; python_version >= "3.8"']
    assert found.wanted[1].hashes == {f"sha256:{SHA}", f"sha256:{'b' * 64}"}
    assert found.wanted[0].hashes is None and found.locked == ()
    assert found.paths == ("requirements.txt",) and len(found.digest) == 16


def test_a_requirements_file_that_does_not_parse_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text("good==1\nbad[>=1\n")
    with pytest.raises(RequirementsError, match=r"requirements.txt, line 2: not a requirement"):
        read(["requirements.txt"], tmp_path)
    path = tmp_path / "mirror.toml"
    path.write_text('[mirror]\nupstream = "https://i.example/simple/"\ndirectory = "d"\n'
                    '[filters]\nrequirements = ["requirements.txt"]\n')
    assert main(["sync", "-c", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "[filters] requirements:" in err and "line 2" in err and "Traceback" not in err
    with pytest.raises(RequirementsError, match=r"missing\.txt: cannot be read"):
        read(["missing.txt"], tmp_path)


PYLOCK = f"""
lock-version = "1.0"
created-by = "a tool"

[[packages]]
name = "App"
version = "1.0"
wheels = [
    {{ url = "https://files.example/app-1.0-py3-none-any.whl", hashes = {{ sha256 = "{SHA}" }} }},
]
[packages.sdist]
name = "app-1.0.tar.gz"
url = "https://files.example/app-1.0.tar.gz"
hashes = {{ sha256 = "{'c' * 64}" }}

[[packages]]
name = "local-thing"
directory = {{ path = "." }}
"""

UV_LOCK = f"""
version = 1
requires-python = ">=3.9"

[[package]]
name = "myproject"
version = "0.1"
source = {{ editable = "." }}

[[package]]
name = "lib"
version = "2.0"
source = {{ registry = "https://index.example/simple" }}
sdist = {{ url = "https://files.example/lib-2.0.tar.gz", hash = "sha256:{'d' * 64}", size = 10 }}
wheels = [
    {{ url = "https://files.example/lib-2.0-py3-none-any.whl", hash = "sha256:{SHA}", size = 9 }},
]
"""


def test_pylock_and_uv_lock_give_exact_files_with_their_hashes(tmp_path: Path) -> None:
    (tmp_path / "pylock.toml").write_text(PYLOCK)
    (tmp_path / "uv.lock").write_text(UV_LOCK)
    found = read(["pylock.toml", "uv.lock"], tmp_path)
    assert [(p.name, p.version, p.files) for p in found.locked] == [
        ("app", "1.0", (("app-1.0-py3-none-any.whl", (("sha256", SHA),)),
                        ("app-1.0.tar.gz", (("sha256", "c" * 64),)))),
        ("lib", "2.0", (("lib-2.0-py3-none-any.whl", (("sha256", SHA),)),
                        ("lib-2.0.tar.gz", (("sha256", "d" * 64),)))),
    ]


@pytest.mark.parametrize(("name", "text", "words"), [
    ("pylock.toml", 'lock-version = "2.0"\n', "lock-version '2.0'"),
    ("pylock.toml", "lock-version = [\n", "not valid TOML"),
    ("pylock.toml", 'lock-version = "1.0"\n[[packages]]\nname = "x"\n'
     'wheels = [{ url = "https://f.example/x-1-py3-none-any.whl", hashes = { blake99 = "ab" } }]\n',
     "no hash this mirror can check"),
    ("uv.lock", 'version = "one"\n', "not a uv lock"),
    ("uv.lock", 'version = 1\n[[package]]\nname = "x"\nsource = { registry = "r" }\n'
     'wheels = [{ url = "https://f.example/x-1-py3-none-any.whl" }]\n', "no hash"),
])
def test_a_lock_that_does_not_parse_is_refused_saying_why(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(RequirementsError, match=words):
        read([name], tmp_path)


# -- the closure, on a source in memory ----------------------------------------------------


class Pages:
    """A closure.Source over pages and Requires-Dist given as plain data."""

    def __init__(self, projects: Mapping[str, list[tuple[str, list[str]]]],
                 build: Mapping[str, list[str]] | None = None) -> None:
        self.files: dict[str, list[DistFile]] = {}
        self.requires: dict[str, Requires] = {}
        self.asked: list[str] = []
        for project, files in projects.items():
            self.files[project] = []
            for filename, deps in files:
                self.files[project].append(DistFile(
                    filename, f"https://f.example/{filename}",
                    {"sha256": hashlib.sha256(filename.encode()).hexdigest()},
                    core_metadata=True,
                ))
                sdist = filename.endswith(".tar.gz")
                self.requires[filename] = Requires(
                    tuple(deps), tuple((build or {}).get(filename, ())) if sdist else None
                )

    def pages(self, names: Iterable[str]
              ) -> Mapping[str, tuple[ProjectPage, Mapping[str, HeldFile]] | None]:
        names = list(names)
        self.asked += names
        return {n: (ProjectPage(n, tuple(self.files[n]), None, 1), {}) if n in self.files
                else None for n in names}

    def requires_of(self, files: Iterable[DistFile]) -> Mapping[str, Requires]:
        return {d.filename: self.requires[d.filename] for d in files}


def closure(source: Pages, roots: list[str], **filters: Any) -> Any:
    class Adapter:
        pages = source.pages

        @staticmethod
        def requires(files: Iterable[DistFile]) -> Mapping[str, Requires]:
            return source.requires_of(files)

    requirements = read([], Path())
    requirements = type(requirements)(("r.txt",), tuple(Wanted.parse(r) for r in roots))
    return resolve(Filters(requirements=requirements, **filters), requirements, Adapter(), 0)


def versions(found: Any) -> dict[str, list[str]]:
    return {n: sorted(r.versions) for n, r in found.rules.items()}


WORLD = {
    "app": [("app-1.0-py3-none-any.whl", ["lib>=1", "extra-only; extra == 'fast'"]),
            ("app-2.0-py3-none-any.whl", ["lib>=2"])],
    "lib": [("lib-1.0-py3-none-any.whl", []),
            ("lib-2.0-py3-none-any.whl", ["base", 'winonly; sys_platform == "win32"']),
            ("lib-3.0rc1-py3-none-any.whl", ["base"])],
    "base": [("base-1.0-py3-none-any.whl", [])],
    "winonly": [("winonly-1.0-py3-none-any.whl", [])],
    "extra-only": [("extra_only-1.0-py3-none-any.whl", [])],
    "needs-build": [("needs_build-1.0.tar.gz", ["base"])],
    "setuptools": [("setuptools-80.0-py3-none-any.whl", []),
                   ("setuptools-30.0-py3-none-any.whl", [])],
    "flit-core": [("flit_core-3.9-py3-none-any.whl", [])],
}


def test_the_closure_follows_dependencies_newest_final_first() -> None:
    source = Pages(WORLD)
    found = closure(source, ["app==1.0"])
    # lib>=1: the newest final release, not the pre-release; winonly: some platform has it.
    assert versions(found) == {"app": ["1"], "lib": ["2"], "base": ["1"], "winonly": ["1"]}
    assert found.problems == []
    assert set(found.pages) == {"app", "lib", "base", "winonly"}


def test_markers_are_read_for_the_configured_environments_and_extras_followed() -> None:
    from simplemirror.filter.tags import Environment

    linux = (Environment((3, 12), "cp", ("manylinux_2_28_x86_64",)),)
    found = closure(Pages(WORLD), ["app[fast]==1.0"], environments=linux)
    assert versions(found) == {"app": ["1"], "lib": ["2"], "base": ["1"], "extra-only": ["1"]}


def test_latest_versions_keeps_more_and_a_pin_keeps_its_own() -> None:
    found = closure(Pages(WORLD), ["app"], latest_versions=2)
    assert versions(found)["app"] == ["1", "2"]
    assert versions(found)["lib"] == ["1", "2"]  # lib>=1 from app 1.0, lib>=2 from app 2.0
    assert versions(closure(Pages(WORLD), ["lib==3.0rc1"]))["lib"] == ["3rc1"]


def test_an_sdist_an_environment_builds_brings_its_build_requirements() -> None:
    source = Pages(WORLD, build={"needs_build-1.0.tar.gz": ["flit_core>=3"]})
    found = closure(source, ["needs-build"])
    assert versions(found) == {"needs-build": ["1"], "base": ["1"], "flit-core": ["3.9"]}
    without = Pages(WORLD)  # no [build-system]: setuptools, as PEP 517 has it
    assert versions(closure(without, ["needs-build"]))["setuptools"] == ["80"]


def test_what_cannot_be_met_is_said() -> None:
    found = closure(Pages(WORLD), ["app>=5", "nowhere"])
    problems = dict(found.problems)
    assert "no version meets app>=5" in problems["app"]
    assert "upstream does not list it" in problems["nowhere"]


# -- on a generated world, end to end --------------------------------------------------


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("app", ["1.0"], sdist=False, requires_dist=["lib>=1.0"])
    w.add_release("app", "2.0", sdist=False, requires_dist=["lib>=2.0", "other"])
    w.add_release("lib", "1.0")
    w.add_release("lib", "2.0", requires_dist=["base", 'winonly; sys_platform == "win32"'])
    w.add_release("lib", "3.0rc1", requires_dist=["base"])
    w.add_project("base", ["1.0"], requires_dist=["needs-build"])
    w.add_project("needs-build", ["0.5"], wheel=False)  # sdist only: it is built
    w.add_project("setuptools", ["75.0", "80.0"], sdist=False)
    w.add_project("winonly", ["1.0"])
    w.add_project("other", ["1.0"])
    w.add_project("unrelated", ["1.0"])
    return w


def settings(up: Upstream, directory: Path, table: dict[str, Any], base: Path,
             **overrides: Any) -> config.Config:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "workers": 3, "retries": 0,
        "retry_wait": 0.0, "stale_retries": 0, "download_processes": 0,
        "filters": parse(table, base),
    }
    values.update(overrides)
    return config.build({}, values)


def sync(up: Upstream, directory: Path, table: dict[str, Any], base: Path, *,
         dry_run: bool = False, **overrides: Any) -> RunSummary:
    return Sync(settings(up, directory, table, base, **overrides)).run(dry_run=dry_run)


def listed(directory: Path) -> dict[str, list[str]]:
    return {n: sorted(f) for n, f in assert_consistent(directory / "web").items()}


def test_a_requirements_file_mirrors_its_closure_and_nothing_else(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    (tmp_path / "requirements.txt").write_text("app==1.0\n")
    table = {"requirements": ["requirements.txt"],
             "environments": [{"python": "3.12", "platforms": ["manylinux_2_28_x86_64"]}]}

    forecast = sync(upstream, tmp_path / "m", table, tmp_path, dry_run=True)
    summary = sync(upstream, tmp_path / "m", table, tmp_path)

    assert summary.exit_code == 0, summary.unmet or summary.failed
    pages = listed(tmp_path / "m")
    assert pages == {
        "app": ["app-1.0-py3-none-any.whl"],
        "lib": ["lib-2.0-py3-none-any.whl", "lib-2.0.tar.gz"],
        "base": ["base-1.0-py3-none-any.whl", "base-1.0.tar.gz"],
        # An sdist only: linux builds it, and its build requirement comes along.
        "needs-build": ["needs_build-0.5.tar.gz"],
        "setuptools": ["setuptools-80.0-py3-none-any.whl"],
    }
    assert forecast.plan is not None and forecast.exit_code == 0
    assert sorted(t.name for t in forecast.plan.fetch) == sorted(pages)
    # Each page was read once, and the sdist the closure read is the one published.
    pages_asked = [p for p in upstream.paths() if p.startswith("/simple/") and p != "/simple/"]
    assert sorted(pages_asked) == sorted([f"/simple/{n}/" for n in pages] * 2)  # + dry run
    sdist = world.project("needs-build").file("needs_build-0.5.tar.gz").path
    assert upstream.paths().count(sdist) == 2  # the dry run's, in memory, and the run's


def test_a_new_release_upstream_moves_the_closure_and_prunes_what_it_left(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    (tmp_path / "requirements.txt").write_text("app==1.0\n")
    table = {"requirements": ["requirements.txt"], "environments": [{"python": "3.12"}]}
    assert sync(upstream, tmp_path / "m", table, tmp_path).exit_code == 0
    assert "winonly" in listed(tmp_path / "m")  # some platform (win32) needs it
    world.add_release("lib", "2.1", sdist=False, requires_dist=["other"])

    summary = sync(upstream, tmp_path / "m", table, tmp_path, allow_mass_delete=True)

    assert summary.exit_code == 0
    pages = listed(tmp_path / "m")
    assert pages["lib"] == ["lib-2.1-py3-none-any.whl"] and "other" in pages
    assert pages["app"] == ["app-1.0-py3-none-any.whl"]
    assert not {"base", "winonly", "needs-build"} & set(pages)
    assert sorted(summary.pruned) == ["base", "needs-build", "setuptools", "winonly"]


def lock_for(world: World, *names: str, wrong: str | None = None) -> str:
    """A pylock.toml locking every file of these projects' newest release."""
    out = ['lock-version = "1.0"', 'created-by = "tests"']
    for name in names:
        project = world.project(name)
        version = project.versions[-1]
        out += ["", "[[packages]]", f'name = "{name}"', f'version = "{version}"', "wheels = ["]
        for f in project.files:
            if f.version == version and f.filename.endswith(".whl"):
                digest = "0" * 64 if f.filename == wrong else f.sha256
                out.append(f'  {{ name = "{f.filename}", url = "https://f.example/{f.filename}",'
                           f' hashes = {{ sha256 = "{digest}" }} }},')
        out.append("]")
    return "\n".join(out) + "\n"


def test_a_lock_keeps_exactly_its_files_and_refuses_a_hash_upstream_does_not_give(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    (tmp_path / "pylock.toml").write_text(lock_for(world, "lib", "base"))
    table = {"requirements": ["pylock.toml"]}
    summary = sync(upstream, tmp_path / "m", table, tmp_path)
    # Exactly the locked wheels: the sdists and other versions stay out.
    assert summary.exit_code == 0
    assert listed(tmp_path / "m") == {"lib": ["lib-3.0rc1-py3-none-any.whl"],
                                      "base": ["base-1.0-py3-none-any.whl"]}

    (tmp_path / "pylock.toml").write_text(
        lock_for(world, "lib", "base", wrong="base-1.0-py3-none-any.whl"))
    refused = sync(upstream, tmp_path / "m", table, tmp_path)
    assert refused.exit_code == 1
    (name, why), = refused.failed
    assert name == "base" and "base-1.0-py3-none-any.whl" in why and "the lock gives sha256" in why
    assert "0" * 64 in why
    assert listed(tmp_path / "m")["base"] == ["base-1.0-py3-none-any.whl"]  # kept, as it was


def test_status_and_the_report_name_the_requirements(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text("app==1.0\nnowhere-at-all\n")
    path = tmp_path / "mirror.toml"
    path.write_text(f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "m"\nretries = 0\n'
                    '[filters]\nrequirements = ["requirements.txt"]\n')
    os.chdir(tmp_path)
    assert main(["sync", "-c", str(path)]) == 1  # one requirement cannot be met
    out = capsys.readouterr().out
    assert "requirements not met: nowhere-at-all: upstream does not list it" in out
    report = json.loads((tmp_path / "m/reports/1.json").read_text())
    assert report["filters"]["in_force"] == {"requirements": ["requirements.txt"]}
    assert report["filters"]["unmet"][0]["project"] == "nowhere-at-all"
    assert "app" in listed(tmp_path / "m")


@pytest.mark.slow
def test_the_closure_installs_offline_with_pip_and_uv(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    from tests.support.serving import MirrorServe
    from tests.test_serve_clients import installed, pip, uv_install

    (tmp_path / "requirements.txt").write_text("app==1.0\n")
    world.add_release("base", "1.1")  # needs nothing to be built: wheels suffice
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    table = {"requirements": ["requirements.txt"], "sdists": False,
             "environments": [{"python": python}]}
    assert sync(upstream, tmp_path / "m", table, tmp_path).exit_code == 0
    upstream.stop()  # offline from here: the mirror alone
    with MirrorServe(tmp_path / "m", tmp_path / "serve") as served:
        index = served.url + "simple/"
        pip("install", "--index-url", index, "--target", "pip-site", "app==1.0", cwd=tmp_path)
        uv_install(index, tmp_path / "uv-site", "app==1.0", cwd=tmp_path)
    for site in ("pip-site", "uv-site"):
        assert installed(tmp_path / site) == [
            "app-1.0.dist-info", "base-1.1.dist-info", "lib-2.0.dist-info"]
    result = subprocess.run([sys.executable, "-c", "import lib; print(lib.__version__)"],
                            cwd=tmp_path / "uv-site", capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "2.0"


def test_a_closure_upstream_did_not_move_is_not_worked_out_again(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    (tmp_path / "requirements.txt").write_text("app==1.0\n")
    table = {"requirements": ["requirements.txt"]}
    assert sync(upstream, tmp_path / "m", table, tmp_path).exit_code == 0

    upstream.reset_requests()
    again = sync(upstream, tmp_path / "m", table, tmp_path)
    assert again.outcome == "unchanged" and upstream.paths() == ["/simple/"]

    world.add_release("unrelated", "2.0")  # the root moves, no project of the closure does
    upstream.reset_requests()
    assert sync(upstream, tmp_path / "m", table, tmp_path).exit_code == 0
    assert upstream.paths() == ["/simple/"]

    world.add_release("lib", "2.5", requires_dist=["other"])
    upstream.reset_requests()
    moved = sync(upstream, tmp_path / "m", table, tmp_path, allow_mass_delete=True)
    assert moved.exit_code == 0 and "/simple/lib/" in upstream.paths()
    assert sorted(listed(tmp_path / "m")) == ["app", "lib", "other"]
    # Each page once: the closure's reading served the run.
    pages = [p for p in upstream.paths() if p.startswith("/simple/") and p != "/simple/"]
    assert len(pages) == len(set(pages))


def test_a_kept_closure_stands_while_its_pages_and_the_cooldown_stand() -> None:
    from simplemirror.filter.closure import Closure
    from simplemirror.filter.select import Rule

    kept = Closure({"a": Rule({"1": None}, {"a-1.whl": {"sha256": SHA}})}, [("x", "why")],
                   {}, {"a": 5, "gone": None}, until=100.0)
    assert Closure.from_data(json.loads(json.dumps(kept.to_data()))) == kept
    assert kept.stands(None, 99) and not kept.stands(None, 100)  # a held-back file is due
    assert kept.stands({"a": 5}, 0)
    assert not kept.stands({"a": 6}, 0) and not kept.stands({}, 0)
    assert not kept.stands({"a": 5, "gone": 1}, 0)  # listed again
