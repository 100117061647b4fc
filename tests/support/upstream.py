"""A fake upstream package index: a mutable in-memory World served over HTTP on 127.0.0.1.

The World is the single source of truth; every page is rendered from it per request, so
tests can mutate it (or flip the Upstream knobs) while a mirror client is talking to it.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from ._http import (
    HTML,
    HTML_V1,
    JSON_V1,
    BaseHandler,
    RequestRecord,
    ServerThread,
    etag_matches,
    negotiate,
    strong_etag,
)
from .dists import make_sdist, make_wheel, normalize

__all__ = [
    "RequestRecord",
    "UpFile",
    "UpProject",
    "Upstream",
    "World",
    "normalize",
]

UrlStyle = Literal["absolute", "host-relative", "relative"]

# Stands in a JSON document for a serial sent as given text (see Upstream._json_serial).
_RAW_SERIAL = "\x00raw-serial-{}\x00"

# Upload times are derived from the serial so that pages are reproducible run to run.
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _upload_time(serial: int) -> str:
    moment = _EPOCH + timedelta(seconds=serial * 61, microseconds=serial * 7 % 1_000_000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version_from_filename(filename: str) -> str | None:
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return parts[1] if len(parts) >= 5 else None
    for ext in (".tar.gz", ".zip", ".tar.bz2", ".tgz"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            if "-" in stem:
                return stem.rsplit("-", 1)[1]
    return None


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    # Good enough ordering for the plain versions tests use, without importing packaging.
    return tuple(
        (0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.findall(r"\d+|[a-z]+", version)
    )


@dataclass
class UpFile:
    filename: str
    content: bytes
    metadata: bytes | None = None
    requires_python: str | None = None
    # False, True (yanked without a reason) or the reason string.
    yanked: bool | str = False
    # None omits "upload-time" from JSON, for testing tolerant clients.
    upload_time: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    size: int = 0
    version: str | None = None
    # Emitted verbatim into the file's JSON object, after the standard keys (so can override).
    extra: dict[str, Any] = field(default_factory=dict)
    # A detached signature served at the file's URL + ".asc" (advertised as gpg-sig).
    signature: bytes | None = None
    # A PEP 740 provenance document, served at provenance_path (not beside the file, as
    # on the real index, so that clients must follow the advertised URL).
    provenance: bytes | None = None

    @property
    def provenance_path(self) -> str:
        return f"/integrity/{quote(self.filename)}/provenance"

    @property
    def sha256(self) -> str:
        """Digest of the real content (independent of the advertised ``hashes``)."""
        return hashlib.sha256(self.content).hexdigest()

    @property
    def path(self) -> str:
        """URL path the file is served under (percent-encoded)."""
        h = self.sha256
        return f"/packages/{h[:2]}/{h[2:4]}/{h[4:]}/{quote(self.filename)}"

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


@dataclass
class UpProject:
    name: str
    normalized: str
    serial: int
    files: list[UpFile] = field(default_factory=list)
    # Merged into the project page's JSON "meta" object.
    extra_meta: dict[str, Any] = field(default_factory=dict)
    # Merged into the project page's top-level JSON object.
    extra: dict[str, Any] = field(default_factory=dict)
    # PEP 792 status ("archived", "quarantined", ...) and reason; None: not sent.
    status: str | None = None
    status_reason: str | None = None

    def file(self, filename: str) -> UpFile:
        for f in self.files:
            if f.filename == filename:
                return f
        raise KeyError(filename)

    @property
    def versions(self) -> list[str]:
        found = {f.version for f in self.files if f.version is not None}
        return sorted(found, key=_version_key)


class World:
    """Projects plus a global serial; every mutating call is one event that bumps the serial."""

    def __init__(self, start_serial: int = 1000) -> None:
        self.lock = threading.RLock()
        self._serial = start_serial
        self.projects: dict[str, UpProject] = {}

    @property
    def serial(self) -> int:
        return self._serial

    def _bump(self, project: UpProject) -> int:
        self._serial += 1
        project.serial = self._serial
        return self._serial

    def _get_or_create(self, name: str) -> UpProject:
        norm = normalize(name)
        project = self.projects.get(norm)
        if project is None:
            project = UpProject(name=name, normalized=norm, serial=self._serial)
            self.projects[norm] = project
        return project

    def project(self, name: str) -> UpProject:
        return self.projects[normalize(name)]

    def _attach(self, project: UpProject, upfile: UpFile) -> None:
        if any(f.filename == upfile.filename for f in project.files):
            raise ValueError(f"{upfile.filename} already exists in {project.name}")
        if upfile.upload_time is None:
            upfile.upload_time = _upload_time(self._serial)
        project.files.append(upfile)

    def _release_files(
        self,
        project: UpProject,
        version: str,
        sdist: bool,
        wheel: bool,
        requires_python: str | None,
        requires_dist: Sequence[str],
    ) -> None:
        if sdist:
            d = make_sdist(project.name, version, requires_python=requires_python)
            # Like the real index, core metadata is only exposed (PEP 658) for wheels.
            self._attach(project, self._new_file(d.filename, d.content, None, requires_python))
            project.files[-1].version = version
        if wheel:
            d = make_wheel(
                project.name, version, requires_python=requires_python, requires_dist=requires_dist
            )
            self._attach(
                project, self._new_file(d.filename, d.content, d.metadata, requires_python)
            )
            project.files[-1].version = version

    @staticmethod
    def _new_file(
        filename: str, content: bytes, metadata: bytes | None, requires_python: str | None
    ) -> UpFile:
        return UpFile(
            filename=filename,
            content=content,
            metadata=metadata,
            requires_python=requires_python,
            hashes={"sha256": hashlib.sha256(content).hexdigest()},
            size=len(content),
            version=_version_from_filename(filename),
        )

    def add_project(
        self,
        name: str,
        versions: Sequence[str] = ("1.0",),
        *,
        sdist: bool = True,
        wheel: bool = True,
        requires_python: str | None = None,
        requires_dist: Sequence[str] = (),
    ) -> UpProject:
        with self.lock:
            if normalize(name) in self.projects:
                raise ValueError(f"project {name!r} already exists")
            project = self._get_or_create(name)
            self._bump(project)
            for version in versions:
                self._release_files(project, version, sdist, wheel, requires_python, requires_dist)
            return project

    def add_release(
        self,
        name: str,
        version: str,
        *,
        sdist: bool = True,
        wheel: bool = True,
        requires_python: str | None = None,
        requires_dist: Sequence[str] = (),
    ) -> UpProject:
        """Add a version; creates the project (with ``name`` as display name) if needed."""
        with self.lock:
            project = self._get_or_create(name)
            self._bump(project)
            self._release_files(project, version, sdist, wheel, requires_python, requires_dist)
            return project

    def add_file(
        self,
        name: str,
        filename: str,
        content: bytes,
        *,
        metadata: bytes | None = None,
        hashes: dict[str, str] | None = None,
        size: int | None = None,
        requires_python: str | None = None,
        yanked: bool | str = False,
        upload_time: str | None = None,
        version: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> UpFile:
        """Add an arbitrary file. ``hashes``/``size`` default to the truth; override to lie."""
        with self.lock:
            project = self._get_or_create(name)
            self._bump(project)
            upfile = UpFile(
                filename=filename,
                content=content,
                metadata=metadata,
                requires_python=requires_python,
                yanked=yanked,
                upload_time=upload_time,
                hashes=dict(hashes)
                if hashes is not None
                else {"sha256": hashlib.sha256(content).hexdigest()},
                size=len(content) if size is None else size,
                version=version if version is not None else _version_from_filename(filename),
                extra=dict(extra or {}),
            )
            self._attach(project, upfile)
            return upfile

    def yank(self, name: str, filename: str, reason: str = "") -> UpFile:
        with self.lock:
            project = self.project(name)
            upfile = project.file(filename)
            upfile.yanked = reason if reason else True
            self._bump(project)
            return upfile

    def unyank(self, name: str, filename: str) -> UpFile:
        with self.lock:
            project = self.project(name)
            upfile = project.file(filename)
            upfile.yanked = False
            self._bump(project)
            return upfile

    def remove_file(self, name: str, filename: str) -> None:
        with self.lock:
            project = self.project(name)
            project.files.remove(project.file(filename))
            self._bump(project)

    def remove_project(self, name: str) -> None:
        with self.lock:
            project = self.projects.pop(normalize(name))
            # The deletion is still an event: the global serial moves on.
            self._bump(project)

    def touch(self, name: str) -> UpProject:
        """Bump a project's serial without changing its files (e.g. a metadata-only edit)."""
        with self.lock:
            project = self.project(name)
            self._bump(project)
            return project


