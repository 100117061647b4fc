"""What the filters keep of one project page: decided per file, then per version.

In this order, each step seeing only what the ones before kept:

1. each file on its own: ``sdists``, ``environments`` (wheel tags, Requires-Python, and no
   other binary formats), ``max-file-size``;
2. ``min-age``: a file not held yet waits until upstream's upload-time is that old; one
   without an upload-time waits for ever (fail closed), unless its project is exempt.
   Files the mirror holds already are never held back, so that a cooldown added later,
   or an upstream that stops giving upload-times, takes nothing away;
3. ``prereleases = false``: pre-releases go, unless nothing else is left;
4. ``latest-versions``: the newest N versions with a file that is not yanked stay, with
   any yanked versions newer than those; older ones go.

A file waiting out the cooldown does not count as a version yet: a project whose new
release waits keeps its last one until the new one is published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_version, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from simplemirror.filter.rules import Filters
from simplemirror.simple.model import DistFile, HeldFile, ProjectPage

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".tar", ".tbz")


class Selection(NamedTuple):
    """One page as the filters leave it."""

    page: ProjectPage
    """The page with only the files kept, and (PEP 700) only the versions they carry."""
    dropped: tuple[tuple[DistFile, str], ...] = ()
    """Files left out, each with the key that left it out."""
    held_back: tuple[DistFile, ...] = ()
    """Files waiting out min-age."""
    due: int | None = None
    """When (Unix time) the first of those that has an upload-time is old enough."""
    refused: tuple[tuple[str, str], ...] = ()
    """(file name, reason) for files the requirements name that cannot be mirrored."""


def is_sdist(filename: str) -> bool:
    return filename.endswith(SDIST_SUFFIXES)


def wheel_tags(filename: str) -> frozenset[Tag] | None:
    try:
        return parse_wheel_filename(filename)[3]
    except (InvalidWheelFilename, InvalidVersion):
        return None


def file_version(filename: str) -> Version | None:
    """The version a wheel's or an sdist's name carries; None for anything else."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        for suffix in SDIST_SUFFIXES:
            if filename.endswith(suffix):
                _, sep, version = filename[: -len(suffix)].rpartition("-")
                return Version(version) if sep else None
    except (InvalidWheelFilename, InvalidVersion):
        return None
    return None


def uploaded(text: str | None) -> float | None:
    """Upstream's upload-time (ISO 8601) as Unix time; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # PEP 700 times are UTC
    return moment.timestamp()


def _left_out_by(filters: Filters, dist: DistFile) -> str | None:
    """The key that leaves ``dist`` out on its own merits; None: it may stay."""
    name = dist.filename
    sdist = is_sdist(name)
    if sdist and not filters.sdists:
        return "sdists"
    if filters.environments:
        if not sdist:
            found = wheel_tags(name) if name.endswith(".whl") else None
            # Eggs and installers for Windows: no installer of today picks them.
            if found is None or not any(e.accepts(found) for e in filters.environments):
                return "environments"
        if not any(e.admits(dist.requires_python) for e in filters.environments):
            return "environments"
    if filters.max_file_size is not None and dist.size is not None and (
        dist.size > filters.max_file_size
    ):
        return "max-file-size"
    return None


def _newest(by_version: Mapping[Version, list[DistFile]], count: int) -> set[Version]:
    """The newest ``count`` versions with a file not yanked, and yanked ones newer."""
    kept: set[Version] = set()
    found = 0
    for version in sorted(by_version, reverse=True):
        if found >= count:
            break
        kept.add(version)
        if not all(f.yanked for f in by_version[version]):
            found += 1
    return kept


@dataclass(frozen=True)
class Rule:
    """What the ``requirements`` ask of one project (worked out by filter/closure.py)."""

    versions: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    """Canonical versions to keep, each with the ``algorithm:hex`` digests a file must
    have one of (``--hash``), or None for any file."""
    locked: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Files a lock names, with the hashes it gives them: kept exactly."""

    def key(self) -> list[Any]:
        """The rule as plain data, for a fingerprint."""
        return [sorted((v, sorted(h) if h is not None else None)
                       for v, h in self.versions.items()),
                sorted((f, sorted(h.items())) for f, h in self.locked.items())]


def admissible(
    filters: Filters, page: ProjectPage, held: Mapping[str, HeldFile], now: float
) -> tuple[list[DistFile], list[tuple[DistFile, str]], list[DistFile], float | None]:
    """Steps 1 and 2: (files that may stay, (file, key) left out, files held back by
    min-age, when the first of those with an upload-time is old enough)."""
    dropped: list[tuple[DistFile, str]] = []
    held_back: list[DistFile] = []
    due: float | None = None
    cooldown = filters.min_age is not None and page.name not in filters.min_age_exempt
    survivors: list[DistFile] = []
    for dist in page.files:
        key = _left_out_by(filters, dist)
        if key is not None:
            dropped.append((dist, key))
            continue
        copy = held.get(dist.filename)
        if cooldown and (copy is None or not copy.matches(dist)):
            assert filters.min_age is not None
            when = uploaded(dist.upload_time)
            if when is None or when + filters.min_age > now:
                held_back.append(dist)
                if when is not None:
                    ready = when + filters.min_age
                    due = ready if due is None else min(due, ready)
                continue
        survivors.append(dist)
    return survivors, dropped, held_back, due


