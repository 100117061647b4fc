"""Where the published tree lives: a local ``web/`` directory, or an S3 bucket.

``Storage`` is what publishing needs of a place to publish to; ``Local`` is the tree
below ``web/`` (every call is one of ``tree``'s, so the local hot path costs what it
did), and ``s3.S3Storage`` is a bucket. Both name things by their path below ``web/``
(``layout``'s paths), which is also the key below the bucket's prefix.

What stays local whatever the storage: ``tmp/`` (a body is staged and verified there
before it is published), state.db, the lock and the reports.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from simplemirror.store import tree


class StorageError(OSError):
    """The storage cannot be used (a missing bucket, no access, an upload that failed
    after its retries); the message says what to do. An OSError, as a disk's would be."""


class ChecksumRefused(StorageError):
    """The store computed another SHA-256 than the one sent: the object was not kept.
    Concerns one file (its staged copy is bad), not the storage."""


@dataclass(frozen=True)
class Settings:
    """``storage = "s3://BUCKET/PREFIX"`` and its ``[storage]`` table."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    upload_workers: int = 8
    """Uploads at once, in each process that uploads."""
    multipart_threshold: int = 16 * 1024**2
    """Files this large or larger go up in parts (``multipart_chunk`` bytes each); a
    smaller one is held whole in memory while it is hashed and sent (s3.py)."""
    multipart_chunk: int = 16 * 1024**2
    retries: int = 3
    """Further attempts after a 5xx, a throttling answer or a reset connection."""
    packages_empty: bool | None = field(default=None, compare=False)
    """What the coordinating process's ``check`` found: packages/ empty as the run began,
    so no upload needs a HEAD first (s3.py); given to the download processes with the
    config (``Storage.handed_on``). None: ask. Not part of the settings' identity."""

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix, '' or ending in '/'."""
        path = urlsplit(self.url).path.strip("/")
        return f"{path}/" if path else ""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://BUCKET[/PREFIX]``; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not s3://BUCKET/PREFIX")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a query or fragment; give s3://BUCKET/PREFIX")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    # S3's rules for bucket names: 3 to 63 of lowercase letters, digits, dots and dashes.
    if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-"
                                              for c in bucket):
        raise ValueError(f"{bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise ValueError(f"{url!r}: the prefix has an empty, '.' or '..' part")
    return bucket, prefix


class Storage(Protocol):
    """The published tree, by paths below ``web/``."""

    remote: bool
    """Publishing blocks on the network: uploads run in a thread pool (``upload_workers``),
    never on an event loop."""
    where: str
    """For messages: the directory or the s3:// URL."""

    def uploads(self) -> concurrent.futures.Executor | None:
        """The threads uploads run in (None: publishing a file does not block)."""

    def check(self) -> None:
        """Usable at all (StorageError: a missing bucket, access denied); called before
        anything is fetched upstream."""

    def handed_on(self) -> Settings | None:
        """After ``check``: the settings the download processes are to use, with what
        ``check`` found that they need (None: the local tree)."""

    def install(self, staged: str, rel: str, *, sha256: str | None = None,
                new_dir: bool = False, dir_checked: bool = False) -> None:
        """Publish the verified file ``staged`` (in tmp/) at ``rel``; ``staged`` is gone
        afterwards, whatever happens. ``sha256``: its digest, when known."""

    def make_dir(self, rel_dir: str) -> bool:
        """Make ``rel_dir``; whether it is new (nothing there to compare with)."""

    def write_page(self, tmp: Path, rel: str, data: bytes, *, dir_checked: bool = False
                   ) -> str:
        """Replace ``rel`` with ``data`` whole; the sha256 of ``data``."""

    def same_bytes(self, rel: str, data: bytes) -> bool:
        """Whether ``rel`` holds exactly ``data``."""

    def sha256_of(self, rel: str) -> str | None:
        """The sha256 of what ``rel`` holds; None when it holds nothing."""

    def size_of(self, rel: str) -> int | None:
        """The size of the file at ``rel``; None when there is none."""

    def stat(self, rel: str) -> tuple[int, str | None] | None:
        """(size, sha256) of the file at ``rel`` without reading it: the sha256 it carries
        (None where it carries none: on disk, always); None when there is no file."""

    def is_file(self, rel: str) -> bool: ...

    def open_file(self, rel: str) -> io.BufferedReader | io.FileIO:
        """``rel``, for reading (seekable); FileNotFoundError when there is none."""

    def remove(self, rel: str, suffixes: Iterable[str] = ("",), *, stop: str = "") -> None:
        """Delete ``rel`` + each of ``suffixes`` (and, on disk, empty directories up to
        ``stop``)."""

    def remove_link(self, rel: str) -> bool:
        """Delete ``rel`` if it is a symlink; whether it was one (never, in a bucket)."""

    def list_dirs(self, rel_dir: str) -> list[str]:
        """The names of the entries of ``rel_dir`` that hold something, sorted."""

    def walk_files(self, rel_dir: str) -> Iterator[tuple[str, int]]:
        """Every file below ``rel_dir``: (path, size), streamed."""

    def changed_dirs(self, rel_dir: str, since: float) -> Iterator[str]:
        """The entries of ``rel_dir`` changed at or after ``since`` (epoch seconds)."""

    def changed_files(self, rel_dir: str, since: float) -> Iterator[str]:
        """The files below ``rel_dir`` changed at or after ``since``."""

    def flush(self) -> None:
        """Make what was published durable (before state.db records it)."""


