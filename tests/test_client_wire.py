"""The client channel's codecs (agora/wire.py) against docs/vectors/client.json.

Each vector is built by the channel's real encoders from fixed keys and nonces; the test
checks both directions: encoder(fields) == body, decoder(body) == fields (the envelope bytes
themselves are checked by tests/test_vectors.py). Regenerate only on purpose, when the wire
format changes: ``python -m tests.test_client_wire``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from nacl.public import PrivateKey

from agora.envelope import box_key, timestamp_counter
from agora.protocol import ErrorCode, Kind
from agora.wire import (
    decode_call,
    decode_grant,
    decode_login,
    decode_refusal,
    decode_register,
    encode_call,
    encode_grant,
    encode_login,
    encode_refusal,
    encode_register,
    login_context,
    register_context,
    reply_header,
    request_header,
)
from tests.vectors import load, vector, write

CLIENT_PRIVATE = bytes(range(1, 33))
BROKER_PRIVATE = bytes(range(33, 65))
SYMMETRIC_KEY = bytes(range(64, 96))
SESSION_KEY = bytes(range(96, 128))
SESSION_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
TOKEN_N = bytes(range(128, 160))
TOKEN_NEXT = bytes(range(160, 192))
NONCE = bytes(range(200, 224))
TS = timestamp_counter(1_790_000_000.0)
INFO = {"username": "ana.lima", "level": 3, "kind": "person"}


def build() -> list[dict[str, Any]]:
    client_public = bytes(PrivateKey(CLIENT_PRIVATE).public_key)
    box = box_key(CLIENT_PRIVATE, bytes(PrivateKey(BROKER_PRIVATE).public_key))
    register = request_header(Kind.REGISTER, register_context(client_public), TS)
    login = request_header(Kind.LOGIN, login_context("ana.lima"), TS)
    call = request_header(Kind.CALL, SESSION_ID, 7)
    fields_register = {"symmetric_key": SYMMETRIC_KEY.hex(), "username": "ana.lima",
                       "one_time_id": "K7QM2-XR9TB-4HWZP-C8NVD-3FJLE"}
    fields_login = {"token": TOKEN_N.hex(), "port": 40001, "listening": True}
    fields_call = {"service": "echo", "args": {"text": "hi"}}
    fields_refusal = {"code": "forbidden", "message": "echo needs level 4 (secret); you have 3"}
    return [
        vector("client.register", box, register, _encode("register", fields_register), NONCE,
               fields_register),
        vector("client.register-refused", box, reply_header(Kind.REFUSED, register),
               _encode("refusal", {"code": "bad-one-time-id",
                                   "message": "wrong one-time ID"}), NONCE,
               {"code": "bad-one-time-id", "message": "wrong one-time ID"}),
        vector("client.register-result", SYMMETRIC_KEY, reply_header(Kind.RESULT, register),
               _encode("register-result", {"token": TOKEN_N.hex(), **INFO}), NONCE,
               {"token": TOKEN_N.hex(), **INFO}),
        vector("client.login", SYMMETRIC_KEY, login, _encode("login", fields_login), NONCE,
               fields_login),
        vector("client.login-result", SYMMETRIC_KEY, reply_header(Kind.RESULT, login),
               _encode("login-result", _login_result()), NONCE, _login_result()),
        vector("client.call", SESSION_KEY, call, _encode("call", fields_call), NONCE,
               fields_call),
        vector("client.call-empty-args", SESSION_KEY, call._replace(counter=8),
               _encode("call", {"service": "whoami", "args": {}}), NONCE,
               {"service": "whoami", "args": {}}),
        vector("client.result", SESSION_KEY, reply_header(Kind.RESULT, call),
               _encode("result", {"result": {"text": "hi"}}), NONCE,
               {"result": {"text": "hi"}}),
        vector("client.refused", SESSION_KEY, reply_header(Kind.REFUSED, call),
               _encode("refusal", fields_refusal), NONCE, fields_refusal),
        vector("client.logout", SESSION_KEY, request_header(Kind.LOGOUT, SESSION_ID, 9), b"",
               NONCE, {}),
    ]


def _login_result() -> dict[str, Any]:
    return {"token": TOKEN_NEXT.hex(), "session": SESSION_ID.hex(),
            "session_key": SESSION_KEY.hex(), **INFO}


def _encode(what: str, f: dict[str, Any]) -> bytes:
    """The channel's real encoder for one body kind."""
    if what == "register":
        return encode_register(bytes.fromhex(f["symmetric_key"]), f["username"],
                               f["one_time_id"])
    if what == "login":
        return encode_login(bytes.fromhex(f["token"]), f["port"], f["listening"])
    if what == "call":
        return encode_call(f["service"], f["args"])
    if what == "result":
        return json.dumps(f["result"], separators=(",", ":")).encode()
    if what == "refusal":
        return encode_refusal(ErrorCode(f["code"]), f["message"])
    info = {k: f[k] for k in ("username", "level", "kind")}
    if what == "register-result":
        return encode_grant(bytes.fromhex(f["token"]), info)
    return encode_grant(bytes.fromhex(f["token"]), info, bytes.fromhex(f["session"]),
                        bytes.fromhex(f["session_key"]))


