"""The Simple Repository API data model, parsed from its wire formats.

Parsing is pure: it takes decoded JSON (PEP 691) or HTML text (PEP 503), and
the URL the page came from, and returns frozen dataclasses. Nothing here
touches the network or the disk. Both formats go through the same validation:
an HTML anchor is first turned into the JSON entry it stands for.

An upstream is untrusted. Entries that cannot be mirrored safely (a hostile
file name, a non-hex hash, a name that is not a valid project name) are not
raised as errors that would sink a whole page: they are dropped and listed in
``rejected`` so that the caller can report them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from html.parser import HTMLParser
from typing import Any, NamedTuple
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
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"

# The Simple API version (PEP 629) this mirror knows, read and written on its pages.
# 1.4: PEP 700 (versions, size, upload-time), PEP 740 (provenance) and PEP 792
# (project status). PEP 708 (1.2) was rejected: none of its keys are emitted.
_KNOWN_API = (1, 4)
API_VERSION = f"{_KNOWN_API[0]}.{_KNOWN_API[1]}"
# "major.minor"; a bare major is read as major.0. Longer numbers are no version.
_API_VERSION = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,9}))?")

# Keys the mirror interprets itself; every other key of a file entry is kept
# verbatim in ``extra``. Interpreted keys never reach ``extra``, so whoever
# renders a page decides what to say about them (a signature or provenance
# the mirror does not hold must not be advertised as if it did).
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
        "gpg-sig",
        "provenance",
    }
)
# Reserved for keys that must never be passed on; none at the file level now.
DROPPED_FILE_KEYS: frozenset[str] = frozenset()
KNOWN_PAGE_KEYS = frozenset({"meta", "name", "files", "versions", "project-status"})
# PEP 708 was rejected: its keys are never passed on.
DROPPED_PAGE_KEYS = frozenset({"tracks", "alternate-locations"})

_HEX = re.compile(r"[0-9a-f]+")
# ASCII only: str.isdigit() also accepts digits like "²" that int() refuses.
_DECIMAL = re.compile(r"[0-9]+")


def _digest_size(algorithm: str) -> int | None:
    try:
        return hashlib.new(algorithm).digest_size
    except ValueError:  # listed, but this OpenSSL will not compute it (a FIPS build)
        return None


# Hex digest lengths, worked out once: parse_hashes checks one for every file.
# Extendable-output functions have no fixed digest, so a digest of them cannot be checked.
_HEX_LENGTHS = {
    a: 2 * size
    for a in hashlib.algorithms_available
    if not a.startswith("shake") and (size := _digest_size(a)) is not None
}
VERIFIABLE_ALGORITHMS = frozenset(_HEX_LENGTHS)

# The longest file name the mirror accepts, in bytes: most filesystems allow
# 255, and the PEP 658 sibling needs room for ".metadata".
MAX_FILENAME_BYTES = 255 - len(".metadata")


class UpstreamDataError(ValueError):
    """Upstream sent a document this mirror cannot use at all."""


def api_version(value: object) -> tuple[int, int] | None:
    """The (major, minor) of a PEP 629 version; None when unsaid or not one.

    Raises UpstreamDataError for a major newer than this mirror knows: PEP 629
    has a client refuse what such a version may have changed in meaning.
    """
    match = _API_VERSION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None  # an index that does not say speaks 1.0, as PEP 629 began
    version = int(match[1]), int(match[2] or 0)
    if version[0] > _KNOWN_API[0]:
        raise UpstreamDataError(
            f"upstream speaks Simple API version {version[0]}.{version[1]}, which this "
            f"simplemirror does not know; use a simplemirror that does, or an upstream "
            f"that speaks version {_KNOWN_API[0]}"
        )
    return version


def _json_api_version(data: object) -> object:
    """``meta.api-version`` of a PEP 691 document, whatever else it holds."""
    meta = data.get("meta") if isinstance(data, dict) else None
    return meta.get("api-version") if isinstance(meta, dict) else None


def newer_api_version(version: tuple[int, int] | None) -> bool:
    """Whether ``version`` is a newer minor than this mirror knows (PEP 629: warn, go on)."""
    return version is not None and version > _KNOWN_API


# Serials are stored in SQLite, whose INTEGER is a signed 64-bit number.
MAX_SERIAL = 2**63 - 1
_MAX_SERIAL_DIGITS = len(str(MAX_SERIAL))
_SERIAL_TOO_LARGE = "'_last-serial' is too large to be a serial (2**63 or more)"


def read_serial(value: object) -> int | None:
    """A serial given as an int or a decimal string; None when absent or not a whole
    number of at least 0 (upstreams send such things for "no serial").

    Raises UpstreamDataError for a number too large to be a serial: it would not fit
    state.db, and past 4300 digits int() refuses to read it at all.
    """
    if type(value) is int and 0 <= value <= MAX_SERIAL:
        return value  # first: a large root has hundreds of thousands of these
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(digits := value.strip()):
        digits = digits.lstrip("0") or "0"
        if len(digits) > _MAX_SERIAL_DIGITS:
            raise UpstreamDataError(_SERIAL_TOO_LARGE)
        number = int(digits)
    else:
        return None
    if number > MAX_SERIAL:
        raise UpstreamDataError(_SERIAL_TOO_LARGE)
    return number if number >= 0 else None


def parse_serial(value: object) -> int | None:
    """Like read_serial, but a number too large to be a serial is no serial either."""
    try:
        return read_serial(value)
    except UpstreamDataError:
        return None


def _serial_key(serial: int | None) -> int:
    return -1 if serial is None else serial


# Valid and already in normal form: most names in a large root are, and the
# check is several times cheaper than packaging's validate-and-normalize.
_NORMAL_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def normalize_name(name: str) -> str:
    """PEP 503 normalization; raises InvalidName for a name that is not a valid project name."""
    if _NORMAL_NAME.fullmatch(name):
        return name
    return canonicalize_name(name, validate=True)


def _root_entry(obj: dict[str, Any]) -> object:
    """A root's project entry becomes its RootProject as soon as it is parsed.

    Half a million small dicts, one per project, would otherwise be most of a
    large root's memory. An entry that is not valid stays a dict, for
    RootIndex.from_json_data to refuse with its reason.
    """
    if "projects" in obj:
        return obj  # the document itself
    name = obj.get("name")
    if not isinstance(name, str):
        return obj
    try:
        normalized = normalize_name(name)
        serial = read_serial(obj.get("_last-serial"))
    except (InvalidName, UpstreamDataError):
        return obj
    return RootProject(name, normalized, serial)


class _LongNumber(int):
    """Stands in for a JSON integer too long to be a serial, which int() may refuse to
    read: as much too large (or negative) for one, and shown by its length."""

    digits: int

    def __new__(cls, text: str) -> _LongNumber:
        negative = text.startswith("-")
        number = super().__new__(cls, -1 if negative else MAX_SERIAL + 1)
        number.digits = len(text) - negative
        return number

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _json_int(text: str) -> int:
    """A JSON integer, as json reads it unless it is too long to be a serial (a root's
    numbers are only ever serials)."""
    if len(text) <= _MAX_SERIAL_DIGITS + 1:  # JSON integers have no leading zeros
        return int(text)
    return _LongNumber(text)


def parse_root_json(body: bytes) -> object:
    """json.loads for a PEP 691 root, each valid project entry parsed as it is read.

    The result is what RootIndex.from_json_data takes.
    """
    try:
        return json.loads(body, object_hook=_root_entry)
    except ValueError:
        # Perhaps a number of more digits than int() reads, which ends json.loads:
        # in a root, a serial, which must cost its entry only. Read again, numbers
        # through Python (slower, so only now); JSON that is broken fails again.
        return json.loads(body, object_hook=_root_entry, parse_int=_json_int)


class RootProject(NamedTuple):
    """One project listed by the root index.

    A named tuple rather than a dataclass: a large root has hundreds of
    thousands, and a tuple is both smaller and quicker to make.
    """

    name: str
    """The name as upstream spells it (kept for display)."""
    normalized: str
    """PEP 503 normalized name; the key used everywhere else."""
    serial: int | None
    """Upstream's ``_last-serial`` for the project, None when not given."""


