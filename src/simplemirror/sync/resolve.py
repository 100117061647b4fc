"""The requirements' closure, read from upstream (filter/closure.py does the thinking).

Pages are asked for all at once within a round of the closure, and kept for the run,
which then does not ask for them again. What a file needs is read once and kept in
state.db (``requires``): a wheel's from its PEP 658 metadata, an sdist's from the sdist,
downloaded into tmp/ and verified, where the run then takes it from instead of
downloading it a second time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from simplemirror.filter.closure import SETUPTOOLS_DEFAULT, Requires, metadata_requires
from simplemirror.filter.select import is_sdist
from simplemirror.simple.model import DistFile, HeldFile, ProjectPage
from simplemirror.store import tree as store
from simplemirror.store.state import State
from simplemirror.sync.plan import ProjectTodo
from simplemirror.upstream.client import (
    Client,
    Interrupted,
    NotFound,
    PageResponse,
    UpstreamError,
    check_response,
)

log = logging.getLogger("simplemirror")

# A file inside an sdist larger than this is not read (pyproject.toml, PKG-INFO are small).
MEMBER_CAP = 1 << 20
# A dry run reads an sdist in memory; a larger one is not read (its build requirements
# then count as setuptools').
MEMORY_CAP = 256 << 20


@dataclass
class UpstreamSource:
    """closure.Source over the run's client and state.db."""

    client: Client
    state: State
    stage: bool = True
    """Keep a downloaded sdist in tmp/ for the run to take; False (a dry run, which
    writes nothing): read it in memory."""
    responses: dict[str, PageResponse] = field(default_factory=dict)
    """The pages read, for the run to use."""
    staged: dict[str, str] = field(default_factory=dict)
    """Sdists downloaded and verified, by file name: their temporary files in tmp/."""
    files_fetched: int = 0
    bytes_fetched: int = 0
    complete: bool = True
    """Every page asked for was read, or upstream said it has none (404)."""

    def pages(
        self, names: Iterable[str]
    ) -> Mapping[str, tuple[ProjectPage, Mapping[str, HeldFile]] | None]:
        client = self.client
        asked = {
            name: client.submit(client.in_turn(client.get_page(ProjectTodo(name, name, None))))
            for name in names
        }
        found: dict[str, tuple[ProjectPage, Mapping[str, HeldFile]] | None] = {}
        for name, future in asked.items():
            try:
                response = client.result(future)
            except UpstreamError as exc:
                if not isinstance(exc, NotFound):
                    log.warning("requirements: cannot read the page of %s: %s", name, exc)
                    self.complete = False
                found[name] = None
                continue
            if response is None:  # 304: cannot be, nothing conditional was asked
                found[name] = None
                continue
            self.responses[name] = response
            held = {h.filename: h for h in self.state.planning_files(name)}
            found[name] = (response.page, held)
        return found

    def requires(self, files: Iterable[DistFile]) -> Mapping[str, Requires]:
        by_name = {d.filename: d for d in files}
        known = self.state.requires_of(d.hashes["sha256"] for d in by_name.values()
                                       if "sha256" in d.hashes)
        found: dict[str, Requires] = {}
        asked: dict[str, Future[Any]] = {}
        for name, dist in by_name.items():
            cached = known.get(dist.hashes.get("sha256", ""))
            if cached is not None and (cached[1] is not None or not is_sdist(name)):
                dist_, build = cached
                found[name] = Requires(_tuple(dist_), _tuple(build))
            elif is_sdist(name):
                asked[name] = self.client.submit(self.client.in_turn(self._sdist(dist)))
            elif dist.core_metadata:
                asked[name] = self.client.submit(self.client.in_turn(self._metadata(dist)))
            else:
                found[name] = Requires()
        for name, future in asked.items():
            dist = by_name[name]
            try:
                got = self.client.result(future)
            except Interrupted:
                raise
            except (UpstreamError, OSError) as exc:
                log.warning("requirements: cannot read what %s needs: %s", name, exc)
                self.complete = False  # worked out again next run
                found[name] = Requires()
                continue
            requires = self._read_sdist(dist, got) if is_sdist(name) else Requires(
                metadata_requires(got)
            )
            found[name] = requires
            if "sha256" in dist.hashes:
                self.state.note_requires(dist.hashes["sha256"], _list(requires.dist),
                                         _list(requires.build))
        return found

    async def _metadata(self, dist: DistFile) -> bytes:
        expected = dist.core_metadata if isinstance(dist.core_metadata, Mapping) else {}

        async def attempt() -> bytes:
            got = await self.client.fetch(dist.metadata_url)
            check_response(got)
            _verify(dist.metadata_url, got.body, expected)
            return got.body

        return await self.client.retrying(attempt)

    async def _sdist(self, dist: DistFile) -> str | bytes:
        """The sdist, verified: in a temporary file of tmp/ (a download's name, cleared
        with the others by the next run if this one dies), or in memory."""
        cap = dist.size if dist.size is not None else self.client.config.max_file_size
        if not self.stage:
            cap = min(cap, MEMORY_CAP)

        async def attempt() -> str | bytes:
            fd, name = (store.create(self.client.config.tmp, store.DOWNLOAD_PREFIX)
                        if self.stage else (-1, ""))
            body = bytearray()
            try:
                hashers = {a: hashlib.new(a) for a in dist.hashes}
                size = 0
                async with self.client.stream(dist.url) as stream:
                    check_response(stream)
                    async for chunk in stream.chunks():
                        size += len(chunk)
                        if size > cap:
                            raise UpstreamError(f"{dist.url}: longer than {cap} bytes")
                        if fd >= 0:
                            store.write_all(fd, chunk)
                        else:
                            body += chunk
                        for hasher in hashers.values():
                            hasher.update(chunk)
                _verify(dist.url, None, dist.hashes, {a: h.hexdigest() for a, h in
                                                      hashers.items()})
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                    store.discard(name)
                raise
            if fd < 0:
                return bytes(body)
            os.close(fd)
            self.files_fetched += 1
            self.bytes_fetched += size
            return name

        return await self.client.retrying(attempt)

    def _read_sdist(self, dist: DistFile, got: str | bytes) -> Requires:
        if isinstance(got, str):
            self.staged[dist.filename] = got
        try:
            pyproject, pkg_info = _sdist_members(got)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("requirements: cannot read the sdist %s: %s", dist.filename, exc)
            return Requires(None, SETUPTOOLS_DEFAULT)
        build = SETUPTOOLS_DEFAULT
        if pyproject is not None:
            try:
                table = tomllib.loads(pyproject.decode("utf-8")).get("build-system")
            except (UnicodeDecodeError, tomllib.TOMLDecodeError):
                table = None
            given = table.get("requires") if isinstance(table, dict) else None
            if isinstance(given, list) and all(isinstance(r, str) for r in given):
                build = tuple(given)
        dist_ = metadata_requires(pkg_info) if pkg_info is not None else None
        return Requires(dist_, build)

    def discard_staged(self) -> None:
        """The run is over: the sdists it staged go (those it published are linked)."""
        for name in self.staged.values():
            store.discard(name)
        self.staged.clear()