def select(
    filters: Filters, page: ProjectPage, held: Mapping[str, HeldFile], now: float,
    rule: Rule | None = None,
) -> Selection:
    """What of ``page`` the mirror offers; ``held``: the files it has, by name. With a
    ``rule`` (the project is there for the requirements), it chooses the versions and
    files in place of steps 3 and 4."""
    if (not filters.narrows_files and rule is None) or not page.files:
        return Selection(page)
    survivors, dropped, held_back, due = admissible(filters, page, held, now)
    versions = {dist.filename: file_version(dist.filename) for dist in survivors}
    refused: list[tuple[str, str]] = []
    if rule is not None:
        survivors = _by_rule(rule, page, survivors, versions, dropped, refused)
    else:
        survivors = _by_version(filters, survivors, versions, dropped)
    if not dropped and not held_back and not refused:
        return Selection(page)
    carried = {canonicalize_version(v) for d in survivors if (v := versions[d.filename])}
    return Selection(
        _offered(page, survivors, carried), tuple(dropped), tuple(held_back),
        None if due is None else int(due) + 1, tuple(refused),
    )


def _by_version(
    filters: Filters, survivors: list[DistFile], versions: Mapping[str, Version | None],
    dropped: list[tuple[DistFile, str]],
) -> list[DistFile]:
    """Steps 3 and 4: prereleases, then latest-versions."""
    if not filters.prereleases:
        finals = any(v is not None and not v.is_prerelease for v in versions.values())
        if finals:
            survivors = _without(survivors, dropped, "prereleases", lambda d: bool(
                (v := versions[d.filename]) and v.is_prerelease
            ))
    if filters.latest_versions is not None:
        by_version: dict[Version, list[DistFile]] = {}
        for dist in survivors:
            version = versions[dist.filename]
            if version is not None:
                by_version.setdefault(version, []).append(dist)
        newest = _newest(by_version, filters.latest_versions)
        survivors = _without(survivors, dropped, "latest-versions",
                             lambda d: versions[d.filename] not in newest)
    return survivors


def _digests(hashes: Mapping[str, str]) -> set[str]:
    return {f"{algorithm}:{digest}" for algorithm, digest in hashes.items()}


def _by_rule(
    rule: Rule, page: ProjectPage, survivors: list[DistFile],
    versions: Mapping[str, Version | None], dropped: list[tuple[DistFile, str]],
    refused: list[tuple[str, str]],
) -> list[DistFile]:
    """The files the requirements ask for; a locked file whose hashes upstream does not
    give is refused, named, and so is one upstream does not list at all."""
    kept = []
    for dist in survivors:
        locked = rule.locked.get(dist.filename)
        if locked is not None:
            common = set(locked) & set(dist.hashes)
            if common and all(locked[a] == dist.hashes[a] for a in common):
                kept.append(dist)
                continue
            said = ", ".join(f"{a} {locked[a]}" for a in sorted(locked))
            refused.append((dist.filename, (
                f"the lock gives {said}, upstream's page does not (or gives no hash of the "
                "same kind): is the lock for this index, or was the file replaced?"
            )))
            continue
        version = versions[dist.filename]
        allowed = rule.versions.get(canonicalize_version(version), ()) if version else ()
        if allowed is None or (allowed and _digests(dist.hashes) & allowed):
            kept.append(dist)
        else:
            dropped.append((dist, "requirements"))
    listed = {dist.filename for dist in page.files}
    for filename in sorted(set(rule.locked) - listed):
        refused.append((filename, "the lock names it, and upstream's page does not list it"))
    return kept


def _without(
    files: list[DistFile], dropped: list[tuple[DistFile, str]], key: str,
    leaves: Callable[[DistFile], bool],
) -> list[DistFile]:
    """``files`` but those ``leaves`` says go, which join ``dropped`` under ``key``."""
    kept = []
    for dist in files:
        if leaves(dist):
            dropped.append((dist, key))
        else:
            kept.append(dist)
    return kept


def _offered(page: ProjectPage, files: list[DistFile], carried: set[str]) -> ProjectPage:
    """``page`` with only ``files``; its PEP 700 versions only those they carry
    (``carried``, canonical), so that a resolver sees no version it cannot have."""
    listed = page.versions
    if listed is not None:
        listed = tuple(v for v in listed if canonicalize_version(v) in carried)
    return dataclasses.replace(page, files=tuple(files), versions=listed)


@dataclass
class Tally:
    """What the filters made of the pages a run (or a dry run) read: files and bytes kept,
    left out (by the key that left each out) and held back by min-age. Sizes are those
    upstream declared (HTML pages declare none)."""

    kept: list[int] = field(default_factory=lambda: [0, 0])
    left_out: dict[str, list[int]] = field(default_factory=dict)
    held_back: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, selection: Selection) -> None:
        for dist in selection.page.files:
            _count(self.kept, dist)
        for dist, key in selection.dropped:
            _count(self.left_out.setdefault(key, [0, 0]), dist)
        for dist in selection.held_back:
            _count(self.held_back, dist)

    @property
    def files_left_out(self) -> int:
        return sum(files for files, _ in self.left_out.values())

    @property
    def bytes_left_out(self) -> int:
        return sum(size for _, size in self.left_out.values())

    def to_data(self) -> dict[str, Any]:
        return {
            "files_kept": self.kept[0], "bytes_kept": self.kept[1],
            "files_left_out": self.files_left_out, "bytes_left_out": self.bytes_left_out,
            "left_out_by": {key: {"files": files, "bytes": size}
                            for key, (files, size) in sorted(self.left_out.items())},
            "files_held_back": self.held_back[0], "bytes_held_back": self.held_back[1],
        }


def _count(into: list[int], dist: DistFile) -> None:
    into[0] += 1
    into[1] += dist.size or 0
