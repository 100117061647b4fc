"""Downloading files: stream to a temporary file while hashing, verify, then rename.

A file reaches its published path only after its size and every hash upstream
gave have been checked, so the tree never holds an unverified byte. Runs as
coroutines, in the sync's process or in a download process: no state.db access here.

A wheel's PEP 658 metadata is its own ``*.dist-info/METADATA``: when upstream gives
that file's hashes, it is read from the verified wheel (``metadata_from_wheel``) and
checked against them like a download, sparing a request; it is downloaded only when
the wheel's copy does not match or cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, cast
from urllib.parse import urldefrag

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from simplemirror.cli.config import Config
from simplemirror.simple.model import DistFile, HeldFile
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import ChecksumRefused, Storage, open_storage
from simplemirror.sync import reuse
from simplemirror.sync.plan import FileTodo
from simplemirror.upstream.client import Client, UpstreamError, check_response

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # large chunks: fewer syscalls and hash updates per byte

# A wheel's METADATA larger than this is downloaded rather than read from the wheel,
# whose member says its size before a byte of it is unpacked.
WHEEL_METADATA_CAP = 16 * 1024**2
# Nor is a wheel read whose central directory is larger: zipfile reads it whole and
# makes an object of each entry, so a wheel declaring millions would cost gigabytes.
# A real wheel of 20,000 files has one of about 2 MB.
WHEEL_DIRECTORY_CAP = 4 * 1024**2
# What zipfile reads besides: the end records and its search for them in the last
# 64 KiB (a comment may be that long); a member's local header, with two fields as long.
_END_SEARCH = 128 * 1024
_LOCAL_HEADER = 30 + 2 * 0xFFFF


class TooLarge(UpstreamError):
    """A body with no declared size went past max-file-size: a failure, never retried."""


class VerificationError(Exception):
    """The bytes upstream sent do not match the size or a hash it declared."""


@dataclass(frozen=True)
class Downloaded:
    path: str
    """Where the verified file now is, below web/."""
    size: int
    hashes: dict[str, str]
    """Every digest checked, sha256 always among them."""


def _verify(
    url: str, digests: Mapping[str, str], expected: Mapping[str, str], size: int,
    expected_size: int | None,
) -> None:
    if expected_size is not None and size != expected_size:
        raise VerificationError(f"{url}: got {size} bytes, upstream declared {expected_size}")
    for algorithm, digest in expected.items():
        if digests[algorithm] != digest:
            raise VerificationError(
                f"{url}: {algorithm} is {digests[algorithm]}, upstream declared {digest}"
            )


class Sink:
    """One attempt at a file: its bytes counted, hashed and written to a temporary file
    as they arrive, then checked and moved into place.

    Never takes more than the declared size, or ``max-file-size`` when none was
    declared. Whoever reads the body (a worker thread, an event loop) feeds it.
    """

    def __init__(
        self, url: str, expected_hashes: Mapping[str, str], expected_size: int | None,
        max_file_size: int, tmp: Path,
    ) -> None:
        self.url = url
        self._expected_hashes = expected_hashes
        self._expected_size = expected_size
        self._limit = expected_size if expected_size is not None else max_file_size
        self._hashers = [("sha256", hashlib.sha256())]
        self._hashers += [(a, hashlib.new(a)) for a in expected_hashes if a != "sha256"]
        self.size = 0
        self._fd, self._name = store.create(tmp, store.DOWNLOAD_PREFIX)
        self._open = True

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        # A lying or endless server cannot fill the disk.
        if self.size > self._limit:
            if self._expected_size is None:
                # Not retried: each try could be max-file-size again (16 GiB by default).
                raise TooLarge(
                    f"{self.url}: body is larger than max-file-size ({self._limit} bytes); "
                    "raise max-file-size if such a file is right"
                )
            raise VerificationError(
                f"{self.url}: body is larger than the {self._limit} bytes upstream declared"
            )
        store.write_all(self._fd, chunk)
        for _, h in self._hashers:
            h.update(chunk)

    def _close(self) -> None:
        if self._open:
            self._open = False
            os.close(self._fd)

    def discard(self) -> None:
        """The attempt failed: nothing of it stays."""
        self._close()
        store.discard(self._name)

    def finish(
        self, storage: Storage, path_for_sha256: Callable[[str], str], new_dir: bool = False
    ) -> Downloaded:
        """The body is all there: verify it, and publish it at ``path_for_sha256(sha256)``.
        A store that computes another SHA-256 than ours refused it: VerificationError, so
        that it is downloaded again."""
        try:
            self._close()
            digests = {a: h.hexdigest() for a, h in self._hashers}
            _verify(self.url, digests, self._expected_hashes, self.size, self._expected_size)
            rel = path_for_sha256(digests["sha256"])
        except BaseException:
            self.discard()
            raise
        try:
            storage.install(self._name, rel, sha256=digests["sha256"], new_dir=new_dir)
        except ChecksumRefused as exc:
            raise VerificationError(str(exc)) from None
        return Downloaded(rel, self.size, digests)


async def fetch_to(
    client: Client,
    url: str,
    *,
    expected_hashes: Mapping[str, str],
    expected_size: int | None,
    path_for_sha256: Callable[[str], str],
    new_dir: bool = False,
) -> Downloaded:
    """One attempt: download ``url``, verify it, and move it to ``path_for_sha256(sha256)``.

    The bytes are hashed as they are stored, however they were sent: a ``.tar.gz``
    served with ``Content-Encoding: gzip`` is the file itself, as pip takes it.
    ``new_dir``: that path's directory is most likely new (see store.install).
    """
    config = client.config
    sink = Sink(url, expected_hashes, expected_size, config.max_file_size, config.tmp)
    try:
        async with client.stream(url) as response:
            check_response(response)
            if response.status != 200:
                # A 204, or a 3xx with no Location, holds no file: an empty body taken
                # for one would be published for a sibling with no hash (.asc).
                raise UpstreamError(f"{url}: HTTP {response.status}, not the file (200)")
            async for chunk in response.chunks(CHUNK):
                client.check_stop()
                sink.write(chunk)
    except BaseException:  # refused, reset or timed out, before or mid-body; or a stop
        sink.discard()
        raise
    storage = open_storage(config.web, config.storage)
    if storage.remote:  # an upload: in the upload threads, never on the event loop
        return await asyncio.get_running_loop().run_in_executor(
            storage.uploads(), sink.finish, storage, path_for_sha256, new_dir
        )
    return sink.finish(storage, path_for_sha256, new_dir)


@dataclass(frozen=True)
class Fetch:
    """One download: where from, what it must be, and where it goes below web/."""

    url: str
    expected_hashes: Mapping[str, str]
    expected_size: int | None
    path_for_sha256: Callable[[str], str]
    new_dir: bool = False
    """The path's directory is most likely new (see store.install)."""

    @classmethod
    def file(
        cls, url: str, filename: str, expected_hashes: Mapping[str, str],
        expected_size: int | None,
    ) -> Fetch:
        """A distribution file, to its content-addressed path."""
        return cls(
            url, expected_hashes, expected_size,
            lambda sha256: layout.file_path(sha256, filename),
            new_dir=True,  # each content-addressed file has a directory of its own
        )

    @classmethod
    def beside(cls, url: str, path: str, expected_hashes: Mapping[str, str]) -> Fetch:
        """A file that lives at ``path``, beside a distribution: its metadata (PEP 658),
        signature (.asc) or provenance (PEP 740)."""
        return cls(url, expected_hashes, None, lambda _sha256: path)


