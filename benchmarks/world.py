"""Benchmark worlds: a static index tree on disk, generated fast, mutated in place.

Layout of a world directory::

    world.json                  kind, size, serials of every release made since
    serials.map                 nginx map: project name -> its last serial (X-PyPI-Last-Serial)
    files.txt                   URL path of every release file and .metadata file
    htdocs/simple/index.v1_json, index.html (+ .gz)        the root, both formats
    htdocs/simple/<name>/index.v1_json, index.html          project pages
    htdocs/pypi/<name>/json                                 JSON API (only with json_api)
    htdocs/packages/<b2>/<b2>/<b2 rest>/<filename>[.metadata]

Project ``i`` is ``proj-<i>``; its first release (1.0) has serial ``i + 1``, so the
world's serial starts at the project count. Every file is derived from (kind, i,
version) by artifacts.py, so only the serials of later releases are stored.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import artifacts, pages

MANIFEST = "world.json"
# Work units for the generator processes: small enough to balance two cores.
_CHUNK = 2_000


def project_name(number: int) -> str:
    return f"proj-{number:06d}"


def _write(path: str, data: bytes) -> None:
    # Plain os calls: generating 650,000 projects means ~3 million of these.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


@dataclass
class World:
    root: Path
    kind: str
    projects: int
    json_api: bool
    serial: int
    releases: dict[int, list[int]] = field(default_factory=dict)
    """Project number -> serials of its releases after 1.0 (made by mutate)."""

    @property
    def htdocs(self) -> Path:
        return self.root / "htdocs"

    # -- what the world holds ------------------------------------------------

    def release_serials(self, number: int) -> list[int]:
        return [number + 1, *self.releases.get(number, [])]

    def project_serial(self, number: int) -> int:
        return self.release_serials(number)[-1]

    def built(self, number: int) -> list[artifacts.Built]:
        """Every file of project ``number``, every release, with its bytes."""
        name = project_name(number)
        out: list[artifacts.Built] = []
        for k, serial in enumerate(self.release_serials(number)):
            out += artifacts.build_release(self.kind, number, name, f"1.{k}", serial)
        return out

    def file_counts(self) -> tuple[int, int]:
        """(release files, .metadata files) the world serves."""
        releases = self.projects + sum(len(s) for s in self.releases.values())
        per = artifacts.FILES_PER_RELEASE[self.kind]
        with_metadata = per if self.kind == artifacts.METADATA_KIND else per - 1
        return releases * per, releases * with_metadata

    def names(self) -> Iterator[str]:
        return (project_name(i) for i in range(self.projects))

    # -- writing -------------------------------------------------------------

    def write_project(self, number: int, *, files: bool) -> list[str]:
        """Write project ``number``'s pages (and its files when ``files``).

        Returns the URL paths of the files written.
        """
        htdocs = str(self.htdocs)
        name = project_name(number)
        serial = self.project_serial(number)
        built = self.built(number)
        dists = [b.dist for b in built]
        written: list[str] = []
        if files:
            for b in built:
                path = htdocs + b.dist.url
                if os.path.exists(path):  # an older release, already there
                    continue
                _mkdir(os.path.dirname(path))
                _write(path, b.data)
                written.append(b.dist.url)
                if b.metadata is not None:
                    _write(path + ".metadata", b.metadata)
                    written.append(b.dist.url + ".metadata")
        page_dir = f"{htdocs}/simple/{name}"
        _mkdir(page_dir)
        _write(page_dir + "/index.v1_json", pages.project_json(name, serial, dists).encode())
        _write(page_dir + "/index.html", pages.project_html(name, serial, dists).encode())
        if self.json_api:
            api_dir = f"{htdocs}/pypi/{name}"
            _mkdir(api_dir)
            _write(api_dir + "/json", pages.json_api(name, serial, dists).encode())
        return written

    def write_root(self) -> None:
        """Both root formats (and their .gz for gzip_static), and the serial map for nginx.

        A rewritten root always gets a newer mtime than the one it replaces: nginx's
        ETag is mtime (in seconds) and size, and a client must see the change.
        """
        entries = [(project_name(i), self.project_serial(i)) for i in range(self.projects)]
        simple = self.htdocs / "simple"
        simple.mkdir(parents=True, exist_ok=True)
        for filename, text in (
            ("index.v1_json", pages.root_json(entries, self.serial)),
            ("index.html", pages.root_html(entries, self.serial)),
        ):
            data = text.encode()
            for path, body in (
                (simple / filename, data),
                (simple / (filename + ".gz"), gzip.compress(data, 6, mtime=0)),
            ):
                before = path.stat().st_mtime if path.exists() else 0.0
                _write(str(path), body)
                if int(path.stat().st_mtime) <= int(before):
                    os.utime(path, (int(before) + 1, int(before) + 1))
        lines = "".join(f"{n} {s};\n" for n, s in entries)
        (self.root / "serials.map").write_text(lines)

    def save(self) -> None:
        manifest = {
            "kind": self.kind,
            "projects": self.projects,
            "json_api": self.json_api,
            "serial": self.serial,
            "releases": {str(k): v for k, v in self.releases.items()},
        }
        (self.root / MANIFEST).write_text(json.dumps(manifest))

    @classmethod
    def load(cls, root: Path) -> World:
        data = json.loads((root / MANIFEST).read_text())
        return cls(
            root=root,
            kind=data["kind"],
            projects=data["projects"],
            json_api=data["json_api"],
            serial=data["serial"],
            releases={int(k): v for k, v in data["releases"].items()},
        )

    # -- changing it ---------------------------------------------------------

    def mutate(self, count: int) -> list[str]:
        """Give ``count`` projects, spread over the index, a new release.

        Each gets a new serial, its new files, new pages (and JSON API document), and
        the root and serial map are rewritten. Returns the changed projects' names.
        """
        count = min(count, self.projects)
        step = self.projects / count
        chosen = sorted({int(k * step + step / 2) for k in range(count)})
        added: list[str] = []
        for number in chosen:
            self.serial += 1
            self.releases.setdefault(number, []).append(self.serial)
            added += self.write_project(number, files=True)
        with (self.root / "files.txt").open("a") as listing:
            listing.writelines(u + "\n" for u in added)
        self.write_root()
        self.save()
        return [project_name(n) for n in chosen]


def _generate_chunk(job: tuple[str, str, bool, int, int, int]) -> str:
    """Generator process: write projects [start, end) and list their file URLs."""
    root, kind, json_api, projects, start, end = job
    world = World(Path(root), kind, projects, json_api, serial=projects)
    urls: list[str] = []
    for number in range(start, end):
        urls += world.write_project(number, files=True)
    listing = Path(root) / "lists" / f"{start:07d}.txt"
    listing.write_text("".join(u + "\n" for u in urls))
    return str(listing)


def generate(
    root: Path, kind: str, projects: int, *, json_api: bool, jobs: int | None = None
) -> World:
    """Write a fresh world of ``projects`` projects into ``root`` (which must not exist)."""
    if kind not in artifacts.KINDS:
        raise ValueError(f"kind must be one of {artifacts.KINDS}")
    root.mkdir(parents=True)
    (root / "lists").mkdir()
    for sub in ("simple", "packages", "pypi"):
        (root / "htdocs" / sub).mkdir(parents=True)
    jobs = jobs or os.cpu_count() or 1
    work = [
        (str(root), kind, json_api, projects, start, min(start + _CHUNK, projects))
        for start in range(0, projects, _CHUNK)
    ]
    # fork: the children inherit the imported modules and the random pool for free.
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        listings = sorted(pool.imap_unordered(_generate_chunk, work))
    with (root / "files.txt").open("w") as out:
        for listing in listings:
            out.write(Path(listing).read_text())
            Path(listing).unlink()
    (root / "lists").rmdir()
    world = World(root, kind, projects, json_api, serial=projects)
    world.write_root()
    world.save()
    return world


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate a benchmark world.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--world", choices=artifacts.KINDS, default=artifacts.METADATA_KIND)
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--json-api", action="store_true", help="also /pypi/<name>/json")
    args = parser.parse_args()
    started = time.monotonic()
    world = generate(args.directory, args.world, args.projects, json_api=args.json_api)
    files, metadata = world.file_counts()
    print(
        f"{args.projects} projects, {files} files + {metadata} .metadata "
        f"in {time.monotonic() - started:.1f} s: {args.directory}"
    )


if __name__ == "__main__":
    main()
