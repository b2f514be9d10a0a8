"""Crypto primitives and envelopes, all from PyNaCl (libsodium).

- Curve25519 ``Box`` / ``SealedBox`` for public-key encryption, Ed25519 for signatures,
  XSalsa20-Poly1305 ``SecretBox`` with random 24-byte nonces for symmetric encryption.
- Secrets that are only ever compared (tokens, one-time IDs) are stored as keyed-free
  BLAKE2b hashes: they are 128+ bit random values, so a fast hash is enough (no password
  is ever hashed this way; passwords go through Argon2id in :func:`password_key`).
- Every comparison of secret material is constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import nacl.exceptions
import nacl.hash
import nacl.pwhash
import nacl.utils
from nacl.encoding import RawEncoder
from nacl.public import Box, PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from agora.errors import ProtocolError

KEY_SIZE = 32
NONCE_SIZE = SecretBox.NONCE_SIZE
#: Argon2id cost for the credentials file: libsodium's "interactive" preset.
KDF_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
KDF_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
#: The most :func:`password_key` agrees to spend. agora asks for the "interactive" cost; a
#: cost read from a file that asks for more than the "moderate" one is damage, not a
#: choice, and would run for hours or exhaust memory instead of saying so.
KDF_MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
KDF_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
SALT_SIZE = nacl.pwhash.argon2id.SALTBYTES

__all__ = [
    "Box", "PrivateKey", "PublicKey", "SealedBox", "SecretBox", "SigningKey", "VerifyKey",
    "b64", "unb64", "constant_time_equal", "fingerprint", "hash_secret", "new_token",
    "new_symmetric_key", "new_one_time_id", "normalize_one_time_id", "password_key",
    "seal", "open_sealed",
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, size: int | None = None) -> bytes:
    """Decode base64 from the wire; raise ProtocolError (never binascii.Error)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError, UnicodeEncodeError):
        raise ProtocolError("bad base64 field") from None
    if size is not None and len(data) != size:
        raise ProtocolError(f"field must be {size} bytes")
    return data


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def fingerprint(public_key: bytes) -> str:
    """Short, readable fingerprint of a public key: 8 groups of 4 hex digits (128 bits)."""
    digest = nacl.hash.blake2b(
        public_key, digest_size=16, person=b"agora-fpr", encoder=RawEncoder
    ).hex()
    return "-".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def normalize_fingerprint(text: str) -> str:
    """Accept a fingerprint typed with or without dashes, any case."""
    raw = "".join(c for c in text.lower() if c in "0123456789abcdef")
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def hash_secret(secret: bytes) -> bytes:
    """Hash of a high-entropy secret (token, one-time ID) for storage and lookup.

    BLAKE2b-256 personalised "agora-secret": the same bytes as libsodium's
    crypto_generichash with that personalisation, through hashlib because the broker hashes
    every session request (retransmission check) and PyNaCl's wrapper costs 10x more.
    """
    return hashlib.blake2b(secret, digest_size=32, person=b"agora-secret").digest()


def new_token() -> bytes:
    return nacl.utils.random(KEY_SIZE)


def new_symmetric_key() -> bytes:
    return nacl.utils.random(SecretBox.KEY_SIZE)


_OTID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud face to face


def new_one_time_id() -> str:
    """A one-time ID a person can read aloud: 5 groups of 5 (125 bits)."""
    chars = "".join(secrets.choice(_OTID_ALPHABET) for _ in range(25))
    return "-".join(chars[i : i + 5] for i in range(0, 25, 5))


def normalize_one_time_id(text: str) -> bytes:
    """Canonical bytes of a one-time ID as typed (dashes, spaces and case ignored)."""
    return "".join(c for c in text.upper() if c.isalnum()).encode("ascii", "replace")


def password_key(password: str, salt: bytes, opslimit: int = KDF_OPSLIMIT,
                 memlimit: int = KDF_MEMLIMIT) -> bytes:
    """Derive a SecretBox key from a password with Argon2id; ValueError, before any work,
    for a cost above KDF_MAX_OPSLIMIT / KDF_MAX_MEMLIMIT (or not positive)."""
    if not (0 < opslimit <= KDF_MAX_OPSLIMIT and 0 < memlimit <= KDF_MAX_MEMLIMIT):
        raise ValueError("key derivation cost out of bounds")
    # surrogateescape: a password typed or piped in bytes that are not UTF-8 arrives with
    # them as lone surrogates; these give back exactly those bytes (UTF-8 text is unchanged).
    secret = password.encode("utf-8", "surrogateescape")
    return nacl.pwhash.argon2id.kdf(SecretBox.KEY_SIZE, secret, salt, opslimit=opslimit,
                                    memlimit=memlimit)


def seal(box: SecretBox | Box, plaintext: bytes) -> bytes:
    """Encrypt with a fresh random nonce; output is nonce || ciphertext."""
    return bytes(box.encrypt(plaintext))


def open_sealed(box: SecretBox | Box, data: bytes) -> bytes:
    """Decrypt nonce || ciphertext; raise ProtocolError on any failure (wrong key, tamper)."""
    try:
        return box.decrypt(data)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ProtocolError("message could not be decrypted") from None

