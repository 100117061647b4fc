"""What a bundle says, and every check of it that needs no disk (pure).

A bundle directory holds ``BUNDLE.json`` (``BundleInfo``), its minisign signature,
``manifest.jsonl`` (one record a line, in this order: projects whose pages went away,
files that left their pages, then each project's files followed by the project itself,
and the root last) and the volumes, which are the bodies the manifest points into laid
end to end. A body travels whole in one volume unless it is larger than a volume; then it
is split in parts, one volume each, every part with its own sha256.

Every record is checked here as upstream data is where it is parsed: names normalized,
file names safe, a file's path the one its sha256 and name give, a body's parts inside
the volumes BUNDLE.json lists. Nothing a manifest says is ever used as a path as it
stands: paths are derived, then compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import InvalidName

from simplemirror.simple.model import (
    MAX_SERIAL,
    HeldFile,
    Status,
    UpstreamDataError,
    check_filename,
    normalize_name,
    parse_hashes,
)
from simplemirror.store import layout

FORMAT = 1
"""The bundle format this simplemirror writes and reads; raised when a reader could
misread a newer bundle."""
BUNDLE_FILE = "BUNDLE.json"
SIGNATURE_FILE = "BUNDLE.json.minisig"
MANIFEST_FILE = "manifest.jsonl"
DEFAULT_VOLUME_SIZE = 4 * 1024**3 - 1
"""The largest file FAT32 holds: the volumes fit any medium an operator may carry."""
MIN_VOLUME_SIZE = 4096
SIBLINGS = (layout.METADATA_SUFFIX, layout.SIGNATURE_SUFFIX, layout.PROVENANCE_SUFFIX)
_VOLUME_NAME = re.compile(r"volume-[0-9]{4,9}\.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{32}")
_BIG = 2**63


class ManifestError(Exception):
    """A bundle's BUNDLE.json, manifest or receipt says something unusable; the message
    says what and where."""


class FormatError(ManifestError):
    """A bundle of a format this simplemirror does not read."""


def volume_name(number: int) -> str:
    return f"volume-{number:04d}.bin"


def parse_size(text: str) -> int:
    """A volume size: bytes, or a number with k, M, G or T (powers of 1024; KiB, MiB...
    too) or kB, MB, GB, TB (powers of 1000)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*(|[kKmMgGtT](?:i?B)?)\s*", text)
    if match is None:
        raise ValueError(f"expected a size such as 4G, 700M or 650MB, not {text!r}")
    number, unit = int(match[1]), match[2]
    power = "kmgt".index(unit[0].lower()) + 1 if unit else 0
    base = 1000 if unit.endswith("B") and not unit.endswith("iB") else 1024
    size: int = number * base**power
    if not MIN_VOLUME_SIZE <= size < _BIG:
        raise ValueError(f"a volume must hold at least {MIN_VOLUME_SIZE} bytes, not {text!r}")
    return size


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    volume: int
    """1 for volume-0001.bin."""
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Body:
    """Bytes that travel: a distribution file (suffix "") or a file beside it."""

    suffix: str
    size: int
    sha256: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class FileRecord:
    """A file live on its project's pages (a new row, or a changed one: a yank), with the
    bodies the far side lacks."""

    file: HeldFile
    bodies: tuple[Body, ...] = ()

    def body_path(self, body: Body) -> str:
        return self.file.path + body.suffix


@dataclass(frozen=True)
class Page:
    """(size, sha256) of a page."""

    size: int
    sha256: str


@dataclass(frozen=True)
class PageSnapshot:
    """A project's pages, to be written again: its files in page order, and what the two
    pages rendered from them must be."""

    files: tuple[str, ...]
    html: Page
    json: Page


@dataclass(frozen=True)
class ProjectRecord:
    """A published project's row (what the root shows, and its pages are rendered from)."""

    name: str
    display_name: str
    serial: int | None
    page_serial: int | None
    status: Status
    error: str | None
    page_data: Mapping[str, Any]
    page: PageSnapshot | None = None


@dataclass(frozen=True)
class GoneRecord:
    """A file that left its project's pages (a tombstone)."""

    project: str
    filename: str
    path: str


@dataclass(frozen=True)
class RemovedRecord:
    """A project whose pages went away (upstream removed it)."""

    name: str


@dataclass(frozen=True)
class RootRecord:
    serial: int | None
    html: Page
    json: Page


Record = FileRecord | ProjectRecord | GoneRecord | RemovedRecord | RootRecord

