"""`mirror export`: the near side writes one bundle (manifest.py says what it holds).

Three steps, in a directory named ``<name>.partial`` until the last one:

1. plan: from one read snapshot of state.db (a sync may run meanwhile), write
   manifest.jsonl (every record, every body given its place in the volumes) and work out
   the target state digest; EXPORT.json keeps the plan.
2. volumes: copy each body from web/ into its place, hashing it again on the way: bytes
   that are not what state.db recorded are never exported.
3. seal: BUNDLE.json, then its signature, then the directory loses its ``.partial``;
   state.db records the export (the next one starts where it ends).

An export stopped anywhere leaves only a ``.partial`` directory, which import refuses and
the next export continues (from the volumes, once the plan is written).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from simplemirror.bundle import digest
from simplemirror.bundle.keys import SecretKey
from simplemirror.bundle.manifest import (
    BUNDLE_FILE,
    DEFAULT_VOLUME_SIZE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Body,
    BundleInfo,
    FileRecord,
    GoneRecord,
    ManifestError,
    Packer,
    Page,
    PageSnapshot,
    Part,
    ProjectRecord,
    Receipt,
    Record,
    RemovedRecord,
    RootRecord,
    Volume,
    empty_info,
    encode,
    lines,
    volume_name,
)
from simplemirror.simple import render
from simplemirror.simple.model import HeldFile, Status
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Local, Settings, Storage, open_storage
from simplemirror.store.state import State, StateReader, now, snapshot
from simplemirror.sync.publish import project_info

log = logging.getLogger("simplemirror")

PLAN_FILE = "EXPORT.json"
_CHUNK = 1 << 20
# A page modified this close before the snapshot may have been written after it on a
# filesystem with coarse timestamps: it is hashed again.
_MTIME_MARGIN_NS = 2_000_000_000
# How often an export whose bundle is complete asks again for the lock a sync holds.
_LOCK_POLL = 5.0


class ExportError(Exception):
    """The export cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class ExportRequest:
    directory: Path
    """The mirror (near side): state.db and web/."""
    to: Path
    key: SecretKey
    full: bool = False
    receipt: Receipt | None = None
    """Export what the far side that wrote this receipt lacks."""
    volume_size: int = DEFAULT_VOLUME_SIZE
    public_url: str | None = None
    """The mirror's public-url: pages that advertise provenance name it."""
    storage: Settings | None = None
    """The bucket the mirror publishes to (None: web/): the bodies are read from there."""


@dataclass(frozen=True)
class Exported:
    path: Path
    info: BundleInfo
    continued: bool
    """The plan of an interrupted export was taken up again."""


def export(request: ExportRequest) -> Exported:
    """Write one bundle; its path. state.db is only read until the bundle is complete:
    another writer beside a running sync makes the sync's next write fail (SQLite's
    deferred transactions), so the ledger is written under the mirror's lock (_record)."""
    state_path = request.directory / "state.db"
    if not state_path.is_file():
        raise ExportError(f"no state.db in {request.directory}: nothing has been synced there")
    web = open_storage(request.directory / "web", request.storage)
    try:
        web.check()
        request.to.mkdir(parents=True, exist_ok=True)
        reader = snapshot(state_path)
        try:
            started_ns = time.time_ns()
            # A first export stopped midway keeps the chain its plan began.
            chain = (reader.bundle_chain() or _partial_chain(request.to, request.directory)
                     or secrets.token_hex(16))
            info = _decide(request, reader, chain)
            partial, plan = _continue(request, info)
            continued = plan is not None
            if plan is None:
                partial = _fresh(request.to, info)
                log.info("planning bundle %d (%s) in %s", info.sequence,
                         "full" if info.full else "delta", partial)
                plan = _plan(request, reader, web, partial, info, started_ns)
        finally:
            reader.close()
        info, sizes = plan
        log.info("writing %d volume(s) of %s", len(sizes), partial)
        volumes = _write_volumes(partial, web, sizes)
        info = replace(info, volumes=volumes)
        final = _seal(partial, info, request.key)
        _record(request.directory, info, final)
    except OSError as exc:
        raise ExportError(
            f"cannot export: {exc}; once that is fixed, run the export again (it continues)"
        ) from exc
    except digest.DigestError as exc:
        raise ExportError(str(exc)) from exc
    return Exported(final, info, continued)


