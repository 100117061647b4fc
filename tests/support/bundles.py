"""Air-gap bundles in tests: a near side synced from a World, keys, export and import."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simplemirror.bundle import keys
from simplemirror.bundle.apply import Imported, ImportRefused, ImportRequest, import_bundle
from simplemirror.bundle.export import ExportRequest, export
from simplemirror.bundle.manifest import BUNDLE_FILE, SIGNATURE_FILE, BundleInfo
from simplemirror.cli import config
from simplemirror.sync.run import RunSummary, Sync
from tests.support.upstream import Upstream

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(
    MINISIGN is None, reason="the minisign tool is not installed (CI installs it: .ci/run)"
)


def sync(up: Upstream, directory: Path, **overrides: Any) -> RunSummary:
    values = {"upstream": up.url, "directory": str(directory), "retries": 0,
              "retry_wait": 0.0, "workers": 4, "download_processes": 0,
              "allow_mass_delete": True}
    values.update(overrides)
    summary = Sync(config.build({}, values)).run()
    assert summary.exit_code == 0, summary
    return summary


class Keys:
    """A key pair without a passphrase, in minisign's formats."""

    def __init__(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.secret_path, self.public_path = where / "bundle.key", where / "bundle.pub"
        self.secret = keys.SecretKey.generate()
        keys.write_pair(self.secret, self.secret_path, self.public_path, None)
        self.public = self.secret.public_key()


def seeded(up: Upstream, tmp_path: Path) -> tuple[Path, Path, Path, Keys]:
    """(near, far, out, key): a near side synced from ``up``, and a far side seeded from
    its full bundle (written under ``out``, signed with ``key``)."""
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync(up, near)
    apply(make_bundle(near, out, key, full=True), far, key)
    return near, far, out, key


def make_bundle(near: Path, to: Path, key: Keys, **options: Any) -> Path:
    return export(ExportRequest(directory=near, to=to, key=key.secret, **options)).path


def apply(bundle: Path, far: Path, key: Keys, **options: Any) -> Imported:
    return import_bundle(ImportRequest(bundle, far, key.public, **options))


def refused(bundle: Path, far: Path, key: Keys, **options: Any) -> str:
    """The one line an import that must be refused says."""
    with pytest.raises(ImportRefused) as caught:
        apply(bundle, far, key, **options)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def published(directory: Path) -> dict[str, str]:
    """Every file below web/ but last-modified: path -> sha256 of its bytes."""
    web = directory / "web"
    return {
        str(p.relative_to(web)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(web.rglob("*"))
        if p.is_file() and p.name != "last-modified"
    }


def far_state(directory: Path) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """What a refusal must leave alone: web/ (with modification times) and state.db's rows."""
    web = directory / "web"
    tree = {
        str(p.relative_to(web)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(web.rglob("*")) if p.is_file()
    }
    db = sqlite3.connect(directory / "state.db")
    try:
        rows = list(db.iterdump())
    finally:
        db.close()
    return tree, rows


def info_of(bundle: Path) -> BundleInfo:
    return BundleInfo.from_bytes((bundle / BUNDLE_FILE).read_bytes())


def resign(bundle: Path, key: Keys, **changes: Any) -> None:
    """Rewrite BUNDLE.json (its manifest's hash made right again, and ``changes``) and sign
    it with ``key``: a bundle the near side's key really signed."""
    doc = json.loads((bundle / BUNDLE_FILE).read_bytes())
    manifest = (bundle / "manifest.jsonl").read_bytes()
    doc["manifest"]["size"] = len(manifest)
    doc["manifest"]["sha256"] = hashlib.sha256(manifest).hexdigest()
    for volume in doc["volumes"]:
        data = (bundle / volume["name"]).read_bytes()
        volume["size"], volume["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    doc.update(changes)
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    (bundle / BUNDLE_FILE).write_bytes(data)
    (bundle / SIGNATURE_FILE).write_text(key.secret.sign(data, "resigned by a test"))


def minisign_verifies(bundle: Path, public_key: Path) -> bool:
    assert MINISIGN is not None
    result = subprocess.run(
        [MINISIGN, "-Vm", str(bundle / BUNDLE_FILE), "-p", str(public_key)],
        capture_output=True, text=True, timeout=60,
    )
    return result.returncode == 0