_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def _page(page: Page) -> list[Any]:
    return [page.size, page.sha256]


def _body(body: Body) -> dict[str, Any]:
    out: dict[str, Any] = {"suffix": body.suffix, "size": body.size, "sha256": body.sha256}
    if len(body.parts) == 1:
        out["volume"], out["offset"] = body.parts[0].volume, body.parts[0].offset
    else:
        out["parts"] = [[p.volume, p.offset, p.size, p.sha256] for p in body.parts]
    return out


def encode(record: Record) -> str:
    """One manifest line (without its newline)."""
    doc: dict[str, Any]
    if isinstance(record, FileRecord):
        f = record.file
        doc = {
            "kind": "file", "project": f.project, "filename": f.filename, "path": f.path,
            "size": f.size, "hashes": dict(f.hashes), "url": f.url,
            "requires_python": f.requires_python, "yanked": f.yanked,
            "yanked_reason": f.yanked_reason, "upload_time": f.upload_time,
            "metadata_hashes": (
                dict(f.metadata_hashes) if f.metadata_hashes is not None else None
            ),
            "signature": f.signature, "provenance": f.provenance, "extra": dict(f.extra),
            "bodies": [_body(b) for b in record.bodies],
        }
    elif isinstance(record, ProjectRecord):
        doc = {
            "kind": "project", "name": record.name, "display_name": record.display_name,
            "serial": record.serial, "page_serial": record.page_serial,
            "status": record.status.value, "error": record.error,
            "page_data": dict(record.page_data),
            "page": None if record.page is None else {
                "files": list(record.page.files), "html": _page(record.page.html),
                "json": _page(record.page.json),
            },
        }
    elif isinstance(record, GoneRecord):
        doc = {"kind": "gone", "project": record.project, "filename": record.filename,
               "path": record.path}
    elif isinstance(record, RemovedRecord):
        doc = {"kind": "removed", "name": record.name}
    else:
        doc = {"kind": "root", "serial": record.serial, "html": _page(record.html),
               "json": _page(record.json)}
    return _encode(doc)


# -- reading, with every check --------------------------------------------------------------


