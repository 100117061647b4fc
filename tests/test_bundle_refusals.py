"""Every way a bundle can be wrong is refused in one line, and the far side stays exactly as
it was: its web/ (bytes and modification times) and every row of its state.db."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simplemirror.bundle.manifest import BUNDLE_FILE, MANIFEST_FILE
from tests.support.bundles import (
    Keys,
    apply,
    far_state,
    info_of,
    make_bundle,
    published,
    refused,
    resign,
    seeded,
    sync,
)
from tests.support.process import run
from tests.support.upstream import Upstream, World


@dataclass(frozen=True)
class Chain:
    key: Keys
    far: Path
    """A far side that applied bundle 1 (copied by each test)."""
    bundles: list[Path]
    """Bundles 1, 2 and 3 of the near side's chain."""
    other: Path
    """Bundle 2 of another near side's chain."""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("chain")
    world = World()
    for i in range(12):
        world.add_project(f"proj-{i}", ["1.0"])
    key = Keys(root / "keys")
    near, other, out = root / "near", root / "other", root / "out"
    with Upstream(world) as up:
        sync(up, near)
        sync(up, other)
        bundles = [make_bundle(near, out, key, full=True)]
        make_bundle(other, root / "other-out", key, full=True)
        world.add_release("proj-1", "2.0")
        world.yank("proj-2", "proj_2-1.0.tar.gz")
        world.remove_project("proj-3")
        sync(up, near)
        sync(up, other)
        bundles.append(make_bundle(near, out, key))
        second = make_bundle(other, root / "other-out", key)
        world.add_project("proj-new", ["1.0"])
        sync(up, near)
        bundles.append(make_bundle(near, out, key))
    far = root / "far"
    apply(bundles[0], far, key)
    yield Chain(key, far, bundles, second)


@pytest.fixture
def far(chain: Chain, tmp_path: Path) -> Path:
    copy = tmp_path / "far"
    shutil.copytree(chain.far, copy, symlinks=True)
    return copy


@pytest.fixture
def bundle(chain: Chain, tmp_path: Path) -> Path:
    """Bundle 2, ready to be damaged."""
    copy = tmp_path / "bundle"
    shutil.copytree(chain.bundles[1], copy)
    return copy


def unchanged_by(action: Callable[[], str], far: Path) -> str:
    before = far_state(far)
    message = action()
    assert far_state(far) == before
    return message


def records(bundle: Path) -> list[dict]:
    return [json.loads(x) for x in (bundle / MANIFEST_FILE).read_text().splitlines()]