async def fetch(client: Client, wanted: Fetch) -> Downloaded:
    """``wanted``, with the configured retries (a failed hash check among them)."""
    return await client.retrying(
        lambda: fetch_to(
            client, wanted.url, expected_hashes=wanted.expected_hashes,
            expected_size=wanted.expected_size,
            path_for_sha256=wanted.path_for_sha256, new_dir=wanted.new_dir,
        ),
        also=VerificationError,
    )


class NotInWheel(Exception):
    """A wheel's METADATA cannot stand for its .metadata: it is downloaded instead."""


@dataclass(frozen=True)
class FromWheel:
    """A wheel's .metadata, to be read from the wheel itself, held at ``wheel`` below web/."""

    wheel: str
    filename: str
    expected_hashes: Mapping[str, str]
    """Upstream's hashes of the .metadata: every one must match, and there is one at least."""

    @classmethod
    def of(cls, wheel: str, filename: str, expected_hashes: Mapping[str, str]
           ) -> FromWheel | None:
        """The read that may stand for the .metadata of the file at ``wheel``; None when
        it is no wheel, or there is no hash to check what it holds against."""
        if not filename.endswith(".whl") or not expected_hashes:
            return None
        return cls(wheel, filename, expected_hashes)


class _Budget(io.RawIOBase):
    """A wheel opened for zipfile, which may read no more than ``left`` bytes of it.

    However a hostile archive is made (a central directory of millions of entries, a
    member that lies about its size), reading it costs that much and no more.
    """

    def __init__(self, raw: io.BufferedReader | io.FileIO, left: int) -> None:
        super().__init__()
        self._raw = raw
        self.left = left

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            here = self._raw.tell()
            size = max(0, self._raw.seek(0, os.SEEK_END) - here)
            self._raw.seek(here)
        if size > self.left:
            raise NotInWheel("it would take reading more of the wheel than a METADATA needs")
        data = self._raw.read(size) or b""
        self.left -= len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def _metadata_member(archive: zipfile.ZipFile, filename: str) -> zipfile.ZipInfo:
    """The one ``{name}-{version}.dist-info/METADATA`` of the wheel ``filename`` names."""
    name, version, _, _ = parse_wheel_filename(filename)
    found = [
        info for info in archive.infolist()
        if info.filename.endswith(".dist-info/METADATA") and info.filename.count("/") == 1
    ]
    if len(found) != 1:
        raise NotInWheel(f"it holds {len(found)} *.dist-info/METADATA, not one")
    member = found[0]
    directory = member.filename.removesuffix(".dist-info/METADATA")
    named, dash, said = directory.partition("-")
    try:
        right = bool(dash) and canonicalize_name(named) == name and Version(said) == version
    except InvalidVersion:
        right = False
    if not right:
        raise NotInWheel(f"its METADATA is in {directory}.dist-info, which its name does not name")
    if member.file_size > WHEEL_METADATA_CAP or member.compress_size > WHEEL_METADATA_CAP:
        raise NotInWheel(f"its METADATA is larger than {WHEEL_METADATA_CAP} bytes")
    return member


