"""AsyncClient, what a download process runs: Client.fetch_page's and sync.download_todo's
rules on an event loop, against a canned index on loopback.

Waits between retries are recorded, not slept (see ``waits``).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import gzip
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from simplemirror import config, download, layout, sync
from simplemirror.async_client import AsyncClient
from simplemirror.config import Config
from simplemirror.download import VerificationError
from simplemirror.model import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE, DistFile, HeldFile
from simplemirror.plan import FileTodo, ProjectTodo
from simplemirror.transport import TransportError
from simplemirror.upstream import (
    ACCEPT,
    Client,
    Interrupted,
    StalePage,
    TransientError,
    UpstreamError,
)
from tests.support.canned import Canned
from tests.support.spies import temp_file_writes

T = TypeVar("T")
_real_sleep = asyncio.sleep
ROOT = "/simple/"
FOO = "/simple/foo/"
FILE_PATH = "/packages/foo-1.0-py3-none-any.whl"
FILENAME = "foo-1.0-py3-none-any.whl"
BODY = b"pretend this is a wheel\n" * 1000
METADATA = b"Metadata-Version: 2.1\nName: foo\nVersion: 1.0\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[Canned]:
    canned = Canned()
    yield canned
    canned.close()


def make_config(tmp_path: Path, server: Canned, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "upstream": server.url(ROOT),
        "directory": str(tmp_path / "mirror"),
        "retries": 2,
        "retry_wait": 0,
        "retry_max_wait": 0,
        "stale_retries": 2,
        "stale_wait": 0,
        "connect_timeout": 5,
        "read_timeout": 5,
    }
    values.update(overrides)
    cfg = config.build({}, values)
    cfg.web.mkdir(parents=True, exist_ok=True)
    cfg.tmp.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def cfg(tmp_path: Path, server: Canned) -> Config:
    return make_config(tmp_path, server)


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait AsyncRetrying asks for between attempts, recorded instead of slept.

    It sleeps through ``asyncio.sleep``, looked up when a retry starts.
    """
    recorded: list[float] = []
    real = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        recorded.append(delay)
        return await real(0, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return recorded


@pytest.fixture(autouse=True)
def _no_blocking_sleeps(sleeps: list[float]) -> None:
    """The blocking Client, run beside it for comparison, does not sleep either."""


def run(cfg: Config, test: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """``test(client)`` on a new event loop; the client is closed after."""

    async def main() -> T:
        client = AsyncClient(cfg)
        try:
            return await test(client)
        finally:
            client.close()

    return asyncio.run(main())


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file())


def fetch_file(client: AsyncClient, url: str, *, hashes: dict[str, str] | None = None,
               size: int | None = len(BODY)) -> Awaitable[download.Downloaded]:
    return client.fetch_to(
        url, expected_hashes={"sha256": sha256(BODY)} if hashes is None else hashes,
        expected_size=size, path_for_sha256=lambda digest: layout.file_path(digest, FILENAME),
        new_dir=True,
    )


# -- fetch_to: verified files, retries ---------------------------------------------------


def test_a_file_is_published_at_its_content_address(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY)
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert got.path == layout.file_path(sha256(BODY), FILENAME)
    assert (got.size, got.hashes) == (len(BODY), {"sha256": sha256(BODY)})
    assert (cfg.web / got.path).read_bytes() == BODY
    assert listing(cfg.web) == [got.path] and listing(cfg.tmp) == []
    assert server.calls[0].header("User-Agent") == cfg.user_agent


def test_every_declared_hash_is_checked_and_returned(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY)
    hashes = {"md5": hashlib.md5(BODY).hexdigest(), "sha512": hashlib.sha512(BODY).hexdigest()}
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH), hashes=hashes))
    assert got.hashes == {**hashes, "sha256": sha256(BODY)}


def test_a_wrong_sha256_is_retried_then_fails_and_leaves_nothing(
    server: Canned, cfg: Config, waits: list[float]
) -> None:
    server.add(FILE_PATH, BODY)
    url = server.url(FILE_PATH)
    with pytest.raises(VerificationError) as info:
        run(cfg, lambda c: fetch_file(c, url, hashes={"sha256": "0" * 64}))
    assert url in str(info.value) and sha256(BODY) in str(info.value)
    assert len(server.calls) == 3  # retries=2
    assert len(waits) == 2
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