def _record(directory: Path, info: BundleInfo, path: Path) -> None:
    """The bundle into the ledger in state.db, under the mirror's lock: once a running
    sync (or verify) is done, if one is."""
    from simplemirror.sync.run import SyncError, locked  # the sync's lock, and its machinery

    waited = False
    while True:
        try:
            with locked(directory, "mirror export"):
                state = State(directory / "state.db")
                try:
                    state.record_export(
                        bundle=info.bundle, chain=info.chain, sequence=info.sequence,
                        full=info.full, since_gen=info.generations[0],
                        through_gen=info.generations[1], next_gen=info.generations[2],
                        base=info.base, target=info.target, path=str(path),
                    )
                finally:
                    state.close()
                return
        except SyncError as exc:
            if "cannot run while" not in str(exc):  # not busy: no lock file to be had
                raise ExportError(f"{exc}; the bundle {path} is complete, but not recorded: "
                                  "fix that, then run the export again") from None
            if not waited:
                log.info("bundle %d is complete in %s; recording it in state.db once the "
                         "mirror is free (%s)", info.sequence, path, exc)
                waited = True
            time.sleep(_LOCK_POLL)


def _partial_chain(to: Path, directory: Path) -> str | None:
    """The chain of this mirror's first export, stopped midway in ``to``, if there is one."""
    for partial in _partials(to, 1):
        plan = _read_plan(partial)
        if plan is not None and plan[3] == str(directory):
            return plan[0].chain
    return None


def _decide(request: ExportRequest, reader: StateReader, chain: str) -> BundleInfo:
    """Which bundle this is: its chain, sequence, base and the generations it covers."""
    newest = reader.newest_run()
    if newest is None:
        raise ExportError(f"nothing to export: no sync has run in {request.directory}")
    through, outcome = newest
    # The changes a run still going commits after this snapshot carry its generation:
    # the next bundle starts from it again.
    next_gen = through if outcome == "running" else through + 1
    last = reader.last_export()
    if request.receipt is not None:
        receipt = request.receipt
        if receipt.chain != chain:
            raise ExportError(
                f"the receipt is from a far side of chain {receipt.chain[:8]}, and this mirror "
                f"exports chain {chain[:8]}: it came from another mirror's bundles"
            )
        reached = reader.export_reaching(receipt.sequence, receipt.digest)
        if reached is None:
            raise ExportError(
                f"the receipt's state (bundle {receipt.sequence}, {receipt.digest[:19]}...) "
                "is not one a bundle of this mirror led to: seed a new far-side directory "
                "with `mirror export --full`"
            )
        sequence, base, since, full = receipt.sequence + 1, receipt.digest, reached[1], False
    elif request.full:
        sequence = last[1] + 1 if last else 1
        base, since, full = None, 0, True
    elif last is None:
        raise ExportError(
            "this mirror has exported no bundle yet: the first one is `mirror export --full`"
        )
    else:
        sequence, base, since, full = last[1] + 1, last[3], last[2], False
    upstream = reader.last_upstream()
    if upstream is not None:
        from simplemirror.report.runreport import redact  # runreport imports the sync

        upstream = redact(upstream)
    return empty_info(
        bundle=secrets.token_hex(16), chain=chain, sequence=sequence, full=full, base=base,
        target=digest.EMPTY, generations=(since, through, next_gen), created=now(),
        upstream=upstream, public_url=request.public_url, counts={},
        key_id=request.key.public_key().id_text, filters=reader.filters_in_force(),
    )


# -- the partial directory ------------------------------------------------------------------


def _partials(to: Path, sequence: int) -> list[Path]:
    return sorted(to.glob(f"bundle-{sequence:06d}-*.partial"))


def _continue(
    request: ExportRequest, info: BundleInfo
) -> tuple[Path, tuple[BundleInfo, list[int]] | None]:
    """An interrupted export of this same bundle, to take up again; others of this chain
    and sequence are stale, and go."""
    for partial in _partials(request.to, info.sequence):
        plan = _read_plan(partial)
        if plan is None:
            continue  # not ours, or its plan was never finished
        planned, sizes, volume_size, mirror = plan
        if planned.chain != info.chain or mirror != str(request.directory):
            continue
        same = (planned.full, planned.base, planned.generations[0], volume_size,
                planned.public_url) == (info.full, info.base, info.generations[0],
                                        request.volume_size, info.public_url)
        if same and (partial / MANIFEST_FILE).is_file():
            log.info("continuing the export in %s", partial)
            return partial, (planned, sizes)
        log.info("removing %s: an export of other options, or of a bundle since made", partial)
        shutil.rmtree(partial)
    return request.to, None