class Local:
    """The tree below ``web/``, through ``tree``."""

    remote = False

    def __init__(self, web: Path) -> None:
        self.web = web
        self.where = str(web)

    def uploads(self) -> concurrent.futures.Executor | None:
        return None

    def check(self) -> None:
        pass  # the run makes web/ and checks tmp/ is on its filesystem

    def handed_on(self) -> Settings | None:
        return None

    def install(self, staged: str, rel: str, *, sha256: str | None = None,
                new_dir: bool = False, dir_checked: bool = False) -> None:
        tree.install(staged, self.web, rel, new_dir=new_dir, dir_checked=dir_checked)

    def make_dir(self, rel_dir: str) -> bool:
        return tree.make_dir(self.web, rel_dir)

    def write_page(self, tmp: Path, rel: str, data: bytes, *, dir_checked: bool = False
                   ) -> str:
        return tree.write_file(self.web, tmp, rel, data, dir_checked=dir_checked)

    def same_bytes(self, rel: str, data: bytes) -> bool:
        return tree.same_bytes(self.web, rel, data)

    def sha256_of(self, rel: str) -> str | None:
        return tree.sha256_of(self.web, rel)

    def size_of(self, rel: str) -> int | None:
        found = tree.stat_file(self.web, rel)
        return found.st_size if found is not None else None

    def stat(self, rel: str) -> tuple[int, str | None] | None:
        size = self.size_of(rel)
        return None if size is None else (size, None)

    def is_file(self, rel: str) -> bool:
        return tree.is_file(self.web, rel)

    def open_file(self, rel: str) -> io.BufferedReader | io.FileIO:
        return tree.open_file(self.web, rel)

    def remove(self, rel: str, suffixes: Iterable[str] = ("",), *, stop: str = "") -> None:
        tree.remove(self.web, rel, suffixes, stop=stop)

    def remove_link(self, rel: str) -> bool:
        return tree.remove_link(self.web, rel)

    def list_dirs(self, rel_dir: str) -> list[str]:
        return tree.list_dirs(self.web, rel_dir)

    def walk_files(self, rel_dir: str) -> Iterator[tuple[str, int]]:
        for rel in tree.walk_files(self.web, rel_dir):
            found = tree.stat_file(self.web, rel)
            if found is not None:
                yield rel, found.st_size

    def changed_dirs(self, rel_dir: str, since: float) -> Iterator[str]:
        # A directory's mtime moves when a page is renamed into it.
        for name in tree.list_dirs(self.web, rel_dir):
            if tree.changed_since(self.web, f"{rel_dir}/{name}", since):
                yield name

    def changed_files(self, rel_dir: str, since: float) -> Iterator[str]:
        for rel in tree.walk_files(self.web, rel_dir):
            if tree.changed_since(self.web, rel, since):
                yield rel

    def flush(self) -> None:
        tree.flush(self.web)


def open_storage(web: Path, settings: Settings | None) -> Storage:
    """The storage a mirror publishes to: ``web/``, or the bucket ``settings`` names.
    One object per mirror and process (a bucket's client and upload threads are reused)."""
    return _open(web, settings)


@functools.cache
def _open(web: Path, settings: Settings | None) -> Storage:
    if settings is None:
        return Local(web)
    from simplemirror.store import s3  # boto3 is imported only by who uses a bucket

    return s3.S3Storage(settings)
