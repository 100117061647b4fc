"""The published tree in an S3 bucket (``storage = "s3://BUCKET/PREFIX"``).

Keys are the tree's paths below the prefix (``PREFIX/simple/<name>/index.html``,
``PREFIX/packages/...``, ``PREFIX/last-modified``). Every object is sent with the
Content-Type ``mirror serve`` answers for it, a Cache-Control, a SHA-256 of its body as the
checksum the store verifies before it keeps the object (``x-amz-checksum-sha256``; a
mismatch is refused, ``ChecksumRefused``), and its hex sha256 in the object's metadata
(``x-amz-meta-sha256``), which a HEAD returns for a multipart object too, whose own
checksum is one of its parts' checksums. So "already there" is a HEAD: the right size and
sha256, and the file is not sent again.

Two clients, each for what it does best. Uploads go through obstore (Rust's
object_store): a fifth of boto3's CPU a request, which on a first sync (one PUT a file and
a page) is most of the client's cost (benchmarks/README.md, object storage). obstore
computes the SHA-256 it sends from the bytes it is given, so those bytes are hashed here
first and compared with the verified file's; a large file goes up in parts read from disk
(``multipart_chunk`` bytes, ``_PARTS_AT_ONCE`` at once: bounded memory), hashed as they
are read, the last part held back if the whole is not the file verified. Everything else
(HEAD, GET, list, delete) is boto3, which obstore cannot replace: its HEAD returns neither
the store's checksum nor the metadata. Both take their credentials from boto3's standard
AWS chain (environment, shared credentials file, instance role). boto3 from 1.36 on adds
a CRC32 checksum to every request unless told otherwise, which some S3-compatible stores
refuse; here it sends none (``when_required``).

Atomicity: a PUT is whole or absent, so a reader sees the old object or the new one.
Nothing is made durable later: an object is durable once its PUT returns, so ``flush``
has nothing to do. 5xx answers, throttling (503 SlowDown) and reset connections are
retried with exponential backoff and jitter (obstore's retries for uploads, botocore's
standard mode for the rest), ``retries`` times over.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
import obstore
from obstore.auth.boto3 import Boto3CredentialProvider
from obstore.store import S3Store

from simplemirror.serve import rules
from simplemirror.store import state, tree
from simplemirror.store.backend import ChecksumRefused, Settings, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from obstore import Attributes
    from obstore.store import S3Config
else:
    S3Client = Any

# Keys are listed 1000 at a time (S3's page); a delete takes as many.
_BATCH = 1000
# Objects' LastModified is the store's clock: a recovery looks this much further back.
CLOCK_MARGIN = 300.0
_LIST_WORKERS = 8
"""Listings at once (walk_files)."""
_LIST_AHEAD = 16
"""Directories listed ahead of the one being read (walk_files)."""
_READ_BLOCK = 1024**2
_PARTS_AT_ONCE = 4
"""Parts of one large file uploaded at once (each ``multipart_chunk`` bytes in memory)."""
_RECENT = 32
"""Files just uploaded whose last bytes are kept for open_file (each _READ_BLOCK at most):
a wheel's METADATA is read from it right after it went up (sync/download.py)."""
_REFUSED = ("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch",
            "XAmzContentSHA256Mismatch")
"""S3's codes for a body that is not what its checksum says."""


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _one_line(exc: Exception) -> str:
    """An error's message without obstore's "Debug source" and the store's XML."""
    text = str(exc).partition("\n\nDebug source:")[0]
    return " ".join(re.sub(r"<\?xml.*", "", text, flags=re.S).split()).rstrip(": ")


