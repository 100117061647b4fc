"""`mirror import`: the far side verifies a bundle, then publishes it, or changes nothing.

The checks, in this order, none skipped: the signature of BUNDLE.json against the
pinned public key; its format; whether it was applied already (then nothing is done); its
chain, sequence and base state digest against the far side's ledger, and that digest
against the far side's tree (digest.tree_digest: nothing there behind state.db's back;
files it lost are asked for once staging shows the bundle does not bring them); the
manifest's hash; every
record (paths derived and compared, names as upstream data is checked); every body's size
and hashes, streamed from its volume into the staging area (tmp/bundle-staging), never
more bytes than declared; the mass-removal cap; the pages, rendered again from the rows
and compared; the state digest the result would have (every path looked for in the
staging area or web/, at the size state.db will record, unless the base check just found
web/ to be what state.db says or the bundle is a full one), against the bundle's target. Only
then is anything published, in the usual order (files, pages, root), state.db recording it
(with the ledger entry) in the same transaction as every row the bundle brings.

A refusal before publishing leaves web/ and state.db as they were; what was staged stays
for the next attempt, which takes it up by hash (so does one after a kill). A failure or a
signal while publishing puts web/ back as it was before state.db's transaction rolls back
(_Undo; a first import leaves no state.db either). A kill there leaves what a killed sync
leaves: every page whole, every link resolving; the next attempt finishes the job. Into a
bucket (``storage``) nothing is put back: a failure leaves what a kill does (_Unkept).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from simplemirror.bundle import digest
from simplemirror.bundle.keys import PublicKey, SignatureError
from simplemirror.bundle.manifest import (
    BUNDLE_FILE,
    MANIFEST_FILE,
    SIBLINGS,
    SIGNATURE_FILE,
    Body,
    BundleInfo,
    FileRecord,
    GoneRecord,
    ManifestError,
    ProjectRecord,
    Reader,
    Receipt,
    Record,
    RemovedRecord,
    RootRecord,
    lines,
    trusted,
)
from simplemirror.simple import render
from simplemirror.simple.model import HeldFile, Status
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Settings, open_storage
from simplemirror.store.state import State, now
from simplemirror.sync import reap
from simplemirror.sync.plan import (
    MASS_DELETE_FLOOR_FILES,
    MASS_DELETE_FLOOR_PROJECTS,
    is_mass_removal,
)
from simplemirror.sync.publish import Publisher, project_info
from simplemirror.sync.run import disk_full, locked

if TYPE_CHECKING:
    from simplemirror.store.s3 import S3Storage

log = logging.getLogger("simplemirror")

STAGING = "bundle-staging"
RECEIPTS = "receipts"
_CHUNK = 1 << 20
_MAX_BUNDLE_FILE = 64 << 20
_MAX_SIGNATURE = 64 << 10
_links = itertools.count()
_Upload = tuple[str, str, str | None]
"""(local file, path, its sha256) of an upload into a bucket."""
_WAKE = 0.5
"""Seconds the main thread waits for uploads at a time (_one_done)."""


class ImportRefused(Exception):
    """The bundle was not applied; the message says why, in one line, and what to do."""

    def __init__(self, message: str, *, receipt: bool = True) -> None:
        super().__init__(message)
        self.wants_receipt = receipt
        """Worth a receipt to carry back (not so a bundle of another chain)."""
        self.receipt: Path | None = None


class _Missing(ImportRefused):
    """Volumes or files the bundle needs are not at hand (what the others hold is staged)."""

    def __init__(self, volumes: list[str], files: list[str], info: BundleInfo,
                 source: Path) -> None:
        said = []
        if volumes:
            said.append(f"volume(s) missing or damaged: {', '.join(volumes)}; bring them "
                        f"into {source} (the bodies of the others are staged)")
        if files:
            said.append(
                f"{len(files)} file(s) this bundle expects the mirror to hold already are "
                f"not there (the first: {files[0]}): carry the receipt back and export "
                "with --since-receipt"
            )
        super().__init__(f"bundle {info.sequence} is not complete: " + "; ".join(said)
                         + ", then run the import again")
        self.volumes = volumes
        self.files = files


class Interrupted(Exception):
    """A signal stopped the import before it committed: what it published is put back."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"import stopped by {signal.Signals(signum).name}: the mirror is as it was before "
            "it (what was staged is kept); run the same import again to finish it"
        )
        self.signum = signum