class _RootBuilder:
    """Collects a root's projects, with the validation and collisions both formats share."""

    def __init__(self) -> None:
        self.by_name: dict[str, RootProject] = {}
        self.rejected: list[tuple[str, str]] = []
        self.collisions: list[tuple[str, str]] = []
        self.held_back: list[str] = []

    def add(self, name: str, serial: object) -> None:
        """A listed project, its serial as upstream gave it (None for HTML)."""
        try:
            normalized = normalize_name(name)
        except InvalidName:
            self.rejected.append((name[:200], "not a valid project name (PEP 508)"))
            return
        try:
            self.keep(RootProject(name, normalized, read_serial(serial)))
        except UpstreamDataError as exc:
            # Listed, but not to be fetched: a copy held stays as it is.
            self.rejected.append((name, str(exc)))
            self.held_back.append(normalized)

    def keep(self, project: RootProject) -> None:
        normalized = project.normalized
        previous = self.by_name.get(normalized)
        if previous is None:
            self.by_name[normalized] = project
            return
        # Two spellings of one project: keep the newer. Its page is fetched
        # by normalized name anyway, so nothing is lost.
        newer = _serial_key(project.serial) > _serial_key(previous.serial)
        keep, drop = (project, previous) if newer else (previous, project)
        self.by_name[normalized] = keep
        self.collisions.append((drop.name, keep.name))

    def build(self, serial: int | None, version: tuple[int, int] | None) -> RootIndex:
        return RootIndex(
            tuple(self.by_name.values()), serial, tuple(self.rejected), tuple(self.collisions),
            api_version=version, held_back=tuple(self.held_back),
        )


