"""The Simple Repository API data model, parsed from its wire formats.

Parsing is pure: it takes decoded JSON (and the URL the page came from) and
returns frozen dataclasses. Nothing here touches the network or the disk.

An upstream is untrusted. Entries that cannot be mirrored safely (a hostile
file name, a non-hex hash, a name that is not a valid project name) are not
raised as errors that would sink a whole page: they are dropped and listed in
``rejected`` so that the caller can report them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from packaging.utils import (
    InvalidName,
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"

# Keys the mirror interprets itself; every other key of a file entry is kept
# verbatim. The ones in DROPPED_FILE_KEYS are left out because they would
# advertise something the mirror does not hold (a signature, provenance) or
# belong to PEP 708, which was rejected.
KNOWN_FILE_KEYS = frozenset(
    {
        "filename",
        "url",
        "hashes",
        "requires-python",
        "yanked",
        "size",
        "upload-time",
        "core-metadata",
        "data-dist-info-metadata",
        "dist-info-metadata",
    }
)
DROPPED_FILE_KEYS = frozenset({"gpg-sig", "provenance"})
KNOWN_PAGE_KEYS = frozenset({"meta", "name", "files", "versions"})
DROPPED_PAGE_KEYS = frozenset({"tracks", "alternate-locations"})

_HEX = re.compile(r"[0-9a-f]+")
# ASCII only: str.isdigit() also accepts digits like "²" that int() refuses.
_DECIMAL = re.compile(r"[0-9]+")
# Extendable-output functions have no fixed digest, so a digest of them cannot be checked.
VERIFIABLE_ALGORITHMS = frozenset(
    a for a in hashlib.algorithms_available if not a.startswith("shake")
)
# The longest file name the mirror accepts, in bytes: most filesystems allow
# 255, and the PEP 658 sibling needs room for ".metadata".
MAX_FILENAME_BYTES = 255 - len(".metadata")


class UpstreamDataError(ValueError):
    """Upstream sent a document this mirror cannot use at all."""


def parse_serial(value: object) -> int | None:
    """Return a serial given as an int or a decimal string; None when absent or unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _serial_key(serial: int | None) -> int:
    return -1 if serial is None else serial


def normalize_name(name: str) -> str:
    """PEP 503 normalization; raises InvalidName for a name that is not a valid project name."""
    return canonicalize_name(name, validate=True)


@dataclass(frozen=True)
class RootProject:
    """One project listed by the root index."""

    name: str
    """The name as upstream spells it (kept for display)."""
    normalized: str
    """PEP 503 normalized name; the key used everywhere else."""
    serial: int | None
    """Upstream's ``_last-serial`` for the project, None when not given."""


@dataclass(frozen=True)
class RootIndex:
    """The root of a simple index: every project and the index's last serial."""

    projects: tuple[RootProject, ...]
    serial: int | None
    """``meta._last-serial`` or the ``X-PyPI-Last-Serial`` header."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(entry, reason) for each listed project the mirror refuses to track."""
    collisions: tuple[tuple[str, str], ...] = ()
    """(dropped, kept) spellings of one project listed twice; the page is one."""

    @classmethod
    def from_json_data(cls, data: object, *, header_serial: int | None = None) -> RootIndex:
        if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
            raise UpstreamDataError("the root index is not a PEP 691 JSON object with 'projects'")
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        serial = parse_serial(meta.get("_last-serial"))
        if serial is None:
            serial = header_serial
        by_name: dict[str, RootProject] = {}
        rejected: list[tuple[str, str]] = []
        collisions: list[tuple[str, str]] = []
        for entry in data["projects"]:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                rejected.append((repr(entry)[:200], "project entry without a string 'name'"))
                continue
            try:
                normalized = normalize_name(name)
            except InvalidName:
                rejected.append((name[:200], "not a valid project name (PEP 508)"))
                continue
            project = RootProject(name, normalized, parse_serial(entry.get("_last-serial")))
            previous = by_name.get(normalized)
            if previous is None:
                by_name[normalized] = project
                continue
            # Two spellings of one project: keep the newer. Its page is fetched
            # by normalized name anyway, so nothing is lost.
            newer = _serial_key(project.serial) > _serial_key(previous.serial)
            keep, drop = (project, previous) if newer else (previous, project)
            by_name[normalized] = keep
            collisions.append((drop.name, keep.name))
        return cls(tuple(by_name.values()), serial, tuple(rejected), tuple(collisions))


