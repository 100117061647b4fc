"""Where things live in the published tree, and how pages link to them.

All paths here are relative to ``<directory>/web`` and use forward slashes.
Files are stored by content: ``packages/<sha256[:2]>/<sha256[2:4]>/<sha256[4:]>/<filename>``.
The path is derived from the bytes themselves, so the same file always lands in
the same place, two different files can never collide, and a published path
never has to change.
"""

from __future__ import annotations

import re
from urllib.parse import quote

SIMPLE = "simple"
PACKAGES = "packages"
HTML_INDEX = "index.html"
JSON_INDEX = "index.v1_json"
METADATA_SUFFIX = ".metadata"
SIGNATURE_SUFFIX = ".asc"
PROVENANCE_SUFFIX = ".provenance"


def file_path(sha256: str, filename: str) -> str:
    return f"{PACKAGES}/{sha256[:2]}/{sha256[2:4]}/{sha256[4:]}/{filename}"


def metadata_path(path: str) -> str:
    """PEP 658: the core metadata sits at the file's URL plus ``.metadata``."""
    return path + METADATA_SUFFIX


def project_dir(normalized: str) -> str:
    return f"{SIMPLE}/{normalized}"


def project_pages(normalized: str) -> tuple[str, str]:
    """The HTML and JSON page paths of a project."""
    base = project_dir(normalized)
    return f"{base}/{HTML_INDEX}", f"{base}/{JSON_INDEX}"


LAST_MODIFIED = "last-modified"
ROOT_PAGES = (f"{SIMPLE}/{HTML_INDEX}", f"{SIMPLE}/{JSON_INDEX}")


def relative_url(from_dir: str, target: str) -> str:
    """A URL for ``target`` relative to a page in ``from_dir``, percent-encoded.

    Relative links let the tree be served from any prefix, or read over file://.
    Both are tree paths (no ``.`` or ``..`` parts), so plain string work does what
    ``posixpath.relpath`` would without its calls to ``os.getcwd`` for every link.
    """
    if from_dir and target.partition("/")[0] != from_dir.partition("/")[0]:
        # Nothing in common (a project page's link to a file): climb out whole.
        return url_path("../" * (from_dir.count("/") + 1) + target)
    start = from_dir.split("/") if from_dir else []
    parts = target.split("/")
    common = 0
    for a, b in zip(start, parts, strict=False):
        if a != b:
            break
        common += 1
    return url_path("/".join([".."] * (len(start) - common) + parts[common:]) or ".")


def url_path(path: str) -> str:
    """A tree path as a URL path: percent-encoded, slashes kept."""
    # Most paths need no encoding, and saying so by pattern is cheaper than quote's.
    return path if _URL_SAFE.fullmatch(path) else quote(path, safe="/+")


# What quote(..., safe="/+") leaves as it is.
_URL_SAFE = re.compile("[A-Za-z0-9_.~/+-]*")