def write_records(bundle: Path, docs: list[dict]) -> None:
    text = "".join(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n" for d in docs)
    (bundle / MANIFEST_FILE).write_text(text)


def first_body(docs: list[dict]) -> tuple[dict, dict]:
    for doc in docs:
        if doc["kind"] == "file":
            for body in doc["bodies"]:
                if body["suffix"] == "" and body["size"] > 200:
                    return doc, body
    raise AssertionError("no file body in the bundle")


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_bundle_itself_applies(chain: Chain, far: Path, bundle: Path) -> None:
    """The baseline the refusals below are measured against."""
    apply(bundle, far, chain.key)
    apply(chain.bundles[2], far, chain.key)


def test_a_flipped_byte_in_a_body(chain: Chain, far: Path, bundle: Path) -> None:
    _, body = first_body(records(bundle))
    flip(bundle / f"volume-{body['volume']:04d}.bin", body["offset"] + body["size"] // 2)
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "does not match its sha256" in message and "volume-0001.bin" in message


def test_a_flipped_byte_in_the_manifest(chain: Chain, far: Path, bundle: Path) -> None:
    flip(bundle / MANIFEST_FILE, 40)
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "manifest.jsonl is not the one BUNDLE.json signs" in message


def test_a_flipped_byte_in_bundle_json(chain: Chain, far: Path, bundle: Path) -> None:
    text = (bundle / BUNDLE_FILE).read_text()
    (bundle / BUNDLE_FILE).write_text(text.replace('"sequence": 2', '"sequence": 3'))
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "changed after it was signed" in message


def test_a_wrong_key(chain: Chain, far: Path, bundle: Path, tmp_path: Path) -> None:
    stranger = Keys(tmp_path / "stranger")
    message = unchanged_by(lambda: refused(bundle, far, stranger), far)
    assert "not with the public key given" in message


@pytest.mark.parametrize("damage", ["truncated", "longer", "missing", "symlink"])
def test_a_damaged_or_missing_volume(
    chain: Chain, far: Path, bundle: Path, tmp_path: Path, damage: str
) -> None:
    volume = bundle / "volume-0001.bin"
    data = volume.read_bytes()
    if damage == "truncated":
        volume.write_bytes(data[:-10])
    elif damage == "longer":
        volume.write_bytes(data + b"\0" * 10)
    elif damage == "missing":
        volume.unlink()
    else:
        (tmp_path / "elsewhere.bin").write_bytes(data)
        volume.unlink()
        volume.symlink_to(tmp_path / "elsewhere.bin")
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    expected = {"truncated": "truncated?", "longer": "not", "missing": "missing",
                "symlink": "is a symlink"}[damage]
    assert "volume-0001.bin" in message and expected in message
    if damage != "symlink":
        receipt = json.loads((far / "receipts" / "1.json").read_text())
        assert receipt["outcome"] == "incomplete" and receipt["missing_volumes"]


def test_a_replayed_bundle_does_nothing(
    chain: Chain, far: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = far_state(far)
    code, out, _ = run(capsys, "import", "--from", str(chain.bundles[0]), "--directory",
                       str(far), "--public-key", str(chain.key.public_path))
    assert code == 0 and "already" in out
    assert far_state(far) == before


def test_a_signed_bundle_still_named_partial_is_refused(
    chain: Chain, far: Path, bundle: Path
) -> None:
    # An export killed after signing, before its rename: the rerun exports that sequence
    # again, so this copy must never be applied.
    partial = bundle.rename(bundle.with_name(bundle.name + ".partial"))
    message = unchanged_by(lambda: refused(partial, far, chain.key), far)
    assert "an export that did not finish" in message


def test_an_out_of_order_bundle(chain: Chain, far: Path) -> None:
    message = unchanged_by(lambda: refused(chain.bundles[2], far, chain.key), far)
    assert "out of order" in message and "needs bundle 2 next" in message


def test_a_bundle_of_another_mirrors_chain(chain: Chain, far: Path) -> None:
    message = unchanged_by(lambda: refused(chain.other, far, chain.key), far)
    assert "another mirror" in message
    # Not one to carry back: it was never meant for this far side.
    assert json.loads((far / "receipts" / "1.json").read_text())["outcome"] == "applied"


@pytest.mark.parametrize("path", ["../../../../etc/evil", "/etc/passwd", "packages/../../x"])
def test_a_signed_manifest_with_a_path_outside(
    chain: Chain, far: Path, bundle: Path, path: str
) -> None:
    docs = records(bundle)
    doc, _ = first_body(docs)
    doc["path"] = path
    write_records(bundle, docs)
    resign(bundle, chain.key)
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert f"path {path!r} is not" in message


@pytest.mark.parametrize("how", ["kind", "key"])
def test_a_signed_manifest_with_a_symlink(
    chain: Chain, far: Path, bundle: Path, how: str
) -> None:
    docs = records(bundle)
    doc, _ = first_body(docs)
    if how == "kind":
        docs.insert(-1, {"kind": "symlink", "path": "simple/index.html", "target": "/etc"})
    else:
        doc["link"] = "/etc/passwd"
    write_records(bundle, docs)
    resign(bundle, chain.key)
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "does not know" in message and ("symlink" in message or "link" in message)


def test_a_body_larger_than_declared(chain: Chain, far: Path, bundle: Path) -> None:
    """The manifest says fewer bytes than the volume holds for a file: no more than it says
    is read, and what is read does not match the file's digest."""
    docs = records(bundle)
    doc, body = first_body(docs)
    doc["size"] = body["size"] = body["size"] - 100
    write_records(bundle, docs)
    resign(bundle, chain.key)
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "does not match its sha256" in message
    staged = far / "tmp" / "bundle-staging" / "web" / doc["path"]
    assert not staged.exists()


def test_a_far_side_that_is_not_what_the_chain_made(chain: Chain, far: Path,
                                                    bundle: Path) -> None:
    import sqlite3

    with sqlite3.connect(far / "state.db") as db:
        db.execute("UPDATE files SET size = size + 1 WHERE id = (SELECT min(id) FROM files)")
    db.close()
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "does not publish, or not as it records them (the first: packages/" in message
    assert "proj_0-1.0.tar.gz)" in message and "mirror verify" in message


def test_a_far_side_whose_rows_differ_from_the_chains(chain: Chain, far: Path,
                                                      bundle: Path) -> None:
    import sqlite3

    with sqlite3.connect(far / "state.db") as db:
        db.execute("UPDATE files SET hashes = json_set(hashes, '$.sha256', ?)"
                   " WHERE id = (SELECT min(id) FROM files)", ["0" * 64])
    db.close()
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "is not what the bundles before 2 made it" in message and "mirror verify" in message


def _a_published_file(far: Path) -> Path:
    return min(p for p in (far / "web" / "packages").rglob("*.tar.gz"))


@pytest.mark.parametrize(
    "change", ["added", "deleted", "page", "symlink", "root", "same size", "body"]
)
def test_a_far_side_tree_changed_behind_state_db(
    chain: Chain, far: Path, bundle: Path, change: str
) -> None:
    """web/ altered while state.db was not: the base digest, worked out from the tree, is
    not the bundle's."""
    web = far / "web"
    if change == "added":
        extra = web / "packages" / "00" / "00" / ("0" * 60) / "stowaway-1.0.tar.gz"
        extra.parent.mkdir(parents=True)
        extra.write_bytes(b"not from any bundle")
    elif change == "deleted":
        _a_published_file(far).unlink()
    elif change == "page":
        page = web / "simple" / "proj-5" / "index.html"
        page.write_text(page.read_text().replace("</body>", "<a href='x'>x</a></body>"))
    elif change == "root":
        (web / "simple" / "index.v1_json").write_text("{}")
    elif change in ("same size", "body"):
        # Modified since the last import recorded its end (some seconds later, as a
        # person's edit would be).
        changed = (web / "simple" / "proj-5" / "index.html" if change == "same size"
                   else _a_published_file(far))
        flip(changed, changed.stat().st_size // 2)
        later = time.time() + 5
        os.utime(changed, (later, later))
    else:
        (web / "simple" / "elsewhere").symlink_to("/etc")
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    if change == "symlink":
        assert "elsewhere" in message and "is not a regular file" in message
    elif change == "deleted":
        # Lost, not put there: the receipt asks for it (test_bundle_roundtrip).
        assert "are not there" in message and "--since-receipt" in message
    else:
        assert "holds 1 path(s) its state.db does not publish, or not as it records" in message
        assert "mirror verify" in message


def test_the_tree_digest_is_the_ledgers_after_each_import(chain: Chain, far: Path) -> None:
    from simplemirror.bundle import digest
    from simplemirror.store.state import snapshot

    for bundle in chain.bundles:
        if bundle != chain.bundles[0]:
            apply(bundle, far, chain.key)
        reader = snapshot(far / "state.db")
        try:
            tree = digest.tree_digest(reader, far / "web")
            assert (tree.digest, tree.lost, tree.count) == (info_of(bundle).target, 0, 0)
        finally:
            reader.close()


def test_the_mass_removal_cap(upstream: Upstream, world: World, tmp_path: Path) -> None:
    near, far, out, key = seeded(upstream, tmp_path)
    for name in ("proj-0", "proj-1", "proj-2"):
        world.remove_project(name)
    sync(upstream, near)
    bundle = make_bundle(near, out, key)

    message = unchanged_by(lambda: refused(bundle, far, key), far)
    assert "removes 3 of the 12 projects held" in message and "--allow-mass-delete" in message
    apply(bundle, far, key, allow_mass_delete=True)
    assert published(far) == published(near)


@pytest.fixture
def world() -> World:
    w = World()
    for i in range(12):
        w.add_project(f"proj-{i}", ["1.0"])
    return w


def test_an_unsigned_partial_export_is_no_bundle(chain: Chain, far: Path, bundle: Path) -> None:
    (bundle / "BUNDLE.json.minisig").unlink()
    message = unchanged_by(lambda: refused(bundle, far, chain.key), far)
    assert "not a complete bundle" in message and ".partial" in message


# -- a full disk, for real ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "disk"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_on_the_far_side(
    upstream: Upstream, world: World, tmp_path: Path, small_disk: Path
) -> None:
    near, out = tmp_path / "near", tmp_path / "out"
    far = small_disk / "far"
    key = Keys(tmp_path / "keys")
    sync(upstream, near)
    apply(make_bundle(near, out, key, full=True), far, key)
    world.add_file("proj-5", "proj_5-2.0.tar.gz", bytes(range(256)) * 4096)  # 1 MiB
    sync(upstream, near)
    bundle = make_bundle(near, out, key)

    message = unchanged_by(lambda: refused(bundle, far, key), far)
    assert "free some space" in message

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    apply(bundle, far, key)
    assert published(far) == published(near)
    assert info_of(bundle).sequence == 2
