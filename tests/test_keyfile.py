"""agora.keyfile: a process's long-term keys are made once, kept private, and a file that is
not one is refused in one line and left as it is."""

from __future__ import annotations

import json
import os
import stat

import pytest

from agora.crypto import b64
from agora.errors import LocalError
from agora.keyfile import load_or_create


def test_keys_are_made_on_first_use_in_a_private_file_and_read_back_after(tmp_path):
    path = tmp_path / "broker.key"
    made = load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create(path)
    assert (again.public_key, again.verify_key) == (made.public_key, made.verify_key)


def test_a_key_file_readable_by_others_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "broker.key"
    load_or_create(path)
    before = path.read_bytes()
    path.chmod(0o644)
    with pytest.raises(LocalError, match=r"readable by others; chmod 600 it$"):
        load_or_create(path)
    assert path.read_bytes() == before


def _valid(**changes: object) -> bytes:
    doc = {"format": "agora-keys/1", "private_key": b64(bytes(32)),
           "signing_key": b64(bytes(range(32)))}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


@pytest.mark.parametrize("data", [
    b"not json", b"\xff\xfe", b"[" * 100_000, b"[]", b'"agora-keys/1"',
    _valid(format=None), _valid(format="agora-keys/2"), _valid(signing_key=None),
    _valid(private_key=b64(bytes(31))), _valid(signing_key=5), _valid(private_key="!!"),
], ids=["garbage", "not-utf8", "nested-too-deep", "array", "string", "no-format",
        "other-format", "no-signing-key", "short-key", "key-not-text", "key-not-base64"])
def test_a_file_that_is_not_a_key_file_is_refused_in_one_line_and_left_as_it_is(tmp_path, data):
    path = tmp_path / "broker.key"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(LocalError) as refused:
        load_or_create(path)
    assert str(refused.value) == f"{path} is not a valid agora key file"
    assert path.read_bytes() == data


def test_the_file_those_cases_each_change_one_thing_of_is_read(tmp_path):
    path = tmp_path / "broker.key"
    path.write_bytes(_valid())
    path.chmod(0o600)
    pair = load_or_create(path)
    assert bytes(pair.private_key) == bytes(32)
    assert bytes(pair.signing_key) == bytes(range(32))


def test_a_key_file_that_cannot_be_read_is_a_one_line_error(tmp_path):
    path = tmp_path / "broker.key"
    path.mkdir(mode=0o700)
    with pytest.raises(LocalError, match=r"^cannot read .*broker.key: Is a directory$"):
        load_or_create(path)
    assert path.is_dir() and not os.listdir(path)