def test_one_wrong_hash_among_several_fails(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY)
    hashes = {"sha256": sha256(BODY), "md5": hashlib.md5(b"other").hexdigest()}
    with pytest.raises(VerificationError, match="md5"):
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH), hashes=hashes))
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


def test_wrong_bytes_once_then_the_right_ones(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, b"x" * len(BODY))
    server.add(FILE_PATH, BODY)
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert len(server.calls) == 2
    assert listing(cfg.web) == [got.path] and listing(cfg.tmp) == []


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_then_success(
    server: Canned, cfg: Config, waits: list[float], status: int
) -> None:
    server.add(FILE_PATH, status=status)
    server.add(FILE_PATH, BODY)
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert (cfg.web / got.path).read_bytes() == BODY
    assert len(server.calls) == 2 and len(waits) == 1
    assert listing(cfg.tmp) == []


def test_server_errors_exhausted_are_a_transient_error(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, status=503)
    with pytest.raises(TransientError, match="503"):
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert len(server.calls) == 3
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


@pytest.mark.parametrize(("max_wait", "expected"), [(0.2, 0.2), (5.0, 1.0)],
                         ids=["capped", "honoured"])
def test_429_waits_for_retry_after_up_to_retry_max_wait(
    server: Canned, tmp_path: Path, waits: list[float], max_wait: float, expected: float
) -> None:
    cfg = make_config(tmp_path, server, retry_wait=0.0, retry_max_wait=max_wait)
    server.add(FILE_PATH, status=429, headers={"Retry-After": "1"})
    server.add(FILE_PATH, BODY)
    run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert len(server.calls) == 2
    # retry_wait is 0: the one wait comes from Retry-After, capped at retry_max_wait.
    assert waits == [pytest.approx(expected)]


def test_404_is_not_retried(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, status=404)
    with pytest.raises(UpstreamError, match="404") as info:
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert not isinstance(info.value, TransientError)
    assert len(server.calls) == 1
    assert listing(cfg.tmp) == []


def test_a_reset_then_success(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, reset=True)
    server.add(FILE_PATH, BODY)
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert (cfg.web / got.path).read_bytes() == BODY
    assert len(server.calls) == 2


def test_a_body_cut_short_is_retried_then_a_transient_error(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY[:100], length=len(BODY))  # then the connection closes
    with pytest.raises(TransientError, match="still to come"):
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert len(server.calls) == 3
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


def test_a_complete_body_smaller_than_declared_fails(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY[:-10])
    with pytest.raises(VerificationError) as info:
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH),
                                      hashes={"sha256": sha256(BODY[:-10])}))
    assert f"got {len(BODY) - 10} bytes" in str(info.value)
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


def test_a_body_larger_than_declared_is_cut_off_and_the_next_download_is_sound(
    server: Canned, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simplemirror import async_client

    monkeypatch.setattr(async_client, "CHUNK", 16)
    declared = 40
    written = temp_file_writes(monkeypatch)  # bytes to each temporary file, in order
    server.add(FILE_PATH, BODY)
    server.add("/small", b"small")

    async def scenario(c: AsyncClient) -> download.Downloaded:
        with pytest.raises(VerificationError, match=f"larger than the {declared} bytes"):
            await fetch_file(c, server.url(FILE_PATH), hashes={}, size=declared)
        return await c.fetch_to(
            server.url("/small"), expected_hashes={"sha256": sha256(b"small")},
            expected_size=5, path_for_sha256=lambda _: "small",
        )

    got = run(cfg, scenario)
    assert (cfg.web / got.path).read_bytes() == b"small"
    assert len(written) == 4  # three attempts, then /small
    # Never more than declared is written, not even the chunk that goes past it.
    assert all(0 < n <= declared for n in written[:3])
    assert listing(cfg.web) == ["small"] and listing(cfg.tmp) == []


def test_an_undeclared_size_is_capped_by_max_file_size(server: Canned, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, server, max_file_size=100, retries=0)
    server.add(FILE_PATH, BODY)
    with pytest.raises(VerificationError, match="max-file-size"):
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH), hashes={}, size=None))
    assert listing(cfg.tmp) == []