def _read_plan(partial: Path) -> tuple[BundleInfo, list[int], int, str] | None:
    """(what the bundle will say, its volumes' sizes, the volume size asked for, the mirror
    directory) of an export's plan."""
    try:
        doc = json.loads((partial / PLAN_FILE).read_bytes())
        info = BundleInfo.from_bytes(json.dumps(doc["info"]).encode())
        return (info, [int(s) for s in doc["volumes"]], int(doc["volume_size"]),
                str(doc["mirror"]))
    except (OSError, ValueError, KeyError, TypeError, ManifestError):
        return None


def _fresh(to: Path, info: BundleInfo) -> Path:
    # An export stopped before its plan was written leaves a directory nothing can take
    # up; it is left alone all the same (it may be another mirror's, planning now).
    partial = to / f"bundle-{info.sequence:06d}-{info.bundle[:8]}.partial"
    partial.mkdir()
    return partial


# -- 1. the plan --------------------------------------------------------------------------------


def _plan(
    request: ExportRequest, reader: StateReader, web: Storage, partial: Path, info: BundleInfo,
    started_ns: int,
) -> tuple[BundleInfo, list[int]]:
    packer = Packer(request.volume_size)
    counts = {"projects": 0, "pages": 0, "files": 0, "bodies": 0, "bytes": 0, "gone": 0,
              "removed": 0}
    root = _root_pages(reader)
    # Files the far side reported missing travel with their bodies this time, though
    # it had them once (a replacement bundle must not be refused the same way).
    missing = frozenset(request.receipt.missing_files) if request.receipt else frozenset()
    records = _records(reader, web, info, packer, request.public_url, root, missing)
    size, sha256 = _write_manifest(partial, records, counts)
    target = digest.published_digest(
        reader, [web], [(p.path, p.size, p.sha256) for p in root], spill=partial,
        changed_after_ns=started_ns - _MTIME_MARGIN_NS,
    )
    info = replace(info, target=target, counts=counts, manifest_size=size,
                   manifest_sha256=sha256)
    if not packer.sizes:
        packer.sizes.append(0)  # one volume, empty: every bundle has its volume list
    doc = {"info": json.loads(info.to_bytes()), "volumes": packer.sizes,
           "volume_size": request.volume_size, "mirror": str(request.directory)}
    store.write_durable(partial / PLAN_FILE, json.dumps(doc).encode())
    return info, list(packer.sizes)


@dataclass(frozen=True)
class _RootPage:
    path: str
    size: int
    sha256: str


def _root_pages(reader: StateReader) -> list[_RootPage]:
    """The root pages as the snapshot renders them (not as the disk holds them: a running
    sync may not have written its root yet)."""
    serial = reader.serial_held()
    html_path, json_path = layout.ROOT_PAGES
    return [
        _RootPage(html_path, *_measure(render.root_html_parts(reader.root_entries()))),
        _RootPage(json_path, *_measure(render.root_json_parts(reader.root_entries(), serial))),
    ]


def _measure(parts: Iterable[str]) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    for part in parts:
        data = part.encode("utf-8")
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


def _write_manifest(
    partial: Path, records: Iterator[Record], counts: dict[str, int]
) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    temporary = partial / (MANIFEST_FILE + ".part")
    with temporary.open("wb") as out:
        for record in records:
            line = (encode(record) + "\n").encode("utf-8")
            h.update(line)
            size += len(line)
            out.write(line)
            _count(record, counts)
        out.flush()
        os.fsync(out.fileno())
    temporary.rename(partial / MANIFEST_FILE)
    return size, h.hexdigest()


def _count(record: Record, counts: dict[str, int]) -> None:
    if isinstance(record, FileRecord):
        counts["files"] += 1
        counts["bodies"] += len(record.bodies)
        counts["bytes"] += sum(b.size for b in record.bodies)
    elif isinstance(record, ProjectRecord):
        counts["projects"] += 1
        counts["pages"] += 2 if record.page is not None else 0
    elif isinstance(record, GoneRecord):
        counts["gone"] += 1
    elif isinstance(record, RemovedRecord):
        counts["removed"] += 1