def _answer_of(exc: Exception) -> tuple[str, int]:
    """(S3's error code, HTTP status) in one of obstore's errors, where it got an answer."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    return (code.group(1) if code else "", int(status.group(1)) if status else 0)


class S3Storage:
    """A bucket, below a prefix; a client and an upload pool per process (fork-safe)."""

    remote = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.where = settings.url
        self._pid = -1
        self._lock = threading.RLock()
        self._client: S3Client | None = None
        self._store: S3Store | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._empty: bool | None = settings.packages_empty
        self._recent: collections.OrderedDict[str, tuple[int, bytes]] = (
            collections.OrderedDict())
        """rel -> (size, its last _READ_BLOCK bytes), of files this process uploaded."""

    # -- the client, made in the process that uses it ------------------------------------

    @property
    def client(self) -> S3Client:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = self._make_client()
                    self._store = None
                    self._pool = None
                    self._empty = self.settings.packages_empty
                    self._pid = os.getpid()
        return self._client

    def _make_client(self) -> S3Client:
        s = self.settings
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": s.retries + 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Path-style for an endpoint of one's own (SeaweedFS, MinIO, Ceph): their
            # host names rarely resolve per bucket.
            s3={"addressing_style": "path" if s.endpoint_url else "auto"},
            # Uploads, each file's parts, and the publisher's pages, at once.
            max_pool_connections=s.upload_workers * 4 + 4,
            connect_timeout=10, read_timeout=60,
            # Our own calls, well-formed by construction: checking each costs ~10% of a
            # request's CPU (benchmarks/README.md, object storage).
            parameter_validation=False,
        )
        session = boto3.session.Session()
        client: S3Client = session.client(
            "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=config
        )
        return client

    @property
    def store(self) -> S3Store:
        """obstore's client for uploads: a fifth of boto3's CPU a request
        (benchmarks/README.md, object storage), with the credentials boto3 finds."""
        self.client  # noqa: B018  # a new process gets a new store with its client
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._make_store()
        return self._store

    def _make_store(self) -> S3Store:
        s = self.settings
        session = boto3.session.Session()
        try:
            credentials = Boto3CredentialProvider(session)
        except ValueError:  # boto3 found none
            raise self._error(botocore.exceptions.NoCredentialsError(), "upload to") from None
        config: S3Config = {"checksum_algorithm": "sha256"}
        region = s.region or session.region_name or self._bucket_region()
        if region:
            config["region"] = region
        if s.endpoint_url:
            config["endpoint"] = s.endpoint_url
            config["virtual_hosted_style_request"] = False  # path-style, as for boto3
        return S3Store(
            s.bucket, config=config, credential_provider=credentials,
            client_options={"connect_timeout": timedelta(seconds=10),
                            "timeout": timedelta(seconds=300),
                            "allow_http": (s.endpoint_url or "").startswith("http://")},
            retry_config={"max_retries": s.retries,
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=15), "base": 2},
                          "retry_timeout": timedelta(minutes=5)},
        )

    def _bucket_region(self) -> str | None:
        """The bucket's region as the store tells it (one HEAD): with none set anywhere,
        boto3 follows the store's redirect to it, obstore does not, and every upload
        would be signed for the wrong region."""
        try:
            answer = self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return None  # check() has said what is wrong, or an upload will
        region = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
            "x-amz-bucket-region")
        return str(region) if region else None

    def uploads(self) -> concurrent.futures.Executor:
        return self.pool

    @property
    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """``upload_workers`` threads: the uploads of this process run there."""
        self.client  # noqa: B018  # a new process gets a new pool with its client
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.settings.upload_workers, thread_name_prefix="upload"
                    )
        return self._pool

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def _error(self, exc: Exception, doing: str) -> StorageError:
        """One line for what went wrong with the bucket, saying what to do."""
        where = f"{self.where}" + (
            f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        )
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageError(
                f"no AWS credentials to {doing} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials (AWS_PROFILE), or "
                "run with an instance role"
            )
        if isinstance(exc, botocore.exceptions.ClientError) or not isinstance(
                exc, botocore.exceptions.BotoCoreError):
            code, status = ((_code(exc), _status(exc))
                            if isinstance(exc, botocore.exceptions.ClientError)
                            else _answer_of(exc))
            if not code and not status:  # no answer from the store (obstore's errors)
                return StorageError(f"cannot {doing} {where}: {_one_line(exc)}")
            if code in {"NoSuchBucket", "404"} or (status == 404 and doing == "use"):
                return StorageError(
                    f"bucket {self.bucket!r} does not exist ({where}): create it, or fix "
                    "storage in the config"
                )
            if status == 403 or code in {"AccessDenied", "InvalidAccessKeyId",
                                         "SignatureDoesNotMatch", "403"}:
                return StorageError(
                    f"access denied to {where} ({code or status}) while trying to {doing} "
                    "it: check the AWS credentials (environment, ~/.aws/credentials, "
                    "instance role) and the bucket's policy"
                )
            return StorageError(f"cannot {doing} {where}: {code or status}: {_one_line(exc)}")
        return StorageError(f"cannot {doing} {where}: {_one_line(exc)}")

    def _packages_empty(self) -> bool:
        """Whether packages/ held nothing as this run began.

        Then no file can be there already (nothing was seeded, no run died after
        uploading), and the HEAD before each upload, half of a first sync's requests, is
        skipped. Asked once a run, by ``check`` in the coordinating process, before
        anything is uploaded; the download processes are told (``handed_on``): asked by
        each, later, it would find what the others had uploaded meanwhile, and HEAD every
        file. Without ``check`` (verify, import), asked at the first upload.
        """
        if self._empty is None:
            with self._lock:
                if self._empty is None:
                    try:
                        page = self.client.list_objects_v2(
                            Bucket=self.bucket, Prefix=self.key("packages/"), MaxKeys=1
                        )
                    except (botocore.exceptions.BotoCoreError,
                            botocore.exceptions.ClientError) as exc:
                        raise self._error(exc, "list") from None
                    self._empty = not page.get("Contents")
        return self._empty

    def check(self) -> None:
        self._empty = None
        with self._lock:
            # What an earlier run of this process sent may have changed in the bucket
            # since: each run (or import) reads the bucket afresh.
            self._recent.clear()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "use") from None
        self._packages_empty()

    def handed_on(self) -> Settings:
        return dataclasses.replace(self.settings, packages_empty=self._packages_empty())

    # -- writing -----------------------------------------------------------------------

    def _head(self, rel: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = dict(self.client.head_object(
                Bucket=self.bucket, Key=self.key(rel), ChecksumMode="ENABLED"
            ))
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404 or _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise self._error(exc, f"read {rel} in") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"read {rel} in") from None
        return found

    @staticmethod
    def _sha256_in(head: dict[str, Any]) -> str | None:
        """The sha256 of an object that the store vouches for: its own SHA-256 of an
        object in one part, or, for one in parts (whose checksum is of its parts', each
        verified on upload), the sha256 in its metadata. None for an object without a
        SHA-256 of the store's (put there by other means): metadata alone proves
        nothing, and such an object is read (verify) or sent again (install)."""
        theirs = head.get("ChecksumSHA256")
        if not theirs:
            return None
        if "-" not in theirs:  # "...-N": a multipart object's composite
            return base64.b64decode(theirs).hex()
        ours = head.get("Metadata", {}).get("sha256")
        return str(ours) if ours else None

    def _put(self, rel: str, body: bytes | Iterator[bytes], sha256: str) -> None:
        """One PUT (``bytes``) or a multipart upload (an iterator of parts), through
        obstore: each request carries the SHA-256 of its body, which the store checks
        before keeping it."""
        try:
            obstore.put(
                self.store, self.key(rel), body, attributes=self._attributes(rel, sha256),
                chunk_size=self.settings.multipart_chunk, max_concurrency=_PARTS_AT_ONCE,
            )
        except ChecksumRefused:
            raise
        except FileNotFoundError as exc:  # obstore's NotFound: no such bucket
            raise self._error(exc, f"upload {rel} to") from None
        except Exception as exc:  # obstore's errors: GenericError and its kin
            if _answer_of(exc)[0] in _REFUSED:
                raise ChecksumRefused(
                    f"{self.key(rel)}: the store found another SHA-256 than the one sent "
                    "with it, and refused it"
                ) from None
            raise self._error(exc, f"upload {rel} to") from None

    def _attributes(self, rel: str, sha256: str) -> Attributes:
        return {
            "Content-Type": rules.content_type(rel),
            "Cache-Control": rules.cache_control(rel),
            "sha256": sha256,  # any other name: user metadata (x-amz-meta-sha256)
        }

    def install(self, staged: str, rel: str, *, sha256: str | None = None,
                new_dir: bool = False, dir_checked: bool = False) -> None:
        try:
            size = os.stat(staged).st_size
            if sha256 is None:
                with open(staged, "rb") as f:
                    sha256 = hashlib.file_digest(f, "sha256").hexdigest()
            held = None if self._packages_empty() else self._head(rel)
            if (held is not None and held.get("ContentLength") == size
                    and self._sha256_in(held) == sha256):
                return  # there already (a resumed run, a bucket seeded by other means)
            with open(staged, "rb") as f:
                if size < self.settings.multipart_threshold:
                    body = f.read()
                    self._same(rel, hashlib.sha256(body).hexdigest(), sha256)
                    self._put(rel, body, sha256)
                    self._keep(rel, body)
                else:
                    self._put(rel, self._parts(f, rel, sha256), sha256)
        finally:
            tree.discard(staged)

    def _keep(self, rel: str, body: bytes) -> None:
        """Remember ``body``'s end, so that reading it back (open_file) asks for nothing:
        the bytes are the ones verified and sent."""
        with self._lock:
            self._recent[rel] = (len(body), body[-_READ_BLOCK:])
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def _same(self, rel: str, found: str, sha256: str) -> None:
        """The bytes about to go up are the file that was verified: obstore sends the
        SHA-256 of what it is given, so what it is given is checked against ours first."""
        if found != sha256:
            raise ChecksumRefused(
                f"{self.key(rel)}: the staged file's SHA-256 is {found}, not {sha256}; "
                "not uploaded"
            )

    def _parts(self, f: BinaryIO, rel: str, sha256: str) -> Iterator[bytes]:
        """A large file in parts read from disk (``_PARTS_AT_ONCE`` going up, and the next
        read, in memory), hashed as they are read; a mismatch raises before the last part is given,
        so the upload is aborted and nothing is kept."""
        digest = hashlib.sha256()
        chunk = self.settings.multipart_chunk
        part = f.read(chunk)
        while part:
            digest.update(part)
            following = f.read(chunk)
            if not following:
                self._same(rel, digest.hexdigest(), sha256)
            yield part
            part = following

    def make_dir(self, rel_dir: str) -> bool:
        return False  # a bucket has no directories: pages are compared with what is there

    def write_page(self, tmp: Path, rel: str, data: bytes, *, dir_checked: bool = False
                   ) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        self._put(rel, data, sha256)
        return sha256

    # -- reading -----------------------------------------------------------------------

    def same_bytes(self, rel: str, data: bytes) -> bool:
        held = self._head(rel)
        return (held is not None and held.get("ContentLength") == len(data)
                and self._sha256_in(held) == hashlib.sha256(data).hexdigest())

    def sha256_of(self, rel: str) -> str | None:
        held = self._head(rel)
        return None if held is None else self._sha256_in(held)

    def size_of(self, rel: str) -> int | None:
        held = self._head(rel)
        return None if held is None else int(held["ContentLength"])

    def stat(self, rel: str) -> tuple[int, str | None] | None:
        held = self._head(rel)
        return None if held is None else (int(held["ContentLength"]), self._sha256_in(held))

    def is_file(self, rel: str) -> bool:
        return self._head(rel) is not None

    def open_file(self, rel: str) -> io.BufferedReader:
        """One GET of the object's last _READ_BLOCK bytes: a smaller object (most wheels,
        every page) is then read from memory; a larger one by ranged GETs, its end (where a
        zip's directory is) kept from the first. A file this process has just uploaded
        is read from what it sent (read once: a wheel's METADATA)."""
        with self._lock:
            sent = self._recent.pop(rel, None)
        if sent is not None:
            size, tail = sent
            return io.BufferedReader(_Ranges(self, self.key(rel), size, tail), _READ_BLOCK)
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key(rel), Range=f"bytes=-{_READ_BLOCK}"
            )
            tail = answer["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404 or _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise FileNotFoundError(f"{self.key(rel)} is not in {self.where}") from None
            if _status(exc) == 416:  # an empty object: no last byte to ask for
                return io.BufferedReader(io.BytesIO(b""))
            raise self._error(exc, f"read {rel} in") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"read {rel} in") from None
        content_range = str(answer.get("ContentRange") or "")
        size = int(content_range.rpartition("/")[2]) if "/" in content_range else len(tail)
        return io.BufferedReader(_Ranges(self, self.key(rel), size, tail), _READ_BLOCK)

    def describe(self, rel: str) -> tuple[int, str, float] | None:
        """(size, ETag, Last-Modified as epoch seconds) of the object at ``rel``; None
        when there is none."""
        held = self._head(rel)
        if held is None:
            return None
        return (int(held["ContentLength"]), str(held["ETag"]).strip('"'),
                held["LastModified"].timestamp())

    def stream(self, rel: str, first: int, last: int) -> Iterator[bytes]:
        """Bytes ``first`` to ``last`` (inclusive) of the object at ``rel``, in pieces:
        none past the object's end; FileNotFoundError when there is no object."""
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key(rel), Range=f"bytes={first}-{last}"
            )
            yield from answer["Body"].iter_chunks(256 * 1024)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404 or _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise FileNotFoundError(f"{self.key(rel)} is not in {self.where}") from None
            if _status(exc) == 416:  # the object is shorter than asked: nothing there
                return
            raise self._error(exc, f"read {rel} in") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"read {rel} in") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of ``key``."""
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            return answer["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, f"read {key} in") from None

    def _listing(self, rel_dir: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """The pages of a listing below ``rel_dir``/, one at a time (never all at once)."""
        paginator = self.client.get_paginator("list_objects_v2")
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key(rel_dir) + "/"}
        if delimiter:
            args["Delimiter"] = delimiter
        try:
            for page in paginator.paginate(**args):
                yield dict(page)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list") from None

    def list_dirs(self, rel_dir: str) -> list[str]:
        cut = len(self.key(rel_dir)) + 1
        return sorted(
            p["Prefix"][cut:].rstrip("/")
            for page in self._listing(rel_dir, "/") for p in page.get("CommonPrefixes", ())
        )

    def _objects(self, rel_dir: str) -> Iterator[tuple[str, dict[str, Any]]]:
        cut = len(self.prefix)
        for page in self._listing(rel_dir):
            for item in page.get("Contents", ()):
                yield item["Key"][cut:], item

    def walk_files(self, rel_dir: str) -> Iterator[tuple[str, int]]:
        """(path, size) of every object below ``rel_dir``, listed in parallel over its
        first-level directories (packages/<xx>/: 256 of them): one listing returns at
        most 1,000 keys a request, so millions of objects listed one request after
        another take minutes. At most _LIST_AHEAD directories are held listed, each as
        (path, size) pairs, so memory stays bounded by the largest few."""
        cut = len(self.prefix)
        subdirs: list[str] = []
        for page in self._listing(rel_dir, "/"):
            for item in page.get("Contents", ()):
                yield item["Key"][cut:], int(item["Size"])
            subdirs += [p["Prefix"][cut:].rstrip("/") for p in page.get("CommonPrefixes", ())]

        def listed(sub: str) -> list[tuple[str, int]]:
            return [(rel, int(item["Size"])) for rel, item in self._objects(sub)]

        with concurrent.futures.ThreadPoolExecutor(_LIST_WORKERS) as pool:
            left = iter(subdirs)
            ahead = collections.deque(pool.submit(listed, sub)
                                      for sub in itertools.islice(left, _LIST_AHEAD))
            while ahead:
                yield from ahead.popleft().result()
                sub = next(left, None)
                if sub is not None:
                    ahead.append(pool.submit(listed, sub))

    def look(self, rel: str) -> tuple[int, str | None, float] | None:
        """(size, the sha256 the store vouches for or None, LastModified as epoch seconds)
        of the object at ``rel``, from one HEAD; None when there is none."""
        held = self._head(rel)
        if held is None:
            return None
        return (int(held["ContentLength"]), self._sha256_in(held),
                held["LastModified"].timestamp())

    def holds(self, rel_dir: str) -> bool:
        """Whether any object lies below ``rel_dir``/ (one request)."""
        try:
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.key(rel_dir) + "/", MaxKeys=1
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list") from None
        return bool(page.get("Contents"))

    def walk_sorted(
        self, spill: Path, split: str = "packages", tick: Callable[[], None] = lambda: None,
    ) -> Iterator[tuple[str, int, float]]:
        """(path, size, LastModified as epoch seconds) of every object below the prefix, in
        bytewise order of path, streamed: what a walk of web/ in order gives.

        A store's listing order is not relied on: SeaweedFS lists directory by directory,
        simple/foo/index.html before simple/foo-bar/index.html ('-' sorts before '/').
        So each listing is put in order here: the directories below ``split``
        (packages/<xx>/, most of the objects) are listed in parallel, _LIST_AHEAD of them
        held at most, as walk_files does, and each is sorted in memory; any other
        (simple/: a few names per project, millions) goes through a SQLite table in
        ``spill`` (a directory of the mirror's own), so memory stays bounded. A path out
        of order after that is a StorageError, not a stranger in the tree. ``tick``: called
        at each page listed into a table (it may raise, to stop)."""
        last = ""
        for entry in self._in_order(spill, split, tick):
            if entry[0] <= last:
                raise StorageError(
                    f"{self.where} listed {entry[0]!r} after {last!r}: its listing could "
                    "not be put in key order; report it to simplemirror's maintainers"
                )
            last = entry[0]
            yield entry

    def _in_order(
        self, spill: Path, split: str, tick: Callable[[], None],
    ) -> Iterator[tuple[str, int, float]]:
        cut = len(self.prefix)

        def level(key_prefix: str) -> list[tuple[str, dict[str, Any] | None]]:
            """One level below ``key_prefix``: (key, its listing entry) of the objects,
            (prefix ending in '/', None) of the directories, in key order (a directory
            sorts as its name and a slash, as the keys below it do)."""
            found: list[tuple[str, dict[str, Any] | None]] = []
            paginator = self.client.get_paginator("list_objects_v2")
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix,
                                               Delimiter="/"):
                    found += [(item["Key"], dict(item)) for item in page.get("Contents", ())]
                    found += [(p["Prefix"], None) for p in page.get("CommonPrefixes", ())]
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as exc:
                raise self._error(exc, "list") from None
            return sorted(found, key=lambda entry: entry[0])

        def flat(key_prefix: str) -> Iterator[tuple[str, int, float]]:
            for page in self._listing(key_prefix[cut:].rstrip("/")):
                for item in page.get("Contents", ()):
                    yield (item["Key"][cut:], int(item["Size"]),
                           item["LastModified"].timestamp())

        def one(key: str, item: dict[str, Any]) -> tuple[str, int, float]:
            return key[cut:], int(item["Size"]), item["LastModified"].timestamp()

        def held_sorted(key_prefix: str) -> Iterator[tuple[str, int, float]]:
            return iter(sorted(flat(key_prefix)))

        for key, item in level(self.prefix):
            if item is not None:
                yield one(key, item)
            elif key != self.key(split) + "/":
                yield from _spilled(flat(key), spill, tick)
            else:
                yield from self._ahead(level(key), one, held_sorted)

    @staticmethod
    def _ahead(
        entries: list[tuple[str, dict[str, Any] | None]],
        one: Callable[[str, dict[str, Any]], tuple[str, int, float]],
        flat: Callable[[str], Iterator[tuple[str, int, float]]],
    ) -> Iterator[tuple[str, int, float]]:
        """The objects of ``entries`` in their order, each directory listed (``flat``) in
        the pool, _LIST_AHEAD of them ahead of the one being read."""

        def listed(key: str, item: dict[str, Any] | None) -> list[tuple[str, int, float]]:
            return [one(key, item)] if item is not None else list(flat(key))

        with concurrent.futures.ThreadPoolExecutor(_LIST_WORKERS) as pool:
            left = iter(entries)
            ahead = collections.deque(pool.submit(listed, *entry)
                                      for entry in itertools.islice(left, _LIST_AHEAD))
            while ahead:
                yield from ahead.popleft().result()
                entry = next(left, None)
                if entry is not None:
                    ahead.append(pool.submit(listed, *entry))

    def changed_dirs(self, rel_dir: str, since: float) -> Iterator[str]:
        last = None
        cut = len(rel_dir) + 1
        for rel, item in self._objects(rel_dir):
            name = rel[cut:].partition("/")[0]
            if name != last and item["LastModified"].timestamp() >= since - CLOCK_MARGIN:
                last = name
                yield name

    def changed_files(self, rel_dir: str, since: float) -> Iterator[str]:
        for rel, item in self._objects(rel_dir):
            if item["LastModified"].timestamp() >= since - CLOCK_MARGIN:
                yield rel

    # -- removing ----------------------------------------------------------------------

    def remove(self, rel: str, suffixes: Iterable[str] = ("",), *, stop: str = "") -> None:
        self.remove_keys(self.key(rel + suffix) for suffix in suffixes)

    def remove_keys(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` (full keys), a batch of 1000 a request; a missing key is no error."""
        batch: list[str] = []

        def send() -> None:
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as exc:
                raise self._error(exc, "delete from") from None
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {first.get('Key')} from {self.where}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                )
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) == _BATCH:
                send()
        if batch:
            send()

    def remove_link(self, rel: str) -> bool:
        return False  # a bucket holds no symlinks

    def flush(self) -> None:
        pass  # an object is durable once its PUT has returned


class _Ranges(io.RawIOBase):
    """An object read by ranged GETs, seekable (zipfile reads a wheel's end first)."""

    def __init__(self, storage: S3Storage, key: str, size: int, tail: bytes = b"") -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._size = size
        self._pos = 0
        self._tail = tail
        """The object's last bytes, read already."""
        self._tail_start = size - len(tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._pos + len(view))
        if end <= self._pos:
            return 0
        if self._pos >= self._tail_start:
            at = self._pos - self._tail_start
            data = self._tail[at:at + end - self._pos]
        else:
            data = self._storage.read_range(self._key, self._pos, end)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _spilled(
    entries: Iterable[tuple[str, int, float]], spill: Path, tick: Callable[[], None],
) -> Iterator[tuple[str, int, float]]:
    """``entries`` in order of path, through a file of their own in ``spill`` (more of
    them than memory should hold); it is gone once they are read (or given up)."""
    fd, name = tree.create(spill, tree.LISTING_PREFIX, 0o600)
    os.close(fd)
    yield from state.in_path_order(Path(name), entries, tick)