class Stop:
    """Asked for from a signal handler; the import stops at its next record or chunk, and
    never between a step of publishing and the note that puts it back."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@dataclass
class Imported:
    info: BundleInfo
    replayed: bool = False
    generation: int | None = None
    receipt: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportRequest:
    source: Path
    """The bundle directory (BUNDLE.json, its signature, manifest.jsonl, volumes)."""
    directory: Path
    """The far-side mirror."""
    public_key: PublicKey
    allow_mass_delete: bool = False
    max_removal: float = 0.10
    stop: Stop = field(default_factory=Stop)
    storage: Settings | None = None
    """The bucket the far side publishes to (None: its web/)."""


def import_bundle(request: ImportRequest) -> Imported:
    if request.source.name.endswith(".partial"):
        # Signed, it may even be whole (an export killed between sealing and its rename):
        # but its exporter will make that sequence again, and only that one is recorded.
        raise ImportRefused(
            f"{request.source} is an export that did not finish: run `mirror export` again "
            "and import the bundle directory it prints"
        )
    info = _authentic(request.source, request.public_key)
    directory = request.directory
    if not (directory / "state.db").exists() and not info.full:
        raise ImportRefused(
            f"{directory} holds no mirror seeded by bundles yet: import a full bundle "
            f"(`mirror export --full`) first; this one, {info.sequence}, is a delta"
        )
    try:
        for path in (directory, directory / "tmp"):
            path.mkdir(exist_ok=True, parents=True)
    except OSError as exc:
        raise ImportRefused(f"cannot create {directory}: {exc.strerror or exc}") from None
    with locked(directory, "mirror import"):
        return _Import(request, info).run()


def _authentic(source: Path, public_key: PublicKey) -> BundleInfo:
    """BUNDLE.json, once its signature verifies against ``public_key`` and its format is one
    this version reads."""
    data = _read_small(source, BUNDLE_FILE, _MAX_BUNDLE_FILE)
    signature = _read_small(source, SIGNATURE_FILE, _MAX_SIGNATURE)
    try:
        public_key.verify(data, signature.decode("utf-8", "replace"), SIGNATURE_FILE)
    except SignatureError as exc:
        raise ImportRefused(f"{source}: {exc}; nothing was changed") from None
    try:
        return BundleInfo.from_bytes(data)
    except ManifestError as exc:
        raise ImportRefused(f"{source}: {exc}") from None


def _read_small(source: Path, name: str, limit: int) -> bytes:
    with _open_plain(source, name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ImportRefused(f"{source}/{name} is larger than any bundle's")
    return data


def _open_plain(source: Path, name: str) -> BinaryIO:
    """A file of the bundle, for reading: a plain file, never a link or a device."""
    path = source / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImportRefused(
            f"{source} is not a complete bundle: {name} is missing (an export that did not "
            "finish leaves a .partial directory: run it again)"
        ) from None
    except OSError as exc:
        if os.path.islink(path):
            raise ImportRefused(f"{path} is a symlink; a bundle holds plain files only") from None
        raise ImportRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImportRefused(f"{path} is not a plain file; a bundle holds plain files only")
    return os.fdopen(fd, "rb")


class _Import:
    def __init__(self, request: ImportRequest, info: BundleInfo) -> None:
        self.request = request
        self.info = info
        self.source = request.source
        self.directory = request.directory
        self.web = request.directory / "web"
        self.tmp = request.directory / "tmp"
        self.state_path = request.directory / "state.db"
        self.reader = Reader([v.size for v in info.volumes])
        self.counts = {"projects": 0, "pages": 0, "files": 0, "bytes": 0, "removed": 0,
                       "gone": 0}
        self.stop = request.stop
        self.storage = open_storage(self.web, request.storage)
        self.bucket = self.storage.remote
        self.where = self.storage.where
        """web/, or the bucket's s3:// URL, for messages."""
        self.undo: _Undo | _Unkept = _Unkept() if self.bucket else _Undo(self.web)
        self._publishing = f"publishing-{info.bundle}"
        """In the staging area while this bundle's publishing is under way."""
        self.tree_checked = info.full
        """_base_in_tree found web/ to be what state.db says, nothing lost (or the bundle
        brings everything): the target check need not look every path up again (what the
        bundle adds, staging checked)."""

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Imported:
        info = self.info
        store.check_same_filesystem(self.tmp, self.directory)
        store.forget_dirs()
        first = not self.state_path.exists()
        try:
            self.storage.check()
            pages = first and (
                self._s3().holds(layout.SIMPLE) if self.bucket
                else bool(store.list_dirs(self.web, layout.SIMPLE)))
        except OSError as exc:
            raise ImportRefused(f"{exc}; nothing was changed") from None
        if pages:
            raise ImportRefused(f"{self.where} holds pages, yet {self.directory} has no "
                                "state.db: seed an empty " + ("prefix" if self.bucket
                                                              else "directory"))
        state = None if first else State(self.state_path)
        # No bundle applied yet (perhaps a first import was killed): web/ holds nothing
        # state.db publishes, so putting back is emptying it, with nothing noted.
        self.undo.fresh = first or state is None or state.reader().last_applied() is None
        try:
            if state is not None:
                replayed = self._chained(state)
                if replayed is not None:
                    return replayed
            self._open_area()
            self._check_manifest()
            self._stage()
            if state is None:
                state = State(self.state_path)
            try:
                generation = self._apply(state)
            except BaseException:
                # Unless web/ could not be put back whole: then the rows that say what
                # it holds stay, for the next attempt (as after a kill).
                if first and self.undo.complete:
                    state.close()
                    state = None
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        self.state_path.with_name("state.db" + suffix).unlink(missing_ok=True)
                raise
            self._after(state, generation)
            receipt = self._receipt(state, "applied")
            store.remove_area(self.tmp, STAGING)
            return Imported(info, False, generation, receipt, self.counts)
        except ImportRefused as exc:
            if exc.wants_receipt and state is not None:
                outcome = "incomplete" if isinstance(exc, _Missing) else "refused"
                exc.receipt = self._receipt(state, outcome, exc)
            raise
        except (OSError, sqlite3.Error) as exc:
            if disk_full(exc):
                raise ImportRefused(
                    f"the disk holding {self.directory} is full ({exc}): free some "
                    "space, then run the import again (what was staged is kept)"
                ) from exc
            raise ImportRefused(f"cannot import into {self.directory}: {exc}") from exc
        finally:
            if state is not None:
                state.close()

    def _chained(self, state: State) -> Imported | None:
        """Refuse a bundle that does not follow what the far side holds; a replay's result
        when it was applied already."""
        info, reader = self.info, state.reader()
        done = reader.applied(info.bundle)
        last = reader.last_applied()
        if done is not None:
            path: Path | None = self._receipt_path(done[0])
            if last is not None and last[0] == info.bundle:
                # What a kill after its commit kept it from finishing: removals, receipt.
                self._after(state, done[1], last_modified=False)
                if not self._receipt_path(done[0]).exists():
                    path = self._receipt(state, "applied")
            log.info("bundle %d (%s) was applied to %s already: nothing to do",
                     info.sequence, info.bundle, self.directory)
            return Imported(info, True, None, path if path and path.exists() else None)
        if last is None:
            if reader.newest_run() is not None:
                raise ImportRefused(
                    f"{self.directory} is a mirror that syncs from an upstream, not one seeded "
                    "by bundles: import into a directory of its own"
                )
            if not info.full:
                raise ImportRefused(
                    f"{self.directory} holds no bundle yet: import a full bundle first"
                )
            return None
        _, chain, sequence, target = last
        if info.chain != chain:
            raise ImportRefused(
                f"this bundle belongs to chain {info.chain[:8]}, and {self.directory} follows "
                f"chain {chain[:8]}: it was exported by another mirror (or after its state.db "
                "was replaced); nothing was changed", receipt=False,
            )
        if info.full:
            raise ImportRefused(
                f"bundle {info.sequence} is a full one, and {self.directory} holds bundles up "
                f"to {sequence} already: import the deltas, or seed a new directory with it"
            )
        if info.sequence != sequence + 1:
            raise ImportRefused(
                f"bundle {info.sequence} is out of order: {self.directory} holds bundles up to "
                f"{sequence} and needs bundle {sequence + 1} next (lost? carry "
                f"{RECEIPTS}/{sequence}.json back and export with --since-receipt)"
            )
        if info.base != target:
            raise ImportRefused(
                f"bundle {info.sequence} applies to another state than {self.directory} holds "
                f"(its base digest differs): carry {RECEIPTS}/{sequence}.json back and export "
                "with --since-receipt"
            )
        self._base_in_tree(state)
        return None

    def _base_in_tree(self, state: State) -> None:
        """web/ is what the bundles before made it: nothing there that state.db does not
        publish, and its digest, worked out from the tree, is the bundle's base. Files it
        lost are counted as state.db records them: the bundle must bring them (or the
        receipt asks for them). Not when an attempt at this bundle was killed while
        publishing (web/ is then between base and target): the digest the result will
        have decides, as for any attempt."""
        if self._publishing_cut_off():
            # Perhaps of another bundle for the same step (one --since-receipt made).
            log.info("an earlier import stopped while publishing: bundle %d finishes it",
                     self.info.sequence)
            return
        reader = state.reader()
        last = reader.last_applied()
        done = reader.applied(last[0]) if last is not None else None
        since_ns = None
        if done is not None:
            # What a kill after the last import's commit left for it to remove.
            self._after(state, done[1], last_modified=False)
            finished = reader.run_times(done[1])[1]
            if finished is not None:
                # Its files and pages were all in place when it recorded this (to the
                # second): any modified later was modified behind its back.
                since_ns = (int(datetime.fromisoformat(finished).timestamp()) + 2) * 10**9
        try:
            tree = digest.tree_digest(reader, self.storage, since_ns, self.stop.check,
                                      spill=self.tmp)
        except digest.DigestError as exc:
            raise ImportRefused(f"{exc}; nothing was changed") from None
        if tree.strangers:
            raise ImportRefused(
                f"{self.where} holds {tree.count} path(s) its state.db does not publish, or "
                f"not as it records them (the first: {tree.strangers[0]}): something changed it "
                f"behind the mirror's back; nothing was changed. Run {self._verify()} there "
                "(--delete-orphans removes files nothing lists)"
            )
        if tree.digest is not None and tree.digest != self.info.base:
            raise ImportRefused(
                f"{self.where} is not what the bundles before {self.info.sequence} made it (its "
                f"digest is {tree.digest[:19]}..., and the bundle's base "
                f"{str(self.info.base)[:19]}...): something changed it behind the mirror's "
                f"back; nothing was changed. Run {self._verify()} there"
            )
        if tree.lost:
            log.warning("%s lacks %d file(s) its state.db publishes (the first: %s): the "
                        "bundle must bring them", self.where, tree.lost, tree.first_lost)
        self.tree_checked = not tree.lost

    def _s3(self) -> S3Storage:
        from simplemirror.store import s3  # boto3 only where a bucket is used

        assert isinstance(self.storage, s3.S3Storage)
        return self.storage

    def _verify(self) -> str:
        if self.bucket:
            return "`mirror verify -c CONFIG` (the config naming this storage)"
        return f"`mirror verify --directory {self.directory}`"

    def _places(self) -> tuple[Path, ...]:
        """Where a body counts as at hand: staged, or in web/ (an attempt killed while
        publishing moved it there). A bucket's copy is not: its staged copy is kept until
        the import commits, and the upload skips an object that is there already."""
        return (self.area_web,) if self.bucket else (self.area_web, self.web)

    # -- reading the manifest -------------------------------------------------------------------

    def _publishing_cut_off(self) -> bool:
        """A kill cut an import's publishing short (its marker is in the staging area)."""
        try:
            names = os.listdir(self.tmp / STAGING)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(name.startswith("publishing-") for name in names)

    def _open_area(self) -> None:
        """The staging area in tmp/, kept from an earlier attempt if there was one."""
        area = store.make_area(self.tmp, STAGING)
        self.area_web, self.area_tmp = area / "web", area / "tmp"
        for sub in ("web", "tmp", "parts", "done"):
            store.make_dir(area, sub)
        store.clear_leftovers(self.area_tmp)
        self.manifest_copy = f"manifest-{self.info.bundle}.jsonl"

    def _records(self) -> Iterator[Record]:
        """The manifest's records, from the copy _check_manifest verified and checked."""
        with store.open_file(self.area_web.parent, self.manifest_copy) as f:
            for line in lines(iter(lambda: f.read(_CHUNK), b"")):
                self.stop.check()
                yield trusted(line)

    def _check_manifest(self) -> None:
        """The manifest is the one BUNDLE.json names (size, sha256), and every record in it
        holds, in the order it must come in. Copied into the staging area as it is read,
        so that what was checked is what is applied, whatever happens to the bundle's
        medium meanwhile; the bytes the bundle needs staged are counted on the way."""
        info = self.info
        with _open_plain(self.source, MANIFEST_FILE) as f:
            size = os.fstat(f.fileno()).st_size
            if size != info.manifest_size:
                raise ImportRefused(
                    f"{MANIFEST_FILE} is {size} bytes, and BUNDLE.json says {info.manifest_size}:"
                    " it is truncated or altered; copy the bundle again"
                )
            h = hashlib.sha256()
            order = _Order()
            problem: ManifestError | None = None
            self.needed = 0
            fd, name = store.create(self.area_tmp, store.PAGE_PREFIX)
            try:
                try:
                    def chunks() -> Iterator[bytes]:
                        for chunk in iter(lambda: f.read(_CHUNK), b""):
                            self.stop.check()
                            h.update(chunk)
                            store.write_all(fd, chunk)
                            yield chunk

                    for number, line in enumerate(lines(chunks()), 1):
                        if problem is not None:
                            continue  # the digest still decides which refusal it is
                        try:
                            record = self.reader.decode(line, number)
                            order.check(record)
                        except ManifestError as exc:
                            problem = exc
                            continue
                        if isinstance(record, FileRecord):
                            self.needed += self._to_stage(record)
                    if problem is None:
                        order.finish()
                finally:
                    os.close(fd)
            except ManifestError as exc:
                problem = exc
            except BaseException:
                store.discard(name)
                raise
        if h.hexdigest() != info.manifest_sha256:
            store.discard(name)
            raise ImportRefused(f"{MANIFEST_FILE} is not the one BUNDLE.json signs (its sha256 "
                                "differs): it was altered or damaged; copy the bundle again")
        if problem is not None:
            store.discard(name)
            raise ImportRefused(f"{self.source}/{problem}; nothing was changed")
        store.install(name, self.area_web.parent, self.manifest_copy)

    def _to_stage(self, record: FileRecord) -> int:
        """The bytes of ``record``'s bodies neither staged nor in place yet."""
        return sum(
            body.size for body in record.bodies
            if all(_size_of(root, record.body_path(body)) != body.size
                   for root in self._places())
        )

    # -- staging ----------------------------------------------------------------------------------

    def _stage(self) -> None:
        """Stream every body the far side lacks into the staging area, checked; say what
        is missing."""
        free = os.statvfs(self.tmp)
        if self.needed > free.f_bavail * free.f_frsize:
            raise ImportRefused(
                f"bundle {self.info.sequence} needs {self.needed} bytes staged in {self.tmp}, "
                f"and {free.f_bavail * free.f_frsize} are free: free some space, then run the "
                "import again"
            )
        volumes = _Volumes(self.source, self.info)
        missing_files: list[str] = []
        try:
            for record in self._records():
                if not isinstance(record, FileRecord):
                    continue
                # No body travels with it: the far side must hold it already.
                if not any(b.suffix == "" for b in record.bodies) and (
                    self._size_held(record.file.path) != record.file.size
                ):
                    missing_files.append(record.file.path)
                for body in record.bodies:
                    self._stage_body(record, body, volumes)
                volumes.reached(self._mark_done)
            volumes.reached(self._mark_done, end=True)
        finally:
            volumes.close()
        if volumes.missing or missing_files:
            raise _Missing(volumes.missing, missing_files, self.info, self.source)

    def _size_held(self, rel: str) -> int | None:
        """The size of the published file at ``rel`` (None: none there)."""
        return self.storage.size_of(rel) if self.bucket else _size_of(self.web, rel)

    def _mark_done(self, number: int) -> None:
        """Every body of volume ``number`` is staged: made durable, and marked so that a
        later attempt trusts them without hashing them again."""
        store.flush(self.tmp)
        store.write_file(self.area_web.parent, self.area_tmp, self._marker(number), b"")

    def _marker(self, number: int) -> str:
        return f"done/{self.info.bundle}-{number}"

    def _have(self, rel: str, body: Body) -> bool:
        """``rel``'s bytes are staged already, or in place in web/ (an attempt killed while
        publishing)."""
        staged = store.stat_file(self.area_web, rel)
        if staged is not None and staged.st_size == body.size:
            trusted = all(
                store.is_file(self.area_web.parent, self._marker(p.volume)) for p in body.parts
            )
            if trusted or store.sha256_of(self.area_web, rel) == body.sha256:
                return True
        if staged is not None:
            store.remove(self.area_web, rel)
        if self.bucket:
            return False
        held = store.stat_file(self.web, rel)
        return (held is not None and held.st_size == body.size
                and store.sha256_of(self.web, rel) == body.sha256)

    def _stage_body(self, record: FileRecord, body: Body, volumes: _Volumes) -> None:
        rel = record.body_path(body)
        if self._have(rel, body):
            volumes.skip(body)
            return
        want = dict(record.file.hashes) if body.suffix == "" else {"sha256": body.sha256}
        if body.suffix == layout.METADATA_SUFFIX and record.file.metadata_hashes:
            want = {**record.file.metadata_hashes, "sha256": body.sha256}
        if len(body.parts) == 1:
            if volumes.present(body):
                part = body.parts[0]
                self._copy(volumes, part.volume, part.offset, body.size, want, rel)
            return
        # Split: each part staged as its volume comes (volumes may arrive apart), the file
        # put together once all are.
        area = self.area_web.parent
        complete = True
        for part in body.parts:
            name = f"parts/{part.sha256}"
            if store.is_file(area, name) and store.sha256_of(area, name) == part.sha256:
                continue
            if not volumes.present_part(part.volume):
                complete = False
                continue
            self._copy(volumes, part.volume, part.offset, part.size, {"sha256": part.sha256},
                       name, root=area, what=rel)
        volumes.skip(body)
        if complete:
            self._assemble(body, want, rel)

    def _copy(
        self, volumes: _Volumes, volume: int, offset: int, size: int, want: dict[str, str],
        rel: str, root: Path | None = None, what: str | None = None,
    ) -> None:
        """``size`` bytes at ``offset`` of ``volume`` into ``rel`` below the staging area's
        web/ (or ``root``), checked against every digest in ``want`` first."""
        source = volumes.open(volume)
        source.seek(offset)
        hashes = {a: hashlib.new(a) for a in want}
        fd, name = store.create(self.area_tmp, store.DOWNLOAD_PREFIX)
        try:
            try:
                left = size
                while left:
                    self.stop.check()
                    chunk = source.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    for h in hashes.values():
                        h.update(chunk)
                    store.write_all(fd, chunk)
                    left -= len(chunk)
            finally:
                os.close(fd)
            wrong = [a for a, h in hashes.items() if h.hexdigest() != want[a]]
            if left or wrong:
                raise ImportRefused(
                    f"{what or rel} in {self.info.volumes[volume - 1].name} does not match "
                    f"its {'size' if left else wrong[0]}: the volume is damaged or was altered; "
                    "copy it again from the bundle, then run the import again"
                )
        except BaseException:
            store.discard(name)
            raise
        # A file's own directory is new (content-addressed); the parts' is there.
        store.install(name, root or self.area_web, rel, new_dir=root is None)

    def _assemble(self, body: Body, want: dict[str, str], rel: str) -> None:
        root = self.area_web.parent
        hashes = {a: hashlib.new(a) for a in want}
        fd, name = store.create(self.area_tmp, store.DOWNLOAD_PREFIX)
        try:
            try:
                for part in body.parts:
                    with store.open_file(root, f"parts/{part.sha256}") as f:
                        for chunk in iter(lambda f=f: f.read(_CHUNK), b""):  # type: ignore[misc]
                            self.stop.check()
                            for h in hashes.values():
                                h.update(chunk)
                            store.write_all(fd, chunk)
            finally:
                os.close(fd)
            wrong = [a for a, h in hashes.items() if h.hexdigest() != want[a]]
            if wrong:
                raise ImportRefused(f"{rel}, put together from its parts, does not match its "
                                    f"{wrong[0]}: the bundle is damaged")
        except BaseException:
            store.discard(name)
            raise
        store.install(name, self.area_web, rel, new_dir=True)
        for part in body.parts:
            store.remove(root, f"parts/{part.sha256}")

    # -- applying -----------------------------------------------------------------------------

    def _apply(self, state: State) -> int:
        """Every row in one transaction, the checks that need them, then publishing; a
        refusal rolls it all back."""
        try:
            generation = self._apply_rows(state)
        except BaseException as exc:
            if self._committed(state):
                # A second signal came just after the commit: web/ is what state.db says.
                self.undo.forget()
                raise
            self.undo.rollback()
            if self.undo.complete or not isinstance(exc, Exception):
                raise
            # Not "nothing was changed", as the first failure would have said.
            what = (str(exc).splitlines() or [type(exc).__name__])[0]
            what = what.replace("; nothing was changed", "")
            left = (
                f"{self.where} holds part of it (new files, perhaps some new pages, every link "
                "resolving); run the same import again to finish it" if self.bucket else
                f"{self.web} was left part-way; run the same import again to finish it")
            if isinstance(exc, Interrupted):
                exc.args = (f"import stopped by {signal.Signals(exc.signum).name}: {left}",)
                raise
            raise ImportRefused(f"{what}; {left}") from exc
        self.undo.forget()
        return generation

    def _committed(self, state: State) -> bool:
        try:
            return state.reader().applied(self.info.bundle) is not None
        except sqlite3.Error:
            return False

    def _apply_rows(self, state: State) -> int:
        info = self.info
        with state.transaction():
            listed, live = state.listed_count(), state.live_files_count()
            generation = state.begin_run(info.upstream or f"bundle chain {info.chain}")
            # What `mirror status` shows as in force here: the near side's, which made it.
            state.set_meta("filters", json.dumps(dict(info.filters)) if info.filters else None)
            removing: set[str] = set()
            gone = 0
            capped = False
            pending: list[HeldFile] = []
            pending_project = ""
            root_staged: list[tuple[str, str]] = []
            for record in self._records():
                if isinstance(record, RemovedRecord):
                    # As a sync does: the root stops listing it now, its pages and files
                    # go once this commits (_after).
                    status = state.reader().project_status(record.name)
                    if status is not None and status is not Status.REMOVED:
                        state.mark_removed([record.name], generation)
                        removing.add(record.name)
                    continue
                if isinstance(record, GoneRecord):
                    ended = state.import_gone(record.project, record.filename, record.path,
                                              generation)
                    self.counts["gone"] += ended
                    if record.project not in removing:
                        gone += ended
                    continue
                if not capped:
                    self._cap(len(removing), listed, gone, live)
                    capped = True
                if isinstance(record, FileRecord):
                    if record.file.project != pending_project and pending:
                        state.import_files(pending_project, pending, generation)
                        pending = []
                    pending_project = record.file.project
                    pending.append(record.file)
                    self.counts["files"] += 1
                    continue
                if pending:
                    state.import_files(pending_project, pending, generation)
                    pending = []
                if isinstance(record, ProjectRecord):
                    self._project(state, record, generation)
                elif isinstance(record, RootRecord):
                    if record.serial is not None:
                        state.set_meta("root_serial", str(record.serial))
                    root_staged = self._root(state, record, generation)
            if not capped:
                self._cap(len(removing), listed, gone, live)
            roots = [(rel, os.stat(name).st_size, sha) for rel, (name, sha)
                     in zip(layout.ROOT_PAGES, root_staged, strict=True)]
            try:
                result = digest.published_digest(
                    state.reader(), [self.area_web, self.storage], roots, spill=self.tmp,
                    in_tree=not self.tree_checked,
                    tick=self.stop.check,
                )
            except digest.Lost as exc:
                owners = sorted({_owner(path) for path in exc.paths})
                raise _Missing([], owners, info, self.source) from None
            except digest.DigestError as exc:
                raise ImportRefused(f"{exc}; nothing was changed") from None
            if result != info.target:
                raise ImportRefused(
                    f"bundle {info.sequence}, applied, would not give the state the near side "
                    f"had ({result[:19]}... instead of {info.target[:19]}...): {self.where} "
                    "must differ from what the bundles before it made it; nothing was changed. "
                    f"Run {self._verify()} there"
                )
            self._publish(state, generation, len(removing), root_staged)
        return generation

    def _cap(self, projects: int, listed: int, files: int, live: int) -> None:
        request = self.request
        if request.allow_mass_delete:
            return
        if is_mass_removal(projects, listed, request.max_removal, MASS_DELETE_FLOOR_PROJECTS):
            raise ImportRefused(
                f"bundle {self.info.sequence} removes {projects} of the {listed} projects held "
                f"(more than max-removal, {request.max_removal:.0%}); nothing was changed. If the "
                "near side really removed them, run the import again with --allow-mass-delete"
            )
        if is_mass_removal(files, live, request.max_removal, MASS_DELETE_FLOOR_FILES):
            raise ImportRefused(
                f"bundle {self.info.sequence} removes {files} of the {live} files held (more "
                f"than max-removal, {request.max_removal:.0%}); nothing was changed. If the near "
                "side really removed them, run the import again with --allow-mass-delete"
            )

    def _project(self, state: State, record: ProjectRecord, generation: int) -> None:
        name = record.name
        if record.page is None and not state.reader().is_published(name):
            raise ImportRefused(f"{self.source}/{MANIFEST_FILE}: {name} has no pages here, and "
                                "the bundle brings none; nothing was changed")
        state.import_project(
            name, display_name=record.display_name, serial=record.serial,
            page_serial=record.page_serial, status=record.status, error=record.error,
            page_data=dict(record.page_data), pages=record.page is not None,
            generation=generation,
        )
        self.counts["projects"] += 1
        if record.page is None:
            return
        held = {f.filename: f for f in state.held_files(name)}
        try:
            files = [held[f] for f in record.page.files]
        except KeyError as exc:
            raise ImportRefused(f"{self.source}/{MANIFEST_FILE}: the page of {name} lists "
                                f"{exc.args[0]}, which it does not hold; nothing was "
                                "changed") from None
        info = project_info(name, record.page_serial, record.page_data, list(held.values()))
        html_path, json_path = layout.project_pages(name)
        public_url = self.info.public_url
        for rel, text, want in (
            (html_path, render.project_html(info, files, public_url), record.page.html),
            (json_path, render.project_json(info, files, public_url), record.page.json),
        ):
            data = text.encode("utf-8")
            sha256 = hashlib.sha256(data).hexdigest()
            if (len(data), sha256) != (want.size, want.sha256):
                raise ImportRefused(
                    f"the page {rel}, rendered from what the bundle brings, is not the page "
                    "the near side published; nothing was changed (are both sides the same "
                    "version of simplemirror?)"
                )
            store.make_dir(self.area_web, layout.project_dir(name))
            store.write_file(self.area_web, self.area_tmp, rel, data, dir_checked=True)
            if state.reader().page_sha256(rel) != sha256:
                state.record_page(rel, sha256, len(data), generation)
            self.counts["pages"] += 1

    def _root(self, state: State, record: RootRecord, generation: int) -> list[tuple[str, str]]:
        """The root pages rendered from the rows, staged and checked: (temporary file,
        sha256) of each."""
        serial = state.get_meta("root_serial")
        for_html, for_json = itertools.tee(state.root_entries())
        staged = store.stage_streams(self.area_tmp, [
            _encoded(render.root_html_parts(for_html)),
            _encoded(render.root_json_parts(for_json, int(serial) if serial else None)),
        ])
        for (name, sha256), want, rel in zip(staged, (record.html, record.json),
                                             layout.ROOT_PAGES, strict=True):
            if (os.stat(name).st_size, sha256) != (want.size, want.sha256):
                for other, _ in staged:
                    store.discard(other)
                raise ImportRefused(
                    f"the root page {rel}, rendered from what the bundle brings, is not the "
                    "near side's: the far side's projects differ from the near side's; "
                    "nothing was changed"
                )
            if state.reader().page_sha256(rel) != sha256:
                state.record_page(rel, sha256, want.size, generation)
        return staged

    def _publish(
        self, state: State, generation: int, removed: int, root_staged: list[tuple[str, str]]
    ) -> None:
        """Files, then pages (project by project), then the root; the bytes flushed before
        state.db commits."""
        undo = self.undo
        undo.begin(self.area_web, self.area_web.parent / "undo",
                   self.area_web.parent / self._publishing)
        if isinstance(undo, _Unkept):
            installed = self._upload(root_staged)
        else:
            installed = self._install(undo, root_staged)
        self.counts["bytes"] = installed
        self.counts["removed"] = removed
        state.finish_run(
            generation, "ok", projects_changed=self.counts["pages"] // 2,
            projects_removed=removed, files_fetched=self.counts["files"],
            bytes_fetched=installed,
        )
        state.record_applied(
            bundle=self.info.bundle, chain=self.info.chain, sequence=self.info.sequence,
            target=self.info.target, generation=generation, key_id=self.info.key_id,
        )

    def _install(self, undo: _Undo, root_staged: list[tuple[str, str]]) -> int:
        """Into web/, each step noted first (``undo``); the bytes installed."""
        installed = 0
        for record in self._records():
            if isinstance(record, FileRecord):
                for body in record.bodies:
                    rel = record.body_path(body)
                    if store.stat_file(self.area_web, rel) is not None:
                        undo.file(rel)
                        store.install(str(self.area_web / rel), self.web, rel, new_dir=True)
                        installed += body.size
            elif isinstance(record, ProjectRecord) and record.page is not None:
                store.make_dir(self.web, layout.project_dir(record.name))
                for rel in layout.project_pages(record.name):
                    undo.page(rel)
                    store.install(str(self.area_web / rel), self.web, rel, dir_checked=True)
        self.stop.check()
        for (name, _), rel in zip(root_staged, layout.ROOT_PAGES, strict=True):
            undo.page(rel)
            store.install(name, self.web, rel)
        store.flush(self.web)
        return installed

    def _upload(self, root_staged: list[tuple[str, str]]) -> int:
        """Into a bucket, in the publish order, each step whole before the next begins:
        every file, then every page, then the root; what went up stays there if a later
        step fails (nothing links it yet, or what it links is there), and the next attempt
        sends only what is missing. A file's staged copy stays until the import commits
        (the upload consumes a hard link to it).

        A file beside one the bucket has already (its .metadata rewritten in place, say)
        goes up with its project's pages, just before them in one task: its old page
        advertises the old bytes' hash, and nothing is put back after a failure."""
        installed = 0
        beside: dict[str, list[_Upload]] = {}

        def staged(record: FileRecord, body: Body) -> _Upload | None:
            nonlocal installed
            rel = record.body_path(body)
            if store.stat_file(self.area_web, rel) is None:
                return None
            installed += body.size
            return self._linked(rel), rel, body.sha256

        def files() -> Iterator[tuple[_Upload, ...]]:
            for record in self._records():
                if not isinstance(record, FileRecord):
                    continue
                rewritten = all(body.suffix for body in record.bodies)
                for body in record.bodies:
                    upload = staged(record, body)
                    if upload is None:
                        continue
                    if rewritten:
                        beside.setdefault(record.file.project, []).append(upload)
                    else:
                        yield (upload,)

        def pages() -> Iterator[tuple[_Upload, ...]]:
            for record in self._records():
                if isinstance(record, ProjectRecord) and record.page is not None:
                    yield (*beside.pop(record.name, ()), *(
                        (str(self.area_web / rel), rel, page.sha256) for rel, page
                        in zip(layout.project_pages(record.name),
                               (record.page.html, record.page.json), strict=True)))
            # Those of a project whose pages did not change: nothing advertises them.
            yield from ((upload,) for left in beside.values() for upload in left)

        self._send(files())
        self._send(pages())
        self.stop.check()
        self._send(((name, rel, sha256),) for (name, sha256), rel
                   in zip(root_staged, layout.ROOT_PAGES, strict=True))
        return installed

    def _linked(self, rel: str) -> str:
        """A second name in the staging area's tmp/ for the staged ``rel``, for the upload
        to consume (one clear_leftovers removes, as create's)."""
        while True:
            name = f"{self.area_tmp}/{store.DOWNLOAD_PREFIX}{os.getpid()}-{next(_links)}"
            try:
                os.link(self.area_web / rel, name)
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links
                shutil.copyfile(self.area_web / rel, name)
            return name

    def _send(self, uploads: Iterator[tuple[_Upload, ...]]) -> None:
        """Each (local file, path, sha256) installed in the bucket, those of a group one
        after another in one task, the storage's upload threads all busy; returns once
        every one is up, or raises the first failure once none is under way any more (a
        link never sent is a leftover the next attempt's clear_leftovers removes)."""
        storage = self._s3()
        pool = storage.uploads()
        limit = 2 * storage.settings.upload_workers

        def in_order(group: tuple[_Upload, ...]) -> None:
            for name, rel, sha256 in group:
                storage.install(name, rel, sha256=sha256)

        pending: set[concurrent.futures.Future[None]] = set()
        try:
            for group in uploads:
                if len(pending) >= limit:
                    pending = _one_done(pending)
                pending.add(pool.submit(in_order, group))
            while pending:
                pending = _one_done(pending)
        except BaseException:
            for future in pending:
                future.cancel()
            while concurrent.futures.wait(pending, _WAKE).not_done:
                pass  # see _one_done
            raise

    def _after(self, state: State, generation: int, *, last_modified: bool = True) -> None:
        """Once committed, as at the end of a sync: the pages of removed projects, then the
        bytes no page lists any more, go (what a kill left of this, the next import, or
        this one's replay, does); then last-modified."""
        reap.unpublish_removed_projects(self.storage, state, generation)
        reap.reap_files(self.storage, state, generation)
        if last_modified:
            Publisher(self.storage, self.tmp, state, generation).last_modified(time.gmtime())

    # -- receipts -------------------------------------------------------------------------------

    def _receipt_path(self, sequence: int) -> Path:
        return self.directory / RECEIPTS / f"{sequence}.json"

    def _receipt(self, state: State, outcome: str, refusal: ImportRefused | None = None
                 ) -> Path | None:
        last = state.reader().last_applied()
        if last is None:
            return None
        bundle, chain, sequence, target = last
        receipt = Receipt(
            chain=chain, sequence=sequence, digest=target, bundle=bundle, written=now(),
            attempted=self.info.bundle, outcome=outcome,
            reason=None if refusal is None else str(refusal),
            missing_volumes=tuple(refusal.volumes) if isinstance(refusal, _Missing) else (),
            missing_files=tuple(refusal.files) if isinstance(refusal, _Missing) else (),
        )
        path = self._receipt_path(sequence)
        try:
            path.parent.mkdir(exist_ok=True)
            store.write_durable(path, receipt.to_bytes())
        except OSError as exc:
            log.warning("could not write the receipt %s: %s", path, exc)
            return None
        return path