def _records(
    reader: StateReader, web: Storage, info: BundleInfo, packer: Packer, public_url: str | None,
    root: list[_RootPage], missing: frozenset[str] = frozenset(),
) -> Iterator[Record]:
    """The manifest, in its order: removals, then each project's files and the project,
    then the root."""
    since = 0 if info.full else info.generations[0]
    if not info.full:
        for name in reader.export_removed(since):
            yield RemovedRecord(name)
        for owner, filename, path in reader.export_gone(since):
            yield GoneRecord(owner, filename, path)
    pages = (f"{layout.SIMPLE}/", f"/{layout.HTML_INDEX}", f"/{layout.JSON_INDEX}")
    projects = reader.export_projects(since, pages)
    files = reader.export_files(since, missing)
    project = next(projects, None)
    file = next(files, None)
    while project is not None or file is not None:
        name = min(x for x in (project and project[0], file and file[0].project) if x)
        while file is not None and file[0].project == name:
            held, needed = file
            needed = needed or held.path in missing
            yield FileRecord(held, tuple(_bodies(web, held, needed, packer)))
            file = next(files, None)
        if project is not None and project[0] == name:
            yield _project_record(reader, web, project, info.full, public_url)
            project = next(projects, None)
    html, json_page = root
    yield RootRecord(reader.serial_held(), Page(html.size, html.sha256),
                     Page(json_page.size, json_page.sha256))


def _bodies(web: Storage, held: HeldFile, needed: bool, packer: Packer) -> Iterator[Body]:
    """The bytes of ``held`` the far side needs: the file when it has not got it, and the
    files beside it always (a small price; they can change while the file stays)."""
    if needed:
        yield _body(web, held.path, "", held.size, held.hashes["sha256"], packer)
    beside = (
        (layout.METADATA_SUFFIX, held.metadata_hashes is not None),
        (layout.SIGNATURE_SUFFIX, held.signature),
        (layout.PROVENANCE_SUFFIX, held.provenance),
    )
    for suffix, present in beside:
        if not present:
            continue
        rel = held.path + suffix
        status = web.stat(rel)
        if status is None:
            raise ExportError(
                f"{web.where}/{rel} is missing, though state.db holds it: run `mirror verify "
                "--repair`, then export again"
            )
        known = (held.metadata_hashes or {}).get("sha256")
        if suffix == layout.METADATA_SUFFIX and known:
            sha256 = known
        else:  # what the store vouches for, else the bytes (on disk, always the bytes)
            sha256 = status[1] or _read_sha256(web, rel)
        yield _body(web, held.path, suffix, status[0], sha256, packer)


def _body(web: Storage, path: str, suffix: str, size: int, sha256: str, packer: Packer) -> Body:
    placed = packer.place(size)
    if len(placed) == 1:
        volume, offset, length = placed[0]
        return Body(suffix, size, sha256, (Part(volume, offset, length, sha256),))
    # Split: each part gets its own digest, so that a damaged volume is named as such.
    parts = []
    with _open(web, path + suffix, size) as source:
        for volume, offset, length in placed:
            h = hashlib.sha256()
            left = length
            while left:
                chunk = source.read(min(_CHUNK, left))
                if not chunk:
                    raise ExportError(f"{web.where}/{path}{suffix} is shorter than state.db says")
                h.update(chunk)
                left -= len(chunk)
            parts.append(Part(volume, offset, length, h.hexdigest()))
    return Body(suffix, size, sha256, tuple(parts))


def _project_record(
    reader: StateReader, web: Storage,
    row: tuple[str, str, int | None, int | None, Status, str | None, dict[str, Any], bool],
    full: bool, public_url: str | None,
) -> ProjectRecord:
    name, display, serial, page_serial, status, error, data, written = row
    page = _snapshot(reader, web, name, page_serial, data, public_url) if written or full else None
    return ProjectRecord(name, display, serial, page_serial, status, error, data, page)


def _snapshot(
    reader: StateReader, web: Storage, name: str, page_serial: int | None, data: dict[str, Any],
    public_url: str | None,
) -> PageSnapshot:
    """A project's pages as the far side must render them: its files in page order (state.db
    keeps them in the order they came; a page lists them in upstream's), checked against the
    pages' recorded digests."""
    html_path, json_path = layout.project_pages(name)
    wanted = (reader.page_sha256(html_path), reader.page_sha256(json_path))
    if None in wanted:
        raise ExportError(
            f"state.db records no published page at {html_path} or {json_path}: run `mirror "
            "verify`, and `mirror sync` if it finds the project's pages wrong, then export again"
        )
    files = reader.held_files(name)
    pages = _render(name, page_serial, data, files, public_url)
    if (pages[0].sha256, pages[1].sha256) != wanted:
        order = _page_order(web, json_path, wanted[1])
        by_name = {f.filename: f for f in files}
        if not set(order) <= set(by_name):
            raise ExportError(f"the page {json_path} lists files state.db does not hold live")
        files = [by_name[f] for f in order]
        pages = _render(name, page_serial, data, files, public_url)
        if (pages[0].sha256, pages[1].sha256) != wanted:
            raise ExportError(
                f"the published pages of {name} are not what state.db renders them from: if "
                "the mirror syncs with a public-url, give its config (-c); else run `mirror "
                "verify`, then export again"
            )
    return PageSnapshot(tuple(f.filename for f in files), *pages)


