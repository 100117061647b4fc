"""The bytes of a benchmark world's release files, made deterministically and fast.

Every file is a pure function of (world kind, project number, version), so the world
never stores a manifest per file: a mutation re-derives a project's older files instead
of reading them back. Hashes are computed once here, from the bytes in memory, and the
pages are rendered from them; nothing is ever read back from disk to hash it.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
import zipfile
from dataclasses import dataclass

METADATA_KIND = "metadata"
FILES_KIND = "files"
KINDS = (METADATA_KIND, FILES_KIND)

# Uploads a second apart from this instant: upload-time must be valid ISO 8601 for both
# clients, and distinct values look like a real index.
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z

# file-heavy: four wheels and an sdist per release, like a project with binary builds.
_WHEEL_TAGS = (
    "cp311-cp311-manylinux_2_17_x86_64",
    "cp312-cp312-manylinux_2_17_x86_64",
    "cp312-cp312-win_amd64",
    "py3-none-any",
)
FILES_PER_RELEASE = {METADATA_KIND: 1, FILES_KIND: len(_WHEEL_TAGS) + 1}
# Sizes spread over 70-130 KB, mean 100 KB: 2,000 projects x 5 files is about 1 GB.
_MIN_SIZE, _SIZE_SPREAD = 70_000, 60_000

# One shared block of pseudo-random bytes: a file is a unique header plus a slice of it.
# Slicing is a memory copy, about 20x faster than drawing fresh random bytes for 1 GB,
# and the bytes stay incompressible, so no layer can shortcut them.
_POOL_SIZE = 1 << 21
_POOL = random.Random(691).randbytes(_POOL_SIZE)


@dataclass(frozen=True)
class Dist:
    """One release file as the upstream describes it."""

    project: str
    version: str
    filename: str
    url: str
    """Absolute path on the upstream host, /packages/<blake2b_256 split>/<filename>."""
    size: int
    sha256: str
    blake2b_256: str
    packagetype: str
    upload_time: str
    """ISO 8601 with microseconds and Z, as PEP 700 and the JSON API give it."""
    requires_python: str | None
    metadata_sha256: str | None
    """sha256 of the PEP 658 .metadata file beside it; None when there is none (sdist)."""


@dataclass(frozen=True)
class Built:
    dist: Dist
    data: bytes
    metadata: bytes | None


def dist_name(project: str) -> str:
    """The distribution part of a file name (PEP 427 escapes '-' as '_')."""
    return project.replace("-", "_")


def _upload_time(serial: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(_EPOCH + serial))


def _metadata_text(project: str, version: str) -> bytes:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {project}\n"
        f"Version: {version}\n"
        f"Summary: benchmark project {project}\n"
        "Requires-Python: >=3.8\n"
    ).encode()


def _wheel(project: str, version: str, metadata: bytes, payload: bytes = b"") -> bytes:
    """A well-formed zip with the three .dist-info files a wheel has, METADATA being the
    .metadata served beside it (as in every real wheel), and ``payload`` as its package."""
    info = f"{dist_name(project)}-{version}.dist-info"
    buffer = io.BytesIO()
    # Fixed timestamps keep the bytes (and so the hashes) the same on every run.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        if payload:
            archive.writestr(
                zipfile.ZipInfo(f"{dist_name(project)}/payload.bin", (2024, 1, 1, 0, 0, 0)),
                payload,
            )
        for name, body in (
            ("METADATA", metadata),
            ("WHEEL", b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                      b"Tag: py3-none-any\n"),
            ("RECORD", b""),
        ):
            archive.writestr(zipfile.ZipInfo(f"{info}/{name}", (2024, 1, 1, 0, 0, 0)), body)
    return buffer.getvalue()


def _noise(seed: str, size: int) -> bytes:
    """``size`` pseudo-random bytes, unique to ``seed`` (its header), cheap to make."""
    header = hashlib.sha256(seed.encode()).digest()
    start = int.from_bytes(header[:4]) % _POOL_SIZE
    body = size - len(header)
    chunk = _POOL[start : start + body]
    while len(chunk) < body:  # wrap around the pool
        chunk += _POOL[: body - len(chunk)]
    return header + chunk


def _describe(
    project: str, version: str, filename: str, data: bytes, metadata: bytes | None,
    packagetype: str, serial: int,
) -> Built:
    blake = hashlib.blake2b(data, digest_size=32).hexdigest()
    dist = Dist(
        project=project,
        version=version,
        filename=filename,
        url=f"/packages/{blake[:2]}/{blake[2:4]}/{blake[4:]}/{filename}",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        blake2b_256=blake,
        packagetype=packagetype,
        upload_time=_upload_time(serial),
        requires_python=">=3.8",
        metadata_sha256=hashlib.sha256(metadata).hexdigest() if metadata is not None else None,
    )
    return Built(dist, data, metadata)


def build_release(kind: str, number: int, project: str, version: str, serial: int) -> list[Built]:
    """Every file of one release of project ``number``; the same bytes on every call."""
    metadata = _metadata_text(project, version)
    base = dist_name(project)
    if kind == METADATA_KIND:
        filename = f"{base}-{version}-py3-none-any.whl"
        data = _wheel(project, version, metadata)
        return [_describe(project, version, filename, data, metadata, "bdist_wheel", serial)]
    if kind != FILES_KIND:
        raise ValueError(f"unknown world kind {kind!r}")
    sizes = random.Random(f"{number}/{version}")
    built = []
    for tag in _WHEEL_TAGS:
        filename = f"{base}-{version}-{tag}.whl"
        payload = _noise(filename, _MIN_SIZE + sizes.randrange(_SIZE_SPREAD))
        data = _wheel(project, version, metadata, payload)
        built.append(
            _describe(project, version, filename, data, metadata, "bdist_wheel", serial)
        )
    filename = f"{base}-{version}.tar.gz"
    data = _noise(filename, _MIN_SIZE + sizes.randrange(_SIZE_SPREAD))
    built.append(_describe(project, version, filename, data, None, "sdist", serial))
    return built