class _Undo:
    """What publishing changed in web/, noted before each change, so that a failure before
    state.db commits puts it back, last change first (the root, the pages, the files): a
    file goes back to the staging area (a rerun uses it again), a page it replaced comes
    back from the hard link kept of it, a page that was not there goes."""

    def __init__(self, web: Path) -> None:
        self.web = web
        self.steps: list[tuple[str, str | None]] = []
        """(path below web/, what to put back: None for a page that was not there, "" for
        a file to move back to the staging area, else the kept page's name in the undo
        directory)."""
        self.complete = True
        """web/ is as it was before publishing began (nothing began, or all was put back)."""
        self.fresh = False
        """web/ held no page when the import began (a first one): putting back is emptying
        it again, so nothing is noted (a first import's notes would be millions)."""

    def begin(self, staged: Path, keep: Path, marker: Path) -> None:
        """``marker``: made (durably) before the first change, gone once web/ is as it was
        again: a kill in between leaves it, for the next attempt to know. One an attempt
        killed before left stays, whatever happens to this one: putting back what this
        one did does not put back what that one did."""
        self.staged, self.keep, self.marker = staged, keep, marker
        if store.stat_file(keep.parent, keep.name) is not None:
            store.remove_area(keep.parent, keep.name)
        store.make_dir(keep.parent, keep.name)
        self.inherited = marker.exists()
        if not self.inherited:
            store.write_durable(marker, b"")
        self.steps = []
        self.complete = False

    def file(self, rel: str) -> None:
        """``rel`` is about to be installed; noted only if web/ has no file there yet (the
        same path is the same bytes)."""
        if not self.fresh and not self._there(rel):
            self.steps.append((rel, ""))

    def page(self, rel: str) -> None:
        """``rel`` is about to be replaced (or written): a hard link keeps what it was."""
        if self.fresh:
            return
        kept = None
        if self._there(rel):
            kept = str(len(self.steps))
            try:
                os.link(self.web / rel, self.keep / kept, follow_symlinks=False)
            except OSError:  # a file system without hard links (vfat, exFAT, some FUSE)
                shutil.copy2(self.web / rel, self.keep / kept, follow_symlinks=False)
        self.steps.append((rel, kept))

    def _empty(self) -> int:
        """A first import's publishing put back: the root, the pages, then every file (to
        the staging area); how many could not be."""
        failed = 0
        pages = store.walk_files(self.web, layout.SIMPLE)
        for rel in itertools.chain(layout.ROOT_PAGES, pages, store.walk_files(
                self.web, layout.PACKAGES)):
            try:
                if rel.startswith(f"{layout.PACKAGES}/"):
                    store.make_dir(self.staged, os.path.dirname(rel))
                    os.replace(self.web / rel, self.staged / rel)
                else:
                    os.unlink(self.web / rel)
                store.remove_empty_dirs(self.web, os.path.dirname(rel))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed += 1
                log.warning("could not put %s back as it was: %s", rel, exc)
        # The directories made for what could not be installed.
        for top in (layout.SIMPLE, layout.PACKAGES):
            if os.path.islink(self.web / top):
                continue  # os.walk would follow it: its directories are not the mirror's
            for path, _, _ in os.walk(self.web / top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        store.forget_dirs()
        return failed

    def _there(self, rel: str) -> bool:
        # One lstat, for each of hundreds of thousands of files in a first import: the
        # directories on the way are checked by the install that follows.
        try:
            os.lstat(f"{self.web}/{rel}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def rollback(self) -> None:
        if self.complete:
            return
        failed = self._empty() if self.fresh else 0
        for rel, kept in reversed(self.steps):
            try:
                if kept:
                    store.install(str(self.keep / kept), self.web, rel)
                elif store.stat_file(self.web, rel) is not None:
                    if kept == "":
                        store.make_dir(self.staged, os.path.dirname(rel))
                        os.replace(self.web / rel, self.staged / rel)
                    else:
                        os.unlink(self.web / rel)
                store.remove_empty_dirs(self.web, os.path.dirname(rel))
            except OSError as exc:
                failed += 1
                log.warning("could not put %s back as it was: %s", rel, exc)
        if failed:
            log.warning("%d change(s) to %s could not be put back: run the same import "
                        "again to finish it", failed, self.web)
            return
        try:
            store.flush(self.web)
            if not self.inherited:
                self.marker.unlink(missing_ok=True)
        except OSError as exc:  # what failed first is what the import reports
            log.warning("could not make %s durable once put back: %s", self.web, exc)
            return
        self.steps = []
        self.complete = True

    def forget(self) -> None:
        """Committed: the kept pages are not needed any more (the next begin removes what
        this could not)."""
        self.steps = []
        self.complete = True
        try:
            store.remove_area(self.keep.parent, self.keep.name)
            self.marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.keep, exc)


class _Unkept:
    """A bucket's publishing: nothing is put back. Every object goes up whole, files before
    the pages that link them and pages before the root, so what a failure leaves (new
    files, perhaps new pages and root) links only objects that are there; state.db's
    transaction rolls back, and the marker stays in the staging area: the next attempt
    finishes the job as after a kill (the digest of the result decides)."""

    def __init__(self) -> None:
        self.complete = True
        """Nothing was published (publishing never began)."""
        self.fresh = False
        self.marker: Path | None = None

    def begin(self, staged: Path, keep: Path, marker: Path) -> None:
        self.marker = marker
        if not marker.exists():
            store.write_durable(marker, b"")
        self.complete = False

    def rollback(self) -> None:
        pass  # the bucket keeps what went up; the marker tells the next attempt

    def forget(self) -> None:
        """Committed: the marker goes."""
        self.complete = True
        try:
            if self.marker is not None:
                self.marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.marker, exc)


