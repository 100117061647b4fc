"""What the benchmark upstream serves: the Simple API pages and the JSON API documents.

Shaped like the public index's answers (PEP 691 api-version 1.1 with per-project
``_last-serial``, PEP 503 HTML with data-core-metadata, and the legacy JSON API that
bandersnatch reads), rendered with plain string formatting because a 650,000-project
world renders 2.6 million of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from benchmarks.artifacts import Dist

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
API_VERSION = "1.1"


def _file_json(d: Dist) -> dict[str, Any]:
    core: dict[str, str] | bool = (
        {"sha256": d.metadata_sha256} if d.metadata_sha256 is not None else False
    )
    return {
        "filename": d.filename,
        "url": d.url,
        "hashes": {"sha256": d.sha256},
        "requires-python": d.requires_python,
        "size": d.size,
        "upload-time": d.upload_time,
        "yanked": False,
        "core-metadata": core,
        "data-dist-info-metadata": core,
    }


def project_json(name: str, serial: int, dists: Sequence[Dist]) -> str:
    doc = {
        "meta": {"api-version": API_VERSION, "_last-serial": serial},
        "name": name,
        "versions": sorted({d.version for d in dists}),
        "files": [_file_json(d) for d in dists],
    }
    return json.dumps(doc, separators=(",", ":"))


def project_html(name: str, serial: int, dists: Sequence[Dist]) -> str:
    links = []
    for d in dists:
        attrs = f'href="{d.url}#sha256={d.sha256}"'
        if d.requires_python:
            attrs += f' data-requires-python="{escape(d.requires_python)}"'
        if d.metadata_sha256 is not None:
            value = f"sha256={d.metadata_sha256}"
            attrs += f' data-dist-info-metadata="{value}" data-core-metadata="{value}"'
        links.append(f"    <a {attrs}>{escape(d.filename)}</a><br />\n")
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"    <title>Links for {name}</title>\n  </head>\n  <body>\n"
        f"    <h1>Links for {name}</h1>\n{''.join(links)}  </body>\n</html>\n"
        f"<!--SERIAL {serial}-->\n"
    )


def _api_file(d: Dist) -> dict[str, Any]:
    core: dict[str, str] | bool = (
        {"sha256": d.metadata_sha256} if d.metadata_sha256 is not None else False
    )
    return {
        "filename": d.filename,
        "url": d.url,
        "digests": {"sha256": d.sha256, "blake2b_256": d.blake2b_256},
        "size": d.size,
        "packagetype": d.packagetype,
        "python_version": "source" if d.packagetype == "sdist" else "py3",
        "requires_python": d.requires_python,
        "upload_time": d.upload_time[:19],
        "upload_time_iso_8601": d.upload_time,
        "yanked": False,
        "yanked_reason": None,
        "has_sig": False,
        "core-metadata": core,
        "data-dist-info-metadata": core,
    }


def json_api(name: str, serial: int, dists: Sequence[Dist]) -> str:
    """The legacy JSON API document (``/pypi/<name>/json``) that bandersnatch reads."""
    releases: dict[str, list[dict[str, Any]]] = {}
    for d in dists:
        releases.setdefault(d.version, []).append(_api_file(d))
    latest = max(releases, key=lambda v: tuple(int(p) for p in v.split(".")))
    doc = {
        "info": {
            "name": name,
            "version": latest,
            "summary": f"benchmark project {name}",
            "requires_python": ">=3.8",
        },
        "last_serial": serial,
        "releases": releases,
        "urls": releases[latest],
        "vulnerabilities": [],
    }
    return json.dumps(doc, separators=(",", ":"))


def root_json(entries: Iterable[tuple[str, int]], serial: int) -> str:
    # Assembled by hand: json.dumps of 650,000 small dicts is several times slower, and
    # the names are plain ASCII that need no escaping.
    projects = ",".join(f'{{"name":"{n}","_last-serial":{s}}}' for n, s in entries)
    return (
        f'{{"meta":{{"api-version":"{API_VERSION}","_last-serial":{serial}}},'
        f'"projects":[{projects}]}}'
    )


def root_html(entries: Iterable[tuple[str, int]], serial: int) -> str:
    links = "".join(f'    <a href="/simple/{n}/">{n}</a><br />\n' for n, _ in entries)
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
        f"{links}  </body>\n</html>\n<!--SERIAL {serial}-->\n"
    )
