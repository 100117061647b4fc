"""The dependency closure of the ``requirements``, for the configured environments.

From each requirement (a root from requirements.txt, or a dependency found on the way)
and each environment its marker holds in, the closure keeps what a resolver there would
pick: the newest version matching it that the environment can install (the newest
``latest-versions`` of them when that is set), final releases before pre-releases as
installers prefer them, among the files the other filters keep. The dependencies of each
version kept are read from its PEP 658 metadata (no wheel is downloaded), extras
followed; an sdist an environment would have to build (no wheel of that version suits
it) brings its build requirements (pyproject.toml's ``[build-system]``; setuptools
without one) and, lacking metadata, its dependencies, read from the sdist itself.

A lock is already a closure: exactly its files are kept, and only the build
requirements of its sdists that an environment would build are followed further.

The work is pure; reading pages, metadata and sdists is the ``Source``'s (sync/).
"""

from __future__ import annotations

import email.parser
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.markers import (
    InvalidMarker,
    Marker,
    UndefinedComparison,
    UndefinedEnvironmentName,
)
from packaging.requirements import InvalidRequirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_version
from packaging.version import Version

from simplemirror.filter.requirements import Requirements, Wanted
from simplemirror.filter.rules import Filters
from simplemirror.filter.select import (
    Rule,
    admissible,
    file_version,
    is_sdist,
    wheel_tags,
)
from simplemirror.filter.tags import Environment
from simplemirror.simple.model import DistFile, HeldFile, ProjectPage

SETUPTOOLS_DEFAULT = ("setuptools>=40.8.0",)
"""PEP 517's build requirements for an sdist without a [build-system] table."""


@dataclass(frozen=True)
class Requires:
    """What a distribution file says it needs."""

    dist: tuple[str, ...] | None = None
    """Requires-Dist; None: unknown (no metadata to read)."""
    build: tuple[str, ...] | None = None
    """An sdist's build requirements; None for a wheel, or when it could not be read."""


class Source(Protocol):
    """Where the closure reads upstream (sync/closure.py, or a test's world)."""

    def pages(
        self, names: Iterable[str]
    ) -> Mapping[str, tuple[ProjectPage, Mapping[str, HeldFile]] | None]:
        """Each project's upstream page and the files the mirror holds of it; None for a
        project upstream does not list (or whose page could not be read)."""

    def requires(self, files: Iterable[DistFile]) -> Mapping[str, Requires]:
        """By file name: Requires-Dist (from PEP 658 metadata for a wheel, from the file
        for an sdist) and, for an sdist, its build requirements."""