class _Order:
    """Records come in the order an import relies on: removals, then each project's files
    and the project itself (by name), then the root, so that the cap is known before any
    page, and a project's rows are in before its pages."""

    def __init__(self) -> None:
        self.phase, self.last, self.root = 0, "", False

    def check(self, record: Record) -> None:
        if self.root:
            raise ManifestError(f"{MANIFEST_FILE}: a record after the root")
        if isinstance(record, (RemovedRecord, GoneRecord)):
            if self.phase:
                raise ManifestError(f"{MANIFEST_FILE}: a removal after the projects")
        elif isinstance(record, RootRecord):
            self.root = True
        else:
            name = record.file.project if isinstance(record, FileRecord) else record.name
            step = 1 if isinstance(record, FileRecord) else 2
            if (name, step) < (self.last, self.phase) or (name == self.last and self.phase == 2):
                raise ManifestError(f"{MANIFEST_FILE}: {name} is out of order")
            self.last, self.phase = name, step

    def finish(self) -> None:
        if not self.root:
            raise ManifestError(f"{MANIFEST_FILE}: no root record at its end")


def _owner(path: str) -> str:
    """The file a file beside it (its .metadata, signature, provenance) belongs to."""
    for suffix in SIBLINGS:
        if path.endswith(suffix):
            return path.removesuffix(suffix)
    return path