def _verify(url: str, body: bytes | None, expected: Mapping[str, str],
            got: Mapping[str, str] | None = None) -> None:
    if got is None:
        assert body is not None
        got = {a: hashlib.new(a, body).hexdigest() for a in expected}
    for algorithm, digest in expected.items():
        if got.get(algorithm) != digest:
            raise UpstreamError(f"{url}: its {algorithm} is not the one upstream's page gives")


def _sdist_members(got: str | bytes) -> tuple[bytes | None, bytes | None]:
    """(pyproject.toml, PKG-INFO) at the top of the sdist's one directory, if there;
    ``got``: the sdist's path, or its bytes."""
    wanted = ("pyproject.toml", "PKG-INFO")
    found: dict[str, bytes] = {}
    path: str | io.BytesIO = got if isinstance(got, str) else io.BytesIO(got)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] in wanted and info.file_size <= MEMBER_CAP:
                    found.setdefault(parts[1], archive.read(info))
    else:
        if isinstance(path, io.BytesIO):
            path.seek(0)
        with (tarfile.open(path) if isinstance(path, str) else tarfile.open(fileobj=path)
              ) as archive:
            for member in archive:
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] in wanted and member.isfile() and (
                    member.size <= MEMBER_CAP
                ):
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        found.setdefault(parts[1], extracted.read())
    return found.get("pyproject.toml"), found.get("PKG-INFO")


def _tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _list(value: tuple[str, ...] | None) -> list[str] | None:
    return None if value is None else list(value)

