"""The credentials file (agents/credentials.py): private, and a damaged one is refused in one
line and left exactly as it was, so nothing a person could still recover is overwritten."""

from __future__ import annotations

import base64
import json
import os
import stat

import nacl.pwhash
import pytest
from typer.testing import CliRunner

from agents.credentials import Credentials, CredentialsFile
from agora.crypto import KDF_MAX_MEMLIMIT, KDF_MAX_OPSLIMIT, b64, seal
from agora.errors import CredentialsMissing, LocalError, WrongPassword
from cli.app import app
from tests.conftest import PASSWORD

CREDS = Credentials(username="ana.lima", broker="tcp://127.0.0.1:5555",
                    broker_public_key=bytes(32), private_key=bytes(range(32)),
                    symmetric_key=bytes(range(32, 64)), token=bytes(range(64, 96)), level=3)


@pytest.fixture
def written(tmp_path) -> CredentialsFile:
    file = CredentialsFile(tmp_path / "home" / "credentials.json")
    file.create(PASSWORD, CREDS)
    return file


def test_a_new_file_is_private_and_opens_under_its_password(written):
    assert stat.S_IMODE(os.stat(written.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(written.path.parent).st_mode) == 0o700
    assert CredentialsFile(written.path).open(PASSWORD) == CREDS


@pytest.mark.real_kdf
def test_a_new_file_records_and_uses_libsodiums_interactive_argon2id_cost(tmp_path):
    file = CredentialsFile(tmp_path / "credentials.json")
    file.create(PASSWORD, CREDS)
    header = json.loads(file.path.read_bytes())
    assert (header["kdf"], header["opslimit"], header["memlimit"]) == (
        "argon2id", nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE)
    assert CredentialsFile(file.path).open(PASSWORD) == CREDS


def test_the_file_holds_no_secret_in_clear(written):
    text = written.path.read_text()
    for secret in (CREDS.private_key, CREDS.symmetric_key, CREDS.token):
        assert b64(secret) not in text
    assert CREDS.username not in text  # even the name is inside the box


@pytest.mark.parametrize("contents", [
    b"",
    b"not json",
    b"[]",
    b'{"format": "agora-credentials/0", "box": ""}',
    b'{"format": "agora-credentials/1", "box": "not base64!"}',
    b'{"format": "agora-credentials/1"}',
    b"[" * 100_000,
], ids=["empty", "not-json", "not-an-object", "other-format", "bad-base64", "no-box",
        "nested-too-deep"])
def test_a_file_that_is_not_a_credentials_file_is_refused_and_left_as_it_is(tmp_path,
                                                                            contents):
    path = tmp_path / "credentials.json"
    path.write_bytes(contents)
    with pytest.raises(LocalError, match="is not an agora credentials file") as error:
        CredentialsFile(path).open(PASSWORD)
    assert not isinstance(error.value, WrongPassword)
    assert path.read_bytes() == contents


def refused_and_left_as_it_is(file: CredentialsFile, error: type[Exception], match: str,
                              **changes: object) -> None:
    """Rewrite fields of ``file``'s outer JSON, then check that opening it raises ``error``
    and leaves the file byte for byte as it was."""
    doc = json.loads(file.path.read_bytes())
    doc.update(changes)
    damaged = json.dumps(doc).encode()
    file.path.write_bytes(damaged)
    with pytest.raises(error, match=match):
        CredentialsFile(file.path).open(PASSWORD)
    assert file.path.read_bytes() == damaged


@pytest.mark.parametrize("field", ["salt", "opslimit"])
def test_a_damaged_key_derivation_header_is_refused_as_damaged(written, field):
    refused_and_left_as_it_is(written, LocalError, "is damaged", **{field: "xx"})


@pytest.mark.parametrize("changes", [
    {"opslimit": KDF_MAX_OPSLIMIT + 1},  # hours of Argon2id
    {"memlimit": KDF_MAX_MEMLIMIT + 1},  # more memory than a login should take
    {"opslimit": 0},
    {"memlimit": -1},
], ids=["too-much-work", "too-much-memory", "no-work", "negative-memory"])
def test_a_header_asking_for_an_unbounded_key_derivation_is_refused_before_it_runs(
        written, monkeypatch, changes):
    def never(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("Argon2id ran on a damaged header")

    monkeypatch.setattr("nacl.pwhash.argon2id.kdf", never)
    refused_and_left_as_it_is(written, LocalError, "is damaged", **changes)


def test_a_changed_byte_in_the_box_reads_as_a_wrong_password_and_changes_nothing(written):
    box = bytearray(base64.b64decode(json.loads(written.path.read_bytes())["box"]))
    box[-1] ^= 1
    # The AEAD cannot tell a wrong password from a changed byte; either way nothing opens.
    refused_and_left_as_it_is(written, WrongPassword, "left untouched", box=b64(bytes(box)))


def test_damaged_contents_under_the_right_password_are_refused_as_damaged(written):
    box = seal(written._box, b'{"username": "ana.lima"}')  # the other fields missing
    refused_and_left_as_it_is(written, LocalError, "credentials file is damaged", box=b64(box))


def test_a_password_of_bytes_that_are_not_utf8_works_and_a_wrong_one_is_just_wrong(tmp_path):
    # A password read from a terminal or a pipe that is not UTF-8 arrives with its bad bytes
    # as lone surrogates; encoding it raised, and the file was said to be damaged.
    file = CredentialsFile(tmp_path / "credentials.json")
    file.create("correct horse \udcc3", CREDS)
    assert CredentialsFile(file.path).open("correct horse \udcc3") == CREDS
    with pytest.raises(WrongPassword):
        CredentialsFile(file.path).open("correct horse \udcc4")
    written = CredentialsFile(tmp_path / "other.json")
    written.create(PASSWORD, CREDS)
    with pytest.raises(WrongPassword):
        CredentialsFile(written.path).open("correct horse \udcc3")


def test_a_missing_file_says_to_register_first(tmp_path):
    with pytest.raises(CredentialsMissing, match="run 'agora register' first"):
        CredentialsFile(tmp_path / "credentials.json").open(PASSWORD)


def test_the_cli_says_a_damaged_file_in_one_line_with_exit_1(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "credentials.json").write_bytes(b"not json")
    result = CliRunner().invoke(app, ["login"], env={
        "AGORA_HOME": str(home), "AGORA_PASSWORD": PASSWORD,
        "AGORA_BROKER": "tcp://127.0.0.1:9"})
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an agora credentials file" in lines[0], result.stderr
    assert (home / "credentials.json").read_bytes() == b"not json"