@dataclass
class _Snapshot:
    """Everything a response needs, copied under the world lock."""

    body: bytes
    content_type: str
    serial: int | None


class Upstream:
    """HTTP front-end for a World. Knobs are plain attributes and may change while running.

    Fault knobs keyed by request path (the path as sent, without the query) count down: each
    request they apply to uses up one unit (see ``take``), and the key goes away at zero.
    Every request is recorded in ``requests`` before any fault is applied, so tests can count
    the attempts a client made.

    - ``fail[path] = n``: answer 503 to the next n requests.
    - ``status[path] = (code, headers, n)``: answer ``code`` with ``headers`` (e.g. 429 with
      ``{"Retry-After": "1"}``) to the next n requests.
    - ``reset[path] = n``: read the request, then drop the connection with a TCP reset and
      no response at all.
    - ``reset_mid_body[path] = n``: send the head and half the body of a file, then drop
      the connection with a TCP reset.
    - ``delay[path] = (seconds, n)``: sleep before answering (to trip a read timeout).
    - ``slow_body[path] = n``: send the full response in ``slow_chunk``-byte pieces with
      ``slow_pause`` seconds between them (slow but complete).

    Content knobs, not counted: ``corrupt``/``truncate``/``oversize`` (file names, with
    ``.metadata`` appended for a metadata file), ``root_body``/``root_content_type`` and
    ``page_body`` (see ``_root`` and ``_project``), ``api_version`` (PEP 629, every page),
    and the ``*_serial_text`` knobs, which send a serial as given text in place of the
    World's.
    """

    def __init__(self, world: World | None = None, host: str = "127.0.0.1") -> None:
        """``host``: the loopback address to listen on, 127.0.0.1 or ::1."""
        self.world = world if world is not None else World()
        self.url_style: UrlStyle = "absolute"
        # The host named in absolute file URLs: files on a second host, as many indexes
        # keep them. "localhost" is this same server under another name (both loopback).
        # None: the host the server listens on, as the pages' own URLs name it.
        self.files_host: str | None = None
        self.serial_as_string = False
        self._file_index: dict[str, tuple[UpFile, str]] = {}
        self._file_index_key: tuple[int, int] | None = None
        self.send_serial_header = True
        # "normal"; "none": no serials anywhere (plain static trees, many private indexes);
        # "constant": the same fake serial everywhere (as some servers send).
        self.serial_mode = "normal"
        # Serials sent as this text (decimal digits) instead of the World's, so that a test
        # can send what json.dumps cannot write as a number (5000 digits) or what no real
        # serial is (2**63). In JSON the text is a number, or a string with
        # serial_as_string; in HTML it goes into <!--SERIAL text-->.
        self.root_serial_text: str | None = None  # the root's own serial
        self.entry_serial_text: dict[str, str] = {}  # normalized name -> its root entry's
        self.page_serial_text: dict[str, str] = {}  # normalized name -> its page's
        self.header_serial_text: str | None = None  # X-PyPI-Last-Serial, on every page
        # False: pages carry no ETag (and If-None-Match is ignored).
        self.send_etags = True
        self.json_enabled = True
        # PEP 629: the Simple API version the root and every page declare.
        self.api_version = "1.1"
        self.stale: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.truncate: set[str] = set()
        self.fail: dict[str, int] = {}
        self.status: dict[str, tuple[int, dict[str, str], int]] = {}
        self.reset: dict[str, int] = {}
        self.reset_mid_body: dict[str, int] = {}
        self.delay: dict[str, tuple[float, int]] = {}
        self.slow_body: dict[str, int] = {}
        self.slow_chunk = 256
        self.slow_pause = 0.02
        # File names served with extra bytes after their content (more than the declared size).
        self.oversize: set[str] = set()
        self.oversize_extra = b"\0" * 4096
        # When set, the root answers exactly this body / with this content type.
        self.root_body: bytes | None = None
        self.root_content_type: str | None = None
        # Normalized project name -> (raw body, content type) served instead of its page.
        self.page_body: dict[str, tuple[bytes, str]] = {}
        self.requests: list[RequestRecord] = []
        self.knob_lock = threading.Lock()
        self._requests_lock = threading.Lock()
        self._thread = ServerThread(_UpstreamHandler, self, host)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Upstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._thread.port

    @property
    def base(self) -> str:
        host = self._thread.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/simple/"

    def page_url(self, name: str) -> str:
        return f"{self.base}/simple/{normalize(name)}/"

    @property
    def files_base(self) -> str:
        """Where absolute file URLs point (see ``files_host``)."""
        if self.files_host is None:
            return self.base
        return f"http://{self.files_host}:{self.port}"

    def file_url(self, name: str, filename: str) -> str:
        with self.world.lock:
            return self.files_base + self.world.project(name).file(filename).path

    # -- introspection ---------------------------------------------------------------------
    @property
    def errors(self) -> list[str]:
        """Tracebacks of handler failures (should stay empty)."""
        return self._thread.errors

    @property
    def peak_connections(self) -> int:
        """The most connections the server had open at once (while it runs)."""
        server = self._thread.server
        assert server is not None
        return server.peak_connections

    def reset_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    def record(self, rec: RequestRecord) -> None:
        with self._requests_lock:
            self.requests.append(rec)

    def paths(self, method: str | None = None) -> list[str]:
        with self._requests_lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def take(self, counter: dict[str, int], key: str) -> bool:
        """Consume one unit of a countdown knob; True if it applied to this request."""
        with self.knob_lock:
            left = counter.get(key, 0)
            if left <= 0:
                return False
            if left == 1:
                del counter[key]
            else:
                counter[key] = left - 1
            return True

    def take_status(self, key: str) -> tuple[int, dict[str, str]] | None:
        """Consume one unit of ``status[key]``; the (code, headers) to answer, if any."""
        with self.knob_lock:
            entry = self.status.get(key)
            if entry is None:
                return None
            code, headers, left = entry
            if left <= 1:
                del self.status[key]
            else:
                self.status[key] = (code, headers, left - 1)
            return (code, dict(headers)) if left > 0 else None

    def take_delay(self, key: str) -> float | None:
        """Consume one unit of ``delay[key]``; the seconds to sleep, if any."""
        with self.knob_lock:
            entry = self.delay.get(key)
            if entry is None:
                return None
            seconds, left = entry
            if left <= 1:
                del self.delay[key]
            else:
                self.delay[key] = (seconds, left - 1)
            return seconds if left > 0 else None

    # -- rendering -------------------------------------------------------------------------
    def _serial_value(self, serial: int) -> int | str | None:
        if self.serial_mode == "none":
            return None
        if self.serial_mode == "constant":
            serial = 1
        return str(serial) if self.serial_as_string else serial

    def _serial_comment(self, serial: int, text: str | None = None) -> str:
        value = self._serial_value(serial) if text is None else text
        return "" if value is None else f"<!--SERIAL {value}-->\n"

    def _json_serial(self, serial: int, text: str | None, raws: list[str]) -> object:
        """The serial's JSON value; a ``text`` override stands in as a placeholder
        that ``_dumps`` replaces with the text verbatim (json.dumps cannot write
        an int of 5000 digits)."""
        if text is None:
            return self._serial_value(serial)
        raws.append(json.dumps(text) if self.serial_as_string else text)
        return _RAW_SERIAL.format(len(raws) - 1)

    @staticmethod
    def _dumps(doc: dict[str, Any], raws: list[str]) -> bytes:
        text = json.dumps(doc)
        for i, raw in enumerate(raws):
            text = text.replace(json.dumps(_RAW_SERIAL.format(i)), raw)
        return text.encode("utf-8")

    @staticmethod
    def _without_none(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if v is not None}

    def _file_href(self, upfile: UpFile) -> str:
        if self.url_style == "absolute":
            return self.files_base + upfile.path
        if self.url_style == "host-relative":
            return upfile.path
        # Project pages live at /simple/<name>/, two levels below the root.
        return "../.." + upfile.path

    def render_root(self, media: str) -> _Snapshot:
        with self.world.lock:
            serial = self.world.serial
            projects = sorted(self.world.projects.values(), key=lambda p: p.normalized)
            if media == JSON_V1:
                raws: list[str] = []
                root_serial = self._json_serial(serial, self.root_serial_text, raws)
                doc = {
                    "meta": self._without_none(
                        {"api-version": self.api_version, "_last-serial": root_serial}
                    ),
                    "projects": [
                        self._without_none({
                            "name": p.name,
                            "_last-serial": self._json_serial(
                                p.serial, self.entry_serial_text.get(p.normalized), raws
                            ),
                        })
                        for p in projects
                    ],
                }
                return _Snapshot(self._dumps(doc, raws), JSON_V1, serial)
            links = "".join(
                f'    <a href="/simple/{quote(p.normalized)}/">{html.escape(p.name)}</a><br />\n'
                for p in projects
            )
        text = (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{self.api_version}">\n'
            "    <title>Simple index</title>\n  </head>\n  <body>\n"
            f"{links}  </body>\n</html>\n{self._serial_comment(serial, self.root_serial_text)}"
        )
        return _Snapshot(text.encode("utf-8"), media, serial)

    def render_project(self, project: UpProject, media: str, serial: int) -> _Snapshot:
        """Render with an explicit ``serial`` so callers can simulate stale CDN answers."""
        serial_text = self.page_serial_text.get(project.normalized)
        if media == JSON_V1:
            files = []
            for f in project.files:
                meta_hash: dict[str, str] | bool = (
                    {"sha256": f.metadata_sha256} if f.metadata_sha256 is not None else False
                )
                entry: dict[str, Any] = {
                    "filename": f.filename,
                    "url": self._file_href(f),
                    "hashes": dict(f.hashes),
                    "requires-python": f.requires_python,
                    "size": f.size,
                }
                if f.upload_time is not None:
                    entry["upload-time"] = f.upload_time
                entry["yanked"] = f.yanked
                entry["core-metadata"] = meta_hash
                entry["data-dist-info-metadata"] = meta_hash
                if f.signature is not None:
                    entry["gpg-sig"] = True
                if f.provenance is not None:
                    entry["provenance"] = self.base + f.provenance_path
                entry.update(f.extra)
                files.append(entry)
            raws: list[str] = []
            doc: dict[str, Any] = {
                "meta": self._without_none({
                    "api-version": self.api_version,
                    "_last-serial": self._json_serial(serial, serial_text, raws),
                    **project.extra_meta,
                }),
                "name": project.normalized,
                "versions": project.versions,
                "files": files,
                **project.extra,
            }
            if project.status is not None:
                doc["project-status"] = {"status": project.status}
                if project.status_reason is not None:
                    doc["project-status"]["reason"] = project.status_reason
            return _Snapshot(self._dumps(doc, raws), JSON_V1, serial)

        rows = []
        for f in project.files:
            href = self._file_href(f)
            if "sha256" in f.hashes:
                href += "#sha256=" + f.hashes["sha256"]
            elif f.hashes:
                algo, value = next(iter(f.hashes.items()))
                href += f"#{algo}={value}"
            attrs = [f'href="{html.escape(href)}"']
            if f.requires_python is not None:
                attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
            if f.yanked is not False:
                reason = f.yanked if isinstance(f.yanked, str) else ""
                attrs.append(f'data-yanked="{html.escape(reason)}"')
            if f.metadata_sha256 is not None:
                attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
                attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
            if f.signature is not None:
                attrs.append('data-gpg-sig="true"')
            if f.provenance is not None:
                attrs.append(f'data-provenance="{html.escape(self.base + f.provenance_path)}"')
            rows.append(f"    <a {' '.join(attrs)}>{html.escape(f.filename)}</a><br />\n")
        title = html.escape(project.name)
        status = ""
        if project.status is not None:
            status = f'    <meta name="pypi:project-status" content="{project.status}">\n'
            if project.status_reason is not None:
                reason = html.escape(project.status_reason)
                status += f'    <meta name="pypi:project-status-reason" content="{reason}">\n'
        text = (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{self.api_version}">\n'
            + status +
            f"    <title>Links for {title}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {title}</h1>\n{''.join(rows)}  </body>\n</html>\n"
            f"{self._serial_comment(serial, serial_text)}"
        )
        return _Snapshot(text.encode("utf-8"), media, serial)

    def find_file(self, path: str) -> tuple[UpFile, str] | None:
        """Map a request path to (file, what): what is "", ".metadata", ".asc" or ".provenance"."""
        with self.world.lock:
            # Rebuilt when the world changed (every change bumps its serial), and also
            # when a test edited a file in place without one, which is cheap to allow.
            key = (self.world.serial, sum(len(p.files) for p in self.world.projects.values()))
            if self._file_index_key != key:
                self._file_index = self._index_files()
                self._file_index_key = key
            found = self._file_index.get(unquote(path))
            if found is not None and found[1] == "":
                return found
        if found is not None:
            upfile, what = found
            body = {".metadata": upfile.metadata, ".asc": upfile.signature,
                    ".provenance": upfile.provenance}[what]
            return found if body is not None else None
        return None

    def _index_files(self) -> dict[str, tuple[UpFile, str]]:
        index: dict[str, tuple[UpFile, str]] = {}
        for project in self.world.projects.values():
            for f in project.files:
                file_path = unquote(f.path)
                index[file_path] = (f, "")
                index[file_path + ".metadata"] = (f, ".metadata")
                index[file_path + ".asc"] = (f, ".asc")
                index[unquote(f.provenance_path)] = (f, ".provenance")
        return index


