"""Every body decoder, fed any truncation or any mangled byte of a valid body, either
decodes it or raises ProtocolError: never IndexError, struct.error or UnicodeDecodeError,
which the servers would answer as ``internal`` with a traceback in their log (the bodies
are opened from authenticated envelopes, so a key holder with a bug could send them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agents.peer_protocol import (
    decode_letter,
    decode_message,
    decode_names,
    decode_welcome,
    encode_letter,
    encode_message,
    encode_names,
    encode_welcome,
)
from agora.auction_wire import decode_request_body, encode_request_body
from agora.errors import ProtocolError
from agora.protocol import Kind
from agora.wire import (
    MAX_REFUSAL_MESSAGE,
    decode_call,
    decode_grant,
    decode_json,
    decode_login,
    decode_refusal,
    decode_register,
    decode_reply,
    decode_request,
    decode_username,
    decode_worker_body,
    encode_call,
    encode_grant,
    encode_login,
    encode_refusal,
    encode_register,
    encode_reply,
    encode_request,
    encode_username,
    encode_worker_body,
    refusal_fields,
)

INFO = {"username": "ana.lima", "level": 3, "kind": "person"}

#: (name, decoder, one valid body it decodes): a body with every variable part present.
DECODERS: list[tuple[str, Callable[[bytes], Any], bytes]] = [
    ("call", decode_call, encode_call("notes.add", {"text": "olá", "n": [1, 2]})),
    ("refusal", refusal_fields, encode_refusal("bad-request", "no such thing")),
    ("username", decode_username, encode_username("ana.lima")),
    ("register", decode_register, encode_register(bytes(range(32)), "ana.lima",
                                                  "K7QF-3M9D-XW2P")),
    ("login", decode_login, encode_login(bytes(32), 5555, True)),
    ("grant", lambda b: decode_grant(b, False), encode_grant(bytes(32), INFO)),
    ("grant with session", lambda b: decode_grant(b, True),
     encode_grant(bytes(32), INFO, bytes(16), bytes(32))),
    ("worker request", decode_request,
     encode_request(bytes(8), b"notes", b"ana.lima", 3, 2.5, b'{"text":"hi"}')),
    ("worker reply", decode_reply, encode_reply(bytes(8), True, b'{"ok":1}')),
    ("worker ready", lambda b: decode_worker_body(Kind.READY, b),
     encode_worker_body(Kind.READY, {"service": "notes", "level": 2, "description": "n"})),
    ("worker disconnect", lambda b: decode_worker_body(Kind.DISCONNECT, b),
     encode_worker_body(Kind.DISCONNECT, {"code": "revoked", "message": "bye"})),
    ("worker heartbeat", lambda b: decode_worker_body(Kind.HEARTBEAT, b), b""),
    ("bid", lambda b: decode_request_body(Kind.BID, b),
     encode_request_body(Kind.BID, {"item": "vaso-azul", "amount": 1250})),
    ("join", lambda b: decode_request_body(Kind.JOIN, b), b""),
    ("peer hello", decode_names, encode_names("ana.lima", "bob.reis")),
    ("peer welcome", decode_welcome, encode_welcome(40123)),
    ("peer message", decode_message, encode_message(bytes(16), 1_700_000_000_000,
                                                    "olá".encode())),
    ("letter", decode_letter, encode_letter("ana.lima", "bob.reis", "olá".encode())),
]
IDS = [name for name, _, _ in DECODERS]


def variants(body: bytes) -> list[bytes]:
    """Every proper prefix, and the body with each byte set to 0x00, 0xFF (never UTF-8)
    and 0x80 (a UTF-8 continuation byte out of place)."""
    cuts = [body[:n] for n in range(len(body))]
    mangled = [body[:i] + bytes((v,)) + body[i + 1:] for i in range(len(body))
               for v in (0x00, 0xFF, 0x80)]
    return cuts + mangled + [body + b"\xff", body + b"\x00" * 3]


def test_each_valid_body_decodes():  # else the properties below would prove nothing
    for _, decode, body in DECODERS:
        decode(body)


@pytest.mark.parametrize("name,decode,body", DECODERS, ids=IDS)
def test_a_malformed_body_raises_protocol_error_or_decodes(name, decode, body):
    for variant in variants(body):
        try:
            decode(variant)
        except ProtocolError:
            pass
        except Exception as exc:  # noqa: BLE001 - the property: no other error type
            pytest.fail(f"{name}: {variant!r} raised {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("text", [b"[1]", b'"x"', b"1e999", b"[" * 100_000, b"{\"a\":NaN}x",
                                  "{}".encode("utf-16"), b"\xef\xbb\xbf{}", b'{"a":NaN}',
                                  b'{"a":[-Infinity]}', b'{"a":1e999}'])
def test_json_bodies_are_objects_in_plain_utf8_or_refused(text):
    with pytest.raises(ProtocolError):
        decode_json(text)


def test_a_malformed_refusal_reads_as_internal_not_as_an_exception():
    error = decode_refusal(b"\xff not json")
    assert (error.code.value, error.message) == ("internal", "malformed refusal")
    sent = json.loads(encode_refusal("revoked", "x" * 10_000))["message"]
    assert len(sent) == MAX_REFUSAL_MESSAGE  # a refusal is one line, not a payload


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_json_encoder_of_the_wire_refuses_what_is_not_json(bad):
    from agora.notice_wire import encode_notice
    from agora.wire import compact_json, encode_json

    for encode in (encode_json, compact_json, encode_notice):
        with pytest.raises(ValueError):
            encode({"type": "level-changed", "at": bad})