@dataclass(frozen=True)
class RootIndex:
    """The root of a simple index: every project and the index's last serial."""

    projects: tuple[RootProject, ...]
    """Every project the mirror can track, in upstream's order."""
    serial: int | None
    """``meta._last-serial`` (JSON) or ``<!--SERIAL n-->`` (HTML), else the
    ``X-PyPI-Last-Serial`` header."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(entry, reason) for each listed project the mirror refuses to track."""
    collisions: tuple[tuple[str, str], ...] = ()
    """(dropped, kept) spellings of one project listed twice; the page is one."""
    api_version: tuple[int, int] | None = None
    """PEP 629 (major, minor) the root declared; None when it did not say."""
    held_back: tuple[str, ...] = ()
    """Normalized names of projects listed with an entry refused for its serial: not
    fetched, but not gone from upstream either (a copy held is kept)."""

    @classmethod
    def from_json_data(cls, data: object, *, header_serial: int | None = None) -> RootIndex:
        """Parse a PEP 691 root; raises UpstreamDataError when it is not one at all."""
        # First: in a version it does not know, the rest of the document may be anything.
        version = api_version(_json_api_version(data))
        if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
            raise UpstreamDataError("the root index is not a PEP 691 JSON object with 'projects'")
        meta = data.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        serial = parse_serial(meta.get("_last-serial"))
        builder = _RootBuilder()
        for entry in data["projects"]:
            if isinstance(entry, RootProject):  # from parse_root_json
                builder.keep(entry)
                continue
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                builder.rejected.append(
                    (repr(entry)[:200], "project entry without a string 'name'")
                )
                continue
            builder.add(name, entry.get("_last-serial"))
        return builder.build(serial if serial is not None else header_serial, version)

    @classmethod
    def from_html(
        cls, text: str, *, page_url: str, header_serial: int | None = None
    ) -> RootIndex:
        """Parse a PEP 503 root: each link's text is a project name.

        The links themselves are not followed (pages are fetched by normalized
        name), and HTML gives no per-project serials, so every project's serial
        is None and each one is fetched on every run. ``page_url`` is where the
        root came from; like ``from_json_data``, errors leave naming it to the caller.
        """
        doc = _parse_html(text)
        if not doc.anchors and not doc.is_simple_index:
            raise UpstreamDataError(f"the root index is an {_NOT_AN_INDEX}")
        version = api_version(doc.meta.get(_VERSION_META))
        builder = _RootBuilder()
        for anchor in doc.anchors:
            builder.add(anchor.text, None)
        return builder.build(doc.serial if doc.serial is not None else header_serial, version)