class _Doc:
    """One JSON object of a manifest, read key by key; every key must be read once."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        self.data: dict[str, Any] = data
        self.where = where
        self.seen: set[str] = set()

    def fail(self, what: str) -> ManifestError:
        return ManifestError(f"{self.where}: {what}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise self.fail(f"'{key}' is missing")
        self.seen.add(key)
        return self.data[key]

    def text(self, key: str, *, optional: bool = False) -> str | None:
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"'{key}' is not a string")
        return value

    def string(self, key: str) -> str:
        value = self.text(key)
        assert value is not None
        return value

    def number(self, key: str, *, optional: bool = False, low: int = 0) -> int | None:
        value = self.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _BIG:
            raise self.fail(f"'{key}' is not a whole number from {low} to 2**63 - 1")
        return value

    def count(self, key: str, low: int = 0) -> int:
        value = self.number(key, low=low)
        assert value is not None
        return value

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(f"'{key}' is not true or false")
        return value

    def mapping(self, key: str, *, optional: bool = False) -> dict[str, Any] | None:
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self.fail(f"'{key}' is not an object")
        return value

    def done(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            # A key this version does not know could change what the record means (a
            # link, say): refused, not ignored.
            raise self.fail(f"a key this simplemirror does not know: {extra[0]!r}")


def _sha256(doc: _Doc, value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise doc.fail(f"{what} is not a sha256 digest (64 lowercase hex digits)")
    return value


def _project_name(doc: _Doc, key: str) -> str:
    name = doc.string(key)
    try:
        normal = normalize_name(name)
    except InvalidName:
        raise doc.fail(f"{key} {name!r} is not a valid project name") from None
    if normal != name:
        raise doc.fail(f"{key} {name!r} is not in its normalized form ({normal!r})")
    return name


def _filename(doc: _Doc, value: object) -> str:
    try:
        return check_filename(value)
    except UpstreamDataError as exc:
        raise doc.fail(f"file name {value!r}: {exc}") from None


def _hashes(doc: _Doc, value: object, what: str, *, sha256: bool = True) -> dict[str, str]:
    try:
        hashes = parse_hashes(value, what=what)
    except UpstreamDataError as exc:
        raise doc.fail(str(exc)) from None
    if not isinstance(value, dict) or len(hashes) != len(value):
        raise doc.fail(f"'{what}' holds an algorithm this simplemirror cannot check")
    if sha256 and "sha256" not in hashes:
        raise doc.fail(f"'{what}' has no sha256")
    return hashes


def _page_of(doc: _Doc, value: object, what: str) -> Page:
    if (not isinstance(value, list) or len(value) != 2 or isinstance(value[0], bool)
            or not isinstance(value[0], int) or not 0 <= value[0] < _BIG):
        raise doc.fail(f"'{what}' is not [size, sha256]")
    return Page(value[0], _sha256(doc, value[1], f"'{what}' sha256"))


def _serial(doc: _Doc, key: str) -> int | None:
    value = doc.number(key, optional=True)
    if value is not None and value > MAX_SERIAL:
        raise doc.fail(f"'{key}' is too large")
    return value


class Reader:
    """Reads a manifest's lines, checking each against the volumes of its BUNDLE.json."""

    def __init__(self, volumes: Sequence[int]) -> None:
        self.volumes = volumes
        """The size of each volume, in order."""

    def decode(self, line: bytes | str, number: int) -> Record:
        where = f"manifest line {number}"
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            raise ManifestError(f"{where}: not JSON") from None
        doc = _Doc(data, where)
        kind = doc.get("kind")
        record: Record
        if kind == "file":
            record = self._file(doc)
        elif kind == "project":
            record = self._project(doc)
        elif kind == "gone":
            project = _project_name(doc, "project")
            filename = _filename(doc, doc.get("filename"))
            path = doc.string("path")
            if not _is_file_path(path, filename):
                raise doc.fail(f"path {path!r} is not where a file named {filename!r} lives")
            record = GoneRecord(project, filename, path)
        elif kind == "removed":
            record = RemovedRecord(_project_name(doc, "name"))
        elif kind == "root":
            record = RootRecord(_serial(doc, "serial"), _page_of(doc, doc.get("html"), "html"),
                                _page_of(doc, doc.get("json"), "json"))
        else:
            raise doc.fail(f"a kind of record this simplemirror does not know: {kind!r}")
        doc.done()
        return record

    def _file(self, doc: _Doc) -> FileRecord:
        project = _project_name(doc, "project")
        filename = _filename(doc, doc.get("filename"))
        hashes = _hashes(doc, doc.get("hashes"), "hashes")
        path = doc.string("path")
        expected = layout.file_path(hashes["sha256"], filename)
        if path != expected:
            # Derived, then compared: no "..", no absolute path, nothing outside packages/.
            raise doc.fail(f"path {path!r} is not {expected!r}, where its sha256 and name put it")
        metadata = doc.mapping("metadata_hashes", optional=True)
        extra = doc.mapping("extra")
        assert extra is not None
        held = HeldFile(
            project=project, filename=filename, path=path, size=doc.count("size"),
            hashes=hashes, url=doc.string("url"),
            requires_python=doc.text("requires_python", optional=True),
            yanked=doc.flag("yanked"), yanked_reason=doc.text("yanked_reason", optional=True),
            upload_time=doc.text("upload_time", optional=True),
            metadata_hashes=(
                None if metadata is None
                else _hashes(doc, metadata, "metadata_hashes", sha256=False)
            ),
            signature=doc.flag("signature"), provenance=doc.flag("provenance"), extra=extra,
        )
        bodies = doc.get("bodies")
        if not isinstance(bodies, list):
            raise doc.fail("'bodies' is not a list")
        allowed = {"": True, layout.METADATA_SUFFIX: held.metadata_hashes is not None,
                   layout.SIGNATURE_SUFFIX: held.signature,
                   layout.PROVENANCE_SUFFIX: held.provenance}
        seen: set[str] = set()
        out = []
        for item in bodies:
            body = self._body(_Doc(item, f"{doc.where}, a body"))
            if not allowed.get(body.suffix) or body.suffix in seen:
                raise doc.fail(f"a body with suffix {body.suffix!r} does not belong to it")
            seen.add(body.suffix)
            if body.suffix == "" and (body.size != held.size
                                      or body.sha256 != hashes["sha256"]):
                raise doc.fail("its body's size or sha256 is not the file's")
            if (body.suffix == layout.METADATA_SUFFIX and held.metadata_hashes is not None
                    and body.sha256 != held.metadata_hashes.get("sha256", body.sha256)):
                raise doc.fail("its .metadata body's sha256 is not the one its row gives")
            out.append(body)
        return FileRecord(held, tuple(out))

    def _body(self, doc: _Doc) -> Body:
        suffix = doc.string("suffix")
        if suffix not in ("", *SIBLINGS):
            raise doc.fail(f"suffix {suffix!r} is none a file beside a distribution has")
        size = doc.count("size")
        sha256 = _sha256(doc, doc.get("sha256"), "'sha256'")
        if "parts" in doc.data:
            raw = doc.get("parts")
            if not isinstance(raw, list) or len(raw) < 2:
                raise doc.fail("'parts' is not a list of two or more parts")
            parts = []
            for item in raw:
                if (not isinstance(item, list) or len(item) != 4
                        or not all(isinstance(v, int) and not isinstance(v, bool)
                                   for v in item[:3])):
                    raise doc.fail("a part is not [volume, offset, size, sha256]")
                parts.append(Part(item[0], item[1], item[2], _sha256(doc, item[3], "a part")))
        else:
            volume = doc.count("volume", low=1)
            parts = [Part(volume, doc.count("offset"), size, sha256)]
        for part in parts:
            if not 1 <= part.volume <= len(self.volumes):
                raise doc.fail(f"volume {part.volume} is not one BUNDLE.json lists")
            if part.offset < 0 or part.size < 0 or (
                part.offset + part.size > self.volumes[part.volume - 1]
            ):
                raise doc.fail(f"a part lies outside volume {part.volume}")
        if sum(p.size for p in parts) != size:
            raise doc.fail("its parts do not add up to its size")
        return Body(suffix, size, sha256, tuple(parts))

    def _project(self, doc: _Doc) -> ProjectRecord:
        name = _project_name(doc, "name")
        display = doc.string("display_name")
        if not display or _CONTROL.search(display):
            raise doc.fail("'display_name' is empty or holds control characters")
        try:
            status = Status(doc.get("status"))
        except ValueError:
            raise doc.fail("'status' is not a project status") from None
        data = doc.mapping("page_data")
        assert data is not None
        _check_page_data(doc, data)
        page = None
        raw = doc.mapping("page", optional=True)
        if raw is not None:
            pdoc = _Doc(raw, f"{doc.where}, its page")
            files = pdoc.get("files")
            if not isinstance(files, list):
                raise pdoc.fail("'files' is not a list")
            names = tuple(_filename(pdoc, f) for f in files)
            if len(set(names)) != len(names):
                raise pdoc.fail("a file is listed twice")
            page = PageSnapshot(names, _page_of(pdoc, pdoc.get("html"), "html"),
                                _page_of(pdoc, pdoc.get("json"), "json"))
            pdoc.done()
        return ProjectRecord(
            name, display, _serial(doc, "serial"), _serial(doc, "page_serial"), status,
            doc.text("error", optional=True), data, page,
        )