@dataclass(frozen=True)
class DistFile:
    """One file listed on a project page, as upstream described it."""

    filename: str
    url: str
    """Absolute URL, resolved against the page URL."""
    hashes: Mapping[str, str]
    """Algorithm (lowercase) to hex digest (lowercase), only algorithms hashlib knows."""
    requires_python: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    size: int | None = None
    upload_time: str | None = None
    core_metadata: bool | Mapping[str, str] = False
    """PEP 658/714: False, True (present, no hash) or the metadata file's hashes."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this mirror does not interpret, kept verbatim for clients that do."""

    @property
    def metadata_url(self) -> str:
        # PEP 658: the file's URL without its fragment, plus ".metadata".
        return urldefrag(self.url).url + ".metadata"


@dataclass(frozen=True)
class ProjectPage:
    """A project page (PEP 691 JSON)."""

    name: str
    """Normalized project name."""
    files: tuple[DistFile, ...]
    versions: tuple[str, ...] | None
    """PEP 700 versions when upstream gave them (api-version 1.1+)."""
    serial: int | None
    """``meta._last-serial``, else the ``X-PyPI-Last-Serial`` header."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Top-level keys this mirror does not interpret, kept verbatim."""
    rejected: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json_data(
        cls, data: object, *, page_url: str, header_serial: int | None = None
    ) -> ProjectPage:
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise UpstreamDataError(
                f"{page_url}: not a PEP 691 project page (no 'files' list)"
            )
        name = data.get("name")
        if not isinstance(name, str):
            raise UpstreamDataError(f"{page_url}: project page without a 'name'")
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        serial = parse_serial(meta.get("_last-serial"))
        files: list[DistFile] = []
        rejected: list[tuple[str, str]] = []
        seen: set[str] = set()
        for entry in data["files"]:
            try:
                dist = parse_file(entry, page_url=page_url)
            except UpstreamDataError as exc:
                label = entry.get("filename") if isinstance(entry, dict) else None
                rejected.append((str(label or repr(entry)[:200]), str(exc)))
                continue
            if dist.filename in seen:
                rejected.append((dist.filename, "listed twice on the page; the first is kept"))
                continue
            seen.add(dist.filename)
            files.append(dist)
        versions = data.get("versions")
        return cls(
            name=canonicalize_name(name),
            files=tuple(files),
            versions=tuple(str(v) for v in versions) if isinstance(versions, list) else None,
            serial=serial if serial is not None else header_serial,
            extra={
                k: v
                for k, v in data.items()
                if k not in KNOWN_PAGE_KEYS and k not in DROPPED_PAGE_KEYS
            },
            rejected=tuple(rejected),
        )


def check_filename(filename: object) -> str:
    """Return ``filename`` if it is safe to create as one file in one directory."""
    if not isinstance(filename, str) or not filename:
        raise UpstreamDataError("missing or empty 'filename'")
    if filename in {".", ".."} or filename.startswith("."):
        raise UpstreamDataError("file name starts with a dot")
    if any(c in filename for c in "/\\") or any(unicodedata.category(c) == "Cc" for c in filename):
        raise UpstreamDataError("file name contains a path separator or a control character")
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError:
        raise UpstreamDataError("file name is not valid Unicode text") from None
    if len(encoded) > MAX_FILENAME_BYTES:
        raise UpstreamDataError(f"file name longer than {MAX_FILENAME_BYTES} bytes")
    return filename