def metadata_from_wheel(config: Config, wanted: FromWheel) -> Downloaded:
    """The wheel's own METADATA, installed as its .metadata if it has every hash expected.

    NotInWheel, with nothing written, when it does not, or cannot be read: the wheel is
    not a zip, its METADATA is not the one ``{name}-{version}.dist-info`` its file name
    names (wheel spec), there is not exactly one, or it is too large.
    """
    if not wanted.expected_hashes:  # FromWheel.of gives none such; a guard all the same
        raise NotInWheel("upstream gives no hash to check it against")
    target = wanted.wheel + layout.METADATA_SUFFIX
    try:
        storage = open_storage(config.web, config.storage)
        with storage.open_file(wanted.wheel) as raw:
            wheel = _Budget(raw, _END_SEARCH + WHEEL_DIRECTORY_CAP)
            # cast: zipfile takes any binary file; typeshed names a narrower protocol.
            with zipfile.ZipFile(cast(IO[bytes], wheel)) as archive:
                member = _metadata_member(archive, wanted.filename)
                wheel.left = _LOCAL_HEADER + member.compress_size
                sink = Sink(
                    f"{wanted.filename}!{member.filename}", wanted.expected_hashes,
                    member.file_size, config.max_file_size, config.tmp,
                )
                try:
                    with archive.open(member) as body:
                        while chunk := body.read(CHUNK):
                            sink.write(chunk)
                except BaseException:
                    sink.discard()
                    raise
        return sink.finish(storage, lambda _sha256: target)
    except NotInWheel:
        raise
    # Whatever a hostile archive makes zipfile or a decompressor raise (their errors
    # share no base class), and a METADATA with other hashes: all are answered by
    # downloading the .metadata, which is checked in its turn.
    except Exception as exc:
        raise NotInWheel(str(exc) or type(exc).__name__) from exc