def test_a_stop_request_ends_before_any_request(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY)

    async def scenario(c: AsyncClient) -> None:
        c.stop.set()
        await fetch_file(c, server.url(FILE_PATH))

    with pytest.raises(Interrupted):
        run(cfg, scenario)
    assert server.calls == [] and listing(cfg.tmp) == []


def test_a_cancelled_download_leaves_nothing_in_tmp(server: Canned, cfg: Config) -> None:
    # How a download process stops: the parent's word cancels its tasks.
    never = threading.Event()
    server.add(FILE_PATH, BODY, pause=never)  # half the body, then nothing

    async def scenario(c: AsyncClient) -> list[str]:
        task = asyncio.ensure_future(fetch_file(c, server.url(FILE_PATH)))
        for _ in range(500):  # until half the body is written
            if any(p.stat().st_size for p in cfg.tmp.iterdir()):
                break
            await _real_sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return listing(cfg.tmp)

    try:
        assert run(cfg, scenario) == []
    finally:
        never.set()
    assert listing(cfg.web) == []


# -- fetch_page --------------------------------------------------------------------------


def add_json(server: Canned, path: str, data: object, *, status: int = 200,
             headers: dict[str, str] | None = None,
             content_type: str = JSON_CONTENT_TYPE) -> None:
    server.add(path, json.dumps(data).encode(), status=status,
               headers={"Content-Type": content_type, **(headers or {})})


def page_doc(name: str = "foo", serial: int | None = 40,
             url: str = "../../packages/foo-1.0.tar.gz") -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": "1.1"}
    if serial is not None:
        meta["_last-serial"] = serial
    return {"meta": meta, "name": name,
            "files": [{"filename": "foo-1.0.tar.gz", "url": url, "hashes": {"sha256": "a" * 64}}]}


def todo(serial: int | None = 40) -> ProjectTodo:
    return ProjectTodo("foo", "Foo", serial)


def test_fetch_page_parses_the_page(server: Canned, cfg: Config) -> None:
    add_json(server, FOO, page_doc(serial=40), headers={"ETag": '"p1"'})
    got = run(cfg, lambda c: c.fetch_page(todo(40)))
    assert got is not None
    assert (got.page.name, got.page.serial, got.etag) == ("foo", 40, '"p1"')
    assert [f.url for f in got.page.files] == [server.url("/packages/foo-1.0.tar.gz")]
    assert got.sha256 == sha256(json.dumps(page_doc(serial=40)).encode())
    assert server.calls[0].path == FOO
    assert server.calls[0].header("Accept") == ACCEPT
    assert server.calls[0].header("If-None-Match") is None


def test_fetch_page_sends_the_etag_and_a_304_is_none(server: Canned, cfg: Config) -> None:
    server.add(FOO, status=304, headers={"X-PyPI-Last-Serial": "40"})
    assert run(cfg, lambda c: c.fetch_page(todo(40), '"p1"')) is None
    assert server.calls[0].header("If-None-Match") == '"p1"'


def test_a_stale_304_is_stale(server: Canned, cfg: Config) -> None:
    server.add(FOO, status=304, headers={"X-PyPI-Last-Serial": "39"})
    with pytest.raises(StalePage):
        run(cfg, lambda c: c.fetch_page(todo(40), '"p1"'))
    assert len(server.calls) == 3


def test_a_stale_page_is_asked_again_then_stale_page(
    server: Canned, cfg: Config, waits: list[float]
) -> None:
    add_json(server, FOO, page_doc(serial=39))
    with pytest.raises(StalePage) as info:
        run(cfg, lambda c: c.fetch_page(todo(40)))
    assert "39" in str(info.value) and "40" in str(info.value)
    assert server.url(FOO) in str(info.value)
    assert len(server.calls) == 3  # stale_retries=2
    assert len(waits) == 2


def test_a_stale_then_fresh_page(server: Canned, cfg: Config) -> None:
    add_json(server, FOO, page_doc(serial=39))
    add_json(server, FOO, page_doc(serial=40))
    got = run(cfg, lambda c: c.fetch_page(todo(40)))
    assert got is not None and got.page.serial == 40
    assert len(server.calls) == 2


