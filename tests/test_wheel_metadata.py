"""A wheel's PEP 658 metadata is read from the wheel itself when it is what upstream
advertised, and downloaded otherwise; never published unchecked.

Against the loopback upstream: requests are counted on the server, published bytes read
back, state.db and `mirror verify` asked. Then metadata_from_wheel alone, on archives made
to hurt (a central directory of many entries, a member that lies about its size).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from simplemirror.cli import config
from simplemirror.cli.main import main
from simplemirror.store import layout
from simplemirror.sync import download
from simplemirror.sync.download import FromWheel, NotInWheel, metadata_from_wheel
from simplemirror.sync.run import RunSummary, Sync
from tests.support.dists import make_sdist
from tests.support.process import process_state_kept
from tests.support.tree import assert_consistent
from tests.support.upstream import UpFile, Upstream, World

METADATA = b"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore", UserWarning)  # a name twice, when a test wants it
        for name, body in members:
            archive.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), body,
                             zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def metadata_of(name: str) -> bytes:
    return METADATA.replace(b"{name}", name.encode())


def add_wheel(world: World, name: str, members: list[tuple[str, bytes]]) -> UpFile:
    """A wheel of ``name`` 1.0 made of ``members``, advertised with ``metadata_of(name)``."""
    return world.add_file(
        name, f"{name}-1.0-py3-none-any.whl", wheel_of(members), metadata=metadata_of(name)
    )


@pytest.fixture
def world() -> World:
    w = World()
    w.add_project("good", ["1.0"], sdist=False)  # a real wheel: METADATA is what is served
    w.add_project("apart", ["1.0"], sdist=False)
    w.project("apart").files[0].metadata += b"Description: not the wheel's\n"
    add_wheel(w, "misplaced", [("other-1.0.dist-info/METADATA", metadata_of("misplaced"))])
    add_wheel(w, "twice", [
        ("twice-1.0.dist-info/METADATA", metadata_of("twice")),
        ("extra-2.0.dist-info/METADATA", metadata_of("twice")),
    ])
    # Its METADATA says 17 MiB (as a bomb would), compressed to a few kilobytes.
    add_wheel(w, "bomb", [("bomb-1.0.dist-info/METADATA", b"\n" * (17 * 1024**2))])
    sdist = make_sdist("plain", "1.0")
    w.add_file("plain", sdist.filename, sdist.content, metadata=sdist.metadata)
    return w


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values: dict[str, Any] = {
        "upstream": up.url, "directory": str(directory), "retries": 1, "retry_wait": 0.0,
    }
    values.update(overrides)
    return Sync(config.build({}, values)).run()


def metadata_gets(up: Upstream) -> dict[str, int]:
    """How often each project's .metadata was asked for."""
    counts: dict[str, int] = {}
    for path in up.paths("GET"):
        if path.endswith(".metadata"):
            name = path.rsplit("/", 1)[1].split("-", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def held_metadata(directory: Path, project: str) -> tuple[bytes | None, dict[str, str] | None]:
    """The .metadata published beside a project's one file, and the hashes state.db holds."""
    with sqlite3.connect(directory / "state.db") as db:
        path, hashes = db.execute(
            "SELECT path, metadata_hashes FROM files WHERE project = ?", [project]
        ).fetchone()
    published = directory / "web" / layout.metadata_path(path)
    return (
        published.read_bytes() if published.exists() else None,
        json.loads(hashes) if hashes else None,
    )


def verify_exit(directory: Path) -> int:
    with process_state_kept():
        return main(["verify", "--directory", str(directory)])


@pytest.mark.parametrize("processes", [0, 2], ids=["here", "download-processes"])
def test_metadata_is_read_from_the_wheel_only_when_it_is_what_upstream_advertised(
    upstream: Upstream, world: World, tmp_path: Path, processes: int
) -> None:
    summary = sync(upstream, tmp_path, download_processes=processes)

    assert summary.exit_code == 0, summary.failed
    # Only the real wheel's METADATA stands for its .metadata; every other one is asked for.
    assert metadata_gets(upstream) == {n: 1 for n in ("apart", "misplaced", "twice", "bomb",
                                                      "plain")}
    assert (summary.metadata_from_wheels, summary.metadata_fetched) == (1, 5)
    for project in world.projects.values():
        served = project.files[0].metadata
        assert served is not None
        # Published byte for byte as advertised, and recorded with its verified hash.
        assert held_metadata(tmp_path, project.normalized) == (
            served, {"sha256": sha256(served)}
        ), project.name
    assert_consistent(tmp_path / "web")
    assert verify_exit(tmp_path) == 0
    assert not list((tmp_path / "tmp").iterdir())


def test_metadata_advertised_later_is_read_from_the_held_wheel(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    good = world.project("good").files[0]
    served, good.metadata = good.metadata, None
    sync(upstream, tmp_path)
    assert held_metadata(tmp_path, "good") == (None, None)
    good.metadata = served
    world.touch("good")
    upstream.reset_requests()

    summary = sync(upstream, tmp_path)

    assert summary.exit_code == 0 and summary.metadata_from_wheels == 1
    assert [p for p in upstream.paths("GET") if p.startswith("/packages/")] == []
    assert held_metadata(tmp_path, "good") == (served, {"sha256": sha256(served or b"")})
    assert verify_exit(tmp_path) == 0


def test_every_advertised_hash_must_match(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    good = world.project("good").files[0]
    assert good.metadata is not None
    # The sha256 is the METADATA's; the sha512 is not: neither copy may be published.
    advertised = {"sha256": sha256(good.metadata), "sha512": "0" * 128}
    good.extra = {"core-metadata": advertised, "data-dist-info-metadata": advertised}

    summary = sync(upstream, tmp_path, projects=["good"])

    assert summary.exit_code == 1 and "sha512" in dict(summary.failed)["good"]
    assert metadata_gets(upstream) == {"good": 2}  # downloaded, and retried once
    assert held_metadata(tmp_path, "good") == (None, None)
    assert not list((tmp_path / "web").rglob("*.metadata"))


def test_metadata_advertised_without_a_hash_is_downloaded(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    good = world.project("good").files[0]
    good.extra = {"core-metadata": True, "data-dist-info-metadata": True}

    summary = sync(upstream, tmp_path, projects=["good"])

    assert summary.exit_code == 0 and summary.metadata_fetched == 1
    assert metadata_gets(upstream) == {"good": 1}


def test_verify_repair_reads_a_missing_metadata_from_the_wheel(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    directory = tmp_path / "mirror"
    assert sync(upstream, directory, projects=["good", "apart"]).exit_code == 0
    with sqlite3.connect(directory / "state.db") as db:
        for (path,) in db.execute("SELECT path FROM files"):
            (directory / "web" / layout.metadata_path(path)).unlink()
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(f'[mirror]\nupstream = "{upstream.url}"\ndirectory = "{directory}"\n')
    upstream.reset_requests()

    with process_state_kept():
        assert main(["verify", "-c", str(cfg), "--repair"]) == 0

    assert metadata_gets(upstream) == {"apart": 1}
    assert held_metadata(directory, "good")[0] == world.project("good").files[0].metadata
    assert verify_exit(directory) == 0


# -- metadata_from_wheel alone ---------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path: Path) -> config.Config:
    cfg = config.build(
        {}, {"upstream": "http://127.0.0.1:9/simple/", "directory": str(tmp_path)}
    )
    cfg.web.mkdir()
    cfg.tmp.mkdir()
    return cfg


def place(cfg: config.Config, filename: str, data: bytes) -> FromWheel:
    """``data`` held as the wheel ``filename``; the read of its METADATA as ``metadata_of``."""
    rel = layout.file_path(sha256(data), filename)
    (cfg.web / rel).parent.mkdir(parents=True)
    (cfg.web / rel).write_bytes(data)
    read = FromWheel.of(rel, filename, {"sha256": sha256(metadata_of("w"))})
    assert read is not None
    return read


def nothing_written(cfg: config.Config) -> bool:
    return not list(cfg.tmp.iterdir()) and not list(cfg.web.rglob("*.metadata"))


def test_a_wheel_with_its_metadata_gives_it(mirror: config.Config) -> None:
    read = place(mirror, "w-1.0-py3-none-any.whl", wheel_of([
        ("w/__init__.py", b""), ("W-1.0.dist-info/METADATA", metadata_of("w")),
    ]))

    got = metadata_from_wheel(mirror, read)

    # The directory's name is compared normalized, as the wheel spec's escaping allows.
    assert got.path == read.wheel + ".metadata" and got.size == len(metadata_of("w"))
    assert (mirror.web / got.path).read_bytes() == metadata_of("w")
    assert got.hashes == {"sha256": sha256(metadata_of("w"))}
    assert not list(mirror.tmp.iterdir())


@pytest.mark.parametrize(("members", "why"), [
    ([("w-1.0.dist-info/METADATA", b"Name: w\n")], "sha256"),
    ([("w-2.0.dist-info/METADATA", metadata_of("w"))], "does not name"),
    ([("v-1.0.dist-info/METADATA", metadata_of("w"))], "does not name"),
    ([("w-1.0.dist-info/METADATA", metadata_of("w"))] * 2, "2 *.dist-info/METADATA"),
    ([("w-1.0.dist-info/WHEEL", b"")], "0 *.dist-info/METADATA"),
    ([("w/w-1.0.dist-info/METADATA", metadata_of("w"))], "0 *.dist-info/METADATA"),
], ids=["other-bytes", "other-version", "other-name", "two", "none", "nested"])
def test_a_wheel_without_the_right_metadata_gives_nothing(
    mirror: config.Config, members: list[tuple[str, bytes]], why: str
) -> None:
    read = place(mirror, "w-1.0-py3-none-any.whl", wheel_of(members))

    with pytest.raises(NotInWheel, match=why.replace("*", r"\*")):
        metadata_from_wheel(mirror, read)
    assert nothing_written(mirror)


def test_what_is_no_zip_gives_nothing(mirror: config.Config) -> None:
    read = place(mirror, "w-1.0-py3-none-any.whl", b"not a zip at all" * 100)

    with pytest.raises(NotInWheel):
        metadata_from_wheel(mirror, read)
    assert nothing_written(mirror)


def test_no_wheel_and_no_hash_ask_for_no_read() -> None:
    assert FromWheel.of("p/x-1.0.tar.gz", "x-1.0.tar.gz", {"sha256": "0" * 64}) is None
    assert FromWheel.of("p/x-1.0-py3-none-any.whl", "x-1.0-py3-none-any.whl", {}) is None


def test_a_huge_central_directory_is_not_read(mirror: config.Config) -> None:
    # Entries with names as long as zip allows: a central directory past the cap, which
    # zipfile would read whole and make an object of each entry of.
    padding = [(f"{i:04d}" + "x" * 65_000, b"") for i in range(70)]
    data = wheel_of([*padding, ("w-1.0.dist-info/METADATA", metadata_of("w"))])
    read = place(mirror, "w-1.0-py3-none-any.whl", data)

    with pytest.raises(NotInWheel, match="more of the wheel"):
        metadata_from_wheel(mirror, read)
    assert nothing_written(mirror)


def test_a_member_that_lies_about_its_size_costs_no_memory(mirror: config.Config) -> None:
    """Its central directory gives the size and CRC of the right METADATA; its data unpack
    into 32 MiB more. Only the bytes declared are ever unpacked, and checked."""
    good = metadata_of("w")
    data = bytearray(wheel_of([("w-1.0.dist-info/METADATA", good + b"\0" * (32 * 1024**2))]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.infolist()[0]
    central = data.rindex(b"PK\x01\x02")
    crc = zipfile.crc32(good).to_bytes(4, "little")
    data[central + 16 : central + 20] = crc
    data[central + 24 : central + 28] = len(good).to_bytes(4, "little")
    assert info.file_size > 32 * 1024**2
    read = place(mirror, "w-1.0-py3-none-any.whl", bytes(data))

    tracemalloc.start()
    try:
        got = metadata_from_wheel(mirror, read)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (mirror.web / got.path).read_bytes() == good
    assert peak < 8 * 1024**2


def test_a_member_too_large_is_not_unpacked(mirror: config.Config) -> None:
    data = wheel_of([("w-1.0.dist-info/METADATA", b"\n" * (download.WHEEL_METADATA_CAP + 1))])
    read = place(mirror, "w-1.0-py3-none-any.whl", data)

    with pytest.raises(NotInWheel, match="larger than"):
        metadata_from_wheel(mirror, read)
    assert nothing_written(mirror)

