"""Bundles carry a mirror across an air gap: full, then deltas, the far side's web/ byte for
byte the near side's; volumes split and arriving apart; a lost bundle replaced from the
far side's receipt."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simplemirror.bundle.manifest import MANIFEST_FILE, Receipt
from tests.support.bundles import (
    Keys,
    apply,
    info_of,
    make_bundle,
    minisign_verifies,
    needs_minisign,
    published,
    refused,
    seeded,
    sync,
)
from tests.support.process import run
from tests.support.upstream import Upstream, World


def mutate(world: World, rng: random.Random, steps: int) -> list[str]:
    """Random upstream changes of every kind a bundle must carry; what was done."""
    done = []
    for _ in range(steps):
        names = sorted(world.projects)
        name = rng.choice(names)
        project = world.projects[name]
        kind = rng.choice(["release", "project", "remove-file", "remove-project", "yank",
                           "unyank", "touch", "status"])
        if kind == "release":
            world.add_release(name, f"{len(project.files) + 2}.{rng.randrange(100)}")
        elif kind == "project":
            world.add_project(f"New_Proj.{rng.randrange(10**6)}", ["1.0"])
        elif kind == "remove-file" and len(project.files) > 1:
            world.remove_file(name, rng.choice(project.files).filename)
        elif kind == "remove-project" and len(names) > 3:
            world.remove_project(name)
        elif kind == "yank" and project.files:
            world.yank(name, rng.choice(project.files).filename, rng.choice(["", "broken"]))
        elif kind == "unyank" and any(f.yanked for f in project.files):
            world.unyank(name, next(f for f in project.files if f.yanked).filename)
        elif kind == "status":
            project.status = rng.choice([None, "archived", "deprecated"])
            project.status_reason = rng.choice([None, "moved on"])
            world.touch(name)
        else:
            world.touch(name)
        done.append(f"{kind} {name}")
    return done


@pytest.fixture
def world() -> World:
    w = World()
    for i in range(6):
        w.add_project(f"Proj_{i}", ["1.0", "1.1"] if i % 2 else ["1.0"])
    w.add_file("proj-0", "proj_0-9.0.tar.gz", random.Random(0).randbytes(20_000))
    return w


@needs_minisign
def test_full_then_two_deltas_rebuild_the_mirror_byte_for_byte(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # shown when the test fails
    rng = random.Random(seed)
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync(upstream, near)
    bundles = [make_bundle(near, out, key, full=True)]
    for _ in range(2):
        mutate(world, rng, 12)
        sync(upstream, near)
        bundles.append(make_bundle(near, out, key))

    for number, bundle in enumerate(bundles, 1):
        assert minisign_verifies(bundle, key.public_path)
        info = info_of(bundle)
        assert (info.sequence, info.full) == (number, number == 1)
        # Random changes remove many of a few projects: the near side allowed it, as here.
        code, out_text, err = run(capsys, "import", "--from", str(bundle), "--directory",
                                  str(far), "--public-key", str(key.public_path),
                                  "--allow-mass-delete")
        assert code == 0, err
        assert f"receipt: {far / 'receipts' / f'{number}.json'}" in out_text
        receipt = Receipt.from_bytes((far / "receipts" / f"{number}.json").read_bytes())
        assert (receipt.sequence, receipt.digest, receipt.outcome) == (
            number, info.target, "applied"
        )
    assert published(far) == published(near)
    code, out_text, _ = run(capsys, "verify", "--directory", str(far))
    assert code == 0, out_text
    assert not (far / "tmp" / "bundle-staging").exists()


def test_a_delta_carries_removals_yanks_and_status(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    world.yank("proj-1", "proj_1-1.0.tar.gz", "broken")
    sync(upstream, near)
    apply(make_bundle(near, out, key, full=True), far, key)
    world.unyank("proj-1", "proj_1-1.0.tar.gz")
    world.yank("proj-3", "proj_3-1.1.tar.gz")
    world.remove_file("proj-1", "proj_1-1.1.tar.gz")
    world.remove_project("proj-2")
    world.project("proj-4").status = "archived"
    world.touch("proj-4")
    sync(upstream, near)

    bundle = make_bundle(near, out, key)
    lines = [json.loads(x) for x in (bundle / MANIFEST_FILE).read_text().splitlines()]
    kinds = {(x["kind"], x.get("name") or x.get("filename")) for x in lines}
    assert ("removed", "proj-2") in kinds and ("gone", "proj_1-1.1.tar.gz") in kinds
    done = apply(bundle, far, key)

    assert done.counts["removed"] == 1
    assert published(far) == published(near)
    assert not (far / "web/simple/proj-2").exists()
    page = json.loads((far / "web/simple/proj-1/index.v1_json").read_text())
    assert len(page["files"]) == 3 and not any(f["yanked"] for f in page["files"])
    page = json.loads((far / "web/simple/proj-3/index.v1_json").read_text())
    assert [f["filename"] for f in page["files"] if f["yanked"]] == ["proj_3-1.1.tar.gz"]
    page = json.loads((far / "web/simple/proj-4/index.v1_json").read_text())
    assert page["project-status"] == {"status": "archived"}


def test_volumes_are_split_and_may_arrive_apart(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync(upstream, near)
    bundle = make_bundle(near, out, key, full=True, volume_size=8192)
    info = info_of(bundle)
    assert len(info.volumes) >= 4 and all(v.size <= 8192 for v in info.volumes)
    big = next(json.loads(x) for x in (bundle / MANIFEST_FILE).read_text().splitlines()
               if '"proj_0-9.0.tar.gz"' in x)
    parts = big["bodies"][0]["parts"]
    assert len(parts) == 3 and [p[2] for p in parts] == [8192, 8192, 20_000 - 2 * 8192]

    # The first medium holds the small files and the first volumes only.
    first = tmp_path / "medium-1"
    shutil.copytree(bundle, first)
    later = [v.name for v in info.volumes[2:]]
    for name in later:
        (first / name).unlink()
    message = refused(first, far, key)
    assert "missing" in message and later[0] in message
    assert not (far / "state.db").exists() and not (far / "web").exists()

    # The second holds the rest; what the first brought is staged already.
    second = tmp_path / "medium-2"
    shutil.copytree(bundle, second)
    for v in info.volumes[:2]:
        (second / v.name).unlink()
    apply(second, far, key)
    assert published(far) == published(near)


def export_since(
    capsys: pytest.CaptureFixture[str], near: Path, out: Path, key: Keys, receipt: Path
) -> Path:
    """The replacement bundle `mirror export --since-receipt` makes from ``receipt``."""
    code, out_text, err = run(capsys, "export", "--directory", str(near), "--to", str(out),
                              "--secret-key", str(key.secret_path), "--since-receipt",
                              str(receipt))
    assert code == 0, err
    return Path(out_text.strip())


def test_a_lost_bundle_is_replaced_from_the_receipt(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    near, far, out, key = seeded(upstream, tmp_path)
    world.add_project("second", ["1.0"])
    sync(upstream, near)
    lost = make_bundle(near, out, key)
    world.add_release("proj-3", "2.0")
    sync(upstream, near)
    third = make_bundle(near, out, key)

    message = refused(third, far, key)
    assert "out of order" in message and "needs bundle 2" in message
    receipt_path = far / "receipts" / "1.json"
    receipt = Receipt.from_bytes(receipt_path.read_bytes())
    assert (receipt.sequence, receipt.outcome, receipt.attempted) == (
        1, "refused", info_of(third).bundle
    )

    replacement = export_since(capsys, near, out, key, receipt_path)
    assert info_of(replacement).sequence == 2 and replacement != lost
    apply(replacement, far, key)
    assert published(far) == published(near)
    # The chain goes on from the replacement.
    world.add_release("second", "2.0")
    sync(upstream, near)
    apply(make_bundle(near, out, key), far, key)
    assert published(far) == published(near)
    assert "already" in refused(make_bundle(near, out, key, full=True), far, key)


def test_a_file_the_far_side_lost_travels_with_the_replacement_bundle(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    near, far, out, key = seeded(upstream, tmp_path)
    # Yanked: its row changes, its bytes do not, so the delta carries no body for it...
    victim = world.project("Proj_0").files[0]
    world.yank("Proj_0", victim.filename, "broken")
    sync(upstream, near)
    # ...and the far side has lost them meanwhile.
    (lost,) = (far / "web" / "packages").rglob(victim.filename)
    lost.unlink()
    assert "are not there" in refused(make_bundle(near, out, key), far, key)
    receipt_path = far / "receipts" / "1.json"
    receipt = Receipt.from_bytes(receipt_path.read_bytes())
    assert receipt.missing_files and all(victim.filename in p for p in receipt.missing_files)

    apply(export_since(capsys, near, out, key, receipt_path), far, key)
    assert published(far) == published(near)


@pytest.mark.parametrize("beside", [False, True])
def test_a_file_of_an_untouched_project_the_far_side_lost_travels_too(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    beside: bool,
) -> None:
    """The delta does not mention the project whose file the far side lost: the import
    finds it missing all the same, and the replacement bundle carries it (and, when its
    directory went with it, the files beside it)."""
    near, far, out, key = seeded(upstream, tmp_path)
    victim = world.project("Proj_2").files[0]
    (lost,) = (far / "web" / "packages").rglob(victim.filename)
    if beside:
        shutil.rmtree(lost.parent)  # with its .metadata
    else:
        lost.unlink()
    world.add_release("Proj_1", "3.0")
    sync(upstream, near)

    message = refused(make_bundle(near, out, key), far, key)
    assert "are not there" in message and victim.filename in message
    receipt_path = far / "receipts" / "1.json"
    receipt = Receipt.from_bytes(receipt_path.read_bytes())
    assert [p.rsplit("/", 1)[1] for p in receipt.missing_files] == [victim.filename]

    apply(export_since(capsys, near, out, key, receipt_path), far, key)
    assert published(far) == published(near)


def _clean_env(**extra: str) -> dict[str, str]:
    """No index, find-links or proxy settings from the machine."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_")) and "proxy" not in k.lower()}
    return {**env, **extra}