def _decode(name: str, body: bytes) -> dict[str, Any]:
    """The channel's real decoder for the body of vector ``name``."""
    kind = name.split(".", 1)[1]
    if kind == "register":
        key, username, otid = decode_register(body)
        return {"symmetric_key": key.hex(), "username": username, "one_time_id": otid}
    if kind == "login":
        token, port, listening = decode_login(body)
        return {"token": token.hex(), "port": port, "listening": listening}
    if kind.startswith("call"):
        service, args = decode_call(body)
        return {"service": service, "args": args}
    if kind == "result":
        return {"result": json.loads(body)}
    if kind.endswith("refused"):
        error = decode_refusal(body)
        return {"code": error.code.value, "message": error.message}
    if kind == "register-result":
        token, _, _, info = decode_grant(body, with_session=False)
        return {"token": token.hex(), **info}
    if kind == "login-result":
        token, sid, key, info = decode_grant(body, with_session=True)
        return {"token": token.hex(), "session": sid.hex(), "session_key": key.hex(), **info}
    if kind == "logout":
        assert body == b""
        return {}
    raise AssertionError(f"no decoder for {name}")


# (Not loaded when this module regenerates the file.)
VECTORS = load("client") if __name__ != "__main__" else []


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_client_vector_body_is_what_the_encoder_makes_and_decodes_back(v):
    assert _decode(v["name"], bytes.fromhex(v["body"])) == v["fields"]
    assert [x for x in build() if x["name"] == v["name"]] == [v]


def test_every_client_message_kind_has_a_vector():
    kinds = {v["header"]["kind"] for v in VECTORS}
    assert {Kind.REGISTER, Kind.LOGIN, Kind.CALL, Kind.LOGOUT, Kind.RESULT,
            Kind.REFUSED} <= kinds


if __name__ == "__main__":
    write("client", build())


def test_a_result_opened_with_the_kept_prefix_is_checked_as_on_the_general_path():
    from agora.errors import ProtocolError, RemoteError
    from agora.wire import open_session_reply, result_prefix, session_refusal, session_result

    prefix = result_prefix(SESSION_ID)
    result = session_result(SESSION_KEY, SESSION_ID, 7, {"text": "hi"})
    for kept in (None, prefix):
        assert open_session_reply(SESSION_KEY, [result], SESSION_ID, 7, kept) == {"text": "hi"}
        with pytest.raises(ProtocolError, match="does not answer this request"):
            open_session_reply(SESSION_KEY, [result], SESSION_ID, 8, kept)
        with pytest.raises(ProtocolError, match="another context"):
            open_session_reply(SESSION_KEY, [result], bytes(16), 7,
                               None if kept is None else result_prefix(bytes(16)))
        tampered = result[:-1] + bytes([result[-1] ^ 1])
        with pytest.raises(ProtocolError, match="authenticated"):
            open_session_reply(SESSION_KEY, [tampered], SESSION_ID, 7, kept)
        refused = session_refusal(SESSION_KEY, SESSION_ID, 7, ErrorCode.FORBIDDEN, "no")
        with pytest.raises(RemoteError) as refusal:
            open_session_reply(SESSION_KEY, [refused], SESSION_ID, 7, kept)
        assert refusal.value.code == ErrorCode.FORBIDDEN and refusal.value.authenticated


