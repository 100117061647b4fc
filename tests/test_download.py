"""Tests of download.fetch / fetch_to (files and metadata) against a canned loopback server."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from simplemirror.cli import config
from simplemirror.store import layout
from simplemirror.sync import download
from simplemirror.sync.download import Downloaded, TooLarge, VerificationError
from simplemirror.upstream.client import Client, TransientError, UpstreamError
from tests.support.canned import Canned
from tests.support.spies import temp_file_writes

FILE_PATH = "/packages/foo-1.0.tar.gz"
FILENAME = "foo-1.0.tar.gz"
BODY = b"pretend this is a gzipped tarball\n" * 100


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Mirror:
    """A client plus the web/ and tmp/ directories of a mirror in a temporary directory."""

    def __init__(self, root: Path, file_url: str, **overrides: Any) -> None:
        self.file_url = file_url
        values: dict[str, Any] = {
            # The file's own server: the files here are the upstream's.
            "upstream": urljoin(file_url, "/simple/"),
            "directory": str(root),
            "retries": 2,
            "retry_wait": 0,
            "retry_max_wait": 0,
            "stale_wait": 0,
        }
        values.update(overrides)
        self.config = config.build({}, values)
        self.client = Client(self.config)
        self.web = self.config.web
        self.tmp = self.config.tmp
        self.web.mkdir(parents=True)
        self.tmp.mkdir(parents=True)

    def fetch_file(
        self,
        expected_hashes: dict[str, str] | None = None,
        expected_size: int | None = len(BODY),
    ) -> Downloaded:
        hashes = {"sha256": sha256(BODY)} if expected_hashes is None else expected_hashes
        wanted = download.Fetch.file(self.file_url, FILENAME, hashes, expected_size)
        return self.client.run(download.fetch(self.client, wanted))

    def fetch_metadata(
        self, url: str, file_path: str, expected_hashes: dict[str, str]
    ) -> Downloaded:
        wanted = download.Fetch.beside(url, file_path + layout.METADATA_SUFFIX, expected_hashes)
        return self.client.run(download.fetch(self.client, wanted))

    def web_files(self) -> list[str]:
        files = (p for p in self.web.rglob("*") if p.is_file())
        return sorted(p.relative_to(self.web).as_posix() for p in files)

    def tmp_files(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir())


@pytest.fixture(autouse=True)
def _no_sleeping(sleeps: list[float]) -> None:
    """No test here really waits for a backoff."""


@pytest.fixture
def rsps() -> Iterator[Canned]:
    server = Canned()
    yield server
    server.close()


@pytest.fixture
def file_url(rsps: Canned) -> str:
    return rsps.url(FILE_PATH)


@pytest.fixture
def mirror(tmp_path: Path, file_url: str) -> Mirror:
    return Mirror(tmp_path / "mirror", file_url)


def add_body(rsps: Canned, body: bytes, path: str = FILE_PATH) -> None:
    rsps.add(path, body)


# -- success ---------------------------------------------------------------------


def test_success_publishes_at_content_address(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, BODY)
    got = mirror.fetch_file()
    digest = sha256(BODY)
    expected_path = layout.file_path(digest, FILENAME)
    assert expected_path == f"packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{FILENAME}"
    assert got.path == expected_path
    assert got.size == len(BODY)
    assert got.hashes == {"sha256": digest}
    published = mirror.web / expected_path
    assert published.read_bytes() == BODY
    assert stat.S_IMODE(published.stat().st_mode) == 0o644
    assert mirror.web_files() == [expected_path]
    assert mirror.tmp_files() == []
    assert len(rsps.calls) == 1
    assert rsps.calls[0].headers["User-Agent"] == mirror.config.user_agent


def test_success_returns_every_requested_hash(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, BODY)
    expected = {
        "md5": hashlib.md5(BODY).hexdigest(),
        "sha512": hashlib.sha512(BODY).hexdigest(),
    }
    got = mirror.fetch_file(expected_hashes=expected)
    # sha256 is always computed (it names the path), even when upstream gave none.
    assert got.hashes == {**expected, "sha256": sha256(BODY)}
    assert got.path == layout.file_path(sha256(BODY), FILENAME)


def test_unknown_size_is_accepted(rsps: Canned, mirror: Mirror) -> None:
    add_body(rsps, BODY)
    got = mirror.fetch_file(expected_size=None)
    assert got.size == len(BODY)


def test_body_spanning_many_chunks(
    rsps: Canned, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK", 7)
    add_body(rsps, BODY)
    got = mirror.fetch_file()
    assert (mirror.web / got.path).read_bytes() == BODY
    assert got.hashes["sha256"] == sha256(BODY)


def test_empty_file(rsps: Canned, mirror: Mirror) -> None:
    add_body(rsps, b"")
    got = mirror.fetch_file(expected_hashes={"sha256": sha256(b"")}, expected_size=0)
    assert got.size == 0
    assert (mirror.web / got.path).read_bytes() == b""


# -- verification ----------------------------------------------------------------


def test_wrong_hash_fails_after_retries_and_publishes_nothing(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, BODY)
    with pytest.raises(VerificationError) as info:
        mirror.fetch_file(expected_hashes={"sha256": "0" * 64})
    message = str(info.value)
    assert mirror.file_url in message
    assert "sha256" in message
    assert sha256(BODY) in message
    assert len(rsps.calls) == 3  # retries=2
    assert mirror.web_files() == []
    assert mirror.tmp_files() == []


def test_one_wrong_hash_among_several_fails(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, BODY)
    with pytest.raises(VerificationError) as info:
        mirror.fetch_file(
            expected_hashes={"sha256": sha256(BODY), "md5": hashlib.md5(b"other").hexdigest()}
        )
    assert "md5" in str(info.value)
    assert mirror.web_files() == []


def test_wrong_hash_once_then_right_on_retry(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, b"x" * len(BODY))  # right size, wrong bytes
    add_body(rsps, BODY)
    got = mirror.fetch_file()
    assert len(rsps.calls) == 2
    assert (mirror.web / got.path).read_bytes() == BODY
    assert mirror.web_files() == [layout.file_path(sha256(BODY), FILENAME)]
    assert mirror.tmp_files() == []


def test_smaller_body_than_declared(rsps: Canned, mirror: Mirror) -> None:
    add_body(rsps, BODY[:-10])
    with pytest.raises(VerificationError) as info:
        mirror.fetch_file(expected_hashes={"sha256": sha256(BODY[:-10])})
    assert f"got {len(BODY) - 10} bytes" in str(info.value)
    assert f"declared {len(BODY)}" in str(info.value)
    assert len(rsps.calls) == 3
    assert mirror.web_files() == []
    assert mirror.tmp_files() == []


def test_larger_body_than_declared_is_cut_off(
    rsps: Canned, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK", 16)
    declared = 40
    written = temp_file_writes(monkeypatch)  # bytes to each temporary file, in order
    add_body(rsps, BODY)
    with pytest.raises(VerificationError) as info:
        mirror.fetch_file(expected_hashes={"sha256": sha256(BODY[:declared])},
                          expected_size=declared)
    assert "larger" in str(info.value)
    assert f"{declared} bytes" in str(info.value)
    assert len(written) == 3  # one temporary file per attempt
    # Never more than declared is written, not even the chunk that goes past it.
    assert all(0 < n <= declared for n in written)
    assert mirror.web_files() == []
    assert mirror.tmp_files() == []


# -- HTTP failures ---------------------------------------------------------------


def test_404_is_an_upstream_error_not_retried(
    rsps: Canned, mirror: Mirror
) -> None:
    rsps.add(FILE_PATH, status=404)
    with pytest.raises(UpstreamError) as info:
        mirror.fetch_file()
    assert not isinstance(info.value, TransientError)
    assert mirror.file_url in str(info.value)
    assert "404" in str(info.value)
    assert len(rsps.calls) == 1
    assert mirror.tmp_files() == []
    assert mirror.web_files() == []


def test_server_error_then_success(rsps: Canned, mirror: Mirror) -> None:
    rsps.add(FILE_PATH, status=503)
    add_body(rsps, BODY)
    got = mirror.fetch_file()
    assert len(rsps.calls) == 2
    assert got.size == len(BODY)
    assert mirror.tmp_files() == []


def test_server_errors_exhausted(rsps: Canned, mirror: Mirror) -> None:
    rsps.add(FILE_PATH, status=500)
    with pytest.raises(TransientError) as info:
        mirror.fetch_file()
    assert mirror.file_url in str(info.value)
    assert len(rsps.calls) == 3
    assert mirror.tmp_files() == []


def test_connection_error_then_success(rsps: Canned, mirror: Mirror) -> None:
    rsps.add(FILE_PATH, reset=True)
    add_body(rsps, BODY)
    got = mirror.fetch_file()
    assert len(rsps.calls) == 2
    assert (mirror.web / got.path).read_bytes() == BODY
    assert mirror.tmp_files() == []


# -- metadata ------------------------------------------------------------------------


def test_fetch_metadata_writes_next_to_the_file(
    rsps: Canned, mirror: Mirror
) -> None:
    metadata = b"Metadata-Version: 2.1\nName: foo\nVersion: 1.0\n"
    add_body(rsps, BODY)
    add_body(rsps, metadata, path=FILE_PATH + ".metadata")
    got = mirror.fetch_file()
    meta = mirror.fetch_metadata(
        mirror.file_url + ".metadata", got.path, expected_hashes={"sha256": sha256(metadata)}
    )
    assert meta.path == f"{got.path}.metadata"
    assert meta.size == len(metadata)
    assert meta.hashes == {"sha256": sha256(metadata)}
    published = mirror.web / meta.path
    assert published.read_bytes() == metadata
    assert stat.S_IMODE(published.stat().st_mode) == 0o644
    assert mirror.web_files() == sorted([got.path, meta.path])
    assert mirror.tmp_files() == []


def test_fetch_metadata_without_declared_hash(
    rsps: Canned, mirror: Mirror
) -> None:
    metadata = b"Metadata-Version: 2.1\nName: foo\n"
    add_body(rsps, metadata, path=FILE_PATH + ".metadata")
    path = layout.file_path(sha256(BODY), FILENAME)
    meta = mirror.fetch_metadata(mirror.file_url + ".metadata", path, expected_hashes={})
    assert meta.path == path + ".metadata"
    assert meta.hashes == {"sha256": sha256(metadata)}
    assert (mirror.web / meta.path).read_bytes() == metadata


def test_fetch_metadata_wrong_hash(rsps: Canned, mirror: Mirror) -> None:
    add_body(rsps, b"Name: foo\n", path=FILE_PATH + ".metadata")
    path = layout.file_path(sha256(BODY), FILENAME)
    with pytest.raises(VerificationError):
        mirror.fetch_metadata(
            mirror.file_url + ".metadata", path, expected_hashes={"sha256": "1" * 64}
        )
    assert len(rsps.calls) == 3
    assert mirror.web_files() == []
    assert mirror.tmp_files() == []


# -- the disk ------------------------------------------------------------------------


def test_rename_failure_propagates_and_leaves_no_temp_file(
    rsps: Canned, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def full_disk(src: str, dst: object) -> None:
        calls.append((str(src), str(dst)))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download.os, "replace", full_disk)
    add_body(rsps, BODY)
    with pytest.raises(OSError) as info:
        mirror.fetch_file()
    assert info.value.errno == errno.ENOSPC
    assert len(calls) == 1  # the disk is not upstream: no retry
    assert len(rsps.calls) == 1
    assert Path(calls[0][0]).parent == mirror.tmp
    assert mirror.tmp_files() == []
    assert mirror.web_files() == []


def test_missing_tmp_dir_propagates_as_oserror(
    rsps: Canned, mirror: Mirror
) -> None:
    mirror.tmp.rmdir()
    add_body(rsps, BODY)
    with pytest.raises(FileNotFoundError):
        mirror.fetch_file()
    assert len(rsps.calls) == 0  # failed before asking upstream, and not retried
    assert not mirror.tmp.exists()
    assert mirror.web_files() == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory modes"
)
def test_read_only_web_dir_propagates_and_leaves_no_temp_file(
    rsps: Canned, mirror: Mirror
) -> None:
    add_body(rsps, BODY)
    mirror.web.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            mirror.fetch_file()
    finally:
        mirror.web.chmod(0o755)
    assert len(rsps.calls) == 1
    assert mirror.tmp_files() == []
    assert mirror.web_files() == []


def test_undeclared_size_is_capped_by_max_file_size(
    rsps: Canned, tmp_path: Path
) -> None:
    capped = Mirror(
        tmp_path / "capped", rsps.url(FILE_PATH), max_file_size=len(BODY) - 1, retries=0
    )
    add_body(rsps, BODY)
    # A failure of its own (TooLarge), not a verification one: it is not retried.
    with pytest.raises(TooLarge, match="max-file-size"):
        capped.fetch_file(expected_size=None)
    assert capped.web_files() == [] and capped.tmp_files() == []


def test_stop_request_ends_a_download_and_leaves_nothing(
    rsps: Canned, mirror: Mirror
) -> None:
    from simplemirror.upstream.client import Interrupted

    add_body(rsps, BODY)
    mirror.client.stop.set()
    with pytest.raises(Interrupted):
        mirror.fetch_file()
    assert len(rsps.calls) == 0, "no attempt is made once a stop was requested"
    assert mirror.web_files() == [] and mirror.tmp_files() == []