@pytest.mark.slow
def test_pip_and_uv_install_from_the_far_side(tmp_path: Path) -> None:
    from uv import find_uv_bin

    from tests.support.serving import MirrorServe

    world = World()
    world.add_project("Foo__Bar.baz", ["1.0", "2.0"])
    world.add_project("app", ["0.1"], sdist=False, requires_dist=["foo-bar-baz>=2"])
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    with Upstream(world) as up:
        sync(up, near)
        apply(make_bundle(near, out, key, full=True), far, key)
    index = f"file://{far / 'web' / 'simple'}/"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "download",
         "--index-url", index, "-d", str(tmp_path / "dl"), "app"],
        env=_clean_env(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1"),
        capture_output=True, text=True, timeout=180,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "app-0.1-py3-none-any.whl", "foo_bar_baz-2.0-py3-none-any.whl"]
    with MirrorServe(far, tmp_path / "serve") as served:
        uv = subprocess.run(
            [find_uv_bin(), "pip", "install", "--no-config", "--python", sys.executable,
             "--default-index", served.index, "--target", str(tmp_path / "target"),
             "--link-mode", "copy", "app"],
            env=_clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never",
                           UV_NO_PROGRESS="1"),
            capture_output=True, text=True, timeout=180,
        )
    assert uv.returncode == 0, uv.stdout + uv.stderr
    assert sorted(p.name for p in (tmp_path / "target").iterdir()
                  if p.name.endswith(".dist-info")) == ["app-0.1.dist-info",
                                                        "foo_bar_baz-2.0.dist-info"]