@dataclass
class Closure:
    """What the requirements keep: a Rule for each project, and what could not be met."""

    rules: dict[str, Rule] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(project, why): a requirement no version meets, a page that could not be read."""
    pages: dict[str, ProjectPage] = field(default_factory=dict)
    """The pages read on the way, for the run to use rather than ask again."""
    serials: dict[str, int | None] = field(default_factory=dict)
    """The serial of every page read (None: upstream does not list the project): while
    upstream's root lists the same, the closure stands."""
    until: float | None = None
    """When a file the cooldown held back is old enough, and the closure may move."""

    def stands(self, listed: Mapping[str, int | None] | None, now: float) -> bool:
        """Whether this closure is still the one upstream would give: ``listed`` (the
        serials upstream's root lists for the pages read; None: the root is unchanged)
        says none of them changed, and no held-back file came of age."""
        if self.until is not None and now >= self.until:
            return False
        if listed is None:
            return True
        return all(name not in listed if serial is None else listed.get(name) == serial
                   for name, serial in self.serials.items())

    def to_data(self) -> dict[str, Any]:
        """As JSON, to be kept between runs (without its pages)."""
        return {
            "rules": {n: {"versions": {v: sorted(h) if h is not None else None
                                       for v, h in r.versions.items()},
                          "locked": {f: dict(h) for f, h in r.locked.items()}}
                      for n, r in self.rules.items()},
            "problems": [list(p) for p in self.problems],
            "serials": self.serials,
            "until": self.until,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Closure:
        rules = {
            name: Rule({v: frozenset(h) if h is not None else None
                        for v, h in rule["versions"].items()},
                       {f: dict(h) for f, h in rule["locked"].items()})
            for name, rule in data["rules"].items()
        }
        return cls(rules, [(n, why) for n, why in data["problems"]], {},
                   dict(data["serials"]), data["until"])


def _usable(env: Environment | None, dist: DistFile) -> bool:
    """Whether an installer in ``env`` (None: anywhere) may install ``dist``."""
    if env is None:
        return True
    if not env.admits(dist.requires_python):
        return False
    if is_sdist(dist.filename):
        return True
    found = wheel_tags(dist.filename) if dist.filename.endswith(".whl") else None
    return found is not None and env.accepts(found)


# Without environments, a marker counts when it holds anywhere these do.
_ANYWHERE = tuple(Environment((3, minor)) for minor in range(9, 15))


def _holds(marker: Marker | None, env: Environment | None, extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    places = [m for e in ((env,) if env is not None else _ANYWHERE) for m in e.markers()]
    for extra in ("", *extras):
        for place in places:
            try:
                if marker.evaluate({**place, "extra": extra}):
                    return True
            except (UndefinedComparison, UndefinedEnvironmentName):
                return True  # cannot tell: keep rather than lose a dependency
    return False


def _newest(versions: Iterable[Version], count: int, spec: SpecifierSet) -> list[Version]:
    """What resolvers pick: the newest ``count`` final releases, pre-releases only when
    the requirement names one or nothing else matches."""
    matching = sorted({v for v in versions if spec.contains(v, prereleases=True)},
                      reverse=True)
    finals = [v for v in matching if not v.is_prerelease]
    if spec.prereleases or not finals:
        return matching[:count]
    return finals[:count]


@dataclass
class _Work:
    filters: Filters
    source: Source
    now: float
    count: int
    envs: tuple[Environment | None, ...]
    closure: Closure = field(default_factory=Closure)
    survivors: dict[str, list[DistFile]] = field(default_factory=dict)
    demands: set[tuple[str, str, frozenset[str] | None, frozenset[str], int]] = field(
        default_factory=set
    )
    expanded: set[tuple[str, str, int, frozenset[str]]] = field(default_factory=set)
    versions: dict[str, dict[str, frozenset[str] | None]] = field(default_factory=dict)
    locked: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def read_pages(self, names: Iterable[str]) -> None:
        wanted = sorted({n for n in names if n not in self.survivors})
        if not wanted:
            return
        for name, found in self.source.pages(wanted).items():
            if found is None:
                self.survivors[name] = []
                self.closure.serials[name] = None
                self.closure.problems.append((name, "upstream does not list it, or its "
                                                    "page could not be read"))
                continue
            page, held = found
            self.closure.pages[name] = page
            self.closure.serials[name] = page.serial
            survivors, _, _, due = admissible(self.filters, page, held, self.now)
            if due is not None:
                until = self.closure.until
                self.closure.until = due if until is None else min(until, due)
            self.survivors[name] = survivors

    def choose(self, wanted: Wanted, env: int) -> list[tuple[str, DistFile]]:
        """(canonical version, the file ``env`` installs it from) for what ``wanted``
        keeps in ``env``; the versions are recorded in the rule."""
        usable: dict[Version, list[DistFile]] = {}
        for dist in self.survivors.get(wanted.name, []):
            version = file_version(dist.filename)
            if version is None or not _usable(self.envs[env], dist):
                continue
            if wanted.hashes is not None and not (
                {f"{a}:{d}" for a, d in dist.hashes.items()} & wanted.hashes
            ):
                continue
            usable.setdefault(version, []).append(dist)
        chosen = _newest(usable, self.count, wanted.specifier)
        if not chosen and wanted.name in self.closure.pages:
            where = f" for Python {e.version}" if (e := self.envs[env]) is not None else ""
            self.closure.problems.append(
                (wanted.name, f"no version meets {wanted}{where} among the files kept")
            )
        picks = []
        kept = self.versions.setdefault(wanted.name, {})
        for version in chosen:
            canonical = canonicalize_version(version)
            if wanted.hashes is None:
                kept[canonical] = None
            elif kept.get(canonical, frozenset()) is not None:
                kept[canonical] = frozenset(kept.get(canonical) or ()) | wanted.hashes
            files = usable[version]
            # A wheel if there is one (the file the installer prefers), with metadata.
            wheels = sorted((d for d in files if not is_sdist(d.filename)),
                            key=lambda d: not d.core_metadata)
            picks.append((canonical, (wheels or files)[0]))
        return picks

    def run(self, requirements: Requirements) -> Closure:
        pending: list[tuple[Wanted, int]] = [
            (w, env) for w in requirements.wanted for env in range(len(self.envs))
            if _holds(w.marker, self.envs[env], ())
        ]
        self.read_pages(p.name for p in requirements.locked)
        for package in requirements.locked:
            files = self.locked.setdefault(package.name, {})
            for filename, hashes in package.files:
                files[filename] = dict(hashes)
            pending += self._lock_build_requirements(package.name)
        while pending:
            self.read_pages(w.name for w, _ in pending)
            expand: list[tuple[str, str, int, frozenset[str], DistFile]] = []
            for wanted, env in pending:
                key = (wanted.name, str(wanted.specifier), wanted.hashes, wanted.extras, env)
                if key in self.demands:
                    continue
                self.demands.add(key)
                for version, dist in self.choose(wanted, env):
                    done = (wanted.name, version, env, wanted.extras)
                    if done not in self.expanded:
                        self.expanded.add(done)
                        expand.append((wanted.name, version, env, wanted.extras, dist))
            pending = self._dependencies(expand)
        names = set(self.versions) | set(self.locked)
        # Said once, however many requirements or environments ran into it.
        self.closure.problems = list(dict.fromkeys(self.closure.problems))
        self.closure.rules = {
            name: Rule(self.versions.get(name, {}), self.locked.get(name, {}))
            for name in sorted(names)
        }
        return self.closure

    def _lock_build_requirements(self, name: str) -> list[tuple[Wanted, int]]:
        """Build requirements of a locked project's sdists that an environment would
        build: no locked wheel of it suits that environment."""
        locked = self.locked[name]
        files = [d for d in self.survivors.get(name, []) if d.filename in locked]
        sdists = [d for d in files if is_sdist(d.filename)]
        if not sdists:
            return []
        building = [env for env in range(len(self.envs))
                    if not any(_usable(self.envs[env], d) for d in files
                               if not is_sdist(d.filename))]
        if not building:
            return []
        found = self.source.requires(sdists)
        pending = []
        for dist in sdists:
            for text in found.get(dist.filename, Requires()).build or SETUPTOOLS_DEFAULT:
                pending += self._wanted(text, dist, building, frozenset())
        return pending

    def _dependencies(
        self, expand: list[tuple[str, str, int, frozenset[str], DistFile]]
    ) -> list[tuple[Wanted, int]]:
        """What the versions just chosen need, each where its marker holds."""
        files = {dist.filename: dist for *_, dist in expand}
        found = self.source.requires(files.values()) if files else {}
        pending: list[tuple[Wanted, int]] = []
        for name, _, env, extras, dist in expand:
            requires = found.get(dist.filename, Requires())
            if requires.dist is None:
                self.closure.problems.append((name, (
                    f"{dist.filename}: no metadata to read its dependencies from (PEP 658); "
                    "they are not followed"
                )))
            for text in requires.dist or ():
                pending += self._wanted(text, dist, [env], extras)
            if is_sdist(dist.filename):  # no wheel suits this environment: it builds
                for text in requires.build or SETUPTOOLS_DEFAULT:
                    pending += self._wanted(text, dist, [env], frozenset())
        return pending

    def _wanted(
        self, text: str, dist: DistFile, envs: Iterable[int], extras: frozenset[str]
    ) -> list[tuple[Wanted, int]]:
        try:
            wanted = Wanted.parse(text)
        except (InvalidRequirement, InvalidMarker) as exc:
            self.closure.problems.append(
                (dist.filename, f"cannot read the requirement {text[:200]!r}: {exc}")
            )
            return []
        if wanted is None:
            return []  # a URL: nothing an index serves
        return [(wanted, env) for env in envs if _holds(wanted.marker, self.envs[env], extras)]


def resolve(
    filters: Filters, requirements: Requirements, source: Source, now: float
) -> Closure:
    """The closure of ``requirements`` under ``filters``, read from ``source``."""
    work = _Work(filters, source, now, filters.latest_versions or 1,
                 filters.environments or (None,))
    return work.run(requirements)


def metadata_requires(metadata: bytes) -> tuple[str, ...]:
    """Requires-Dist of a core metadata file (PEP 658's .metadata, an sdist's PKG-INFO)."""
    headers = email.parser.BytesHeaderParser().parsebytes(metadata)
    return tuple(str(h) for h in headers.get_all("Requires-Dist") or ())
