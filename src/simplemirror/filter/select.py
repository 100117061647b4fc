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


def select(
    filters: Filters, page: ProjectPage, held: Mapping[str, HeldFile], now: float
) -> Selection:
    """What of ``page`` the mirror offers; ``held``: the files it has, by name."""
    if not filters.narrows_files or not page.files:
        return Selection(page)
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
    versions = {dist.filename: file_version(dist.filename) for dist in survivors}
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
    if not dropped and not held_back:
        return Selection(page)
    carried = {canonicalize_version(v) for d in survivors if (v := versions[d.filename])}
    return Selection(
        _offered(page, survivors, carried), tuple(dropped), tuple(held_back),
        None if due is None else int(due) + 1,
    )


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
