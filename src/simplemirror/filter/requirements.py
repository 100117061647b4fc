"""The ``requirements`` filter's files: requirements.txt, pylock.toml (PEP 751), uv.lock.

Read once, when the configuration is loaded; a file that does not parse is a
configuration error naming the file and, where there is one, the line. What comes out:

- from requirements.txt, requirements (name, specifier, extras, marker, and the hashes
  of ``--hash`` options): the roots of a dependency closure (filter/closure.py);
- from a lock, the exact files of each package, with the hashes they must have.

Lines that name nothing an index serves (``-e``, paths, URLs, VCS) are skipped, and so are
installer options (``--index-url``, ``-c`` constraints...); ``-r`` is followed. In a lock,
packages that do not come from an index (a directory, a VCS checkout, the project itself)
are skipped too.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from simplemirror.simple.model import UpstreamDataError, check_filename, parse_hashes


class RequirementsError(ValueError):
    """A requirements or lock file that cannot be used; the message names it."""


@dataclass(frozen=True)
class Wanted:
    """One requirement: a root of the closure, or a dependency found on the way."""

    name: str
    """Normalized."""
    specifier: SpecifierSet
    extras: frozenset[str] = frozenset()
    marker: Marker | None = None
    hashes: frozenset[str] | None = None
    """``algorithm:hex`` of the files ``--hash`` allows; None: any file."""

    @classmethod
    def parse(cls, text: str, hashes: frozenset[str] | None = None) -> Wanted | None:
        """A PEP 508 requirement; None when it names a URL (nothing an index serves).
        Raises InvalidRequirement."""
        req = Requirement(text)
        if req.url:
            return None
        return cls(canonicalize_name(req.name), req.specifier,
                   frozenset(canonicalize_name(e) for e in req.extras), req.marker, hashes)

    def __str__(self) -> str:
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        marker = f"; {self.marker}" if self.marker is not None else ""
        return f"{self.name}{extras}{self.specifier}{marker}"


@dataclass(frozen=True)
class Locked:
    """One package of a lock: the files it may be installed from, with their hashes."""

    name: str
    version: str | None
    files: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    """(file name, ((algorithm, hex digest), ...))."""


@dataclass(frozen=True)
class Requirements:
    """Everything the ``requirements`` files ask for."""

    paths: tuple[str, ...] = ()
    """As the config file gives them."""
    wanted: tuple[Wanted, ...] = ()
    locked: tuple[Locked, ...] = ()
    digest: str = ""
    """Of every file read: a change in one plans every project again."""


def read(paths: list[str], base: Path) -> Requirements:
    """The files at ``paths`` (relative to ``base``, the config file's directory)."""
    wanted: list[Wanted] = []
    locked: list[Locked] = []
    digest = hashlib.sha256()
    for given in paths:
        path = (base / Path(given).expanduser()).absolute()
        if _is_pylock(path.name):
            locked.extend(_pylock(path, _read(path, digest)))
        elif path.name == "uv.lock":
            locked.extend(_uv_lock(path, _read(path, digest)))
        else:
            wanted.extend(_requirements_txt(path, digest, set()))
    return Requirements(tuple(paths), tuple(wanted), tuple(locked), digest.hexdigest()[:16])


def _is_pylock(name: str) -> bool:
    # PEP 751: pylock.toml, or pylock.<name>.toml.
    return name == "pylock.toml" or (name.startswith("pylock.") and name.endswith(".toml"))


def _read(path: Path, digest: Any) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RequirementsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    digest.update(str(path).encode() + b"\0" + data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RequirementsError(f"{path}: not UTF-8 text") from None


# -- requirements.txt ------------------------------------------------------------------

_INCLUDE = re.compile(r"(?:-r|--requirement)(?:\s*=\s*|\s+|(?=\S))(\S+)")
_HASH = re.compile(r"\s--hash(?:=|\s+)([A-Za-z0-9]+):([0-9A-Fa-f]+)")
# Per-requirement options pip allows, besides --hash: nothing the mirror needs.
_OPTION = re.compile(r"\s--(?:config-settings|global-option|install-option)(?:=|\s+)\S+")
_SKIPPED = re.compile(r"\.{0,2}/|[a-zA-Z][a-zA-Z0-9+.-]*://|git\+|file:")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, line) with comments dropped and continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _requirements_txt(path: Path, digest: Any, seen: set[Path]) -> Iterator[Wanted]:
    if path in seen:
        return  # included twice (or in a loop): read once
    seen.add(path)
    for number, line in _logical_lines(_read(path, digest)):
        line = line.strip()
        if not line:
            continue
        where = f"{path}, line {number}"
        if include := _INCLUDE.fullmatch(line):
            yield from _requirements_txt(path.parent / include[1], digest, seen)
            continue
        # An installer's option (--index-url, -c, --only-binary...), or not from an
        # index: an editable, a path, a URL.
        if line.startswith("-") or _SKIPPED.match(line):
            continue
        hashes = frozenset(f"{m[1].lower()}:{m[2].lower()}" for m in _HASH.finditer(" " + line))
        text = _OPTION.sub("", _HASH.sub("", " " + line)).strip()
        try:
            found = Wanted.parse(text, hashes or None)
        except InvalidRequirement as exc:
            raise RequirementsError(f"{where}: not a requirement: {exc}") from None
        if found is not None:
            yield found


# -- locks -----------------------------------------------------------------------------


def _toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RequirementsError(f"{path}: not valid TOML: {exc}") from None


def _filename(path: Path, where: str, entry: dict[str, Any]) -> str:
    name = entry.get("name") or entry.get("filename")
    url = entry.get("url")
    if not name and isinstance(url, str):
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    try:
        return check_filename(name)
    except UpstreamDataError as exc:
        raise RequirementsError(f"{path}: {where}: no usable file name: {exc}") from None


def _hashes(path: Path, where: str, value: object) -> tuple[tuple[str, str], ...]:
    try:
        found = parse_hashes(value, what=f"{where}.hashes")
    except UpstreamDataError as exc:
        raise RequirementsError(f"{path}: {exc}") from None
    if not found:
        raise RequirementsError(f"{path}: {where} has no hash this mirror can check")
    return tuple(sorted(found.items()))


def _package_name(path: Path, where: str, package: dict[str, Any]) -> str:
    name = package.get("name")
    if not isinstance(name, str) or not name:
        raise RequirementsError(f"{path}: {where} has no name")
    return canonicalize_name(name)


def _pylock(path: Path, text: str) -> Iterator[Locked]:
    doc = _toml(path, text)
    version = doc.get("lock-version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise RequirementsError(
            f"{path}: not a PEP 751 lock this mirror reads (lock-version {version!r}, not 1.x)"
        )
    for where, name, package in _packages(path, doc, "packages"):
        files = [(_filename(path, at, entry), _hashes(path, at, entry.get("hashes")))
                 for at, entry in _dists(path, where, package)]
        if files:  # else a directory, VCS or archive: nothing an index serves
            yield Locked(name, _str(package.get("version")), tuple(files))


def _uv_lock(path: Path, text: str) -> Iterator[Locked]:
    doc = _toml(path, text)
    if not isinstance(doc.get("version"), int):
        raise RequirementsError(f"{path}: not a uv lock (no integer 'version')")
    for where, name, package in _packages(path, doc, "package"):
        source = package.get("source")
        if not isinstance(source, dict) or "registry" not in source:
            continue  # the project itself, a path, a VCS checkout, a URL
        files = []
        for at, entry in _dists(path, where, package):
            algorithm, sep, digest = str(entry.get("hash", "")).partition(":")
            hashes = _hashes(path, at, {algorithm: digest} if sep else {})
            files.append((_filename(path, at, entry), hashes))
        yield Locked(name, _str(package.get("version")), tuple(files))


def _packages(
    path: Path, doc: dict[str, Any], key: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, normalized name, table) of each package in a lock's array ``key``."""
    packages = doc.get(key, [])
    if not isinstance(packages, list):
        raise RequirementsError(f"{path}: '{key}' is not an array of tables")
    for index, package in enumerate(packages):
        where = f"{key}[{index}]"
        if not isinstance(package, dict):
            raise RequirementsError(f"{path}: {where} is not a table")
        yield where, _package_name(path, where, package), package


def _dists(
    path: Path, where: str, package: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, table) of a locked package's wheels, then its sdist."""
    entries = [(f"{where}.wheels[{i}]", w) for i, w in enumerate(package.get("wheels", []))]
    if isinstance(package.get("sdist"), dict):
        entries.append((f"{where}.sdist", package["sdist"]))
    for at, entry in entries:
        if not isinstance(entry, dict):
            raise RequirementsError(f"{path}: {at} is not a table")
        yield at, entry


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