def trusted(line: bytes | str) -> Record:
    """A record from a line ``Reader.decode`` has checked already (the import's verified
    copy of the manifest, read again): built without the checks, which cost most of a
    pass."""
    doc = json.loads(line)
    kind = doc["kind"]
    if kind == "file":
        metadata = doc["metadata_hashes"]
        held = HeldFile(
            project=doc["project"], filename=doc["filename"], path=doc["path"],
            size=doc["size"], hashes=doc["hashes"], url=doc["url"],
            requires_python=doc["requires_python"], yanked=doc["yanked"],
            yanked_reason=doc["yanked_reason"], upload_time=doc["upload_time"],
            metadata_hashes=metadata, signature=doc["signature"],
            provenance=doc["provenance"], extra=doc["extra"],
        )
        bodies = []
        for b in doc["bodies"]:
            parts = (
                (Part(b["volume"], b["offset"], b["size"], b["sha256"]),) if "parts" not in b
                else tuple(Part(*p) for p in b["parts"])
            )
            bodies.append(Body(b["suffix"], b["size"], b["sha256"], parts))
        return FileRecord(held, tuple(bodies))
    if kind == "project":
        raw = doc["page"]
        page = None if raw is None else PageSnapshot(
            tuple(raw["files"]), Page(*raw["html"]), Page(*raw["json"])
        )
        return ProjectRecord(doc["name"], doc["display_name"], doc["serial"],
                             doc["page_serial"], Status(doc["status"]), doc["error"],
                             doc["page_data"], page)
    if kind == "gone":
        return GoneRecord(doc["project"], doc["filename"], doc["path"])
    if kind == "removed":
        return RemovedRecord(doc["name"])
    return RootRecord(doc["serial"], Page(*doc["html"]), Page(*doc["json"]))


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_page_data(doc: _Doc, data: dict[str, Any]) -> None:
    versions = data.get("versions")
    if versions is not None and not (
        isinstance(versions, list) and all(isinstance(v, str) for v in versions)
    ):
        raise doc.fail("'page_data' versions is not a list of strings")
    if not isinstance(data.get("extra", {}), dict):
        raise doc.fail("'page_data' extra is not an object")
    for key in ("status", "status_reason"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise doc.fail(f"'page_data' {key} is not a string")


def _is_file_path(path: str, filename: str) -> bool:
    parts = path.split("/")
    return (len(parts) == 5 and parts[0] == layout.PACKAGES and parts[4] == filename
            and _SHA256.fullmatch("".join(parts[1:4])) is not None
            and (len(parts[1]), len(parts[2])) == (2, 2))


# -- laying bodies out in volumes ------------------------------------------------------------


class Packer:
    """Where each body goes: whole, in the current volume or the next; one larger than a
    volume in parts, a volume each (the last part may share its volume with what
    follows)."""

    def __init__(self, volume_size: int) -> None:
        self.volume_size = volume_size
        self.sizes: list[int] = []
        """Bytes laid out in each volume so far."""

    def place(self, size: int) -> list[tuple[int, int, int]]:
        """(volume, offset, size) of each part of a body of ``size`` bytes."""
        if size <= self.volume_size:
            if not self.sizes or self.sizes[-1] + size > self.volume_size:
                self.sizes.append(0)
            offset = self.sizes[-1]
            self.sizes[-1] += size
            return [(len(self.sizes), offset, size)]
        parts = []
        left = size
        while left:
            step = min(left, self.volume_size)
            self.sizes.append(step)
            parts.append((len(self.sizes), 0, step))
            left -= step
        return parts


# -- BUNDLE.json ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleInfo:
    """BUNDLE.json: what a bundle is, what it applies to, and the hashes of its parts."""

    bundle: str
    """A random id (32 hex digits)."""
    chain: str
    """The near-side mirror's chain of bundles: one far side follows one chain."""
    sequence: int
    full: bool
    base: str | None
    """The state digest of the far side it applies to; None: it seeds an empty one."""
    target: str
    """The state digest the far side has once it is applied."""
    generations: tuple[int, int, int]
    """The near side's generations it covers (from, through) and where the next begins."""
    created: str
    upstream: str | None
    public_url: str | None
    counts: Mapping[str, int]
    manifest_size: int
    manifest_sha256: str
    volumes: tuple[Volume, ...] = ()
    key_id: str = ""
    format: int = FORMAT
    filters: Mapping[str, Any] = field(default_factory=dict)
    """The [filters] keys in force on the near side (empty: a full mirror), for the far
    side's `mirror status` to show."""

    def to_bytes(self) -> bytes:
        doc = {
            "format": self.format, "bundle": self.bundle, "chain": self.chain,
            "sequence": self.sequence, "full": self.full, "base": self.base,
            "target": self.target,
            "generations": dict(zip(("from", "through", "next"), self.generations,
                                    strict=True)),
            "created": self.created, "upstream": self.upstream, "public_url": self.public_url,
            "counts": dict(self.counts),
            "manifest": {"name": MANIFEST_FILE, "size": self.manifest_size,
                         "sha256": self.manifest_sha256},
            "volumes": [{"name": v.name, "size": v.size, "sha256": v.sha256}
                        for v in self.volumes],
            "key_id": self.key_id,
            # Only when there are some: a simplemirror from before the filters travelled
            # still reads a full mirror's bundles.
            **({"filters": dict(self.filters)} if self.filters else {}),
        }
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleInfo:
        where = BUNDLE_FILE
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            raise ManifestError(f"{where} is not JSON") from None
        doc = _Doc(raw, where)
        version = doc.get("format")
        if version != FORMAT:
            raise FormatError(
                f"the bundle is in format {version!r}; this simplemirror reads format "
                f"{FORMAT}: import it with the version that exported it, or a newer one"
            )
        bundle, chain = doc.string("bundle"), doc.string("chain")
        if not _ID.fullmatch(bundle) or not _ID.fullmatch(chain):
            raise doc.fail("'bundle' or 'chain' is not an id of 32 hex digits")
        full = doc.flag("full")
        base = doc.text("base", optional=True)
        target = doc.string("target")
        if (base is None) != full or not all(
            _DIGEST.fullmatch(d) for d in (target, *([base] if base else []))
        ):
            raise doc.fail("'base' and 'target' are not state digests (a full bundle has "
                           "no base, a delta one)")
        gens = _Doc(doc.get("generations"), f"{where} generations")
        generations = (gens.count("from"), gens.count("through"), gens.count("next"))
        gens.done()
        counts_doc = doc.mapping("counts")
        assert counts_doc is not None
        counts = {}
        for key, value in counts_doc.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise doc.fail(f"counts[{key!r}] is not a count")
            counts[str(key)] = value
        mdoc = _Doc(doc.get("manifest"), f"{where} manifest")
        if mdoc.get("name") != MANIFEST_FILE:
            raise mdoc.fail(f"the manifest is not {MANIFEST_FILE}")
        manifest_size = mdoc.count("size")
        manifest_sha256 = _sha256(mdoc, mdoc.get("sha256"), "its sha256")
        mdoc.done()
        volumes = []
        raw_volumes = doc.get("volumes")
        if not isinstance(raw_volumes, list):
            raise doc.fail("'volumes' is not a list")
        for number, item in enumerate(raw_volumes, 1):
            vdoc = _Doc(item, f"{where} volume {number}")
            name = vdoc.string("name")
            if name != volume_name(number) or not _VOLUME_NAME.fullmatch(name):
                raise vdoc.fail(f"its name is not {volume_name(number)!r}")
            volumes.append(Volume(name, vdoc.count("size"),
                                  _sha256(vdoc, vdoc.get("sha256"), "its sha256")))
            vdoc.done()
        info = cls(
            bundle=bundle, chain=chain, sequence=doc.count("sequence", low=1), full=full,
            base=base, target=target, generations=generations, created=doc.string("created"),
            upstream=doc.text("upstream", optional=True),
            public_url=doc.text("public_url", optional=True), counts=counts,
            manifest_size=manifest_size, manifest_sha256=manifest_sha256,
            volumes=tuple(volumes), key_id=doc.string("key_id"),
            # Bundles exported before the filters travelled say nothing of them.
            filters=(doc.mapping("filters", optional=True) or {}) if "filters" in raw else {},
        )
        doc.done()
        return info


def empty_info(**values: Any) -> BundleInfo:
    """A BundleInfo without its manifest's and volumes' hashes yet (the export fills them)."""
    return BundleInfo(manifest_size=0, manifest_sha256="0" * 64, **values)


# -- receipts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What the far side writes after each import, for the operator to carry back: where
    its chain stands, and what it found missing or refused in the bundle it was given."""

    chain: str
    sequence: int
    digest: str
    bundle: str
    """The bundle applied last."""
    written: str
    attempted: str | None = None
    """The bundle this import was given."""
    outcome: str = "applied"
    """applied, replayed (it was already), refused or incomplete."""
    reason: str | None = None
    missing_volumes: tuple[str, ...] = ()
    missing_files: tuple[str, ...] = ()
    refused: tuple[str, ...] = field(default_factory=tuple)

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT, "chain": self.chain, "sequence": self.sequence,
            "digest": self.digest, "bundle": self.bundle, "written": self.written,
            "attempted": self.attempted, "outcome": self.outcome, "reason": self.reason,
            "missing_volumes": list(self.missing_volumes),
            "missing_files": list(self.missing_files), "refused": list(self.refused),
        }
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "the receipt") -> Receipt:
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise ManifestError(f"{where} is not JSON") from None
        doc = _Doc(raw, where)
        if doc.get("format") != FORMAT:
            raise FormatError(f"{where} is in a format this simplemirror does not read")
        chain, digest, bundle = doc.string("chain"), doc.string("digest"), doc.string("bundle")
        if not _ID.fullmatch(chain) or not _DIGEST.fullmatch(digest):
            raise doc.fail("'chain' or 'digest' is not what a receipt holds")

        def texts(key: str) -> tuple[str, ...]:
            value = doc.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise doc.fail(f"'{key}' is not a list of strings")
            return tuple(value)

        receipt = cls(
            chain=chain, sequence=doc.count("sequence", low=1), digest=digest, bundle=bundle,
            written=doc.string("written"), attempted=doc.text("attempted", optional=True),
            outcome=doc.string("outcome"), reason=doc.text("reason", optional=True),
            missing_volumes=texts("missing_volumes"), missing_files=texts("missing_files"),
            refused=texts("refused"),
        )
        doc.done()
        return receipt


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a stream of chunks into lines (without their newlines); a last line without
    one is given too."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *done, rest = rest.split(b"\n")
        yield from done
    if rest:
        yield rest