@pytest.mark.parametrize("body", [b"not json", b"\xff", b"[" * 100_000, b"1 2", b"NaN",
                                  b'{"x":-Infinity}'],
                         ids=["not-json", "not-utf8", "nested-too-deep", "trailing-data", "nan",
                              "infinity"])
def test_a_sealed_result_whose_body_is_not_json_is_malformed_on_both_paths(body):
    from agora.envelope import Header, seal
    from agora.errors import ProtocolError
    from agora.protocol import Channel, Sender
    from agora.wire import open_session_reply, result_prefix

    result = seal(SESSION_KEY, Header(Channel.CLIENT, Kind.RESULT, Sender.BROKER, SESSION_ID, 7),
                  body)
    for kept in (None, result_prefix(SESSION_ID)):
        with pytest.raises(ProtocolError, match="RESULT body is not valid JSON"):
            open_session_reply(SESSION_KEY, [result], SESSION_ID, 7, kept)


def test_a_broker_reply_of_more_than_one_frame_is_malformed():
    from agora.errors import ProtocolError
    from agora.wire import (
        broker_key_reply,
        open_broker_key_reply,
        open_session_reply,
        session_result,
    )

    result = session_result(SESSION_KEY, SESSION_ID, 7, {"text": "hi"})
    with pytest.raises(ProtocolError, match="one frame"):
        open_session_reply(SESSION_KEY, [result, b""], SESSION_ID, 7)
    key_reply = broker_key_reply(bytes(range(32)))
    assert open_broker_key_reply([key_reply]) == bytes(range(32))
    with pytest.raises(ProtocolError, match="one frame"):
        open_broker_key_reply([key_reply, b""])


def test_a_broker_key_reply_that_is_not_32_octets_is_malformed():
    from agora.errors import ProtocolError
    from agora.wire import broker_key_reply, open_broker_key_reply

    for size in (0, 31, 33):
        with pytest.raises(ProtocolError, match="broker key reply is malformed"):
            open_broker_key_reply([broker_key_reply(bytes(size))])


# -- the refusal body: one codec for every channel (PROTOCOL.md 1.6) ---------------------------

def test_a_refusal_message_is_cut_to_one_line_of_at_most_300_characters():
    from agora.wire import MAX_REFUSAL_MESSAGE, refusal_fields

    assert MAX_REFUSAL_MESSAGE == 300
    body = encode_refusal(ErrorCode.BAD_REQUEST, "x" * 1000)
    assert len(json.loads(body)["message"]) == 300  # the sender cuts it
    long_body = json.dumps({"code": "bad-request", "message": "y" * 1000}).encode()
    assert refusal_fields(long_body) == ("bad-request", "y" * 300)  # and the receiver too


def test_a_refusal_without_a_code_reads_as_internal_and_without_a_message_says_so():
    from agora.wire import refusal_fields

    assert refusal_fields(b'{"message":"no code"}') == ("internal", "no code")
    assert refusal_fields(b'{"code":"forbidden","message":""}') == ("forbidden",
                                                                     "no reason given")
    error = decode_refusal(b"{}")
    assert (error.code, error.message) == (ErrorCode.INTERNAL, "no reason given")


def test_a_refusal_body_that_is_not_a_json_object_is_malformed():
    from agora.errors import ProtocolError
    from agora.wire import refusal_fields

    for body in (b"[]", b"not json", b"\xff"):
        with pytest.raises(ProtocolError):
            refusal_fields(body)
        error = decode_refusal(body)  # a sealed answer all the same: the request is over
        assert (error.code, error.message) == (ErrorCode.INTERNAL, "malformed refusal")


def test_a_call_that_is_not_text_or_too_long_a_name_is_refused_before_sending():
    from agora.errors import LocalError

    for service, args in (("ech\udcc3", None), ("echo", {"text": "caf\udcc3"}),
                          ("echo", {"caf\udcc3": 1})):
        with pytest.raises(LocalError, match=r"must be text \(valid UTF-8\)"):
            encode_call(service, args)
    with pytest.raises(LocalError, match="service name must be 1-255 bytes"):
        encode_call("x" * 256)
