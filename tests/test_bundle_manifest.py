"""What a bundle says, checked without a disk: records, volume layout, the state digest."""

from __future__ import annotations

import hashlib
import json

import pytest

from simplemirror.bundle import digest
from simplemirror.bundle.manifest import (
    Body,
    BundleInfo,
    FileRecord,
    FormatError,
    ManifestError,
    Packer,
    Page,
    PageSnapshot,
    Part,
    ProjectRecord,
    Reader,
    Receipt,
    RootRecord,
    empty_info,
    encode,
    parse_size,
    trusted,
)
from simplemirror.simple.model import HeldFile, Status
from simplemirror.store import layout

SHA = hashlib.sha256(b"x").hexdigest()


def held(**changes: object) -> HeldFile:
    values: dict = dict(
        project="demo", filename="demo-1.0.tar.gz", path=layout.file_path(SHA, "demo-1.0.tar.gz"),
        size=1, hashes={"sha256": SHA}, url="http://127.0.0.1/demo-1.0.tar.gz",
    )
    values.update(changes)
    return HeldFile(**values)


def file_line(**changes: object) -> dict:
    record = FileRecord(held(), (Body("", 1, SHA, (Part(1, 0, 1, SHA),)),))
    doc = json.loads(encode(record))
    doc.update(changes)
    return doc


def decode(doc: dict, volumes: tuple[int, ...] = (1,)) -> object:
    return Reader(volumes).decode(json.dumps(doc), 7)


def test_records_survive_the_round_trip() -> None:
    records = [
        FileRecord(held(yanked=True, yanked_reason="bad", metadata_hashes={"sha256": SHA}),
                   (Body("", 1, SHA, (Part(1, 0, 1, SHA),)),
                    Body(".metadata", 1, SHA, (Part(1, 1, 1, SHA),)))),
        ProjectRecord("demo", "Demo", 3, 4, Status.OK, None, {"versions": ["1.0"]},
                      PageSnapshot(("demo-1.0.tar.gz",), Page(10, SHA), Page(11, SHA))),
        RootRecord(5, Page(1, SHA), Page(2, SHA)),
    ]
    reader = Reader((2,))
    assert [reader.decode(encode(r), 1) for r in records] == records
    # What an import reads again from its checked copy, without the checks.
    assert [trusted(encode(r)) for r in records] == records


@pytest.mark.parametrize(("change", "said"), [
    ({"path": "../../../etc/passwd"}, "is not 'packages/"),
    ({"path": "/etc/passwd"}, "is not 'packages/"),
    ({"filename": "a/../evil"}, "path separator"),
    ({"project": "Demo"}, "normalized form"),
    ({"kind": "symlink"}, "does not know: 'symlink'"),
    ({"target": "/etc"}, "does not know: 'target'"),
    ({"size": -1}, "whole number"),
    ({"hashes": {"sha256": "zz"}}, "not a hex digest"),
])
def test_a_record_that_is_not_safe_is_refused(change: dict, said: str) -> None:
    with pytest.raises(ManifestError, match="manifest line 7") as caught:
        decode(file_line(**change))
    assert said in str(caught.value)


def test_a_body_must_lie_within_its_volume_and_be_its_file() -> None:
    line = file_line()
    line["bodies"][0]["offset"] = 1
    with pytest.raises(ManifestError, match="outside volume 1"):
        decode(line)
    line = file_line()
    line["bodies"][0]["volume"] = 2
    with pytest.raises(ManifestError, match=r"not one BUNDLE\.json lists"):
        decode(line)
    line = file_line()
    line["bodies"][0]["sha256"] = "0" * 64
    with pytest.raises(ManifestError, match="not the file's"):
        decode(line)
    line = file_line()
    line["bodies"][0]["suffix"] = ".asc"  # a signature the row does not say it holds
    with pytest.raises(ManifestError, match="does not belong"):
        decode(line)


def test_whole_files_per_volume_and_only_a_larger_one_split() -> None:
    packer = Packer(100)
    assert packer.place(60) == [(1, 0, 60)]
    assert packer.place(40) == [(1, 60, 40)]
    assert packer.place(1) == [(2, 0, 1)]
    assert packer.place(100) == [(3, 0, 100)]
    assert packer.place(250) == [(4, 0, 100), (5, 0, 100), (6, 0, 50)]
    assert packer.place(50) == [(6, 50, 50)]
    assert packer.sizes == [100, 1, 100, 100, 100, 100]


def test_volume_sizes() -> None:
    assert parse_size("4G") == 4 * 1024**3
    assert parse_size("700MiB") == 700 * 1024**2
    assert parse_size("650MB") == 650 * 1000**2
    assert parse_size("8192") == 8192
    for wrong in ("4X", "12", "-1G", ""):
        with pytest.raises(ValueError):
            parse_size(wrong)


def test_the_state_digest_is_over_sorted_entries() -> None:
    entries = [("packages/a", 1, SHA), ("simple/index.html", 2, SHA)]
    lines = "".join(f"{p}\0{s}\0{h}\n" for p, s, h in entries).encode()
    assert digest.state_digest(entries) == "sha256:" + hashlib.sha256(lines).hexdigest()
    assert "sha256:" + hashlib.sha256(b"").hexdigest() == digest.EMPTY
    with pytest.raises(ValueError, match="out of order"):
        digest.state_digest(reversed(entries))


def test_bundle_json_and_receipts_round_trip_and_name_their_format() -> None:
    info = empty_info(
        bundle="a" * 32, chain="b" * 32, sequence=2, full=False, base=digest.EMPTY,
        target=digest.EMPTY, generations=(3, 5, 6), created="now", upstream=None,
        public_url=None, counts={"files": 1},
    )
    assert BundleInfo.from_bytes(info.to_bytes()) == info
    doc = json.loads(info.to_bytes())
    doc["format"] = 2
    with pytest.raises(FormatError, match="format 2"):
        BundleInfo.from_bytes(json.dumps(doc).encode())
    doc["format"], doc["base"] = 1, None  # a delta without a base
    with pytest.raises(ManifestError, match="a full bundle has no base"):
        BundleInfo.from_bytes(json.dumps(doc).encode())
    receipt = Receipt("b" * 32, 2, digest.EMPTY, "a" * 32, "now", missing_volumes=("v",))
    assert Receipt.from_bytes(receipt.to_bytes()) == receipt
