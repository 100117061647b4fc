"""Ed25519 keys and signatures in minisign's formats, so that the far side can check a
bundle with the `minisign` tool as well as with `mirror import`.

Public key file: an ``untrusted comment:`` line, then base64 of ``"Ed"`` + key id (8
bytes) + public key (32). Secret key file: a comment line, then base64 of ``"Ed"`` + KDF
(``"Sc"`` scrypt, or two zero bytes for none) + ``"B2"`` + salt (32) + opslimit and
memlimit (8 bytes each, little-endian) + key id (8) + secret key (64: seed, public key) +
BLAKE2b-256 checksum (32) of ``"Ed"`` + key id + secret key; with scrypt, the last 104
bytes are XORed with as many bytes of scrypt(passphrase, salt). Signature file: an
untrusted comment, base64 of ``"ED"`` + key id + the Ed25519 signature of the message's
BLAKE2b-512 (minisign's default, pre-hashed), a ``trusted comment:`` line, and base64 of
the signature of the first signature followed by the trusted comment's bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED = b"Ed"
PREHASHED = b"ED"
SCRYPT = b"Sc"
NO_KDF = b"\0\0"
BLAKE2 = b"B2"
UNTRUSTED = "untrusted comment: "
TRUSTED = "trusted comment: "
# minisign's (libsodium's "sensitive" scrypt cost): about 1 GiB and a few seconds, paid
# once an export; the tests lower it.
KDF_LIMITS = (33_554_432, 1_073_741_824)
_KEYNUM_SK = 8 + 64 + 32
_SECRET_LEN = 2 + 2 + 2 + 32 + 8 + 8 + _KEYNUM_SK
_MAX_LINE = 8192 + len(TRUSTED) + 2


class KeyFileError(Exception):
    """A key file cannot be read, written or unlocked; the message says what to do."""


class SignatureError(Exception):
    """A signature does not verify against the public key given."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, length: int, what: str) -> bytes:
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if len(data) != length:
        raise KeyFileError(f"{what} is not in minisign's format (its second line is not "
                           f"base64 of {length} bytes)")
    return data