@pytest.mark.slow
def test_an_export_beside_a_running_sync_is_a_consistent_snapshot(tmp_path: Path) -> None:
    """The delta exported while a sync writes is the state of one moment: the far side's
    digest after it matches that bundle's target, and the next bundle brings the rest."""
    import time

    rng = random.Random(3)
    world = World()
    for i in range(8):
        world.add_project(f"Busy_{i}", ["1.0"])
    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    with Upstream(world) as up:
        sync(up, near)
        apply(make_bundle(near, out, key, full=True), far, key)
        for i in range(8):
            upfile = world.add_file(f"Busy_{i}", f"busy_{i}-2.0.tar.gz", rng.randbytes(20_000))
            up.slow_body[upfile.path] = 1  # 20 kB at 2 kB a pause: a second or two each
        world.remove_project("busy-7")
        world.yank("busy-0", "busy_0-1.0.tar.gz")
        up.slow_chunk, up.slow_pause = 2048, 0.15
        running = subprocess.Popen(
            [sys.executable, "-m", "simplemirror", "sync", "--upstream", up.url, "--directory",
             str(near), "--workers", "1", "--download-processes", "0", "--no-progress",
             "--allow-mass-delete"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            # Until the sync has recorded part of its work, and only part.
            while len([p for p in (near / "web/packages").rglob("busy_*-2.0.tar.gz")]) < 2:
                assert time.monotonic() < deadline and running.poll() is None
                time.sleep(0.05)
            # The bundle is written beside the sync; only its entry in state.db waits for
            # the sync to end (a second writer would break the sync's transactions).
            during = make_bundle(near, out, key)
            said, _ = running.communicate(timeout=120)
            assert running.returncode == 0, said
            # Read while generation 2 ran: the next bundle starts from it again.
            assert info_of(during).generations[1:] == (2, 2)
            apply(during, far, key)  # its digest check: the snapshot was consistent
        finally:
            if running.poll() is None:
                running.kill()
                running.wait()
    apply(make_bundle(near, out, key), far, key)
    assert published(far) == published(near)


def test_export_asks_for_the_passphrase_its_key_needs(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from simplemirror.bundle import keys

    monkeypatch.setattr(keys, "KDF_LIMITS", (524_288, 16_777_216))  # cheap, for the test
    near, out = tmp_path / "near", tmp_path / "out"
    sync(upstream, near)
    (tmp_path / "right").write_text("sesame\n")
    (tmp_path / "wrong").write_text("simsim\n")
    secret, public = tmp_path / "k.key", tmp_path / "k.pub"
    assert run(capsys, "keygen", "--secret-key", str(secret), "--public-key", str(public),
               "--passphrase-file", str(tmp_path / "right"))[0] == 0
    export = ["export", "--directory", str(near), "--to", str(out), "--secret-key",
              str(secret), "--full"]

    code, _, err = run(capsys, *export)  # no terminal here to ask on
    assert code == 1 and "--passphrase-file" in err
    code, _, err = run(capsys, *export, "--passphrase-file", str(tmp_path / "wrong"))
    assert code == 1 and "wrong passphrase" in err
    assert not out.exists() or not list(out.iterdir())
    code, out_text, err = run(capsys, *export, "--passphrase-file", str(tmp_path / "right"))
    assert code == 0, err
    assert keys.PublicKey.read(public).verify(
        (Path(out_text.strip()) / "BUNDLE.json").read_bytes(),
        (Path(out_text.strip()) / "BUNDLE.json.minisig").read_text(),
    )


def test_a_delta_carries_a_quarantine_and_its_lifting(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    near, far, out, key = seeded(upstream, tmp_path)
    held = sorted(p.name for p in (far / "web/packages").rglob("proj_3-*"))
    assert held

    world.project("proj-3").status = "quarantined"
    world.touch("proj-3")  # upstream still lists the files: neither side may offer them
    sync(upstream, near)
    bundle = make_bundle(near, out, key)
    lines = [json.loads(x) for x in (bundle / MANIFEST_FILE).read_text().splitlines()]
    assert {x["filename"] for x in lines if x["kind"] == "gone"} >= {
        n for n in held if not n.endswith(".metadata")}
    apply(bundle, far, key)

    assert published(far) == published(near)
    assert not list((far / "web/packages").rglob("proj_3-*"))
    page = json.loads((far / "web/simple/proj-3/index.v1_json").read_text())
    assert page["files"] == [] and page["project-status"] == {"status": "quarantined"}

    world.project("proj-3").status = None
    world.touch("proj-3")
    sync(upstream, near)
    apply(make_bundle(near, out, key), far, key)
    assert published(far) == published(near)
    assert sorted(p.name for p in (far / "web/packages").rglob("proj_3-*")) == held


# A wrapper that makes the pseudo-terminal it is given its controlling terminal (getpass
# reads /dev/tty), with scrypt made cheap for the test, then runs `mirror`.
ON_TERMINAL = """
import fcntl, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
from simplemirror.bundle import keys
keys.KDF_LIMITS = (524_288, 16_777_216)
from simplemirror.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def on_terminal(args: list[str], answers: list[str]) -> tuple[int, str]:
    """`mirror ARGS` on a terminal of its own, typing each of ``answers`` when a prompt
    ending in ": " shows; its exit status and everything the terminal showed."""
    import pty
    import select
    import time

    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", ON_TERMINAL, *args], stdin=child_fd,
                            stdout=child_fd, stderr=child_fd, start_new_session=True)
    os.close(child_fd)
    shown, typed, answered = b"", 0, 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if typed < len(answers) and shown[answered:].rstrip().endswith(b":"):
                os.write(main_fd, answers[typed].encode() + b"\n")
                typed, answered = typed + 1, len(shown)
        else:
            pytest.fail(f"no end on the terminal: {shown!r}")
    finally:
        os.close(main_fd)
        code = proc.wait(timeout=60)
    return code, shown.decode(errors="replace")


def test_keygen_and_export_ask_for_the_passphrase_on_a_terminal(
    upstream: Upstream, world: World, tmp_path: Path
) -> None:
    from simplemirror.bundle import keys

    near, out, far = tmp_path / "near", tmp_path / "out", tmp_path / "far"
    sync(upstream, near)
    secret, public = tmp_path / "k.key", tmp_path / "k.pub"
    keygen = ["keygen", "--secret-key", str(secret), "--public-key", str(public)]

    code, shown = on_terminal(keygen, ["sesame", "simsim"])
    assert code == 1 and "Passphrase (again):" in shown and "differ" in shown, shown
    assert not secret.exists() and not public.exists()
    code, shown = on_terminal(keygen, ["sesame", "sesame"])
    assert code == 0, shown
    assert "sesame" not in shown  # not echoed
    assert "(no passphrase)" not in shown
    with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
        keys.SecretKey.read(secret, lambda: b"simsim")

    export = ["export", "--directory", str(near), "--to", str(out), "--secret-key",
              str(secret), "--full"]
    code, shown = on_terminal(export, ["simsim"])
    assert code == 1 and "wrong passphrase" in shown, shown
    code, shown = on_terminal(export, ["sesame"])
    assert code == 0, shown
    bundle = Path(shown.strip().splitlines()[-1])
    apply(bundle, far, _public(public))
    assert published(far) == published(near)


def _public(path: Path) -> Keys:
    """Keys for ``apply``: only the public key is used."""
    from simplemirror.bundle import keys

    pair = Keys.__new__(Keys)
    pair.public_path, pair.public = path, keys.PublicKey.read(path)
    return pair


def test_the_filters_in_force_travel_with_the_bundle(
    upstream: Upstream, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simplemirror.filter.rules import parse

    near, far, out = tmp_path / "near", tmp_path / "far", tmp_path / "out"
    key = Keys(tmp_path / "keys")
    sync(upstream, near, filters=parse({"exclude-projects": ["proj-5"], "prereleases": False}))
    bundle = make_bundle(near, out, key, full=True)
    in_force = {"exclude-projects": ["proj-5"], "prereleases": False}
    assert json.loads((bundle / "BUNDLE.json").read_text())["filters"] == in_force
    apply(bundle, far, key)

    _, out_text, err = run(capsys, "status", "--directory", str(far), "--json")
    assert json.loads(out_text)["filters"] == in_force, err
    _, out_text, _ = run(capsys, "status", "--directory", str(far))
    assert 'filters:       exclude-projects = ["proj-5"]' in out_text

    sync(upstream, near)  # the filters lifted
    bundle = make_bundle(near, out, key)
    assert "filters" not in json.loads((bundle / "BUNDLE.json").read_text())
    apply(bundle, far, key)
    assert published(far) == published(near)
    _, out_text, _ = run(capsys, "status", "--directory", str(far))
    assert "filters:       none (a full mirror)" in out_text
