"""Keys and signatures in minisign's formats, checked against the real minisign tool."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from simplemirror.bundle import keys
from tests.support.bundles import MINISIGN, needs_minisign
from tests.support.process import run

# libsodium's "interactive" scrypt cost: 16 MiB instead of minisign's 1 GiB, for speed.
CHEAP = (524_288, 16_777_216)


@pytest.fixture
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "KDF_LIMITS", CHEAP)


def minisign(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert MINISIGN is not None
    return subprocess.run([MINISIGN, *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_scrypt_parameters_are_libsodiums() -> None:
    assert keys.scrypt_parameters(*keys.KDF_LIMITS) == (1 << 20, 8, 1)  # minisign's own
    assert keys.scrypt_parameters(*CHEAP) == (1 << 14, 8, 1)
    assert keys.scrypt_parameters(100_000, 1 << 30) == (1 << 11, 8, 1)  # bound by time


def test_keygen_writes_a_pair_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, public = tmp_path / "k.key", tmp_path / "k.pub"
    code, out, _ = run(capsys, "keygen", "--secret-key", str(secret), "--public-key",
                       str(public), "--no-passphrase")
    assert code == 0 and "no passphrase" in out
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    comment, line = public.read_text().splitlines()
    assert comment.startswith("untrusted comment: ") and line.startswith("RW")
    key = keys.SecretKey.read(secret, lambda: pytest.fail("asked for a passphrase"))
    assert key.public_key() == keys.PublicKey.read(public)
    before = secret.read_bytes()

    code, _, err = run(capsys, "keygen", "--secret-key", str(secret), "--public-key",
                       str(tmp_path / "other.pub"), "--no-passphrase")

    assert code == 1 and "never overwrites" in err and len(err.strip().splitlines()) == 1
    assert secret.read_bytes() == before and not (tmp_path / "other.pub").exists()


def test_a_passphrase_protects_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cheap_kdf: None
) -> None:
    (tmp_path / "pass").write_text("correct horse\n")
    secret, public = tmp_path / "k.key", tmp_path / "k.pub"
    code, _, _ = run(capsys, "keygen", "--secret-key", str(secret), "--public-key",
                     str(public), "--passphrase-file", str(tmp_path / "pass"))
    assert code == 0
    assert keys.SecretKey.read(secret, lambda: b"correct horse").public_key() == (
        keys.PublicKey.read(public)
    )
    with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
        keys.SecretKey.read(secret, lambda: b"correct horse battery")


def test_a_signature_says_what_is_wrong() -> None:
    key, other = keys.SecretKey.generate(), keys.SecretKey.generate()
    signature = key.sign(b"message", "trusted")
    assert key.public_key().verify(b"message", signature) == "trusted"
    with pytest.raises(keys.SignatureError, match="changed after it was signed"):
        key.public_key().verify(b"messagf", signature)
    with pytest.raises(keys.SignatureError, match="not with the public key given"):
        other.public_key().verify(b"message", signature)
    forged = signature.replace("trusted comment: trusted", "trusted comment: forged")
    with pytest.raises(keys.SignatureError, match="trusted comment"):
        key.public_key().verify(b"message", forged)


@needs_minisign
def test_minisign_checks_what_we_sign_and_we_check_what_it_signs(tmp_path: Path) -> None:
    message = tmp_path / "BUNDLE.json"
    message.write_bytes(b'{"a": 1}\n')
    ours = keys.SecretKey.generate()
    keys.write_pair(ours, tmp_path / "ours.key", tmp_path / "ours.pub", None)
    (tmp_path / "BUNDLE.json.minisig").write_text(ours.sign(message.read_bytes(), "t\tc"))
    assert minisign("-Vm", str(message), "-p", str(tmp_path / "ours.pub")).returncode == 0
    message.write_bytes(b'{"a": 2}\n')
    assert minisign("-Vm", str(message), "-p", str(tmp_path / "ours.pub")).returncode != 0

    # A key pair minisign made (no passphrase): we read both halves and sign with it.
    made = minisign("-G", "-W", "-p", str(tmp_path / "m.pub"), "-s", str(tmp_path / "m.key"))
    assert made.returncode == 0, made.stderr
    theirs = keys.SecretKey.read(tmp_path / "m.key", lambda: pytest.fail("no passphrase"))
    assert theirs.public_key() == keys.PublicKey.read(tmp_path / "m.pub")
    (tmp_path / "BUNDLE.json.minisig").write_text(theirs.sign(message.read_bytes(), "ok"))
    assert minisign("-Vm", str(message), "-p", str(tmp_path / "m.pub")).returncode == 0

    # minisign signs with its key; we check that signature.
    signed = minisign("-S", "-s", str(tmp_path / "m.key"), "-m", str(message), "-t", "theirs")
    assert signed.returncode == 0, signed.stderr
    public = keys.PublicKey.read(tmp_path / "m.pub")
    text = (tmp_path / "BUNDLE.json.minisig").read_text()
    assert public.verify(message.read_bytes(), text) == "theirs"


@needs_minisign
def test_minisign_opens_a_secret_key_we_protected(tmp_path: Path, cheap_kdf: None) -> None:
    key = keys.SecretKey.generate()
    keys.write_pair(key, tmp_path / "k.key", tmp_path / "k.pub", b"s3cret")
    message = tmp_path / "m"
    message.write_bytes(b"signed by minisign with our key")
    signed = minisign("-S", "-s", str(tmp_path / "k.key"), "-m", str(message), stdin="s3cret\n")
    assert signed.returncode == 0, signed.stderr
    text = (tmp_path / "m.minisig").read_text()
    assert key.public_key().verify(message.read_bytes(), text)
    wrong = minisign("-S", "-s", str(tmp_path / "k.key"), "-m", str(message), "-x",
                     str(tmp_path / "other.minisig"), stdin="other\n")
    assert wrong.returncode != 0


@needs_minisign
@pytest.mark.slow
def test_we_open_a_secret_key_minisign_protected(tmp_path: Path) -> None:
    """minisign's own scrypt cost (1 GiB): slow, and what an operator's key will have."""
    made = minisign("-G", "-p", str(tmp_path / "m.pub"), "-s", str(tmp_path / "m.key"),
                    stdin="pass word\npass word\n")
    assert made.returncode == 0, made.stderr
    key = keys.SecretKey.read(tmp_path / "m.key", lambda: b"pass word")
    assert key.public_key() == keys.PublicKey.read(tmp_path / "m.pub")