def test_a_server_error_inside_a_page_fetch_is_retried(server: Canned, cfg: Config) -> None:
    server.add(FOO, status=502)
    add_json(server, FOO, page_doc(serial=40))
    got = run(cfg, lambda c: c.fetch_page(todo(40)))
    assert got is not None and got.page.name == "foo"
    assert len(server.calls) == 2


def test_a_persistent_server_error_on_a_page_is_a_transient_error(
    server: Canned, cfg: Config
) -> None:
    server.add(FOO, status=503)
    with pytest.raises(TransientError, match="503"):
        run(cfg, lambda c: c.fetch_page(todo(40)))
    assert len(server.calls) == 3


def test_a_page_for_another_project_is_an_upstream_error(server: Canned, cfg: Config) -> None:
    add_json(server, FOO, page_doc(name="bar"))
    with pytest.raises(UpstreamError) as info:
        run(cfg, lambda c: c.fetch_page(todo(40)))
    assert not isinstance(info.value, StalePage | TransientError)
    assert "'bar'" in str(info.value) and "'foo'" in str(info.value)
    assert len(server.calls) == 1


def test_malformed_json_is_an_upstream_error(server: Canned, cfg: Config) -> None:
    server.add(FOO, b'{"meta": {', headers={"Content-Type": JSON_CONTENT_TYPE})
    with pytest.raises(UpstreamError, match="malformed JSON"):
        run(cfg, lambda c: c.fetch_page(todo(40)))
    assert len(server.calls) == 1


def test_an_html_page_is_parsed_relative_to_the_url_after_redirects(
    server: Canned, cfg: Config
) -> None:
    final = server.url("/a/b/foo/")
    server.add(FOO, status=301, headers={"Location": final})
    server.add(final, b'<a href="../files/foo-1.0.tar.gz#sha256=' + b"a" * 64
               + b'">foo-1.0.tar.gz</a>',
               headers={"Content-Type": HTML_CONTENT_TYPE, "X-PyPI-Last-Serial": "40"})
    got = run(cfg, lambda c: c.fetch_page(todo(40)))
    assert got is not None
    assert got.page.serial == 40
    assert [(f.url, dict(f.hashes)) for f in got.page.files] == [
        (server.url("/a/b/files/foo-1.0.tar.gz"), {"sha256": "a" * 64})]


def test_credentials_in_the_upstream_url_are_sent_as_basic_auth(
    server: Canned, tmp_path: Path
) -> None:
    upstream = server.url(ROOT).replace("http://", "http://bot:s3cret@")
    cfg = make_config(tmp_path, server, upstream=upstream)
    add_json(server, FOO, page_doc(serial=40))
    run(cfg, lambda c: c.fetch_page(todo(40)))
    assert server.calls[0].header("Authorization") == (
        "Basic " + base64.b64encode(b"bot:s3cret").decode())


PAGE_ANSWERS: dict[str, list[dict[str, Any]]] = {
    "json": [{"body": json.dumps(page_doc()).encode(), "headers": {
        "Content-Type": JSON_CONTENT_TYPE, "ETag": '"e"'}}],
    "html": [{"body": b'<a href="/p/foo-1.0.tar.gz#sha256=' + b"b" * 64
              + b'">foo-1.0.tar.gz</a><!--SERIAL 41-->',
              "headers": {"Content-Type": "text/html"}}],
    "304": [{"status": 304, "headers": {"X-PyPI-Last-Serial": "40"}}],
    "stale-then-fresh": [{"body": json.dumps(page_doc(serial=39)).encode(),
                          "headers": {"Content-Type": JSON_CONTENT_TYPE}},
                         {"body": json.dumps(page_doc(serial=41)).encode(),
                          "headers": {"Content-Type": JSON_CONTENT_TYPE}}],
    "stale": [{"body": json.dumps(page_doc(serial=1)).encode(),
               "headers": {"Content-Type": JSON_CONTENT_TYPE}}],
    "other-project": [{"body": json.dumps(page_doc(name="bar")).encode(),
                       "headers": {"Content-Type": JSON_CONTENT_TYPE}}],
    "plain-text": [{"body": b"hello", "headers": {"Content-Type": "text/plain"}}],
    "not-utf8-html": [{"body": b"<a href='/x/caf\xe9-1.0.tar.gz'>x</a>",
                       "headers": {"Content-Type": "text/html"}}],
    "404": [{"status": 404}],
    "429": [{"status": 429, "headers": {"Retry-After": "1"}}],
    "gzip": [{"body": gzip.compress(json.dumps(page_doc()).encode()),
              "headers": {"Content-Type": JSON_CONTENT_TYPE, "Content-Encoding": "gzip"}}],
}


