"""Pages written whole or not at all, and not rewritten when their bytes are unchanged."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simplemirror.simple import render
from simplemirror.simple.render import ProjectInfo
from simplemirror.store import layout
from simplemirror.store import tree as store
from simplemirror.store.backend import Local, StorageError
from simplemirror.store.state import State
from simplemirror.sync.publish import Publisher

REL = "simple/index.html"


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Publisher]:
    (tmp_path / "web").mkdir()
    (tmp_path / "tmp").mkdir()
    state = State(tmp_path / "state.db")
    generation = state.begin_run("http://mirror.example/simple/")
    try:
        yield Publisher(Local(tmp_path / "web"), tmp_path / "tmp", state, generation)
    finally:
        state.close()


def parts(count: int, tag: str = "x") -> Iterator[str]:
    # More pieces than one write batch holds, and a character that is not ASCII.
    for i in range(count):
        yield f"<a>{tag}-{i}-\u00e9</a>\n"


def recorded(publisher: Publisher) -> list[tuple[str, str]]:
    return publisher.state.db.execute("SELECT path, sha256 FROM pages").fetchall()


def test_a_page_in_parts_is_written_whole_and_recorded(publisher: Publisher) -> None:
    publisher.pages_from_parts({REL: parts(10_000)})
    data = (publisher.storage.web / REL).read_bytes()
    assert data == "".join(parts(10_000)).encode("utf-8")
    assert recorded(publisher) == [(REL, hashlib.sha256(data).hexdigest())]
    assert publisher.pages_written == 1
    assert list(publisher.tmp.iterdir()) == []


def test_the_same_bytes_are_not_written_again(publisher: Publisher) -> None:
    publisher.pages_from_parts({REL: parts(5_000)})
    before = (publisher.storage.web / REL).stat()
    publisher.pages_from_parts({REL: parts(5_000)})
    after = (publisher.storage.web / REL).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert publisher.pages_written == 1
    assert list(publisher.tmp.iterdir()) == []

    publisher.pages_from_parts({REL: parts(5_000, tag="y")})
    assert (publisher.storage.web / REL).read_bytes() == "".join(parts(5_000, "y")).encode()
    assert publisher.pages_written == 2


def test_a_failure_part_way_leaves_the_old_page_and_no_temporary_file(
    publisher: Publisher,
) -> None:
    publisher.pages_from_parts({REL: parts(100)})
    old = (publisher.storage.web / REL).read_bytes()

    def failing() -> Iterator[str]:
        yield from parts(9_000, tag="new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        publisher.pages_from_parts({REL: failing()})
    assert (publisher.storage.web / REL).read_bytes() == old
    assert list(publisher.tmp.iterdir()) == []
    assert recorded(publisher) == [(REL, hashlib.sha256(old).hexdigest())]


def info(name: str = "foo", serial: int = 1) -> ProjectInfo:
    return ProjectInfo(name, serial, ("1.0",), {})


def test_a_new_project_is_written_and_an_unchanged_one_is_not(publisher: Publisher) -> None:
    publisher.project(info(), [])
    html, json_page = (publisher.storage.web / p for p in layout.project_pages("foo"))
    before = [html.stat(), json_page.stat()]
    assert publisher.pages_written == 2
    publisher.project(info(), [])  # the same bytes: left alone
    after = [html.stat(), json_page.stat()]
    assert [(s.st_ino, s.st_mtime_ns) for s in after] == [
        (s.st_ino, s.st_mtime_ns) for s in before
    ]
    assert publisher.pages_written == 2
    publisher.project(info(serial=2), [])  # the JSON page carries the serial
    assert publisher.pages_written == 3
    assert list(publisher.tmp.iterdir()) == []


@pytest.mark.parametrize(
    "on_disk",
    [b"", b"<html>old</html>", None],  # shorter, other, and the real page plus a byte
)
def test_a_page_on_disk_is_rewritten_unless_its_bytes_are_the_same(
    publisher: Publisher, on_disk: bytes | None
) -> None:
    rel = layout.project_pages("foo")[0]
    target = publisher.storage.web / rel
    page = render.project_html(info(), [])
    target.parent.mkdir(parents=True)
    target.write_bytes(page.encode() + b"!" if on_disk is None else on_disk)
    publisher.page(rel, page)
    assert target.read_bytes() == page.encode()
    assert publisher.pages_written == 1


def test_both_root_pages_come_from_one_pass_over_the_entries(publisher: Publisher) -> None:
    entries = [render.RootEntry(f"Proj_{i}", f"proj-{i}", i) for i in range(10_000)]
    once = iter(entries)  # a second pass would find it empty
    publisher.root(once, 42)
    html_path, json_path = layout.ROOT_PAGES
    web = publisher.storage.web
    assert (web / html_path).read_text() == "".join(render.root_html_parts(entries))
    assert (publisher.storage.web / json_path).read_text() == render.root_json(entries, 42)
    assert publisher.pages_written == 2
    assert list(publisher.tmp.iterdir()) == []


def test_a_root_that_fails_part_way_leaves_both_old_pages(publisher: Publisher) -> None:
    old = [render.RootEntry("a", "a", 1)]
    publisher.root(old, 1)
    before = [(publisher.storage.web / p).read_bytes() for p in layout.ROOT_PAGES]

    def failing() -> Iterator[render.RootEntry]:
        for i in range(9_000):
            yield render.RootEntry(f"p{i}", f"p{i}", i)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        publisher.root(failing(), 2)
    assert [(publisher.storage.web / p).read_bytes() for p in layout.ROOT_PAGES] == before
    assert list(publisher.tmp.iterdir()) == []


def test_a_small_page_that_cannot_be_written_leaves_the_old_one_and_no_temporary_file(
    publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher.page(REL, "old\n")
    written = recorded(publisher)

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "write_all", disk_full)
    with pytest.raises(OSError) as info:
        publisher.page(REL, "new\n")
    assert info.value.errno == errno.ENOSPC
    assert (publisher.storage.web / REL).read_text() == "old\n"
    assert list(publisher.tmp.iterdir()) == []
    assert recorded(publisher) == written


# -- pages going up in upload threads (a bucket), with no bucket needed --


class _Remote:
    """A remote storage whose PUTs run in real upload threads; 'slow' pages take a while."""
    remote = True

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.landed: dict[str, float] = {}

    def uploads(self) -> concurrent.futures.Executor:
        return self.pool

    def same_bytes(self, rel: str, data: bytes) -> bool:
        return rel.startswith("same/")

    def make_dir(self, rel: str) -> bool:
        return False

    def write_page(self, tmp: Path, rel: str, data: bytes, *, dir_checked: bool = False) -> str:
        if rel.startswith("fail/"):
            time.sleep(0.05)
            raise StorageError("cannot upload: SlowDown")
        if rel.startswith("slow/"):
            time.sleep(0.5)  # a PUT being retried
        self.landed[rel] = time.monotonic()
        return "0" * 64


class _State:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def record_page(self, rel: str, digest: str, size: int, gen: int) -> None:
        self.rows.append(rel)

    def reader(self) -> Any:
        class R:
            def page_sha256(self, rel: str) -> str:
                return hashlib.sha256(b"x").hexdigest()
        return R()


def test_no_upload_outlives_a_publish_that_failed(tmp_path: Path) -> None:
    storage, state = _Remote(), _State()
    publisher = Publisher(storage, tmp_path, state, 1)  # type: ignore[arg-type]
    with pytest.raises(StorageError), publisher.pipelined():
        publisher.page("fail/a", "a")
        publisher.page("slow/b", "b")   # in flight when a's failure surfaces
        publisher.then(lambda: None)
    returned = time.monotonic()
    storage.pool.shutdown(wait=True)
    # After publish() has raised (and the run released its lock), nothing it started may
    # still land in the bucket: a later run could have written this page meanwhile.
    assert storage.landed["slow/b"] <= returned


def test_a_projects_rows_are_recorded_once_its_pages_are_up_not_at_the_end(
        tmp_path: Path) -> None:
    storage, state = _Remote(), _State()
    publisher = Publisher(storage, tmp_path, state, 1)  # type: ignore[arg-type]
    recorded: list[int] = []
    with publisher.pipelined():
        publisher.page("slow/a", "a")  # 0.5 s in flight
        publisher.then(lambda: recorded.append(-1))  # a's project's rows: after a is up
        time.sleep(1.0)  # a's PUT is long done
        for i in range(1000):  # projects whose pages are unchanged (same bytes)
            publisher.page(f"same/{i}", "x")
            publisher.then(lambda i=i: recorded.append(i))
        seen_inside = len(recorded)
    # Every step waits for nothing: it should have run (and its rows joined the batch)
    # as it was asked, not be held in memory until the very end of the run.
    assert seen_inside == 1001