@dataclass(frozen=True)
class DistFile:
    """One file listed on a project page, as upstream described it."""

    filename: str
    """The file's name, checked to be safe on disk and to match the URL's last part."""
    url: str
    """Absolute URL, resolved against the page URL."""
    hashes: Mapping[str, str]
    """Algorithm (lowercase) to hex digest (lowercase), only algorithms hashlib knows."""
    requires_python: str | None = None
    """PEP 345 Requires-Python specifier, verbatim; None when not given."""
    yanked: bool = False
    """PEP 592: the file is yanked."""
    yanked_reason: str | None = None
    """PEP 592: why it was yanked, when upstream said (never set unless ``yanked``)."""
    size: int | None = None
    """PEP 700: size in bytes; None when not given (HTML never gives it)."""
    upload_time: str | None = None
    """PEP 700: ISO 8601 upload time, verbatim; None when not given."""
    core_metadata: bool | Mapping[str, str] = False
    """PEP 658/714: False, True (present, no hash) or the metadata file's hashes."""
    gpg_sig: bool | None = None
    """PEP 503/691: whether upstream has a detached ``.asc`` signature; None when unsaid."""
    provenance: str | None = None
    """PEP 740: absolute http(s) URL of the file's provenance; None when absent or unusable."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this mirror does not interpret, kept verbatim for clients that do."""

    @property
    def metadata_url(self) -> str:
        # PEP 658: the file's URL without its fragment, plus ".metadata".
        return urldefrag(self.url).url + ".metadata"