@pytest.mark.parametrize("answers", PAGE_ANSWERS.values(), ids=PAGE_ANSWERS.keys())
def test_fetch_page_gives_what_the_blocking_client_gives(
    tmp_path: Path, answers: list[dict[str, Any]]
) -> None:
    def outcome(fetch: Callable[[Config], Any]) -> tuple[Any, int]:
        with_server = Canned()
        try:
            for answer in answers:
                with_server.add(FOO, **answer)
            cfg = make_config(tmp_path, with_server)
            try:
                got: Any = fetch(cfg)
            except Exception as exc:
                got = (type(exc), str(exc).replace(with_server.base, "BASE"))
            if got is not None and not isinstance(got, tuple):
                got = (got.page.name, got.page.serial, got.etag, got.sha256,
                       [(f.filename, f.url.replace(with_server.base, "BASE"), dict(f.hashes))
                        for f in got.page.files])
            return got, len(with_server.calls)
        finally:
            with_server.close()

    blocking = outcome(lambda cfg: Client(cfg).fetch_page(todo(40), '"e"'))
    awaited = outcome(lambda cfg: run(cfg, lambda c: c.fetch_page(todo(40), '"e"')))
    assert awaited == blocking


# -- download_todo: a file and its metadata -----------------------------------------------


def dist_file(server: Canned, **overrides: Any) -> DistFile:
    values: dict[str, Any] = {
        "filename": FILENAME, "url": server.url(FILE_PATH),
        "hashes": {"sha256": sha256(BODY)}, "size": len(BODY),
        "core_metadata": {"sha256": sha256(METADATA)},
    }
    values.update(overrides)
    return DistFile(**values)


def file_todo(server: Canned, **overrides: Any) -> FileTodo:
    return FileTodo(dist_file(server, **overrides), None, fetch_file=True, fetch_metadata=True)


def test_download_todo_fetches_the_file_and_its_metadata(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, BODY)
    server.add(FILE_PATH + ".metadata", METADATA)
    held, fetched, error = run(cfg, lambda c: c.download_todo("foo", file_todo(server)))
    path = layout.file_path(sha256(BODY), FILENAME)
    assert (held.project, held.filename, held.path, held.size) == ("foo", FILENAME, path,
                                                                  len(BODY))
    assert held.metadata_hashes == {"sha256": sha256(METADATA)}
    assert (fetched, error) == (len(BODY) + len(METADATA), None)
    assert listing(cfg.web) == [path, path + ".metadata"]
    assert (cfg.web / (path + ".metadata")).read_bytes() == METADATA
    assert listing(cfg.tmp) == []


@pytest.mark.parametrize("fault", ["404", "wrong-hash", "503"])
def test_a_metadata_failure_is_reported_and_the_file_still_returned(
    server: Canned, cfg: Config, fault: str
) -> None:
    server.add(FILE_PATH, BODY)
    meta = FILE_PATH + ".metadata"
    if fault == "404":
        server.add(meta, status=404)
    elif fault == "503":
        server.add(meta, status=503)
    else:
        server.add(meta, b"other metadata")
    held, fetched, error = run(cfg, lambda c: c.download_todo("foo", file_todo(server)))
    assert error is not None and error.startswith("metadata: ")
    assert {"404": "404", "503": "503", "wrong-hash": "sha256"}[fault] in error
    assert held.metadata_hashes is None
    assert fetched == len(BODY)
    path = layout.file_path(sha256(BODY), FILENAME)
    assert listing(cfg.web) == [path] and listing(cfg.tmp) == []
    assert [c.path for c in server.calls].count(meta) == (1 if fault == "404" else 3)


