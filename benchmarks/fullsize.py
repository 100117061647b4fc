"""A mirror at the public index's size: 650,000 projects and ~10.5 million files.

    python -m benchmarks.fullsize --workdir /dev/shm/full          # build, measure, remove
    python -m benchmarks.fullsize --workdir /dev/shm/full --keep   # ... and keep it
    python -m benchmarks.fullsize --workdir /dev/shm/full/fullsize-XXXX --reuse  # again
    python -m benchmarks.fullsize --check --projects 40            # generated rows == a sync's

noop.py's mirror holds one file a project; the public index holds over ten million, and
a query that walks state.db's files table grows with them. A real first sync of that
size takes hours and terabytes, so this writes what one leaves behind: state.db's rows,
through the calls a sync makes (the client's page parser, ``download.held_file``, the
page renderers, ``State.record_page`` and ``State.record_project``), minus the network
and the disk; and the root pages. File bodies and project pages are not written: no run
measured here reads them, except the pages of the projects about to change, which are
written just before they do. ``--check`` builds a small mirror both ways from one
upstream, by ``mirror sync`` and by this generator, and compares every row.

``--files-per-project``: ``skewed`` (the default) draws each project's count from a
Pareto distribution (x_min 2, alpha 1.05, at most 20,000), the same on every run: at
650,000 projects 10.56 million files, half the projects with 3 or fewer, 1% with 162 or
more, 936 with 1,000 or more. A number gives every project that many. A project's files
are releases of an sdist and wheels (each wheel with PEP 658 metadata).

Measured (``measure.run_measured``: wall, CPU, peak RSS), ``--repeat`` times:

- ``noop 304``: the root unchanged, nginx answers If-None-Match with 304;
- ``noop resent``: nginx sends no ETag, the same root comes whole (~30 MB, gzipped);
- ``incremental``: ``--changes`` projects spread over the index each get a new release (an
  sdist and a wheel with its metadata, real bytes), a new serial, page and root, served
  by nginx; the run must download and verify exactly those files, checked after it;
- ``status``, ``log`` and ``log --generation`` of that incremental run.

The upstream and the mirror live in ``--workdir``; ``--keep`` leaves them (and
``fullsize.json``, which says what the upstream serves) for ``--reuse``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import artifacts, clients, pages, world
from benchmarks.measure import Usage, run_measured
from benchmarks.upstream import Nginx

X_MIN, ALPHA, MOST = 2, 1.05, 20_000
# The mtime nginx's ETags of the pages not written are computed with ("mtime-size").
PAGE_MTIME = 1_704_067_200
MANIFEST = "fullsize.json"
_TAGS = tuple(
    f"{py}-{plat}"
    for py in ("cp38-cp38", "cp39-cp39", "cp310-cp310", "cp311-cp311", "cp312-cp312",
               "cp313-cp313")
    for plat in ("manylinux_2_17_x86_64", "manylinux_2_17_aarch64", "musllinux_1_2_x86_64",
                 "macosx_11_0_arm64", "win_amd64")
)  # 30: a release of a project with many files has an sdist and up to 29 wheels


def file_count(number: int, per_project: int | None) -> int:
    """How many files project ``number`` holds at first (see the module's docstring)."""
    if per_project is not None:
        return per_project
    draw = hashlib.blake2b(b"%d" % number, digest_size=8).digest()
    uniform = (int.from_bytes(draw) + 1) / 2**64
    return min(MOST, int(X_MIN * uniform ** (-1 / ALPHA)))


def _body(filename: str) -> bytes:
    # Small: only the files a run downloads are ever written, but every file's hashes
    # are of real bytes, so that --check can serve them all.
    return artifacts._noise(filename, 256 + zlib.crc32(filename.encode()) % 4096)


def release(name: str, version: str, count: int, serial: int) -> list[artifacts.Built]:
    """One release of ``count`` files: a wheel alone, or an sdist and count - 1 wheels."""
    base = artifacts.dist_name(name)
    metadata = artifacts._metadata_text(name, version)
    if count == 1:
        names = [f"{base}-{version}-py3-none-any.whl"]
    else:
        names = [f"{base}-{version}.tar.gz", *(f"{base}-{version}-{t}.whl" for t in _TAGS)]
    built = []
    for filename in names[:count]:
        wheel = filename.endswith(".whl")
        built.append(artifacts._describe(
            name, version, filename, _body(filename), metadata if wheel else None,
            "bdist_wheel" if wheel else "sdist", serial,
        ))
    return built


@dataclass
class Upstream:
    """What the upstream serves: every project's first releases, and the changes since."""

    directory: Path
    projects: int
    per_project: int | None
    port: int = 0
    serial: int = 0
    rounds: int = 0
    changed: dict[int, list[int]] = field(default_factory=dict)
    """Project number -> the serials of the releases the rounds added (2.1, 2.2...)."""

    def __post_init__(self) -> None:
        self.serial = self.serial or self.projects

    @property
    def htdocs(self) -> Path:
        return self.directory / "htdocs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple/"

    def project_serial(self, number: int) -> int:
        return (self.changed.get(number) or [number + 1])[-1]

    def built(self, number: int) -> list[artifacts.Built]:
        """Every file of project ``number`` now, oldest release first."""
        name = world.project_name(number)
        count = file_count(number, self.per_project)
        per_release = min(len(_TAGS), count // 8 + 1)
        out: list[artifacts.Built] = []
        for k, start in enumerate(range(0, count, per_release)):
            out += release(name, f"1.{k}", min(per_release, count - start), number + 1)
        for k, serial in enumerate(self.changed.get(number, []), start=1):
            out += release(name, f"2.{k}", 2, serial)
        return out

    def page(self, number: int, built: list[artifacts.Built] | None = None) -> bytes:
        """Its PEP 691 page, as the upstream serves it (``built``: its files, if made)."""
        dists = [b.dist for b in built or self.built(number)]
        name = world.project_name(number)
        return pages.project_json(name, self.project_serial(number), dists).encode()

    def write_root(self) -> None:
        """The PEP 691 root, and its .gz (nginx's gzip_static, as the public index sends it);
        each rewrite newer by a second at least, for nginx's ETag (mtime and size)."""
        simple = self.htdocs / "simple"
        simple.mkdir(parents=True, exist_ok=True)
        entries = ((world.project_name(i), self.project_serial(i)) for i in range(self.projects))
        body = pages.root_json(entries, self.serial).encode()
        for path, data in ((simple / "index.v1_json", body),
                           (simple / "index.v1_json.gz", gzip.compress(body, 6, mtime=0))):
            before = path.stat().st_mtime if path.exists() else 0.0
            path.write_bytes(data)
            if int(path.stat().st_mtime) <= int(before):
                os.utime(path, (int(before) + 1, int(before) + 1))
        serials = "".join(f"{world.project_name(n)} {s[-1]};\n" for n, s in self.changed.items())
        (self.directory / "serials.map").write_text(serials)

    def write_project(self, number: int, *, files: bool) -> list[artifacts.Built]:
        """Its page (with PAGE_MTIME when ``files``: --check predicts its ETag) and, with
        ``files``, every file; else only those of the newest release. Returns those."""
        name = world.project_name(number)
        page = self.htdocs / "simple" / name / "index.v1_json"
        page.parent.mkdir(parents=True, exist_ok=True)
        built = self.built(number)
        page.write_bytes(self.page(number, built))
        written = built if files else built[-2:]
        for b in written:
            path = self.htdocs / b.dist.url.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b.data)
            if b.metadata is not None:
                path.with_name(path.name + ".metadata").write_bytes(b.metadata)
        if files:
            os.utime(page, (PAGE_MTIME, PAGE_MTIME))
        return written

    def world(self) -> world.World:
        """A World for benchmarks.upstream.Nginx (the paths and serials it serves)."""
        return world.World(self.directory, artifacts.METADATA_KIND, self.projects, False,
                           self.serial)

    def save(self) -> None:
        doc = {k: v for k, v in asdict(self).items() if k != "directory"}
        (self.directory.parent / MANIFEST).write_text(json.dumps(doc))

    @classmethod
    def load(cls, work: Path) -> Upstream:
        doc = json.loads((work / MANIFEST).read_text())
        doc["changed"] = {int(k): v for k, v in doc["changed"].items()}
        return cls(work / "upstream", **doc)


def _root_identity(url: str) -> tuple[str, str]:
    """(ETag, sha256 of the body) of the root as the mirror asks for it: what a sync of
    this root records."""
    from simplemirror.upstream.client import ACCEPT
    from simplemirror.upstream.httpclient import PAGE_ENCODINGS

    request = urllib.request.Request(url, headers={"Accept": ACCEPT,
                                                   "Accept-Encoding": PAGE_ENCODINGS})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return response.headers["ETag"], hashlib.sha256(body).hexdigest()


# -- the mirror, as a first sync of the upstream leaves it ----------------------------------

# Made again (SCHEMA) once the rows are in: an index built at the end sorts once, where
# one kept up row by row pays a random B-tree insert a row. files_live stays: the
# files upsert names it.
_LATE_INDEXES = ("files_appeared", "files_path", "files_tombstones", "files_unreaped",
                 "pages_written")


def _copy(upstream: Upstream, number: int, body: bytes) -> tuple[Any, list[Any], str]:
    """(ProjectInfo, HeldFiles, ETag) of project ``number``, as the sync makes them from
    its page ``body``: the client's parser, a file's verified digests, held_file."""
    from simplemirror.simple.model import ProjectPage
    from simplemirror.simple.render import ProjectInfo
    from simplemirror.store import layout
    from simplemirror.sync.download import held_file

    name = world.project_name(number)
    page = ProjectPage.from_json_data(json.loads(body), page_url=f"{upstream.url}{name}/")
    files = []
    for d in page.files:
        sha256 = d.hashes["sha256"]
        core = d.core_metadata
        files.append(held_file(
            name, d, layout.file_path(sha256, d.filename), d.size or 0, {"sha256": sha256},
            metadata_hashes=dict(core) if isinstance(core, Mapping) else None,
        ))
    versions = page.versions or ()
    info = ProjectInfo(name, page.serial, versions, page.extra, page.status,
                       page.status_reason)
    return info, files, f'"{PAGE_MTIME:x}-{len(body):x}"'


@dataclass(frozen=True)
class _Copy:
    """One project as its first sync records it."""

    info: Any  # render.ProjectInfo
    files: list[Any]  # HeldFile
    page_etag: str
    page_hash: str
    pages: tuple[tuple[str, str, int], ...]
    """(path, sha256, size) of its HTML and JSON pages."""
    fetched: int
    """Bytes its files and their metadata took to download."""


def _copies(job: tuple[Upstream, int, int]) -> list[_Copy]:
    """Projects [start, end) as their first sync records them (in a worker process)."""
    from simplemirror.simple import render
    from simplemirror.store import layout

    upstream, start, end = job
    out = []
    for number in range(start, end):
        built = upstream.built(number)
        body = upstream.page(number, built)
        info, files, page_etag = _copy(upstream, number, body)
        texts = (render.project_html(info, files), render.project_json(info, files))
        out.append(_Copy(
            info, files, page_etag, hashlib.sha256(body).hexdigest(),
            tuple((rel, hashlib.sha256(data).hexdigest(), len(data))
                  for rel, data in zip(layout.project_pages(info.name),
                                       (text.encode() for text in texts), strict=True)),
            # A wheel's metadata is fetched beside it, and counted with it.
            sum(len(b.data) + len(b.metadata or b"") for b in built),
        ))
    return out


def build_mirror(directory: Path, upstream: Upstream, etag: str, sha256: str) -> None:
    """state.db and the root pages, as a first sync of ``upstream`` leaves them (in the
    publish order, and in the transactions it records them in). Worker processes make
    the projects' copies; this one records them, in order."""
    from simplemirror.simple.model import Status
    from simplemirror.store.backend import Local
    from simplemirror.store.state import SCHEMA, State
    from simplemirror.sync.publish import Publisher

    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    (directory / "web").mkdir(exist_ok=True)
    state = State(directory / "state.db")
    for index in _LATE_INDEXES:
        state.db.execute(f"DROP INDEX {index}")
    generation = state.begin_run(upstream.url)
    names = [world.project_name(i) for i in range(upstream.projects)]
    with state.transaction():
        state.set_meta("root_serials", "yes")
        state.note_listed(((n, n, upstream.project_serial(i)) for i, n in enumerate(names)),
                          generation)
        state.mark_removed([], generation)
    files = fetched = 0
    publisher = Publisher(Local(directory / "web"), directory / "tmp", state, generation)
    started = time.monotonic()
    jobs = [(upstream, start, min(start + 500, upstream.projects))
            for start in range(0, upstream.projects, 500)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for k, copies in enumerate(pool.imap(_copies, jobs)):
            # Committed every 500 projects, as a sync commits in batches: the WAL stays small.
            with state.transaction():
                for c in copies:
                    for rel, digest, size in c.pages:
                        state.record_page(rel, digest, size, generation)
                    state.record_project(
                        c.info.name, status=Status.OK, error=None, page_serial=c.info.serial,
                        page_etag=c.page_etag, page_hash=c.page_hash,
                        page_data=c.info.to_data(), files=c.files, gone=[],
                        generation=generation,
                    )
                    files += len(c.files)
                    fetched += c.fetched
            if k % 100 == 99:
                print(f"  {(k + 1) * 500} projects, {files} files in "
                      f"{time.monotonic() - started:.0f} s", flush=True)
    print(f"  {upstream.projects} projects, {files} files in "
          f"{time.monotonic() - started:.0f} s; indexes...", flush=True)
    state.db.executescript(SCHEMA)
    with state.transaction():
        state.set_meta("root_serial", str(upstream.serial))
        state.set_meta("root_etag", etag)
        state.set_meta("root_sha256", sha256)
        state.set_meta("root_scope", json.dumps([upstream.url, []]))
        publisher.root(state.root_entries(), upstream.serial)
    publisher.last_modified(time.gmtime())
    state.finish_run(
        generation, "ok", upstream_serial=upstream.serial, projects_changed=upstream.projects,
        projects_deferred=0, projects_failed=0, projects_removed=0, files_fetched=files,
        bytes_fetched=fetched,
    )
    state.close()
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)


def write_changed_pages(directory: Path, upstream: Upstream, number: int) -> None:
    """The mirror's pages of project ``number`` as they stand: what a run that changes
    it compares its new pages with, and replaces."""
    from simplemirror.simple import render
    from simplemirror.store import layout

    info, files, _ = _copy(upstream, number, upstream.page(number))
    for rel, text in zip(layout.project_pages(info.name),
                         (render.project_html(info, files), render.project_json(info, files)),
                         strict=True):
        path = directory / "web" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def mutate(directory: Path, upstream: Upstream, count: int) -> list[artifacts.Built]:
    """Give ``count`` projects spread over the index a new release (another spread each
    round); the mirror's pages of those projects written first. Returns the new files."""
    upstream.rounds += 1
    step = upstream.projects / count
    chosen = sorted({(int(k * step) + upstream.rounds * 7919) % upstream.projects
                     for k in range(count)})
    new: list[artifacts.Built] = []
    for number in chosen:
        write_changed_pages(directory, upstream, number)
        upstream.serial += 1
        upstream.changed.setdefault(number, []).append(upstream.serial)
        new += upstream.write_project(number, files=False)
    upstream.write_root()
    upstream.save()
    return new


def check_fetched(directory: Path, new: list[artifacts.Built]) -> list[str]:
    """What is wrong with the new files in the mirror (none missing, every byte theirs)."""
    from simplemirror.store import layout

    wrong = []
    for b in new:
        path = directory / "web" / layout.file_path(b.dist.sha256, b.dist.filename)
        try:
            data = path.read_bytes()
            metadata = path.with_name(path.name + ".metadata").read_bytes() \
                if b.metadata is not None else None
        except OSError as exc:
            wrong.append(f"{b.dist.filename}: {exc}")
            continue
        if data != b.data or metadata != b.metadata:
            wrong.append(f"{b.dist.filename}: not the bytes upstream served")
    return wrong


# -- --check: the generated rows against a real sync's -------------------------------------

# Columns that differ between two syncs of the same upstream for no reason of content.
_VARYING = {"runs": ("started", "finished"), "files": ("id",)}


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = [t for (t,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {}
    for table in tables:
        columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")
                   if c[1] not in _VARYING.get(table, ())]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        if table == "pages":  # last-modified holds the time of the run
            rows = [r if r[0] != "last-modified" else (r[0], "", *r[2:]) for r in rows]
        out[table] = sorted(rows, key=repr)
    out["sqlite_master"] = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    return out


def check(work: Path, projects: int, per_project: int | None, mirror: str) -> int:
    """Sync a small upstream for real, generate the same mirror, compare every row."""
    upstream = Upstream(work / "upstream", projects, per_project)
    for number in range(projects):
        upstream.write_project(number, files=True)
    upstream.write_root()
    with Nginx(upstream.world(), work / "nginx") as nginx:
        upstream.port = nginx.port
        done = subprocess.run(
            [mirror, "sync", "--upstream", upstream.url, "--directory", str(work / "real"),
             "--no-progress"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stdout + done.stderr)
            return 1
        build_mirror(work / "generated", upstream, *_root_identity(upstream.url))
    real, generated = _rows(work / "real" / "state.db"), _rows(work / "generated" / "state.db")
    differences = 0
    for table in sorted(set(real) | set(generated)):
        a, b = real.get(table, []), generated.get(table, [])
        if a != b:
            differences += 1
            only_real = [r for r in a if r not in b][:3]
            only_generated = [r for r in b if r not in a][:3]
            print(f"{table}: {len(a)} rows synced, {len(b)} generated; only synced: "
                  f"{only_real}; only generated: {only_generated}")
    files = len(real.get("files", []))
    print(f"{projects} projects, {files} files: "
          + ("every row the same" if not differences else f"{differences} table(s) differ"))
    return 1 if differences else 0


# -- measuring -------------------------------------------------------------------------------


def _measure(name: str, command: list[str], logs: Path) -> Usage:
    usage = run_measured(command, log=logs / f"{name.replace(' ', '-')}.log")
    print(f"  {name:<16} wall {usage.wall:6.2f} s  cpu {usage.cpu:6.2f} s  "
          f"rss {usage.max_rss_mb:5.0f} MB  exit {usage.returncode}", flush=True)
    return usage


def _last_run(directory: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(f"file:{directory / 'state.db'}?mode=ro", uri=True)
    try:
        row: tuple[Any, ...] = conn.execute(
            "SELECT generation, outcome, projects_changed, files_fetched FROM runs"
            " ORDER BY generation DESC LIMIT 1").fetchone()
        return row
    finally:
        conn.close()


def measure(work: Path, upstream: Upstream, nginx: Nginx, mirror: str, changes: int) -> bool:
    """One round of the runs in the module's docstring; False when one went wrong."""
    directory = work / "mirror"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    sync = [mirror, "sync", "--upstream", upstream.url, "--directory", str(directory),
            "--no-progress"]
    where = ["--directory", str(directory)]
    ok = True
    for name, etag in (("noop 304", True), ("noop resent", False)):
        nginx.reload(etag=etag)
        usage = _measure(name, sync, logs)
        ok = ok and usage.returncode == 0 and _last_run(directory)[1] == "unchanged"
    nginx.reload(etag=True)
    started = time.monotonic()
    new = mutate(directory, upstream, changes)
    nginx.world = upstream.world()
    nginx.reload()
    print(f"  ({changes} projects changed upstream, {len(new)} new files, in "
          f"{time.monotonic() - started:.0f} s)", flush=True)
    usage = _measure("incremental", sync, logs)
    generation, outcome, changed, fetched = _last_run(directory)
    wrong = check_fetched(directory, new)
    print(f"  generation {generation}: {outcome}, {changed} projects changed, {fetched} files "
          f"fetched; {len(new) - len(wrong)} of {len(new)} new files in place and verified")
    for line in wrong[:5]:
        print(f"    {line}")
    ok = ok and usage.returncode == 0 and not wrong and fetched == len(new)
    for name, command in (
        ("status", [mirror, "status", *where]),
        ("log", [mirror, "log", *where]),
        ("log --generation", [mirror, "log", "--generation", str(generation), *where]),
    ):
        usage = _measure(name, command, logs)
        ok = ok and usage.returncode == 0
    return ok


def _build(work: Path, upstream: Upstream, etag: str, sha256: str) -> None:
    build_mirror(work / "mirror", upstream, etag, sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=650_000)
    parser.add_argument("--files-per-project", default="skewed",
                        help="'skewed' (see the docstring) or a number for every project")
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of measurements")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--mirror", help="simplemirror's `mirror` command")
    parser.add_argument("--keep", action="store_true", help="leave the upstream and mirror")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the upstream and mirror --keep left in --workdir")
    parser.add_argument("--check", action="store_true",
                        help="compare the generated state.db with a real sync's, and stop")
    args = parser.parse_args(argv)
    spec = args.files_per_project
    per_project = None if spec == "skewed" else int(spec)
    mirror = args.mirror or clients.find_mirror()
    if args.reuse:
        if args.workdir is None:
            parser.error("--reuse needs the --workdir a --keep run left")
        work = args.workdir
    else:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fullsize-", dir=args.workdir))
    try:
        if args.check:
            return check(work, args.projects, per_project, mirror)
        if args.reuse:
            upstream = Upstream.load(work)
        else:
            upstream = Upstream(work / "upstream", args.projects, per_project)
            upstream.write_root()
        nginx = Nginx(upstream.world(), work / "nginx")
        if args.reuse:
            nginx.port = upstream.port  # the URL state.db holds
        with nginx:
            if not args.reuse:
                upstream.port = nginx.port
                upstream.save()
                started = time.monotonic()
                builder = multiprocessing.get_context("spawn").Process(
                    target=_build, args=(work, upstream, *_root_identity(upstream.url)))
                builder.start()
                builder.join()
                if builder.exitcode != 0:
                    print("building the mirror failed")
                    return 1
                size = (work / "mirror" / "state.db").stat().st_size
                print(f"built in {time.monotonic() - started:.0f} s: state.db "
                      f"{size / 2**30:.2f} GiB", flush=True)
            ok = True
            for _ in range(args.repeat):
                ok = measure(work, upstream, nginx, mirror, args.changes) and ok
        return 0 if ok else 1
    finally:
        if not args.keep and not args.reuse:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