def parse_hashes(value: object, *, what: str = "hashes") -> dict[str, str]:
    """Hashes whose algorithm hashlib knows; a malformed digest rejects the whole entry."""
    if not isinstance(value, dict):
        raise UpstreamDataError(f"'{what}' is not an object")
    hashes: dict[str, str] = {}
    for algorithm, digest in value.items():
        algorithm = str(algorithm).lower()
        if algorithm not in VERIFIABLE_ALGORITHMS:
            continue  # an algorithm we cannot check proves nothing; ignore it
        if not isinstance(digest, str) or not _HEX.fullmatch(digest.lower()):
            raise UpstreamDataError(f"{what}[{algorithm!r}] is not a hex digest")
        digest = digest.lower()
        if len(digest) != hashlib.new(algorithm).digest_size * 2:
            raise UpstreamDataError(f"{what}[{algorithm!r}] has the wrong length for {algorithm}")
        hashes[algorithm] = digest
    return hashes


def parse_file(entry: object, *, page_url: str) -> DistFile:
    """Parse one entry of a PEP 691 page's ``files``."""
    if not isinstance(entry, dict):
        raise UpstreamDataError("file entry is not an object")
    filename = check_filename(entry.get("filename"))
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise UpstreamDataError("missing 'url'")
    absolute = urljoin(page_url, url)
    parts = urlsplit(absolute)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UpstreamDataError("file URL is not http(s)")
    # Clients name the file after the URL; a page that says otherwise is lying
    # about one of them.
    if unquote(parts.path.rsplit("/", 1)[-1]) != filename:
        raise UpstreamDataError("file name does not match the last part of its URL")
    hashes = parse_hashes(entry.get("hashes", {}))
    if not hashes:
        raise UpstreamDataError("no hash that this mirror can verify (give sha256)")
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UpstreamDataError("'size' is not a non-negative integer")
    yanked = entry.get("yanked", False)
    requires_python = entry.get("requires-python")
    upload_time = entry.get("upload-time")
    # PEP 714 renamed dist-info-metadata to core-metadata; prefer the new key.
    metadata = entry.get("core-metadata")
    if metadata is None:
        metadata = entry.get("data-dist-info-metadata", entry.get("dist-info-metadata", False))
    if isinstance(metadata, dict):
        core_metadata: bool | dict[str, str] = parse_hashes(metadata, what="core-metadata") or True
    else:
        core_metadata = bool(metadata)
    return DistFile(
        filename=filename,
        url=absolute,
        hashes=hashes,
        requires_python=requires_python if isinstance(requires_python, str) else None,
        yanked=bool(yanked),
        yanked_reason=yanked if isinstance(yanked, str) and yanked else None,
        size=size,
        upload_time=upload_time if isinstance(upload_time, str) else None,
        core_metadata=core_metadata,
        extra={
            k: v
            for k, v in entry.items()
            if k not in KNOWN_FILE_KEYS and k not in DROPPED_FILE_KEYS
        },
    )


def version_of(filename: str) -> str | None:
    """The version a wheel or sdist file name carries, None for other files."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None


@dataclass(frozen=True)
class HeldFile:
    """A verified file the mirror holds: a row of state.db and a link on a page."""

    project: str
    filename: str
    path: str
    """Path relative to ``web/``, e.g. ``packages/ab/cd/<sha256>/<filename>``."""
    size: int
    hashes: Mapping[str, str]
    """Every digest verified at download, sha256 always among them."""
    url: str
    """Where upstream served it."""
    requires_python: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    upload_time: str | None = None
    metadata_hashes: Mapping[str, str] | None = None
    """Verified hashes of the PEP 658 file at ``path + '.metadata'``, None when not held."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, dist: DistFile) -> bool:
        """True when ``dist`` names the same bytes as this file (every common hash agrees)."""
        common = set(self.hashes) & set(dist.hashes)
        return (
            dist.filename == self.filename
            and bool(common)
            and all(self.hashes[a] == dist.hashes[a] for a in common)
        )
