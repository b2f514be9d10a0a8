"""The collaborator's credentials file, encrypted under their password.

Layout (JSON, mode 0600, replaced atomically on every change)::

    {"format": "agora-credentials/1", "kdf": "argon2id", "opslimit": .., "memlimit": ..,
     "salt": b64, "box": b64(SecretBox(Argon2id(password, salt)) of the JSON credentials)}

A header asking for more Argon2id work than libsodium's "moderate" cost is refused as
damaged before any work is done.

The password is asked once per process; the derived key stays in memory so the token can
be rewritten after each login without asking again. A lock file beside it serialises the
read-token / login / write-token sequence between agora processes of the same person.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nacl.utils

from agora.crypto import (
    KDF_MEMLIMIT,
    KDF_OPSLIMIT,
    SALT_SIZE,
    SecretBox,
    b64,
    normalize_one_time_id,
    open_sealed,
    password_key,
    seal,
    unb64,
)
from agora.errors import CredentialsMissing, LocalError, ProtocolError, WrongPassword
from agora.files import atomic_write, file_lock, private_dir
from agora.jsontext import loads

FORMAT = "agora-credentials/1"
#: A new password is at least this long: it is all that protects a copied credentials file.
MIN_PASSWORD_LENGTH = 12


class WeakPassword(LocalError):
    """A new password too short, or one an attacker could guess from the enrollment."""


def check_new_password(password: str, username: str = "", one_time_id: str = "") -> None:
    """Refuse, with one line saying why, a new password that protects too little."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must be at least {MIN_PASSWORD_LENGTH} characters "
                           f"(a passphrase of a few words is easiest to remember)")
    folded = password.strip().casefold()
    if username and folded == username.casefold():
        raise WeakPassword("the password must not be your username")
    if one_time_id and normalize_one_time_id(password) == normalize_one_time_id(one_time_id):
        raise WeakPassword("the password must not be the one-time ID (it is on paper)")


@dataclass
class Credentials:
    """Everything a registered agent knows. Binary fields are raw bytes."""

    username: str
    broker: str
    broker_public_key: bytes
    private_key: bytes
    symmetric_key: bytes
    token: bytes
    level: int
    kind: str = "person"
    # A login request sent but not yet answered, kept so a retry re-sends the exact bytes.
    pending_login: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _BINARY = ("broker_public_key", "private_key", "symmetric_key", "token")

    def to_json(self) -> bytes:
        doc = asdict(self)
        for name in self._BINARY:
            doc[name] = b64(doc[name])
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Credentials:
        try:
            doc = loads(data)
            for name in cls._BINARY:
                doc[name] = unb64(doc[name])
            return cls(**doc)
        except (ValueError, TypeError, KeyError, ProtocolError):
            raise LocalError("credentials file is damaged") from None


class CredentialsFile:
    """One credentials file and its lock. Not thread-safe; one per process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._box: SecretBox | None = None
        self._header: dict[str, Any] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def unlocked(self) -> bool:
        return self._box is not None

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        private_dir(self.path.parent)
        with file_lock(self.lock_path, timeout):
            yield

    def create(self, password: str, creds: Credentials) -> None:
        """Write a new file under ``password`` (fresh salt)."""
        check_new_password(password)
        salt = nacl.utils.random(SALT_SIZE)
        self._header = {"format": FORMAT, "kdf": "argon2id", "opslimit": KDF_OPSLIMIT,
                        "memlimit": KDF_MEMLIMIT, "salt": b64(salt)}
        self._box = SecretBox(password_key(password, salt, KDF_OPSLIMIT, KDF_MEMLIMIT))
        private_dir(self.path.parent)
        self.save(creds)

    def open(self, password: str) -> Credentials:
        """Derive the key from ``password`` and decrypt; WrongPassword if it does not fit."""
        header, sealed = self._read()
        try:
            # password_key refuses (ValueError) a cost above its bound before any work.
            key = password_key(password, unb64(header["salt"], SALT_SIZE),
                               int(header["opslimit"]), int(header["memlimit"]))
        except (KeyError, ValueError, TypeError, ProtocolError):
            raise LocalError(f"{self.path} is damaged") from None
        box = SecretBox(key)
        try:
            plain = open_sealed(box, sealed)
        except ProtocolError:
            raise WrongPassword("wrong password (credentials file left untouched)") from None
        self._box, self._header = box, header
        return Credentials.from_json(plain)

    def reload(self) -> Credentials:
        """Re-read the file with the key already derived (another process may have written)."""
        if self._box is None:
            raise LocalError("credentials are locked; open them with the password first")
        _, sealed = self._read()
        try:
            return Credentials.from_json(open_sealed(self._box, sealed))
        except ProtocolError:
            raise WrongPassword("the credentials file was re-encrypted by another process"
                                ) from None

    def save(self, creds: Credentials) -> None:
        if self._box is None or self._header is None:
            raise LocalError("credentials are locked; open them with the password first")
        doc = dict(self._header, box=b64(seal(self._box, creds.to_json())))
        atomic_write(self.path, json.dumps(doc, indent=1).encode())

    def take_over(self, other: CredentialsFile) -> None:
        """Atomically move ``other``'s file (saved, unlocked) to this path, key included:
        how a pending registration becomes the credentials without a second Argon2id."""
        os.replace(other.path, self.path)
        self._box, self._header = other._box, other._header
        other._box = other._header = None

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _read(self) -> tuple[dict[str, Any], bytes]:
        if not self.path.exists():
            raise CredentialsMissing(
                f"no credentials at {self.path}; run 'agora register' first")
        try:
            doc = loads(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError
            return doc, unb64(doc["box"])
        except (ValueError, KeyError, TypeError, ProtocolError):
            raise LocalError(f"{self.path} is not an agora credentials file") from None