def _render(
    name: str, page_serial: int | None, data: dict[str, Any], files: list[HeldFile],
    public_url: str | None,
) -> tuple[Page, Page]:
    info = project_info(name, page_serial, data, files)
    html = render.project_html(info, files, public_url).encode("utf-8")
    json_page = render.project_json(info, files, public_url).encode("utf-8")
    return (Page(len(html), hashlib.sha256(html).hexdigest()),
            Page(len(json_page), hashlib.sha256(json_page).hexdigest()))


def _page_order(web: Storage, json_path: str, sha256: str | None) -> list[str]:
    """The file names the published JSON page lists, in its order; it must be the page
    state.db recorded."""
    try:
        with web.open_file(json_path) as f:
            data = f.read()
    except OSError as exc:
        raise ExportError(f"cannot read {web.where}/{json_path}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(
            f"{web.where}/{json_path} changed after the export read state.db (a sync running?): "
            "run the export again"
        )
    try:
        return [str(f["filename"]) for f in json.loads(data)["files"]]
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{web.where}/{json_path} is not a page this mirror wrote") from None


def _read_sha256(web: Storage, rel: str) -> str:
    try:
        with web.open_file(rel) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ExportError(f"{web.where}/{rel} vanished while it was read (a sync running?): "
                          "run the export again") from None


def _open(web: Storage, rel: str, size: int) -> io.RawIOBase:
    """``rel`` for reading from its start, in order: a file of web/, or an object streamed
    from the bucket (one GET, not one per read; bounded memory), ``size`` bytes as the
    plan recorded it: no HEAD first, a read past a shorter object's end finds nothing,
    and a missing one is FileNotFoundError at its first read."""
    if isinstance(web, Local):
        raw = store.open_file(web.web, rel, buffering=0)
        assert isinstance(raw, io.FileIO)
        return raw
    return _Streamed(web, rel, size)


class _Streamed(io.RawIOBase):
    """An object of a bucket read in order, by one ranged GET from where a read starts
    (again after a seek): a body is copied from its start, whole volumes skipped."""

    def __init__(self, storage: Any, rel: str, size: int) -> None:
        super().__init__()
        self._storage, self._rel, self._size = storage, rel, size
        self._pos = 0
        self._pieces: Iterator[bytes] | None = None
        self._left = b""

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset != self._pos:
            self._pos, self._pieces, self._left = max(0, base + offset), None, b""
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._left:
            if self._pos >= self._size:
                return 0
            if self._pieces is None:
                self._pieces = self._storage.stream(self._rel, self._pos, self._size - 1)
            self._left = next(self._pieces, b"")
            if not self._left:
                return 0
        count = min(len(view), len(self._left))
        view[:count] = self._left[:count]
        self._left = self._left[count:]
        self._pos += count
        return count


# -- 2. the volumes -----------------------------------------------------------------------------