def held_file(
    project: str, dist: DistFile, path: str, size: int, hashes: Mapping[str, str],
    siblings: HeldFile | None = None, *, metadata_hashes: Mapping[str, str] | None = None,
    signature: bool = False, provenance: bool = False,
) -> HeldFile:
    """What the mirror records and publishes for ``dist``: upstream's description, our bytes.

    ``siblings``: the copy already held, whose metadata, signature and provenance are
    kept for as long as upstream still advertises them. ``metadata_hashes``,
    ``signature``, ``provenance``: siblings just fetched beside the file.
    """
    if metadata_hashes is None and siblings is not None and dist.core_metadata is not False:
        metadata_hashes = siblings.metadata_hashes
    return HeldFile(
        project=project,
        filename=dist.filename,
        path=path,
        size=size,
        hashes=dict(hashes),
        url=dist.url,
        requires_python=dist.requires_python,
        yanked=dist.yanked,
        yanked_reason=dist.yanked_reason,
        upload_time=dist.upload_time,
        metadata_hashes=dict(metadata_hashes) if metadata_hashes is not None else None,
        signature=signature or (
            siblings is not None and siblings.signature and bool(dist.gpg_sig)
        ),
        provenance=provenance or (
            siblings is not None and siblings.provenance and dist.provenance is not None
        ),
        extra=dict(dist.extra),
    )


@dataclass(frozen=True)
class Sibling:
    """A file that lives beside a distribution: its metadata, signature or provenance."""

    kind: str
    """metadata, signature or provenance."""
    url: str
    suffix: str
    expected_hashes: Mapping[str, str]

    def gained(self, got: Downloaded) -> dict[str, Any]:
        """What held_file is told of this sibling, now that ``got`` is beside the file."""
        if self.kind == "metadata":
            return {"metadata_hashes": got.hashes}
        return {self.kind: True}


def siblings_wanted(todo: FileTodo) -> Iterator[Sibling]:
    """The siblings ``todo`` asks for."""
    dist = todo.dist
    base_url = urldefrag(dist.url).url
    wanted = [
        (todo.fetch_metadata, "metadata", dist.metadata_url, layout.METADATA_SUFFIX),
        (todo.fetch_signature, "signature", base_url + layout.SIGNATURE_SUFFIX,
         layout.SIGNATURE_SUFFIX),
        (todo.fetch_provenance, "provenance", dist.provenance or "",
         layout.PROVENANCE_SUFFIX),
    ]
    for needed, kind, url, suffix in wanted:
        if not needed:
            continue
        expected = dist.core_metadata if kind == "metadata" else {}
        yield Sibling(kind, url, suffix, expected if isinstance(expected, Mapping) else {})


# What a sibling's download may fail with and leave its file published without it.
SIBLING_ERRORS = (UpstreamError, VerificationError)


class TodoResult(NamedTuple):
    held: HeldFile
    fetched: int
    """Bytes downloaded."""
    sibling_error: str | None
    """What went wrong with its siblings (the file is still published without them)."""
    metadata: Literal["wheel", "download"] | None = None
    """Where a .metadata placed beside it came from: read from the wheel, or downloaded."""
    reuse: reuse.Tally | None = None
    """What --reuse-from's candidates came to, when it had any."""
    reused: bool = False
    """The file itself was taken from --reuse-from, not downloaded."""


@dataclass(frozen=True)
class Reuse:
    """Take the file from one of ``candidates`` (--reuse-from) if one is what upstream
    describes (sync/reuse.py); NotReused when none is."""

    candidates: tuple[str, ...]
    wanted: Fetch


class NotReused(Exception):
    """No file an operator has is the one upstream describes: download it."""


def _take(client: Client, step: Reuse, tally: reuse.Tally) -> Downloaded:
    config = client.config
    wanted = step.wanted
    taken = reuse.take(
        step.candidates, storage=open_storage(config.web, config.storage), tmp=config.tmp,
        expected_hashes=wanted.expected_hashes, expected_size=wanted.expected_size,
        max_file_size=config.max_file_size, path_for_sha256=wanted.path_for_sha256,
        check_stop=client.check_stop, tally=tally,
    )
    if taken is None:
        raise NotReused(wanted.url)
    return Downloaded(taken.path, taken.size, taken.hashes)


