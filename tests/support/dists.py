"""Real, installable distributions built in memory with byte-for-byte reproducible output.

Reproducibility matters because tests compare hashes across runs and across processes
(e.g. a mirror run and a later verification), so every timestamp and permission is pinned.
"""

from __future__ import annotations

import base64
import csv
import functools
import gzip
import hashlib
import io
import re
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

# Zip cannot represent dates before 1980, and setuptools copies sdist mtimes into the wheels
# it builds, so both archive kinds use the same post-1980 fixed instant.
ZIP_DATE_TIME = (2020, 1, 1, 0, 0, 0)
TAR_MTIME = 1577836800  # 2020-01-01T00:00:00Z


@dataclass(frozen=True)
class Dist:
    filename: str
    content: bytes
    # Core metadata file (wheel METADATA / sdist PKG-INFO): what PEP 658 serves as ".metadata".
    metadata: bytes


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def underscore_name(name: str) -> str:
    """Name as used in wheel/sdist filenames and as the import package name."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _core_metadata(
    name: str,
    version: str,
    requires_python: str | None,
    requires_dist: Sequence[str],
) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: Generated test distribution {name} {version}",
    ]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _module_source(version: str) -> bytes:
    return f'__version__ = "{version}"\n'.encode()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _zip_write(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.create_system = 3  # Unix, so the permission bits above are honoured on extract
    zf.writestr(info, data)


@functools.lru_cache(maxsize=1024)
def _build_wheel(
    name: str, version: str, requires_python: str | None, requires_dist: tuple[str, ...]
) -> Dist:
    stem = underscore_name(name)
    dist_info = f"{stem}-{version}.dist-info"
    metadata = _core_metadata(name, version, requires_python, requires_dist)
    wheel_file = (
        b"Wheel-Version: 1.0\n"
        b"Generator: simplemirror-tests (1.0)\n"
        b"Root-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    files: list[tuple[str, bytes]] = [
        (f"{stem}/__init__.py", _module_source(version)),
        (f"{dist_info}/METADATA", metadata),
        (f"{dist_info}/WHEEL", wheel_file),
    ]
    record_buf = io.StringIO()
    writer = csv.writer(record_buf, lineterminator="\n")
    for arcname, data in files:
        writer.writerow([arcname, _record_hash(data), str(len(data))])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files.append((f"{dist_info}/RECORD", record_buf.getvalue().encode("utf-8")))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, data in files:
            _zip_write(zf, arcname, data)
    return Dist(
        filename=f"{stem}-{version}-py3-none-any.whl",
        content=buf.getvalue(),
        metadata=metadata,
    )


def make_wheel(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Sequence[str] = (),
) -> Dist:
    """A pure-Python py3-none-any wheel containing package ``underscore_name(name)``.

    ``version`` is used verbatim, so pass an already-normalized PEP 440 version.
    """
    return _build_wheel(name, version, requires_python, tuple(requires_dist))


def _tar_add(tf: tarfile.TarFile, arcname: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(arcname)
    info.mtime = TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
    else:
        info.mode = 0o644
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


@functools.lru_cache(maxsize=1024)
def _build_sdist(name: str, version: str, requires_python: str | None) -> Dist:
    stem = underscore_name(name)
    root = f"{stem}-{version}"
    pkg_info = _core_metadata(name, version, requires_python, ())
    pyproject = (
        b'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    # setup.cfg rather than a [project] table: it works with every setuptools that has
    # build_meta, so the sdist builds against whatever setuptools the test machine has.
    cfg_lines = [
        "[metadata]",
        f"name = {name}",
        f"version = {version}",
        "",
        "[options]",
        f"packages = {stem}",
    ]
    if requires_python is not None:
        cfg_lines.append(f"python_requires = {requires_python}")
    setup_cfg = ("\n".join(cfg_lines) + "\n").encode("utf-8")

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, f"{root}", None)
        _tar_add(tf, f"{root}/PKG-INFO", pkg_info)
        _tar_add(tf, f"{root}/pyproject.toml", pyproject)
        _tar_add(tf, f"{root}/setup.cfg", setup_cfg)
        _tar_add(tf, f"{root}/{stem}", None)
        _tar_add(tf, f"{root}/{stem}/__init__.py", _module_source(version))

    out = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of run-dependent data.
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return Dist(filename=f"{root}.tar.gz", content=out.getvalue(), metadata=pkg_info)


def make_sdist(name: str, version: str, *, requires_python: str | None = None) -> Dist:
    """A setuptools-buildable sdist; ``metadata`` is its PKG-INFO."""
    return _build_sdist(name, version, requires_python)