@dataclass(frozen=True)
class ProjectPage:
    """A project page (PEP 691 JSON or PEP 503 HTML)."""

    name: str
    """Normalized project name."""
    files: tuple[DistFile, ...]
    """Every file that passed validation, in upstream's order."""
    versions: tuple[str, ...] | None
    """PEP 700 versions when upstream gave them (JSON, api-version 1.1+); None for HTML."""
    serial: int | None
    """``meta._last-serial`` (JSON) or ``<!--SERIAL n-->`` (HTML), else the
    ``X-PyPI-Last-Serial`` header."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Top-level keys this mirror does not interpret, kept verbatim (JSON only)."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(file name or entry, reason) for each file the mirror refuses to mirror."""
    status: str | None = None
    """PEP 792 project status ("active", "archived", "quarantined", "deprecated", or a
    newer value kept verbatim); None when upstream did not say or said it malformed."""
    status_reason: str | None = None
    """PEP 792 free-text reason for the status; None without a usable status."""
    api_version: tuple[int, int] | None = None
    """PEP 629 (major, minor) the page declared; None when it did not say."""

    @classmethod
    def from_json_data(
        cls, data: object, *, page_url: str, header_serial: int | None = None
    ) -> ProjectPage:
        """Parse a PEP 691 page; bad file entries are rejected, not raised."""
        version = _page_api_version(_json_api_version(data), page_url)  # first, as for a root
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise UpstreamDataError(
                f"{page_url}: not a PEP 691 project page (no 'files' list)"
            )
        meta = data.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        name = data.get("name")
        if not isinstance(name, str):
            raise UpstreamDataError(f"{page_url}: project page without a 'name'")
        serial = parse_serial(meta.get("_last-serial"))
        files, rejected = _parse_files(data["files"], page_url=page_url)
        versions = data.get("versions")
        status, reason = _parse_status(data.get("project-status"))
        return cls(
            name=canonicalize_name(name),
            files=files,
            versions=tuple(str(v) for v in versions) if isinstance(versions, list) else None,
            serial=serial if serial is not None else header_serial,
            extra={
                k: v
                for k, v in data.items()
                if k not in KNOWN_PAGE_KEYS and k not in DROPPED_PAGE_KEYS
            },
            rejected=rejected,
            status=status,
            status_reason=reason,
            api_version=version,
        )

    @classmethod
    def from_html(
        cls, text: str, *, page_url: str, name: str, header_serial: int | None = None
    ) -> ProjectPage:
        """Parse a PEP 503 page for project ``name`` (HTML does not name its project).

        Each ``<a href>`` becomes the PEP 691 entry it stands for and is then
        validated exactly like a JSON entry.
        """
        doc = _parse_html(text)
        if not doc.anchors and not doc.is_simple_index:
            raise UpstreamDataError(f"{page_url}: an {_NOT_AN_INDEX}")
        version = _page_api_version(doc.meta.get(_VERSION_META), page_url)
        # HTML resolves every link against <base href> when there is one.
        base = urljoin(page_url, doc.base) if doc.base is not None else page_url
        files, rejected = _parse_files((_html_entry(a) for a in doc.anchors), page_url=base)
        status, reason = _parse_status(
            {"status": doc.meta.get(_STATUS_META), "reason": doc.meta.get(_REASON_META)}
        )
        return cls(
            name=canonicalize_name(name),
            files=files,
            versions=None,
            serial=doc.serial if doc.serial is not None else header_serial,
            rejected=rejected,
            status=status,
            status_reason=reason,
            api_version=version,
        )


def _page_api_version(value: object, page_url: str) -> tuple[int, int] | None:
    """api_version, its refusal naming the page (a root's caller names the root)."""
    try:
        return api_version(value)
    except UpstreamDataError as exc:
        raise UpstreamDataError(f"{page_url}: {exc}") from None


def _parse_status(value: object) -> tuple[str | None, str | None]:
    """PEP 792 (status, reason); anything malformed says nothing rather than sink the page."""
    if not isinstance(value, dict) or not isinstance(value.get("status"), str):
        return None, None
    reason = value.get("reason")
    return value["status"], reason if isinstance(reason, str) else None


def _parse_files(
    entries: Iterable[object], *, page_url: str
) -> tuple[tuple[DistFile, ...], tuple[tuple[str, str], ...]]:
    """Validate a page's entries: (files kept, (label, reason) for each one refused)."""
    files: list[DistFile] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in entries:
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
    return tuple(files), tuple(rejected)


# A path separator, or a character of Unicode category Cc (exactly these ranges).
_SEPARATOR_OR_CONTROL = re.compile("[/\\\\\x00-\x1f\x7f-\x9f]")
# Characters that change how a name reads, not what it is: format characters (Cf:
# the bidirectional overrides and isolates U+202A-U+202E and U+2066-U+2069 that
# reorder what follows them on a page or a terminal, zero-width spaces and joiners,
# the byte order mark...) and the line and paragraph separators (Zl, Zp) that split
# a log line. No distribution's name has any: project names and versions are ASCII.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})


def _has_invisible(filename: str) -> bool:
    # Almost every name is ASCII, which has none of these: skip the per-character look-up.
    return not filename.isascii() and any(
        unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in filename
    )


