"""Downloading files: stream to a temporary file while hashing, verify, then rename.

A file reaches its published path only after its size and every hash upstream
gave have been checked, so the tree never holds an unverified byte. Runs in
worker threads: no state.db access here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from simplemirror import layout, tempfiles
from simplemirror.transport import Stream, TransportError
from simplemirror.upstream import Client, TransientError, check_response

CHUNK = 1 << 20  # large chunks: fewer syscalls and hash updates per byte
# The tree is served by another user (nginx, say).
PUBLISHED_MODE = 0o644


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


def _chunks(url: str, response: Stream) -> Iterator[bytes]:
    """The body as it arrives, up to CHUNK bytes at a time.

    read1 returns what is there rather than waiting for a full chunk, so a
    stop request is seen promptly even on a slow link.
    """
    read = response.body.read1
    try:
        while chunk := read(CHUNK):
            yield chunk
    except TransportError as exc:  # a reset or timeout mid-body
        raise TransientError(str(exc)) from exc


def fetch_to(
    client: Client,
    url: str,
    *,
    expected_hashes: Mapping[str, str],
    expected_size: int | None,
    web: Path,
    tmp: Path,
    path_for_sha256: Callable[[str], str],
    new_dir: bool = False,
) -> Downloaded:
    """One attempt: download ``url``, verify it, and move it to ``path_for_sha256(sha256)``.

    Never takes more than the declared size, or ``max-file-size`` when none was declared.
    ``new_dir``: that path's directory is most likely new (see tempfiles.install).
    """
    limit = expected_size if expected_size is not None else client.config.max_file_size
    algorithms = {"sha256", *expected_hashes}
    hashers = {a: hashlib.new(a) for a in algorithms}
    size = 0
    fd, tmp_name = tempfiles.create(tmp, "dl-", PUBLISHED_MODE)
    try:
        try:
            with client.stream(url) as response:
                check_response(response)
                for chunk in _chunks(url, response):
                    client.check_stop()
                    size += len(chunk)
                    # A lying or endless server cannot fill the disk.
                    if size > limit:
                        raise VerificationError(
                            f"{url}: body is larger than the {limit} bytes "
                            + ("upstream declared" if expected_size is not None
                               else "max-file-size")
                        )
                    tempfiles.write_all(fd, chunk)
                    for h in hashers.values():
                        h.update(chunk)
        finally:
            os.close(fd)
        digests = {a: h.hexdigest() for a, h in hashers.items()}
        _verify(url, digests, expected_hashes, size, expected_size)
        rel = path_for_sha256(digests["sha256"])
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    tempfiles.install(tmp_name, f"{web}/{rel}", new_dir=new_dir)
    return Downloaded(rel, size, digests)


def fetch_file(
    client: Client,
    url: str,
    filename: str,
    *,
    expected_hashes: Mapping[str, str],
    expected_size: int | None,
    web: Path,
    tmp: Path,
) -> Downloaded:
    """Download a distribution file to its content-addressed path, with retries."""
    return client.retrying(
        lambda: fetch_to(
            client,
            url,
            expected_hashes=expected_hashes,
            expected_size=expected_size,
            web=web,
            tmp=tmp,
            path_for_sha256=lambda sha256: layout.file_path(sha256, filename),
            new_dir=True,  # each content-addressed file has a directory of its own
        ),
        also=VerificationError,
    )


def fetch_sibling(
    client: Client,
    url: str,
    file_path: str,
    suffix: str,
    *,
    expected_hashes: Mapping[str, str],
    web: Path,
    tmp: Path,
) -> Downloaded:
    """Download a file that lives beside a distribution (``file_path + suffix``), with retries.

    Its metadata (PEP 658), signature (.asc) or provenance (PEP 740).
    """
    return client.retrying(
        lambda: fetch_to(
            client,
            url,
            expected_hashes=expected_hashes,
            expected_size=None,
            web=web,
            tmp=tmp,
            path_for_sha256=lambda _sha256: file_path + suffix,
        ),
        also=VerificationError,
    )


def fetch_metadata(
    client: Client,
    url: str,
    file_path: str,
    *,
    expected_hashes: Mapping[str, str],
    web: Path,
    tmp: Path,
) -> Downloaded:
    """Download a PEP 658 metadata file next to the file it describes, with retries."""
    return fetch_sibling(
        client, url, file_path, layout.METADATA_SUFFIX,
        expected_hashes=expected_hashes, web=web, tmp=tmp,
    )
