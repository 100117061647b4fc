"""What `mirror serve` answers, decided without I/O.

Pure functions over request data: which page representation a client gets (PEP 691
content negotiation), where a URL path points in the published tree, which bytes a Range
header asks for, whether a validator still matches, and the Content-Type of a file. The
server in server.py does the I/O around them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import unquote

from packaging.utils import InvalidName, canonicalize_name

from simplemirror.store import layout

JSON_V1: Final = "application/vnd.pypi.simple.v1+json"
HTML_V1: Final = "application/vnd.pypi.simple.v1+html"
HTML: Final = "text/html"
PAGE_TYPES: Final = (JSON_V1, HTML_V1, HTML)
"""Every representation a simple page has, in the order JSON wins ties between named types."""
LATEST: Final = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}
"""PEP 691's ``latest`` meta version, by the v1 type it stands for: v1 is the newest served,
and the answer must name the concrete version, never ``latest``."""


def concrete(media: str) -> str:
    """``media`` (lowercase, no parameters) with a ``latest`` alias resolved to its version."""
    return LATEST.get(media, media)


# -- content negotiation ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: ``type/subtype`` (either may be ``*``) and its q."""

    type: str
    subtype: str
    q: float

    def specificity(self, media: str) -> int:
        """How closely this range names ``media``: 2 by name (or its ``latest`` alias),
        1 ``type/*``, 0 ``*/*``, -1 not at all."""
        major = media.partition("/")[0]
        if self.type == "*":
            return 0
        if self.type != major:
            return -1
        if self.subtype == "*":
            return 1
        return 2 if concrete(f"{self.type}/{self.subtype}") == media else -1


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
# RFC 9110 12.4.2: a qvalue is 0 or 1 with at most three decimals.
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header value, in order.

    Entries that are not ``type/subtype`` (``*/*`` and ``type/*`` included; ``*/sub`` is
    not valid) or whose q is not a valid qvalue are dropped, as if the client had not sent
    them. Parameters other than q are ignored: no simple page type has any.
    """
    ranges: list[MediaRange] = []
    for entry in header.split(","):
        media, *params = (piece.strip() for piece in entry.split(";"))
        match = _RANGE.match(media)
        if match is None:
            continue
        major, minor = match.group(1).lower(), match.group(2).lower()
        if major == "*" and minor != "*":
            continue
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.match(value) else None
                break
        if q is not None:
            ranges.append(MediaRange(major, minor, q))
    return ranges


def _quality(media: str, ranges: list[MediaRange]) -> tuple[float, int]:
    """The q the client gives ``media`` (from its most specific range), and that specificity."""
    best_q, best_spec = 0.0, -1
    for rng in ranges:
        spec = rng.specificity(media)
        if spec > best_spec:
            best_q, best_spec = rng.q, spec
    return best_q, best_spec


def negotiate(accept: str | None, format_param: str | None = None) -> str | None:
    """The content type of the page representation to send, or None for 406.

    ``format_param`` (the ``?format=`` query value, PEP 691) overrides Accept: it must
    name one of the three page types (case and parameters aside), else nothing is
    acceptable. In either, a ``latest`` type names its v1 type, which is what is returned.
    Otherwise the highest q wins. On equal q, a type the client named beats one
    only a wildcard covers, and among named types JSON beats HTML (the richer format, what
    pip and uv want); a wildcard alone means the client does not mind, so it gets
    ``text/html``, which every client reads. No Accept header, an empty one, or one with no
    valid entry also gets ``text/html``.
    """
    if format_param:
        wanted = concrete(format_param.split(";", 1)[0].strip().lower())
        return wanted if wanted in PAGE_TYPES else None
    ranges = parse_accept(accept or "")
    if not ranges:
        return HTML
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for index, media in enumerate(PAGE_TYPES):
        q, spec = _quality(media, ranges)
        if q <= 0:
            continue
        # Named types prefer JSON first; wildcard matches prefer text/html first.
        preference = -index if spec == 2 else index
        key = (q, spec, preference)
        if best is None or key > best:
            best, chosen = key, media
    return chosen


# -- where a URL points -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Redirect:
    location: str


@dataclass(frozen=True, slots=True)
class Page:
    """A negotiated simple page: ``directory`` (tree path) holds index.html and index.v1_json."""

    directory: str


@dataclass(frozen=True, slots=True)
class File:
    """A file in the tree, by its path relative to web/."""

    path: str


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str


Route = Redirect | Page | File | Refused

NOT_FOUND: Final = Refused(404, "not found")


def _segments(path: str) -> list[str] | Refused:
    """The decoded segments of an absolute URL path, or why the path is refused.

    Each segment is decoded on its own, so ``%2F`` cannot smuggle in a separator, and a
    decoded ``..``, ``.``, backslash or NUL is refused whatever its encoding.
    """
    if not path.startswith("/"):
        return Refused(400, "the request target must be an absolute path")
    raw = path[1:].split("/")
    segments: list[str] = []
    for index, piece in enumerate(raw):
        try:
            segment = unquote(piece, errors="strict")
        except UnicodeDecodeError:
            return Refused(400, "the path is not valid percent-encoded UTF-8")
        if segment in (".", "..") or any(c in segment for c in "/\\\x00"):
            return Refused(400, "the path has a '.', '..', '/', backslash or NUL segment")
        if segment == "" and index != len(raw) - 1:
            return Refused(400, "the path has an empty segment ('//')")
        if segment.startswith("."):
            return NOT_FOUND  # hidden files are never published
        segments.append(segment)
    return segments


def _canonical(name: str) -> str | None:
    try:
        return canonicalize_name(name, validate=True)
    except InvalidName:
        return None


def route(path: str, query: str = "") -> Route:
    """Where the URL path ``path`` (still percent-encoded) points in the published tree.

    - ``/`` and ``/simple`` redirect to ``/simple/``; ``/simple/<name>`` and any spelling
      of a name that is not its normalized form redirect to ``/simple/<normalized>/``
      (301, the query string kept);
    - ``/simple/`` and ``/simple/<normalized>/`` are negotiated pages;
    - ``/simple/[<normalized>/]index.html`` or ``index.v1_json`` are those files;
    - any other path without a trailing slash is a file under web/ (which may not exist);
      any other directory is 404: there are no listings.
    """
    segments = _segments(path)
    if isinstance(segments, Refused):
        return segments
    suffix = f"?{query}" if query else ""
    simple = layout.SIMPLE
    if segments == [""]:
        return Redirect(f"/{simple}/{suffix}")
    if segments[0] != simple:
        return NOT_FOUND if segments[-1] == "" else File("/".join(segments))
    rest = segments[1:]
    if not rest:
        return Redirect(f"/{simple}/{suffix}")
    if rest == [""]:
        return Page(simple)
    if len(rest) == 1 and rest[0] in (layout.HTML_INDEX, layout.JSON_INDEX):
        return File(f"{simple}/{rest[0]}")
    if len(rest) > 2:
        return NOT_FOUND
    name = _canonical(rest[0])
    if name is None:
        return NOT_FOUND
    if len(rest) == 1 or (rest[1] == "" and name != rest[0]):
        return Redirect(f"/{simple}/{name}/{suffix}")
    if rest[1] == "":
        return Page(layout.project_dir(name))
    if name == rest[0] and rest[1] in (layout.HTML_INDEX, layout.JSON_INDEX):
        return File(f"{layout.project_dir(name)}/{rest[1]}")
    return NOT_FOUND


def format_param(query: str) -> str | None:
    """The first ``format`` value of a query string, percent-decoded.

    ``+`` stays ``+``: it is part of the JSON type's name, and clients write it literally.
    """
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if sep and unquote(key) == "format":
            return unquote(value)
    return None


# -- files --------------------------------------------------------------------------------

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".v1_json": JSON_V1,
    ".json": "application/json",
    ".metadata": "text/plain; charset=utf-8",
    ".asc": "application/pgp-signature",
    ".provenance": "application/json",
    ".whl": "application/octet-stream",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".zip": "application/zip",
}
OCTET_STREAM: Final = "application/octet-stream"


def content_type(path: str) -> str:
    """The Content-Type of a file in the tree, by its last suffix.

    A ``.tar.gz`` is ``application/gzip`` with no Content-Encoding: clients must get the
    bytes whose hash the page states, not a decompressed stream.
    """
    if path == layout.LAST_MODIFIED:
        return "text/plain; charset=utf-8"
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return _TYPES.get(name[dot:].lower(), OCTET_STREAM) if dot > 0 else OCTET_STREAM


def cache_control(path: str) -> str:
    """Files are stored by their hash, so a path's bytes never change; pages do."""
    if path.startswith(f"{layout.PACKAGES}/"):
        return "public, max-age=31536000, immutable"
    return "max-age=60"