def check_filename(filename: object) -> str:
    """Return ``filename`` if it is safe to create as one file in one directory."""
    if not isinstance(filename, str) or not filename:
        raise UpstreamDataError("missing or empty 'filename'")
    if filename in {".", ".."} or filename.startswith("."):
        raise UpstreamDataError("file name starts with a dot")
    if _SEPARATOR_OR_CONTROL.search(filename):
        raise UpstreamDataError("file name contains a path separator or a control character")
    if _has_invisible(filename):
        raise UpstreamDataError(
            "file name contains a format character (such as a bidirectional override) "
            "or a line separator"
        )
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
        if len(digest) != _HEX_LENGTHS[algorithm]:
            raise UpstreamDataError(f"{what}[{algorithm!r}] has the wrong length for {algorithm}")
        hashes[algorithm] = digest
    return hashes


def _http_url(value: object, page_url: str) -> str | None:
    """``value`` resolved against ``page_url`` if that gives an http(s) URL with a host."""
    resolved = _resolve(value, page_url)
    return None if resolved is None else resolved[0]


def _resolve(value: object, page_url: str) -> tuple[str, str] | None:
    """``value`` resolved against ``page_url``, and that URL's path; None unless it is
    an http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        return None
    # The two forms upstream pages give, in plain characters, need no parsing:
    # urljoin returns such an absolute URL as it is, and such a path after the
    # page's origin. Through urljoin and urlsplit, they cost a download process
    # a twentieth of its CPU.
    if plain := _PLAIN_ABSOLUTE.fullmatch(value):
        return value, plain[1]
    if value[1:2] != "/" and "/." not in value and _PLAIN_PATH.fullmatch(value):
        origin = _http_origin(page_url)
        if origin is not None:
            return origin + value, value
    absolute = urljoin(page_url, value)
    parts = urlsplit(absolute)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return absolute, parts.path


# No query, fragment, parameters, spaces or escapes urlsplit would remove or
# change; a host-relative path must also have no dot segment and not start with
# "//" (see _resolve).
_PLAIN = "/[A-Za-z0-9._~%!$&'()*+,=:@/-]*"
_PLAIN_PATH = re.compile(_PLAIN)
_PLAIN_ABSOLUTE = re.compile(f"https?://[A-Za-z0-9.-]+(?::[0-9]*)?({_PLAIN})")


@functools.lru_cache(maxsize=64)
def _http_origin(page_url: str) -> str | None:
    """``scheme://netloc`` of an http(s) page URL with a host, as urljoin keeps them."""
    parts = urlsplit(page_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def parse_file(entry: object, *, page_url: str) -> DistFile:
    """Validate one file entry in PEP 691 form (an HTML anchor is converted first)."""
    if not isinstance(entry, dict):
        raise UpstreamDataError("file entry is not an object")
    filename = check_filename(entry.get("filename"))
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise UpstreamDataError("missing 'url'")
    resolved = _resolve(url, page_url)
    if resolved is None:
        raise UpstreamDataError("file URL is not http(s)")
    absolute, path = resolved
    # Clients name the file after the URL; a page that says otherwise is lying
    # about one of them.
    if unquote(path.rsplit("/", 1)[-1]) != filename:
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
    gpg_sig = entry.get("gpg-sig")
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
        gpg_sig=gpg_sig if isinstance(gpg_sig, bool) else None,
        # Provenance is an optional extra: an unusable URL loses it, not the file.
        provenance=_http_url(entry.get("provenance"), page_url),
        extra={
            k: v
            for k, v in entry.items()
            if k not in KNOWN_FILE_KEYS and k not in DROPPED_FILE_KEYS
        },
    )


# -- HTML (PEP 503, with the data- attributes of PEPs 592, 658, 714, 740) --------------------