class _VolumeWriter:
    def __init__(self, partial: Path, number: int, size: int) -> None:
        self.number = number
        self.size = size
        self.final = partial / volume_name(number)
        self.temporary = partial / (volume_name(number) + ".part")
        self.out: BinaryIO = self.temporary.open("wb")
        self.hash = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.position += len(data)

    def finish(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        if self.position != self.size:
            raise ExportError(f"{self.temporary} came out at {self.position} bytes, not "
                              f"{self.size}: remove it and run the export again")
        # The digest first, then the rename: a volume under its own name is complete.
        store.write_durable(_digest_file(self.final), self.hash.hexdigest().encode())
        self.temporary.rename(self.final)


def _digest_file(volume: Path) -> Path:
    return volume.with_name(volume.name + ".sha256")


def _complete(partial: Path, number: int) -> bool:
    final = partial / volume_name(number)
    return final.is_file() and _digest_file(final).is_file()


def _write_volumes(partial: Path, web: Storage, sizes: list[int]) -> tuple[Volume, ...]:
    """Copy every body into its place, hashing it again; volumes complete already (an
    export taken up again) are kept."""
    writer: _VolumeWriter | None = None
    try:
        with (partial / MANIFEST_FILE).open("rb") as manifest:
            for line in lines(iter(lambda: manifest.read(_CHUNK), b"")):
                doc = json.loads(line)
                if doc.get("kind") != "file":
                    continue
                for body in doc["bodies"]:
                    writer = _copy_body(partial, web, doc["path"], body, sizes, writer)
        if writer is not None:
            writer.finish()
            writer = None
        for number, size in enumerate(sizes, 1):
            if not _complete(partial, number):  # a volume with no body, or an empty one
                _VolumeWriter(partial, number, size).finish()
    except BaseException:
        if writer is not None:
            writer.out.close()
        raise
    return tuple(
        Volume(volume_name(n), size,
               _digest_file(partial / volume_name(n)).read_text().strip())
        for n, size in enumerate(sizes, 1)
    )


def _copy_body(
    partial: Path, web: Storage, path: str, body: dict[str, Any], sizes: list[int],
    writer: _VolumeWriter | None,
) -> _VolumeWriter | None:
    suffix, size, sha256 = body["suffix"], body["size"], body["sha256"]
    parts = (
        [(body["volume"], body["offset"], size, sha256)] if "parts" not in body
        else [tuple(p) for p in body["parts"]]
    )
    rel = path + suffix
    # The whole body's digest, when every part is copied now (not some before a stop).
    whole: Any = hashlib.sha256()
    if all(_complete(partial, p[0]) for p in parts):
        return writer  # copied by the export this one takes up again: not opened again
    # Only a body not there is one a sync removed; any other error (a store's 503 after
    # its retries, an outage, expired credentials) leaves the partial export to go on.
    try:
        source = _open(web, rel, size)
    except FileNotFoundError as exc:
        raise _vanished(partial, web, rel, exc) from None
    with source:
        for volume, offset, length, part_sha256 in parts:
            if _complete(partial, volume):
                source.seek(length, os.SEEK_CUR)
                whole = None
                continue
            if writer is None or writer.number != volume:
                if writer is not None:
                    writer.finish()
                writer = _VolumeWriter(partial, volume, sizes[volume - 1])
            if writer.position != offset:
                raise ExportError(f"the plan in {partial} is damaged: remove it, then export "
                                  "again")
            h = hashlib.sha256()
            left = length
            while left:
                try:
                    chunk = source.read(min(_CHUNK, left))
                except FileNotFoundError as exc:
                    raise _vanished(partial, web, rel, exc) from None
                if not chunk:
                    raise _vanished(partial, web, rel, None)
                h.update(chunk)
                if whole is not None:
                    whole.update(chunk)
                writer.write(chunk)
                left -= len(chunk)
            if h.hexdigest() != part_sha256:
                raise _vanished(partial, web, rel, None)
    if whole is not None and whole.hexdigest() != sha256:
        raise _vanished(partial, web, rel, None)
    return writer


def _vanished(partial: Path, web: Storage, rel: str, exc: OSError | None) -> ExportError:
    """A body is gone or changed since the plan: the plan can never be finished."""
    with contextlib.suppress(OSError):
        shutil.rmtree(partial)
    why = f"cannot be read ({exc.strerror or exc})" if exc else "is not what state.db recorded"
    return ExportError(
        f"{web.where}/{rel} {why}: a sync removed or replaced it since the export began, or the "
        "copy is damaged (`mirror verify` tells). Run the export again"
    )


# -- 3. sealing ---------------------------------------------------------------------------------


def _seal(partial: Path, info: BundleInfo, key: SecretKey) -> Path:
    data = info.to_bytes()
    store.write_durable(partial / BUNDLE_FILE, data)
    comment = (f"timestamp:{int(time.time())}\tfile:{BUNDLE_FILE}\thashed\tsimplemirror bundle "
               f"{info.sequence} of chain {info.chain[:8]}")
    store.write_durable(partial / SIGNATURE_FILE, key.sign(data, comment).encode("utf-8"))
    (partial / PLAN_FILE).unlink()
    for volume in info.volumes:
        _digest_file(partial / volume.name).unlink(missing_ok=True)
    store.sync_directory(partial)
    final = partial.with_name(partial.name.removesuffix(".partial"))
    partial.rename(final)
    store.sync_directory(final.parent)
    return final