class _UpstreamHandler(BaseHandler):
    @property
    def up(self) -> Upstream:
        owner: Upstream = self.server.owner
        return owner

    slow = False

    def dispatch(self) -> None:
        up = self.up
        self.record(up.requests, up._requests_lock)
        path = urlsplit(self.path).path
        self.slow = up.take(up.slow_body, path)
        if up.take(up.reset, path):
            self._reset()
            return
        seconds = up.take_delay(path)
        if seconds is not None:
            time.sleep(seconds)
        if up.take(up.fail, path):
            self.send_body(503, b"injected failure\n")
            return
        injected = up.take_status(path)
        if injected is not None:
            code, headers = injected
            self.send_body(code, f"injected status {code}\n".encode(), headers=headers)
            return
        if path == "/simple":
            self.send_redirect("/simple/")
        elif path == "/simple/":
            self._root()
        elif path.startswith("/simple/"):
            self._project(path)
        elif path.startswith(("/packages/", "/integrity/")):
            self._file(path)
        else:
            self.send_body(404, b"not found\n")

    def _send_half(self, body: bytes) -> None:
        """A file's head, with its whole length, and only the first half of its body."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()

    def _reset(self) -> None:
        """Drop the connection without a response: SO_LINGER 0 makes close() send a RST."""
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        if not self.slow:
            super().send_body(status, body, content_type, headers)
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        up = self.up
        step = max(1, up.slow_chunk)
        for start in range(0, len(body), step):
            if start:
                time.sleep(up.slow_pause)
            self.wfile.write(body[start : start + step])
            self.wfile.flush()

    def _media(self) -> str:
        offered = [JSON_V1, HTML_V1, HTML] if self.up.json_enabled else [HTML_V1, HTML]
        return negotiate(self.headers.get("Accept"), offered, HTML)

    def _send_page(self, snap: _Snapshot) -> None:
        headers = {"Vary": "Accept"}
        if self.up.send_etags:
            headers["ETag"] = strong_etag(snap.body)
        serial = self.up._serial_value(snap.serial) if snap.serial is not None else None
        if self.up.header_serial_text is not None:
            serial = self.up.header_serial_text
        if self.up.send_serial_header and serial is not None:
            headers["X-PyPI-Last-Serial"] = str(serial)
        if "ETag" in headers and etag_matches(self.headers.get("If-None-Match"), headers["ETag"]):
            self.send_not_modified(headers)
            return
        self.send_body(200, snap.body, snap.content_type, headers)

    def _root(self) -> None:
        up = self.up
        body, content_type = up.root_body, up.root_content_type
        if body is not None:
            self.send_body(200, body, content_type or JSON_V1)
            return
        snap = up.render_root(self._media())
        if content_type is not None:
            snap = _Snapshot(snap.body, content_type, snap.serial)
        self._send_page(snap)

    def _project(self, path: str) -> None:
        rest = path[len("/simple/") :]
        segment, slash, tail = rest.partition("/")
        if tail:
            self.send_body(404, b"not found\n")
            return
        name = unquote(segment)
        norm = normalize(name)
        if name != norm or not slash:
            self.send_redirect(f"/simple/{quote(norm)}/")
            return
        up = self.up
        replaced = up.page_body.get(norm)
        if replaced is not None:
            self.send_body(200, replaced[0], replaced[1])
            return
        snap: _Snapshot | None = None
        # Render under the lock but send outside it, so a slow client cannot stall mutations.
        with up.world.lock:
            project = up.world.projects.get(norm)
            if project is not None:
                serial = project.serial
                if up.take(up.stale, norm):
                    serial -= 1
                snap = up.render_project(project, self._media(), serial)
        if snap is None:
            self.send_body(404, b"no such project\n")
            return
        self._send_page(snap)

    def _file(self, path: str) -> None:
        found = self.up.find_file(path)
        if found is None:
            self.send_body(404, b"no such file\n")
            return
        upfile, what = found
        body = {
            "": upfile.content,
            ".metadata": upfile.metadata,
            ".asc": upfile.signature,
            ".provenance": upfile.provenance,
        }[what]
        assert body is not None
        key = upfile.filename + what
        if key in self.up.corrupt and body:
            mid = len(body) // 2
            body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
        if key in self.up.oversize:
            body += self.up.oversize_extra
        if self.command == "GET" and self.up.take(self.up.reset_mid_body, path):
            self._send_half(body)
            self._reset()
            return
        if key in self.up.truncate and self.command == "GET":
            self._send_half(body)
            # Closing after a short body is what a dropped CDN connection looks like.
            self.close_connection = True
            return
        self.send_body(200, body, "application/octet-stream")