def key_id_text(key_id: bytes) -> str:
    """A key id as minisign prints it: its 8 bytes as a little-endian number, in hex."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


def scrypt_parameters(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """(N, r, p) for libsodium's opslimit and memlimit, as libsodium derives them (so that
    a key minisign wrote opens here, and one written here opens in minisign)."""
    opslimit = max(opslimit, 32768)
    r = 8
    by_time = opslimit < memlimit // 32
    most = opslimit // (r * 4) if by_time else memlimit // (r * 128)
    n_log2 = 1
    while n_log2 < 63 and (1 << n_log2) <= most // 2:
        n_log2 += 1
    p = 1 if by_time else min((opslimit // 4) // (1 << n_log2), 0x3FFFFFFF) // r
    return 1 << n_log2, r, max(p, 1)


def _scrypt_stream(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    n, r, p = scrypt_parameters(opslimit, memlimit)
    if n > 1 << 24 or r * p >= 1 << 30:
        raise KeyFileError("the secret key asks for more scrypt work than any minisign "
                           "key does; it is damaged, or not a minisign key")
    try:
        return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p,
                              maxmem=128 * r * (n + p + 2) + (1 << 20), dklen=_KEYNUM_SK)
    except (ValueError, MemoryError) as exc:
        raise KeyFileError(f"cannot derive the key from the passphrase: {exc}") from exc


def _checksum(key_id: bytes, secret: bytes) -> bytes:
    return hashlib.blake2b(ED + key_id + secret, digest_size=32).digest()


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    raw: bytes

    @property
    def id_text(self) -> str:
        return key_id_text(self.key_id)

    def to_text(self) -> str:
        return (f"{UNTRUSTED}minisign public key {self.id_text}\n"
                f"{_b64(ED + self.key_id + self.raw)}\n")

    @classmethod
    def from_text(cls, text: str, where: str = "the public key") -> PublicKey:
        lines = text.splitlines()
        if len(lines) < 2 or not lines[0].startswith(UNTRUSTED):
            raise KeyFileError(f"{where} is not a minisign public key (an 'untrusted "
                               "comment:' line, then a line starting RW)")
        data = _unb64(lines[1], 42, where)
        if data[:2] != ED:
            raise KeyFileError(f"{where} is not an Ed25519 minisign key")
        return cls(data[2:10], data[10:])

    @classmethod
    def read(cls, path: Path) -> PublicKey:
        return cls.from_text(_read_text(path, "public key"), str(path))

    def verify(self, message: bytes, signature: str, where: str = "the signature") -> str:
        """Check ``signature`` (a .minisig file's text) over ``message``; its trusted
        comment. Raises SignatureError, saying why, when it does not verify."""
        lines = signature.splitlines()
        if (len(lines) < 4 or not lines[0].startswith(UNTRUSTED)
                or not lines[2].startswith(TRUSTED)):
            raise SignatureError(f"{where} is not a minisign signature file")
        try:
            first = _unb64(lines[1], 74, where)
            second = _unb64(lines[3], 64, where)
        except KeyFileError as exc:
            raise SignatureError(str(exc)) from None
        algorithm, key_id, sig = first[:2], first[2:10], first[10:]
        if algorithm not in (ED, PREHASHED):
            raise SignatureError(f"{where} uses an algorithm minisign does not know")
        if key_id != self.key_id:
            raise SignatureError(
                f"{where} was made with key {key_id_text(key_id)}, not with the public key "
                f"given ({self.id_text}): check --public-key, or the bundle's origin"
            )
        signed = hashlib.blake2b(message).digest() if algorithm == PREHASHED else message
        comment = lines[2][len(TRUSTED):]
        public = Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            public.verify(sig, signed)
        except InvalidSignature:
            raise SignatureError(
                f"{where} does not match what it signs: the file was changed after it "
                "was signed"
            ) from None
        try:
            public.verify(second, sig + comment.encode("utf-8"))
        except InvalidSignature:
            raise SignatureError(f"the trusted comment of {where} was changed") from None
        return comment


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(8), Ed25519PrivateKey.generate())

    def public_key(self) -> PublicKey:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(self.key_id, raw)

    def _secret(self) -> bytes:
        seed = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return seed + self.public_key().raw

    def to_text(self, passphrase: bytes | None, limits: tuple[int, int] | None = None) -> str:
        """The secret key file; encrypted with scrypt unless ``passphrase`` is None."""
        secret = self._secret()
        keynum = self.key_id + secret + _checksum(self.key_id, secret)
        if passphrase is None:
            head = ED + NO_KDF + BLAKE2 + bytes(32 + 8 + 8)
        else:
            opslimit, memlimit = limits or KDF_LIMITS
            salt = secrets.token_bytes(32)
            stream = _scrypt_stream(passphrase, salt, opslimit, memlimit)
            keynum = bytes(a ^ b for a, b in zip(keynum, stream, strict=True))
            head = (ED + SCRYPT + BLAKE2 + salt + opslimit.to_bytes(8, "little")
                    + memlimit.to_bytes(8, "little"))
        return f"{UNTRUSTED}minisign encrypted secret key\n{_b64(head + keynum)}\n"

    @classmethod
    def from_text(
        cls, text: str, passphrase: Callable[[], bytes], where: str = "the secret key"
    ) -> SecretKey:
        """Read a secret key file; ``passphrase`` is asked only when the key is encrypted."""
        lines = text.splitlines()
        if len(lines) < 2 or not lines[0].startswith(UNTRUSTED):
            raise KeyFileError(f"{where} is not a minisign secret key")
        data = _unb64(lines[1], _SECRET_LEN, where)
        if data[:2] != ED or data[4:6] != BLAKE2:
            raise KeyFileError(f"{where} is not an Ed25519 minisign secret key")
        kdf, salt = data[2:4], data[6:38]
        opslimit = int.from_bytes(data[38:46], "little")
        memlimit = int.from_bytes(data[46:54], "little")
        keynum = data[54:]
        if kdf == SCRYPT:
            stream = _scrypt_stream(passphrase(), salt, opslimit, memlimit)
            keynum = bytes(a ^ b for a, b in zip(keynum, stream, strict=True))
        elif kdf != NO_KDF:
            raise KeyFileError(f"{where} is protected by a key derivation minisign does "
                               "not know")
        key_id, secret, checksum = keynum[:8], keynum[8:72], keynum[72:]
        # minisign -W writes no checksum (zeros) for a key without a passphrase.
        if not hmac.compare_digest(checksum, _checksum(key_id, secret)) and not (
            kdf == NO_KDF and checksum == bytes(32)
        ):
            raise KeyFileError(
                f"wrong passphrase for {where}" if kdf == SCRYPT
                else f"{where} is damaged (its checksum does not match)"
            )
        key = cls(key_id, Ed25519PrivateKey.from_private_bytes(secret[:32]))
        if key.public_key().raw != secret[32:]:
            raise KeyFileError(f"{where} is damaged (its two halves do not match)")
        return key

    @classmethod
    def read(cls, path: Path, passphrase: Callable[[], bytes]) -> SecretKey:
        return cls.from_text(_read_text(path, "secret key"), passphrase, str(path))

    def sign(self, message: bytes, trusted_comment: str) -> str:
        """A .minisig file's text for ``message`` (pre-hashed, as minisign signs)."""
        if "\n" in trusted_comment or "\r" in trusted_comment:
            raise ValueError("a trusted comment is one line")
        sig = self.private.sign(hashlib.blake2b(message).digest())
        second = self.private.sign(sig + trusted_comment.encode("utf-8"))
        return (f"{UNTRUSTED}signature from minisign secret key\n"
                f"{_b64(PREHASHED + self.key_id + sig)}\n"
                f"{TRUSTED}{trusted_comment}\n{_b64(second)}\n")


def _read_text(path: Path, what: str) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_LINE * 4)
    except OSError as exc:
        raise KeyFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a minisign {what}") from None


def write_pair(
    key: SecretKey, secret_path: Path, public_path: Path, passphrase: bytes | None,
    limits: tuple[int, int] | None = None,
) -> None:
    """Write both key files; neither may exist already. The secret one is mode 0600."""
    if secret_path.absolute() == public_path.absolute():
        raise KeyFileError("--secret-key and --public-key name the same file")
    for path in (secret_path, public_path):
        if os.path.lexists(path):
            raise KeyFileError(
                f"{path} exists already; keygen never overwrites a key (move it away first, "
                "or give another path)"
            )
    secret_text = key.to_text(passphrase, limits).encode("ascii")
    _write_new(secret_path, secret_text, 0o600)
    try:
        _write_new(public_path, key.public_key().to_text().encode("ascii"), 0o644)
    except BaseException:
        secret_path.unlink(missing_ok=True)
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
