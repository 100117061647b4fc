"""Rendering of the mirror's pages: PEP 503 HTML and PEP 691 JSON.

Pure functions from data to text. The pages only ever describe files the
mirror holds (HeldFile); links are relative so the tree works under any path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from json.encoder import encode_basestring
from typing import Any

# RootEntry: publish.py and the tests name it render.RootEntry.
from simplemirror.simple.model import API_VERSION, HeldFile
from simplemirror.simple.model import RootEntry as RootEntry
from simplemirror.store import layout

# One encoder for every page: json.dumps with options builds a new one each call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class ProjectInfo:
    """What a project page says besides its files."""

    name: str
    """Normalized name."""
    serial: int | None
    """The upstream serial of the page these files came from."""
    versions: tuple[str, ...]
    extra: Mapping[str, Any]
    """Top-level keys kept verbatim from upstream."""
    status: str | None = None
    """PEP 792 project status as upstream gave it (None: not given, i.e. active)."""
    status_reason: str | None = None

    def to_data(self) -> dict[str, Any]:
        """What state.db keeps to render the page again (projects.page_data)."""
        return {
            "versions": list(self.versions),
            "extra": dict(self.extra),
            "status": self.status,
            "status_reason": self.status_reason,
        }

    @classmethod
    def from_data(cls, name: str, serial: int | None, data: Mapping[str, Any]) -> ProjectInfo:
        return cls(
            name,
            serial,
            tuple(data.get("versions") or ()),
            data.get("extra") or {},
            data.get("status"),
            data.get("status_reason"),
        )


def _metadata_attr(hashes: Mapping[str, str]) -> str:
    # PEP 658 allows one hash in the attribute; sha256 is always present.
    return f"sha256={hashes['sha256']}" if "sha256" in hashes else "true"


def provenance_url(public_url: str, f: HeldFile) -> str:
    """PEP 740 asks for an absolute URL: the provenance sits beside the file."""
    return public_url + layout.url_path(f.path + layout.PROVENANCE_SUFFIX)


def project_html(
    info: ProjectInfo, files: Sequence[HeldFile], public_url: str | None = None
) -> str:
    page_dir = layout.project_dir(info.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
    ]
    if info.status is not None:
        lines.append(f'    <meta name="pypi:project-status" content="{escape(info.status)}">')
        if info.status_reason is not None:
            lines.append(
                f'    <meta name="pypi:project-status-reason"'
                f' content="{escape(info.status_reason)}">'
            )
    lines += [
        f"    <title>Links for {escape(info.name)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {escape(info.name)}</h1>",
    ]
    for f in files:
        href = f"{layout.relative_url(page_dir, f.path)}#sha256={f.hashes['sha256']}"
        attrs = [f'href="{escape(href)}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{escape(f.requires_python)}"')
        if f.metadata_hashes is not None:
            value = escape(_metadata_attr(f.metadata_hashes))
            # Both spellings: older pip reads only the PEP 658 name (see PEP 714).
            attrs.append(f'data-dist-info-metadata="{value}"')
            attrs.append(f'data-core-metadata="{value}"')
        if f.yanked:
            attrs.append(f'data-yanked="{escape(f.yanked_reason or "")}"')
        if f.signature:
            attrs.append('data-gpg-sig="true"')
        if f.provenance and public_url:
            attrs.append(f'data-provenance="{escape(provenance_url(public_url, f))}"')
        lines.append(f"    <a {' '.join(attrs)}>{escape(f.filename)}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines)


def _file_json(page_dir: str, f: HeldFile, public_url: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = dict(f.extra)
    entry.update(
        {
            "filename": f.filename,
            "url": layout.relative_url(page_dir, f.path),
            "hashes": dict(f.hashes),
            "requires-python": f.requires_python,
            "size": f.size,
            "upload-time": f.upload_time,
            "yanked": (f.yanked_reason or True) if f.yanked else False,
            "core-metadata": dict(f.metadata_hashes) if f.metadata_hashes is not None else False,
        }
    )
    if entry["upload-time"] is None:
        del entry["upload-time"]  # PEP 700: omit rather than send null
    if f.signature:
        entry["gpg-sig"] = True
    if f.provenance and public_url:
        entry["provenance"] = provenance_url(public_url, f)
    return entry


def project_json(
    info: ProjectInfo, files: Sequence[HeldFile], public_url: str | None = None
) -> str:
    page_dir = layout.project_dir(info.name)
    meta: dict[str, Any] = {"api-version": API_VERSION}
    if info.serial is not None:
        meta["_last-serial"] = info.serial
    doc: dict[str, Any] = dict(info.extra)
    doc.update(
        {
            "meta": meta,
            "name": info.name,
            "versions": list(info.versions),
            "files": [_file_json(page_dir, f, public_url) for f in files],
        }
    )
    if info.status is not None:
        status: dict[str, str] = {"status": info.status}
        if info.status_reason is not None:
            status["reason"] = info.status_reason
        doc["project-status"] = status
    return _encode(doc) + "\n"


def root_html(projects: Iterable[RootEntry]) -> str:
    return "".join(root_html_parts(projects))


def root_html_parts(projects: Iterable[RootEntry]) -> Iterator[str]:
    """The root HTML page in pieces, to be written as they come: at 650,000 projects
    the whole text and its encoded bytes held at once cost ~100 MB."""
    yield (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
    )
    # Links are relative to /simple/, so "<name>/" reaches the project page.
    for p in projects:
        yield f'    <a href="{p.normalized}/">{escape(p.name)}</a><br />\n'
    yield "  </body>\n</html>\n"


def root_json(projects: Iterable[RootEntry], serial: int | None) -> str:
    return "".join(root_json_parts(projects, serial))


def root_json_parts(projects: Iterable[RootEntry], serial: int | None) -> Iterator[str]:
    """The root JSON page in pieces: the bytes json.dumps(doc, ensure_ascii=False,
    separators=(",", ":")) gives, built entry by entry (a dict per entry cost ~200 MB
    at 650,000 projects)."""
    meta: dict[str, Any] = {"api-version": API_VERSION}
    if serial is not None:
        meta["_last-serial"] = serial
    yield '{"meta":' + json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
    yield ',"projects":['
    separator = ""
    for p in projects:
        yield (
            separator + '{"name":' + encode_basestring(p.name)
            + ("}" if p.serial is None else f',"_last-serial":{int(p.serial)}}}')
        )
        separator = ","
    yield "]}\n"
