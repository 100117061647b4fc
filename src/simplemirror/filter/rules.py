"""The ``[filters]`` table: read, checked, and held as one typed value (``Filters``).

Every key is documented in config.example.toml. A value that cannot be used (a regular
expression that does not compile, a platform tag nobody uses, a duration without a unit)
is a ``FilterError`` naming the key, which the configuration turns into its own error.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import InvalidName

from simplemirror.report.units import parse_interval
from simplemirror.simple.model import normalize_name

if TYPE_CHECKING:  # imported where used: a full mirror's configuration does not pay for them
    from simplemirror.filter.requirements import Requirements
    from simplemirror.filter.tags import Environment

TABLE = "filters"
KEYS = (
    "include-projects", "exclude-projects", "prereleases", "latest-versions", "environments",
    "sdists", "max-file-size", "min-age", "min-age-exempt", "requirements",
)
# Keys that decide which projects the mirror holds; the others decide which of their files.
PROJECT_KEYS = frozenset({"include-projects", "exclude-projects"})
_ENVIRONMENT_KEYS = ("python", "platforms", "implementation")
_PYTHON = re.compile(r"([0-9])\.([0-9]{1,2})")


class FilterError(ValueError):
    """A ``[filters]`` value that cannot be used; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"[{TABLE}] {key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Filters:
    """What a partial mirror keeps. The defaults keep everything (a full mirror)."""

    include_projects: tuple[str, ...] = ()
    """Regular expressions; when any is given, only projects whose normalized name one of
    them matches whole are mirrored."""
    exclude_projects: tuple[str, ...] = ()
    """Regular expressions; a project one matches is not mirrored (this wins over include)."""
    prereleases: bool = True
    """False: leave out pre-release versions, unless a project has nothing else."""
    latest_versions: int | None = None
    """Keep the newest N versions with a file that is not yanked (and newer yanked ones)."""
    environments: tuple[Environment, ...] = ()
    """Keep wheels (and files' Requires-Python) that suit one of these; none: all."""
    sdists: bool = True
    max_file_size: int | None = None
    """Leave out files upstream says are larger than this many bytes."""
    min_age: int | None = None
    """Seconds a file must have been public (upstream's upload-time) before it is
    published; a file without an upload-time waits for ever (fail closed)."""
    min_age_exempt: frozenset[str] = frozenset()
    """Normalized names of projects the cooldown does not hold back."""
    requirements: Requirements | None = None
    """What requirements.txt, pylock.toml and uv.lock files ask for: those projects and
    their dependency closure (filter/closure.py) are mirrored."""
    _include: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include", _compile("include-projects", self.include_projects))
        object.__setattr__(self, "_exclude", _compile("exclude-projects", self.exclude_projects))

    def wants_project(self, name: str, required: Collection[str] = ()) -> bool:
        """Whether the project of normalized ``name`` belongs in the mirror; ``required``:
        the projects the requirements' closure holds."""
        if (self._include or self.requirements is not None) and not (
            self.included(name) or name in required
        ):
            return False
        return not any(p.fullmatch(name) for p in self._exclude)

    def included(self, name: str) -> bool:
        """Whether include-projects names it: then it is mirrored whole (as the file
        filters allow), not only what the requirements ask of it."""
        return any(p.fullmatch(name) for p in self._include)

    @property
    def narrows_projects(self) -> bool:
        return bool(self._include or self._exclude or self.requirements is not None)

    @property
    def narrows_files(self) -> bool:
        return bool(self.file_settings())

    @property
    def active(self) -> bool:
        return self.narrows_projects or self.narrows_files

    def file_settings(self) -> dict[str, Any]:
        """The keys in force that decide on files, as the config file spells them."""
        found: dict[str, Any] = {}
        if not self.prereleases:
            found["prereleases"] = False
        if self.latest_versions is not None:
            found["latest-versions"] = self.latest_versions
        if self.environments:
            found["environments"] = [_environment_data(e) for e in self.environments]
        if not self.sdists:
            found["sdists"] = False
        if self.max_file_size is not None:
            found["max-file-size"] = self.max_file_size
        if self.min_age is not None:
            found["min-age"] = _duration(self.min_age)
            if self.min_age_exempt:
                found["min-age-exempt"] = sorted(self.min_age_exempt)
        if self.requirements is not None:
            found["requirements"] = list(self.requirements.paths)
        return found

    def in_force(self) -> dict[str, Any]:
        """Every key in force, as the config file spells it (empty: a full mirror)."""
        found: dict[str, Any] = {}
        if self.include_projects:
            found["include-projects"] = list(self.include_projects)
        if self.exclude_projects:
            found["exclude-projects"] = list(self.exclude_projects)
        return {**found, **self.file_settings()}

    def fingerprint(self) -> str | None:
        """A short hash of everything in force; None for a full mirror."""
        return _hash(self.in_force())

    def file_fingerprint(self, closure: object = None) -> str | None:
        """A short hash of what decides on files (with ``closure``, what the requirements
        ask of each project, as plain data); None when nothing does. A project planned
        under another one must be planned again, whatever upstream's serial says."""
        settings = self.file_settings()
        if self.requirements is not None:
            settings["requirements"] = [self.requirements.digest, closure]
        return _hash(settings)