# -- validators and ranges ----------------------------------------------------------------

def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): a ``W/`` prefix still matches."""
    tag = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def not_modified_since(if_modified_since: str, mtime: int) -> bool:
    """True when a file last changed at ``mtime`` (whole seconds) is not newer than the date."""
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False  # an unreadable date is ignored (RFC 9110 13.1.3)
    if since.tzinfo is None:
        return False
    return mtime <= since.timestamp()


UNSATISFIABLE: Final = "unsatisfiable"
_BYTE_RANGE = re.compile(r"^\s*([0-9]*)\s*-\s*([0-9]*)\s*$")


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The one byte range ``header`` asks of a ``size``-byte file.

    Returns ``(first, last)`` (inclusive), UNSATISFIABLE (416), or None to send the whole
    file: no valid ``bytes=`` range, or several ranges (answered whole with 200 rather
    than multipart/byteranges, which no package client asks for).
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _BYTE_RANGE.match(spec)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = _position(last_text, size)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(size - suffix, 0), size - 1
    first = _position(first_text, size)
    if last_text and _position(last_text, size) < first:
        return None  # not a valid range: ignored
    if first >= size:
        return UNSATISFIABLE
    return first, min(_position(last_text, size), size - 1) if last_text else size - 1


def _position(digits: str, size: int) -> int:
    """A range's decimal number, or ``size`` when it is larger: past the end, all numbers
    mean the same (RFC 9110 14.1.2), and int() refuses to read more than 4300 digits."""
    digits = digits.lstrip("0")
    if len(digits) > len(str(size)):
        return size
    return min(int(digits or "0"), size)