_NOT_AN_INDEX = (
    "HTML page with no links and no pypi:repository-version meta tag; "
    "not a simple index page (an error or maintenance page?)"
)
_STATUS_META = "pypi:project-status"
_REASON_META = "pypi:project-status-reason"
_VERSION_META = "pypi:repository-version"
_SERIAL_COMMENT = re.compile(r"\s*SERIAL\s+([0-9]+)\s*")
# HTML strips these around a URL attribute before resolving it; urljoin does not.
_HTML_SPACE = " \t\n\r\f"


@dataclass(frozen=True)
class _Anchor:
    attrs: Mapping[str, str]
    """Attribute names lowercased, values unescaped; a bare attribute has value ""."""
    text: str
    """The link text, unescaped, surrounding whitespace stripped."""


@dataclass
class _HTMLDocument:
    anchors: list[_Anchor] = field(default_factory=list)
    """Every ``<a>`` that has an ``href``, in document order."""
    base: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    """``<meta name=... content=...>``, names lowercased, first of each name."""
    serial: int | None = None

    @property
    def is_simple_index(self) -> bool:
        return _VERSION_META in self.meta


class _SimpleHTMLParser(HTMLParser):
    """Collects the parts of a page the Simple API gives meaning to; ignores the rest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doc = _HTMLDocument()
        self._anchor: dict[str, str] | None = None
        self._text: list[str] = []

    @staticmethod
    def _attrs(attrs: list[tuple[str, str | None]]) -> dict[str, str]:
        found: dict[str, str] = {}
        for key, value in attrs:
            # Browsers keep the first of a repeated attribute; so does this.
            found.setdefault(key, value if value is not None else "")
        return found

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            # Anchors do not nest: a new one ends the one still open.
            self._end_anchor()
            found = self._attrs(attrs)
            if "href" in found:
                self._anchor = found
        elif tag == "base":
            found = self._attrs(attrs)
            # The document's base URL is the first <base> that has an href.
            if self.doc.base is None and "href" in found:
                self.doc.base = found["href"].strip(_HTML_SPACE)
        elif tag == "meta":
            found = self._attrs(attrs)
            if "name" in found and "content" in found:
                self.doc.meta.setdefault(found["name"].lower(), found["content"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._end_anchor()

    def handle_data(self, data: str) -> None:
        if self._anchor is not None:
            self._text.append(data)

    def handle_comment(self, data: str) -> None:
        match = _SERIAL_COMMENT.fullmatch(data)
        if match:
            self.doc.serial = parse_serial(match[1])  # the last one wins: PyPI puts it at the end

    def _end_anchor(self) -> None:
        if self._anchor is not None:
            text = "".join(self._text).strip(_HTML_SPACE)
            self.doc.anchors.append(_Anchor(self._anchor, text))
        self._anchor = None
        self._text = []

    def close(self) -> None:
        super().close()
        self._end_anchor()  # an anchor left open at the end still counts


def _parse_html(text: str) -> _HTMLDocument:
    parser = _SimpleHTMLParser()
    parser.feed(text)
    parser.close()
    return parser.doc


def _html_core_metadata(value: str | None) -> bool | dict[str, str]:
    """PEP 658 attribute value: "true", or "<alg>=<hex>" (validated later as a hash)."""
    if value is None:
        return False
    if value.strip(_HTML_SPACE).lower() == "true":
        return True
    algorithm, sep, digest = value.partition("=")
    return {algorithm.strip(_HTML_SPACE): digest.strip(_HTML_SPACE)} if sep else False


def _html_entry(anchor: _Anchor) -> dict[str, Any]:
    """The PEP 691 file entry an anchor stands for, unvalidated (parse_file does that)."""
    attrs = anchor.attrs
    url, fragment = urldefrag(attrs["href"].strip(_HTML_SPACE))
    algorithm, sep, digest = fragment.partition("=")
    entry: dict[str, Any] = {
        "filename": anchor.text,
        "url": url,
        # A missing or unknown hash leaves nothing verifiable: rejected like JSON's.
        "hashes": {algorithm: digest} if sep else {},
        # PEP 714: data-core-metadata wins over the PEP 658 spelling when both are there.
        "core-metadata": _html_core_metadata(
            attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        ),
    }
    if "data-requires-python" in attrs:
        entry["requires-python"] = attrs["data-requires-python"]
    if "data-yanked" in attrs:
        entry["yanked"] = attrs["data-yanked"] or True
    gpg_sig = attrs.get("data-gpg-sig", "").strip(_HTML_SPACE).lower()
    if gpg_sig in {"true", "false"}:
        entry["gpg-sig"] = gpg_sig == "true"
    if "data-provenance" in attrs:
        entry["provenance"] = attrs["data-provenance"].strip(_HTML_SPACE)
    return entry


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
    signature: bool = False
    """The detached signature at ``path + '.asc'`` is held (upstream advertised gpg-sig)."""
    provenance: bool = False
    """The PEP 740 provenance at ``path + '.provenance'`` is held."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, dist: DistFile) -> bool:
        """True when ``dist`` names the same bytes as this file (every common hash agrees)."""
        common = set(self.hashes) & set(dist.hashes)
        return (
            dist.filename == self.filename
            and bool(common)
            and all(self.hashes[a] == dist.hashes[a] for a in common)
        )


