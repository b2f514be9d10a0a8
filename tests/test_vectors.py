"""Known-answer vectors in docs/vectors/ checked in both directions against the code."""

from __future__ import annotations

import pytest

from agora.envelope import open_envelope, seal
from tests.vectors import VECTORS, header_of, load

ALL = [(f.stem, v) for f in sorted(VECTORS.glob("*.json")) for v in load(f.stem)]


@pytest.mark.parametrize(("file", "v"), ALL, ids=[f"{f}:{v['name']}" for f, v in ALL])
def test_vector_seals_to_the_published_bytes(file, v):
    key, nonce = bytes.fromhex(v["key"]), bytes.fromhex(v["nonce"])
    assert seal(key, header_of(v), bytes.fromhex(v["body"]), nonce).hex() == v["envelope"]


@pytest.mark.parametrize(("file", "v"), ALL, ids=[f"{f}:{v['name']}" for f, v in ALL])
def test_published_bytes_open_to_the_vector(file, v):
    header = header_of(v)
    got, body = open_envelope(bytes.fromhex(v["key"]), bytes.fromhex(v["envelope"]),
                              header.channel, header.sender, {header.kind}, header.context)
    assert got == header
    assert body.hex() == v["body"]