def _hash(settings: dict[str, Any]) -> str | None:
    if not settings:
        return None
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _environment_data(env: Environment) -> dict[str, Any]:
    data: dict[str, Any] = {"python": env.version, "implementation": env.implementation}
    if env.platforms:
        data["platforms"] = list(env.platforms)
    return data


def _compile(key: str, patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise FilterError(key, f"{pattern!r} is not a regular expression: {exc}") from None
    return tuple(compiled)


def _strings(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FilterError(key, f"must be a list of strings, not {json.dumps(value, default=str)}")
    return tuple(value)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise FilterError(key, f"must be true or false, not {json.dumps(value, default=str)}")
    return value


def _count(key: str, value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FilterError(key, f"must be a whole number of {what}, at least 1, not "
                          f"{json.dumps(value, default=str)}")
    return value


def _environment(index: int, value: object) -> Environment:
    from simplemirror.filter.tags import IMPLEMENTATIONS, Environment, UnknownPlatform

    key = f"environments[{index}]"
    example = '{ python = "3.12", platforms = ["manylinux_2_28_x86_64"], implementation = "cp" }'
    if not isinstance(value, dict):
        raise FilterError(key, f"must be a table like {example}")
    for name in value:
        if name not in _ENVIRONMENT_KEYS:
            raise FilterError(
                key, f"unknown key {name!r}; an environment has {', '.join(_ENVIRONMENT_KEYS)}"
            )
    python = value.get("python")
    match = _PYTHON.fullmatch(python) if isinstance(python, str) else None
    if match is None:
        raise FilterError(f"{key}.python", f"must be a Python version like \"3.12\", not "
                          f"{json.dumps(python, default=str)}")
    implementation = value.get("implementation", "cp")
    if implementation not in IMPLEMENTATIONS:
        given = json.dumps(implementation, default=str)
        raise FilterError(f"{key}.implementation",
                          f"must be cp (CPython) or pp (PyPy), not {given}")
    platforms = _strings(f"{key}.platforms", value.get("platforms", []))
    try:
        return Environment((int(match[1]), int(match[2])), implementation, platforms)
    except UnknownPlatform as exc:
        raise FilterError(f"{key}.platforms", str(exc)) from None


def parse(table: Mapping[str, Any], base: Path = Path()) -> Filters:
    """The ``[filters]`` table of a config file as Filters; raises FilterError. Files it
    names are read, relative to ``base`` (the config file's directory)."""
    for key in table:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(KEYS)}"
            raise FilterError(key, f"unknown key; {hint}")
    values: dict[str, Any] = {}
    for key in ("include-projects", "exclude-projects"):
        if key in table:
            values[key.replace("-", "_")] = _strings(key, table[key])
    for key in ("prereleases", "sdists"):
        if key in table:
            values[key] = _flag(key, table[key])
    if "latest-versions" in table:
        values["latest_versions"] = _count("latest-versions", table["latest-versions"],
                                           "versions")
    if "max-file-size" in table:
        values["max_file_size"] = _count("max-file-size", table["max-file-size"], "bytes")
    if "environments" in table:
        given = table["environments"]
        if not isinstance(given, list) or not given:
            raise FilterError("environments", "must be a list of tables, like [{ python = "
                              "\"3.12\", platforms = [\"manylinux_2_28_x86_64\"] }]")
        values["environments"] = tuple(_environment(i, e) for i, e in enumerate(given))
    if "min-age" in table:
        age = table["min-age"]
        if not isinstance(age, str):
            raise FilterError("min-age", f"must be a duration like \"7d\", not "
                              f"{json.dumps(age, default=str)}")
        try:
            values["min_age"] = int(parse_interval(age))
        except ValueError as exc:
            raise FilterError("min-age", str(exc)) from None
    if "min-age-exempt" in table:
        names = _strings("min-age-exempt", table["min-age-exempt"])
        try:
            values["min_age_exempt"] = frozenset(normalize_name(n) for n in names)
        except InvalidName as exc:
            raise FilterError("min-age-exempt", str(exc)) from None
        if "min-age" not in table:
            raise FilterError("min-age-exempt", "means nothing without min-age; set both")
    if "requirements" in table:
        from simplemirror.filter import requirements

        paths = _strings("requirements", table["requirements"])
        try:
            if paths:  # an empty list asks for nothing: it filters nothing either
                values["requirements"] = requirements.read(list(paths), base)
        except requirements.RequirementsError as exc:
            raise FilterError("requirements", str(exc)) from None
    return Filters(**values)
