"""Long-term key pairs of a process (broker, auctioneer, worker) in a 0600 JSON file.

The file holds a Curve25519 private key (Box) and an Ed25519 signing key. It is created on
first use and written atomically, so a crash never leaves a half key file behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agora.crypto import PrivateKey, SigningKey, b64, fingerprint, unb64
from agora.errors import LocalError, ProtocolError
from agora.files import atomic_write
from agora.jsontext import loads

FORMAT = "agora-keys/1"


@dataclass(frozen=True)
class KeyPair:
    private_key: PrivateKey
    signing_key: SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(PrivateKey.generate(), SigningKey.generate())


def load_or_create(path: Path) -> KeyPair:
    """Read the key file at ``path``, creating it (0600, atomically) when missing."""
    path = Path(path)
    if not path.exists():
        pair = KeyPair.generate()
        doc = {
            "format": FORMAT,
            "private_key": b64(bytes(pair.private_key)),
            "signing_key": b64(bytes(pair.signing_key)),
        }
        atomic_write(path, json.dumps(doc, indent=2).encode())
        return pair
    if path.stat().st_mode & 0o077:
        raise LocalError(f"{path} is readable by others; chmod 600 it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not an agora key file")
        return KeyPair(
            PrivateKey(unb64(doc["private_key"], 32)), SigningKey(unb64(doc["signing_key"], 32))
        )
    except (ValueError, KeyError, ProtocolError):  # the reason could quote the file: not shown
        raise LocalError(f"{path} is not a valid agora key file") from None