def test_a_metadata_file_on_a_host_not_allowed_is_refused_unasked(
    server: Canned, tmp_path: Path
) -> None:
    # The file is held already; only its metadata is wanted, from a host file-hosts
    # leaves out (by default, loopback files of a loopback upstream would pass).
    cfg = make_config(tmp_path, server, file_hosts=["files.example"])
    elsewhere = Canned()
    try:
        url = elsewhere.url(FILE_PATH).replace("127.0.0.1", "localhost")
        dist = dist_file(server, url=url)
        held = HeldFile("foo", FILENAME, layout.file_path(sha256(BODY), FILENAME), len(BODY),
                        {"sha256": sha256(BODY)}, url)
        todo_ = FileTodo(dist, held, fetch_file=False, fetch_metadata=True)
        got, fetched, error = run(cfg, lambda c: c.download_todo("foo", todo_))
        assert error is not None and "refused" in error and "'localhost'" in error
        assert "file-hosts" in error
        assert (got.path, fetched) == (held.path, 0)
        assert elsewhere.calls == []
    finally:
        elsewhere.close()


def test_only_the_missing_metadata_of_a_held_file_is_fetched(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH + ".metadata", METADATA)
    path = layout.file_path(sha256(BODY), FILENAME)
    held = HeldFile("foo", FILENAME, path, len(BODY), {"sha256": sha256(BODY)},
                    server.url(FILE_PATH))
    todo_ = FileTodo(dist_file(server), held, fetch_file=False, fetch_metadata=True)
    got, fetched, error = run(cfg, lambda c: c.download_todo("foo", todo_))
    assert (got.path, got.metadata_hashes, fetched, error) == (
        path, {"sha256": sha256(METADATA)}, len(METADATA), None)
    assert [c.path for c in server.calls] == [FILE_PATH + ".metadata"]


def test_a_file_failure_is_raised_not_reported(server: Canned, cfg: Config) -> None:
    server.add(FILE_PATH, b"not the wheel")
    server.add(FILE_PATH + ".metadata", METADATA)
    with pytest.raises(VerificationError):
        run(cfg, lambda c: c.download_todo("foo", file_todo(server)))
    assert FILE_PATH + ".metadata" not in [c.path for c in server.calls]
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


@pytest.mark.parametrize("metadata", ["ok", "404", "wrong-hash"])
def test_download_todo_gives_what_the_blocking_one_gives(
    server: Canned, tmp_path: Path, metadata: str
) -> None:
    server.add(FILE_PATH, BODY)
    server.add(FILE_PATH + ".metadata", **{
        "ok": {"body": METADATA}, "404": {"status": 404}, "wrong-hash": {"body": b"other"},
    }[metadata])
    blocking_cfg = make_config(tmp_path / "blocking", server)
    awaited_cfg = make_config(tmp_path / "awaited", server)
    todo_ = file_todo(server)
    blocking = sync.download_todo(Client(blocking_cfg), "foo", todo_)
    awaited = run(awaited_cfg, lambda c: c.download_todo("foo", todo_))
    assert awaited == blocking
    assert listing(awaited_cfg.web) == listing(blocking_cfg.web)


# -- a file's body as it arrives ----------------------------------------------------------


def test_a_body_that_stalls_midway_times_out_and_is_retried(
    server: Canned, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, server, read_timeout=0.3, retries=1)
    never = threading.Event()
    server.add(FILE_PATH, BODY, pause=never)  # half the body, then nothing
    try:
        with pytest.raises(TransientError, match="TimeoutError"):
            run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    finally:
        never.set()
    assert len(server.calls) == 2  # tried again after the first timed out
    assert listing(cfg.web) == [] and listing(cfg.tmp) == []


def test_a_body_that_arrives_in_pieces_is_poured_whole(server: Canned, cfg: Config) -> None:
    resume = threading.Event()
    server.add(FILE_PATH, BODY, pause=resume)  # half, then the rest once resumed
    threading.Timer(0.2, resume.set).start()
    got = run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert (cfg.web / got.path).read_bytes() == BODY
    assert got.size == len(BODY) and listing(cfg.tmp) == []


def test_a_disk_error_while_pouring_is_not_taken_for_the_servers(
    server: Canned, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download.store, "write_all", disk_full)
    server.add(FILE_PATH, BODY)
    with pytest.raises(OSError) as info:
        run(cfg, lambda c: fetch_file(c, server.url(FILE_PATH)))
    assert info.value.errno == errno.ENOSPC  # as it was, not a TransportError to retry
    assert not isinstance(info.value, TransportError)
    assert len(server.calls) == 1 and listing(cfg.tmp) == []
