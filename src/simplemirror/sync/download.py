"""Downloading files: stream to a temporary file while hashing, verify, then rename.

A file reaches its published path only after its size and every hash upstream
gave have been checked, so the tree never holds an unverified byte. Runs as
coroutines, in the sync's process or in a download process: no state.db access here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

from simplemirror.simple.model import DistFile, HeldFile
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.sync.plan import FileTodo
from simplemirror.upstream.client import Client, UpstreamError, check_response

CHUNK = 1 << 20  # large chunks: fewer syscalls and hash updates per byte


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
        self, web: Path, path_for_sha256: Callable[[str], str], new_dir: bool = False
    ) -> Downloaded:
        """The body is all there: verify it, and move it to ``path_for_sha256(sha256)``."""
        try:
            self._close()
            digests = {a: h.hexdigest() for a, h in self._hashers}
            _verify(self.url, digests, self._expected_hashes, self.size, self._expected_size)
            rel = path_for_sha256(digests["sha256"])
        except BaseException:
            self.discard()
            raise
        store.install(self._name, web, rel, new_dir=new_dir)
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
    return sink.finish(config.web, path_for_sha256, new_dir)


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

TodoResult = tuple[HeldFile, int, str | None]
"""The held file, the bytes fetched, and what went wrong with its siblings."""


def todo_steps(project: str, todo: FileTodo) -> Generator[Fetch, Downloaded, TodoResult]:
    """What fetching ``todo`` takes, without the fetching: each download it needs is
    yielded, and what came of it is sent back (or its error thrown in).

    download_todo drives them. A file that fails
    ends the todo; a sibling that fails is reported and the file kept.
    """
    dist = todo.dist
    fetched = 0
    copy: HeldFile | None = None
    hashes: Mapping[str, str]
    if todo.fetch_file:
        got = yield Fetch.file(dist.url, dist.filename, dist.hashes, dist.size)
        path, size, hashes = got.path, got.size, got.hashes
        fetched += got.size
    else:
        copy = todo.held
        assert copy is not None
        path, size, hashes = copy.path, copy.size, copy.hashes
    errors: list[str] = []
    # Told to held_file at the end: one HeldFile a todo, not a copy for each sibling.
    gained: dict[str, Any] = {}
    for sibling in siblings_wanted(todo):
        try:
            # A sibling on a host the policy refuses fails here, unasked (Client.stream).
            got = yield Fetch.beside(sibling.url, path + sibling.suffix, sibling.expected_hashes)
        except SIBLING_ERRORS as exc:
            errors.append(f"{sibling.kind}: {exc}")
            continue
        fetched += got.size
        gained.update(sibling.gained(got))
    held = held_file(project, dist, path, size, hashes, copy, **gained)
    return held, fetched, "; ".join(errors) or None


async def download_todo(client: Client, name: str, todo: FileTodo) -> TodoResult:
    """Fetch what ``todo`` needs (todo_steps), in whichever process runs it.

    Returns the held file, the bytes fetched, and what went wrong with its siblings
    (the file is still published without them).
    """
    steps = todo_steps(name, todo)
    try:
        wanted = next(steps)
        while True:
            try:
                got = await fetch(client, wanted)
            except Exception as exc:
                wanted = steps.throw(exc)
            else:
                wanted = steps.send(got)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