# -- what state.db holds, as planning and rendering see it ------------------------------


class Status(StrEnum):
    """Where a project stands in state.db."""

    PENDING = "pending"
    """Listed upstream, not yet mirrored completely (also: a run died midway)."""
    OK = "ok"
    DEFERRED = "deferred"
    """Upstream kept serving a stale page; tried again next run."""
    FAILED = "failed"
    REMOVED = "removed"
    """No longer listed upstream (kept on disk until deletion is implemented)."""


@dataclass(frozen=True, slots=True)
class HeldProject:
    """The part of a project's state that planning needs."""

    serial: int | None
    """Serial of the last page mirrored completely."""
    upstream_serial: int | None
    """Serial the upstream root listed at the last look."""
    status: Status
    page_etag: str | None = None
    """ETag of the upstream page last mirrored (for upstreams without serials)."""
    page_hash: str | None = None
    """sha256 of that page's body, for upstreams that send no ETag either."""
    filters: str | None = None
    """Fingerprint of the file filters its files were chosen under (None: none)."""
    held_until: int | None = None
    """When (Unix time) a file the cooldown held back is old enough to be published."""


class Replanning(NamedTuple):
    """What has a complete copy planned again though upstream did not change its page."""

    filters: str | None = None
    """The fingerprint of the file filters in force (filter.rules.Filters.file_fingerprint)."""
    now: int = 0
    """Unix time: a copy with a file held back until then is due."""

    def due(self, held: HeldProject) -> bool:
        """State.root_changes asks the same in SQL."""
        return held.filters != self.filters or (
            held.held_until is not None and held.held_until <= self.now
        )


NO_REPLANNING = Replanning()
"""A full mirror's: nothing is planned again but for upstream's changes."""


@dataclass(frozen=True)
class RootChanges:
    """A root compared with state.db, reduced to what can matter to the plan."""

    changed: Iterable[tuple[RootProject, HeldProject | None]]
    """Listed projects that need fetching (needs_fetch), with what is held of them; read
    once (from State.root_changes, a cursor: a first sync of 650,000 projects would
    otherwise hold them all twice)."""
    unlisted: list[str]
    """Held projects (not already removed) that the root no longer lists."""
    listed: int
    """Projects the root lists that the mirror wants, within ``only`` when the run is
    limited to some."""
    pruned: list[str] = field(default_factory=list)
    """Held projects (not already removed) the root lists and the filters leave out."""


@dataclass(frozen=True, slots=True)
class RootEntry:
    name: str
    """Display name, as upstream spelt it."""
    normalized: str
    serial: int | None
    """Serial of the last complete copy of the project; None until there is one."""