def todo_steps(
    project: str, todo: FileTodo
) -> Generator[Fetch | FromWheel | Reuse, Downloaded, TodoResult]:
    """What fetching ``todo`` takes, without the fetching: each download (or read of a
    wheel's METADATA) it needs is yielded, and what came of it is sent back (or its
    error thrown in).

    download_todo drives them. A file that fails ends the todo, its siblings unasked;
    a sibling that fails is reported and the file kept.
    """
    dist = todo.dist
    fetched = 0
    reused = False
    copy: HeldFile | None = None
    hashes: Mapping[str, str]
    if todo.fetch_file:
        wanted = Fetch.file(dist.url, dist.filename, dist.hashes, dist.size)
        got = None
        if todo.reuse:
            with contextlib.suppress(NotReused):
                got = yield Reuse(todo.reuse, wanted)
        reused = got is not None
        if got is None:
            got = yield wanted
            fetched += got.size
        path, size, hashes = got.path, got.size, got.hashes
    else:
        copy = todo.held
        assert copy is not None
        path, size, hashes = copy.path, copy.size, copy.hashes
    errors: list[str] = []
    # Told to held_file at the end: one HeldFile a todo, not a copy for each sibling.
    gained: dict[str, Any] = {}
    metadata: Literal["wheel", "download"] | None = None
    for sibling in siblings_wanted(todo):
        read = None
        if sibling.kind == "metadata":
            read = FromWheel.of(path, dist.filename, sibling.expected_hashes)
        if read is not None:
            try:
                got = yield read
            except NotInWheel as exc:
                log.debug("%s: METADATA not read from the wheel (%s); downloading the "
                          ".metadata", dist.filename, exc)
            else:
                metadata = "wheel"
                gained.update(sibling.gained(got))
                continue
        beside = Fetch.beside(sibling.url, path + sibling.suffix, sibling.expected_hashes)
        if sibling.kind == "metadata" and todo.reuse_metadata and sibling.expected_hashes:
            try:
                got = yield Reuse(todo.reuse_metadata, beside)
            except NotReused:
                pass
            else:
                gained.update(sibling.gained(got))
                continue
        try:
            # A sibling on a host the policy refuses fails here, unasked (Client.stream).
            got = yield beside
        except SIBLING_ERRORS as exc:
            errors.append(f"{sibling.kind}: {exc}")
            continue
        fetched += got.size
        gained.update(sibling.gained(got))
        if sibling.kind == "metadata":
            metadata = "download"
    held = held_file(project, dist, path, size, hashes, copy, **gained)
    return TodoResult(held, fetched, "; ".join(errors) or None, metadata, reused=reused)


async def download_todo(client: Client, name: str, todo: FileTodo) -> TodoResult:
    """Fetch what ``todo`` needs (todo_steps), in whichever process runs it."""
    steps = todo_steps(name, todo)
    tally = reuse.Tally() if todo.reuse or todo.reuse_metadata else None
    try:
        wanted = next(steps)
        while True:
            try:
                if isinstance(wanted, FromWheel):
                    storage = open_storage(client.config.web, client.config.storage)
                    if storage.remote:  # a read and an upload: never on the loop
                        got = await asyncio.get_running_loop().run_in_executor(
                            storage.uploads(), metadata_from_wheel, client.config, wanted)
                    else:
                        # Kilobytes, from a local file (at most WHEEL_METADATA_CAP): no
                        # reason to leave the loop.
                        got = metadata_from_wheel(client.config, wanted)
                elif isinstance(wanted, Reuse):
                    assert tally is not None
                    # Whole files hashed (or copied): on a thread, not on the loop.
                    got = await asyncio.to_thread(_take, client, wanted, tally)
                else:
                    got = await fetch(client, wanted)
            except Exception as exc:
                wanted = steps.throw(exc)
            else:
                wanted = steps.send(got)
    except StopIteration as done:
        result: TodoResult = done.value
        return result if tally is None else result._replace(reuse=tally)