def _size_of(root: Path, rel: str) -> int | None:
    status = store.stat_file(root, rel)
    return status.st_size if status is not None and stat.S_ISREG(status.st_mode) else None


def _encoded(parts: Iterator[str], batch: int = 4096) -> Iterator[bytes]:
    it = iter(parts)
    while pieces := list(itertools.islice(it, batch)):
        yield "".join(pieces).encode("utf-8")


class _Volumes:
    """The bundle's volumes, read one at a time in order; which are missing or damaged."""

    def __init__(self, source: Path, info: BundleInfo) -> None:
        self.source = source
        self.info = info
        self.missing: list[str] = []
        self._state: dict[int, bool] = {}
        self._open: tuple[int, BinaryIO] | None = None
        self._last = 0
        self._marked = 0

    def present(self, body: Body) -> bool:
        ok = all(self._usable(p.volume) for p in body.parts)
        self._last = max(self._last, body.parts[-1].volume)
        return ok

    def present_part(self, number: int) -> bool:
        self._last = max(self._last, number)
        return self._usable(number)

    def skip(self, body: Body) -> None:
        self._last = max(self._last, body.parts[-1].volume)

    def _usable(self, number: int) -> bool:
        if number not in self._state:
            volume = self.info.volumes[number - 1]
            try:
                with _open_plain(self.source, volume.name) as f:
                    size = os.fstat(f.fileno()).st_size
            except ImportRefused as exc:
                if (self.source / volume.name).exists() or os.path.islink(
                    self.source / volume.name
                ):
                    raise exc from None
                size = -1
            if size == -1:
                self.missing.append(volume.name)
            elif size != volume.size:
                self.missing.append(f"{volume.name} ({size} bytes, not {volume.size}: "
                                    "truncated?)")
            self._state[number] = size == volume.size
        return self._state[number]

    def open(self, number: int) -> BinaryIO:
        if self._open is None or self._open[0] != number:
            self.close()
            self._open = (number, _open_plain(self.source, self.info.volumes[number - 1].name))
        return self._open[1]

    def reached(self, done: Callable[[int], None], end: bool = False) -> None:
        """Call ``done`` for each volume before the current one (every one, at the ``end``)
        whose bodies are all staged, once."""
        limit = len(self.info.volumes) if end else self._last - 1
        for number in range(self._marked + 1, limit + 1):
            if self._state.get(number):
                done(number)
        self._marked = max(self._marked, limit)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def _one_done(
    pending: set[concurrent.futures.Future[None]],
) -> set[concurrent.futures.Future[None]]:
    """Those of ``pending`` not done once one is (its failure raised), waited for a
    moment at a time: a signal's handler runs in the main thread, and a wait with no end
    there is not woken by a signal the kernel gave an upload thread (a second signal
    must stop an import at once)."""
    while True:
        done, left = concurrent.futures.wait(
            pending, _WAKE, concurrent.futures.FIRST_COMPLETED)
        for future in done:
            future.result()
        if done:
            return left
