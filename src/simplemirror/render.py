"""Rendering of the mirror's pages: PEP 503 HTML and PEP 691 JSON.

Pure functions from data to text. The pages only ever describe files the
mirror holds (HeldFile); links are relative so the tree works under any path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from simplemirror import layout
from simplemirror.model import HeldFile

# 1.1: PEP 700 (versions, size, upload-time). The mirror emits no PEP 708 keys,
# and advertises PEP 740 provenance only once it mirrors it.
API_VERSION = "1.1"


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


@dataclass(frozen=True)
class RootEntry:
    name: str
    """Display name, as upstream spelt it."""
    normalized: str
    serial: int | None
    """Serial of the last complete copy of the project; None until there is one."""


def _metadata_attr(hashes: Mapping[str, str]) -> str:
    # PEP 658 allows one hash in the attribute; sha256 is always present.
    return f"sha256={hashes['sha256']}" if "sha256" in hashes else "true"


def project_html(info: ProjectInfo, files: Sequence[HeldFile]) -> str:
    page_dir = layout.project_dir(info.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
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
        lines.append(f"    <a {' '.join(attrs)}>{escape(f.filename)}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines)


def _file_json(page_dir: str, f: HeldFile) -> dict[str, Any]:
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
    return entry


def project_json(info: ProjectInfo, files: Sequence[HeldFile]) -> str:
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
            "files": [_file_json(page_dir, f) for f in files],
        }
    )
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def root_html(projects: Iterable[RootEntry]) -> str:
    head = (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
    )
    # Links are relative to /simple/, so "<name>/" reaches the project page.
    body = "".join(
        f'    <a href="{p.normalized}/">{escape(p.name)}</a><br />\n' for p in projects
    )
    return head + body + "  </body>\n</html>\n"


def root_json(projects: Iterable[RootEntry], serial: int | None) -> str:
    meta: dict[str, Any] = {"api-version": API_VERSION}
    if serial is not None:
        meta["_last-serial"] = serial
    listed = []
    for p in projects:
        entry: dict[str, Any] = {"name": p.name}
        if p.serial is not None:
            entry["_last-serial"] = p.serial
        listed.append(entry)
    doc = {"meta": meta, "projects": listed}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
