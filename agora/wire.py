"""Codecs for the client <-> broker channel (docs/PROTOCOL.md, section 3) and the worker
channel (section 4). Plain functions, no sockets.

Client messages are AGORA/2: every request and reply is one envelope
(:mod:`agora.envelope`, channel CLIENT), REGISTER and LOGIN preceded by one clear key-hint
frame; the layouts are in the comments of the client sections below. A refusal body is a
JSON object ``{"code": ..., "message": ...}``, sealed (Kind.REFUSED) when the request
authenticated, in clear (Kind.ERROR) when it did not.

Worker messages (docs/PROTOCOL.md, section 4.3) are AGORA/2: one frame, one envelope
(agora/envelope.py) on Channel.WORKER under the worker's session key, context = the
session id, sender WORKER or BROKER, kind READY / REQUEST / REPLY / HEARTBEAT / DISCONNECT,
counter = the sender's own sequence in that session; HEARTBEAT's body is empty, REQUEST and
REPLY have a fixed binary layout around the call's JSON (forwarded as opaque octets), the
others are a compact JSON object. A clear ERROR envelope only where the broker cannot seal.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from typing import Any

from agora.envelope import (
    HEADER_SIZE,
    NO_CONTEXT,
    Header,
    clear,
    context_id,
    header_prefix,
    open_clear,
    open_envelope,
    open_prefixed,
    peek,
    seal,
)
from agora.errors import LocalError, ProtocolError, RemoteError, UnauthenticatedRefusal
from agora.jsontext import dumps, loads
from agora.protocol import (
    Channel,
    ErrorCode,
    Kind,
    Sender,
)


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    """Parse a JSON object (UTF-8) from the wire; anything else is a ProtocolError."""
    try:
        obj = loads(data.decode("utf-8"))  # UTF-8 only, and no encoding sniffing
    except ValueError:  # not UTF-8 (UnicodeDecodeError), not JSON, or too deep (TooDeep)
        raise ProtocolError("body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("body must be a JSON object")
    return obj


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch a required field of a given type from a decoded body."""
    value = body.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} missing or of the wrong type")
    return value


#: The largest id a store row can have (SQLite's INTEGER is 64-bit signed): a larger number
#: cannot name a row, and SQLite would refuse to even compare it (OverflowError).
MAX_ROW_ID = 2**63 - 1


def id_field(body: dict[str, Any], name: str) -> int:
    """A required row id: an integer from 0 to MAX_ROW_ID."""
    value = field(body, name, int)
    if not 0 <= value <= MAX_ROW_ID:
        raise ProtocolError(f"field {name!r} must be an id from 0 to 2^63-1")
    return value


# -- client channel, AGORA/2 (docs/PROTOCOL.md section 3) -----------------------------------
#
# A session request is ONE envelope (agora.envelope): channel CLIENT, sender CLIENT, kind
# CALL or LOGOUT, context = the 16-byte session id, counter = the session's request counter,
# sealed under the session key. Its reply is one envelope with the same context and counter,
# sender BROKER, kind RESULT (compact JSON result) or REFUSED (JSON {"code", "message"}),
# sealed under the same key; or, when the request could not be authenticated (unknown
# session, not an envelope, bad tag), a clear Kind.ERROR envelope with the same JSON.
#
# CALL body: name length (1 byte) | service name (UTF-8) | args as compact JSON (empty = {}).

#: Session request kinds; the broker's dispatch table may add more (SUBSCRIBE).
SESSION_REQUESTS = frozenset({Kind.CALL, Kind.LOGOUT})
SESSION_REPLIES = frozenset({Kind.RESULT, Kind.REFUSED})
MAX_SERVICE_NAME = 255
#: A refusal's message is one line for a person: longer ones are cut to this many characters.
MAX_REFUSAL_MESSAGE = 300

class JSONText(bytes):
    """A result that is compact JSON already (a built-in service passing octets through,
    like ``echo``): sent as it is, not encoded again."""


def compact_json(obj: Any) -> bytes:
    """Compact JSON, no key sorting (the call path's encoder)."""
    return dumps(obj).encode("utf-8")


def encode_call(service: str, args: dict[str, Any] | None = None) -> bytes:
    """A CALL body: 1-byte name length, the name, the args as compact JSON (or nothing).

    LocalError (nothing sent) for what a person can type wrong: a name over 255 bytes, or
    text that is not Unicode (a command line's invalid UTF-8 arrives as lone surrogates)."""
    try:
        name = service.encode("utf-8")
        payload = compact_json(args) if args else b""
    except UnicodeEncodeError:
        raise LocalError("the service name and arguments must be text (valid UTF-8)") from None
    if not 0 < len(name) <= MAX_SERVICE_NAME:
        raise LocalError(f"service name must be 1-{MAX_SERVICE_NAME} bytes of UTF-8")
    return bytes((len(name),)) + name + payload


def split_call(body: bytes) -> tuple[str, bytes]:
    """Service name and the args' JSON octets (unparsed; empty = {}) of a CALL body:
    a worker-served call forwards them as they are. ProtocolError if it is not one."""
    size = body[0] if body else 0
    if not size or len(body) < 1 + size:
        raise ProtocolError("CALL body: bad service name length")
    try:
        name = body[1:1 + size].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("CALL body: service name is not UTF-8") from None
    return name, body[1 + size:]


def decode_call(body: bytes) -> tuple[str, dict[str, Any]]:
    """Service name and args of a CALL body; ProtocolError if it is not one."""
    name, args = split_call(body)
    return name, decode_json(args) if args else {}


def encode_refusal(code: ErrorCode | str, message: str) -> bytes:
    """A refusal body, the same on every channel (PROTOCOL.md 1.6): JSON {"code", "message"},
    the message cut at MAX_REFUSAL_MESSAGE characters."""
    return compact_json({"code": getattr(code, "value", code),
                         "message": message[:MAX_REFUSAL_MESSAGE]})


def refusal_fields(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of a refusal body; ProtocolError if it is not a JSON object.
    A missing code reads as ``internal``, a missing message as "no reason given" (a person
    reads it); a long message is cut as the sender should have."""
    obj = decode_json(body)
    return (str(obj.get("code", ErrorCode.INTERNAL.value)),
            str(obj.get("message") or "no reason given")[:MAX_REFUSAL_MESSAGE])


def decode_refusal(body: bytes, authenticated: bool = True) -> RemoteError:
    """The RemoteError a refusal body stands for (``internal`` if it is malformed)."""
    try:
        code, message = refusal_fields(body)
    except ProtocolError:
        code, message = ErrorCode.INTERNAL.value, "malformed refusal"
    return RemoteError(code, message, authenticated=authenticated)


def seal_session_request(key: bytes, sid: bytes, counter: int, kind: Kind, body: bytes,
                         nonce: bytes | None = None) -> bytes:
    """The envelope of one session request (CALL, LOGOUT, ...)."""
    return seal(key, Header(Channel.CLIENT, kind, Sender.CLIENT, sid, counter), body, nonce)


def session_reply(key: bytes, sid: bytes, counter: int, kind: Kind, body: bytes) -> bytes:
    """THE sealed reply to session request ``counter`` of session ``sid`` (RESULT or
    REFUSED): the broker's core and its worker registry both answer callers through it."""
    return seal(key, Header(Channel.CLIENT, kind, Sender.BROKER, sid, counter), body)


def session_result(key: bytes, sid: bytes, counter: int, result: Any) -> bytes:
    return session_reply(key, sid, counter, Kind.RESULT, compact_json(result))


def session_refusal(key: bytes, sid: bytes, counter: int, code: ErrorCode | str,
                    message: str) -> bytes:
    return session_reply(key, sid, counter, Kind.REFUSED, encode_refusal(code, message))


def client_error(code: ErrorCode, message: str, context: bytes = NO_CONTEXT,
                 counter: int = 0) -> bytes:
    """A refusal in clear (Kind.ERROR) for what could not be authenticated."""
    return clear(Header(Channel.CLIENT, Kind.ERROR, Sender.BROKER, context, counter),
                 encode_refusal(code, message))


def raise_if_clear_error(data: bytes) -> None:
    """Raise the (unauthenticated) RemoteError a clear ERROR envelope carries, if it is one."""
    if len(data) >= HEADER_SIZE and data[4] == Kind.ERROR:
        _, body = open_clear(data, Channel.CLIENT, Sender.BROKER, (Kind.ERROR,))
        raise decode_refusal(body, authenticated=False)


def result_prefix(sid: bytes) -> bytes:
    """The packed header of every RESULT in session ``sid`` but its counter: a caller keeps
    it and gives it to :func:`open_session_reply`, which then opens a RESULT in one step."""
    return header_prefix(Channel.CLIENT, Kind.RESULT, Sender.BROKER, sid)


def open_answer(key: bytes, data: bytes, channel: Channel, sender: Sender,
                kinds: Collection[int], context: bytes, counter: int, who: str) -> bytes:
    """The body of a sealed answer (RESULT or the channel's reply kinds) to the request
    ``counter`` in ``context``; RemoteError for a sealed REFUSED; ProtocolError otherwise.
    ``who`` names the answer in the error ("session reply", "auctioneer reply")."""
    header, body = open_envelope(key, data, channel, sender, kinds, context)
    if header.counter != counter:
        raise ProtocolError(f"{who} does not answer this request")
    if header.kind == Kind.REFUSED:
        raise decode_refusal(body)
    return body


def open_session_reply(key: bytes, frames: list[bytes], sid: bytes, counter: int,
                       prefix: bytes | None = None) -> Any:
    """The result of the reply to session request ``counter``; RemoteError for a refusal
    (``authenticated=False`` when it came in clear); ProtocolError for anything else.

    With ``prefix`` (:func:`result_prefix` of ``sid``), a RESULT for ``counter`` is checked
    by one constant-time comparison of its header and opened (open_prefixed); anything else
    takes the general path below, which says what is wrong with it.
    """
    if len(frames) != 1:
        raise ProtocolError("broker reply must be one frame")
    data = frames[0]
    if prefix is not None:
        opened = open_prefixed(key, data, prefix)
        if opened is not None and opened[0] == counter:
            return _result(opened[1])
    raise_if_clear_error(data)
    return _result(open_answer(key, data, Channel.CLIENT, Sender.BROKER, SESSION_REPLIES, sid,
                               counter, "session reply"))


def _result(body: bytes) -> Any:
    try:
        return loads(body.decode("utf-8"))
    except ValueError:
        raise ProtocolError("RESULT body is not valid JSON") from None


# -- client channel, pre-authentication: BROKER_KEY, REGISTER, LOGIN -----------------------
#
# BROKER_KEY: request and reply in clear (one frame; the reply's body is the 32-byte key).
# REGISTER:   [client public key (32, clear key hint), envelope] - the broker needs the key to
#             compute the Box key before it can open anything. Sealed under
#             box_key(client private, broker public); context register_context(client key),
#             counter = the request's millisecond timestamp. Body:
#             symmetric key (32) | username length (1) | username | one-time ID (UTF-8).
#             RESULT sealed under the new symmetric key: TOKEN_1 (32) | JSON {"username",
#             "level", "kind"}; REFUSED sealed under the Box key.
# LOGIN:      [username (UTF-8, clear key hint), envelope] - the broker needs the username to
#             find the symmetric key. Sealed under the symmetric key; context
#             login_context(username), counter = millisecond timestamp. Body:
#             TOKEN_n (32) | port (2, big endian; 0 = none) | flags (1; bit 0 = listening).
#             RESULT: TOKEN_n+1 (32) | session id (16) | session key (32) | JSON {"username",
#             "level", "kind"}; REFUSED under the symmetric key.
# Replies carry the request's context and counter; a clear Kind.ERROR answers what could not
# be authenticated.

LOGIN_LISTENING = 0x01
_LOGIN = struct.Struct(">32sHB")
MAX_USERNAME = 64


def request_header(kind: Kind, context: bytes = NO_CONTEXT, counter: int = 0) -> Header:
    return Header(Channel.CLIENT, kind, Sender.CLIENT, context, counter)


def reply_header(kind: Kind, request: Header) -> Header:
    """The header of the broker's answer to ``request``: same context and counter."""
    return Header(Channel.CLIENT, kind, Sender.BROKER, request.context, request.counter)


def broker_key_request() -> list[bytes]:
    return [clear(request_header(Kind.BROKER_KEY), b"")]


def broker_key_reply(public_key: bytes) -> bytes:
    return clear(Header(Channel.CLIENT, Kind.BROKER_KEY, Sender.BROKER, NO_CONTEXT, 0),
                 public_key)


def open_broker_key_reply(frames: list[bytes]) -> bytes:
    """The broker's public key from its BROKER_KEY reply (unauthenticated: check the
    fingerprint you were given face to face before using it)."""
    if len(frames) != 1:
        raise ProtocolError("broker key reply must be one frame")
    raise_if_clear_error(frames[0])
    _, body = open_clear(frames[0], Channel.CLIENT, Sender.BROKER, (Kind.BROKER_KEY,))
    if len(body) != 32:
        raise ProtocolError("broker key reply is malformed")
    return body


def register_context(client_public_key: bytes) -> bytes:
    return context_id(b"register", client_public_key)


def login_context(username: str) -> bytes:
    return context_id(b"login", username.encode("utf-8"))


def encode_username(username: str) -> bytes:
    raw = username.encode("utf-8")
    if not 0 < len(raw) <= MAX_USERNAME:
        raise ValueError("username must be 1-64 bytes of UTF-8")
    return raw


def decode_username(raw: bytes) -> str:
    """A username from the wire: 1-64 bytes of UTF-8; ProtocolError otherwise."""
    if not 0 < len(raw) <= MAX_USERNAME:
        raise ProtocolError("username length out of range")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("username is not UTF-8") from None


def encode_register(symmetric_key: bytes, username: str, one_time_id: str) -> bytes:
    name = encode_username(username)
    return symmetric_key + bytes((len(name),)) + name + one_time_id.encode("utf-8")


def decode_register(body: bytes) -> tuple[bytes, str, str]:
    """Symmetric key, username and one-time ID (as typed) of a REGISTER body."""
    if len(body) < 34 or len(body) < 33 + body[32]:
        raise ProtocolError("REGISTER body is truncated")
    size = body[32]
    username = decode_username(body[33:33 + size])
    try:
        one_time_id = body[33 + size:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("one-time ID is not UTF-8") from None
    return body[:32], username, one_time_id


def encode_login(token: bytes, port: int, listening: bool) -> bytes:
    if listening and not 0 < port <= 65535:
        raise ValueError("a listening session needs a port 1-65535")
    return _LOGIN.pack(token, port, LOGIN_LISTENING if listening else 0)


def decode_login(body: bytes) -> tuple[bytes, int, bool]:
    """TOKEN_n, port and listening flag of a LOGIN body."""
    if len(body) != _LOGIN.size:
        raise ProtocolError(f"LOGIN body must be {_LOGIN.size} bytes")
    token, port, flags = _LOGIN.unpack(body)
    if flags & ~LOGIN_LISTENING:
        raise ProtocolError("LOGIN flags: unknown bits set")
    listening = bool(flags & LOGIN_LISTENING)
    if listening and port == 0:
        raise ProtocolError("a listening session needs a port")
    return token, port, listening


def encode_grant(token: bytes, info: dict[str, Any], sid: bytes = b"",
                 session_key: bytes = b"") -> bytes:
    """A REGISTER result (token | JSON) or a LOGIN result (token | sid | key | JSON)."""
    return token + sid + session_key + compact_json(info)


def decode_grant(body: bytes, with_session: bool) -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    """Token, session id, session key (empty for REGISTER) and info of a grant."""
    fixed = 32 + (48 if with_session else 0)
    if len(body) < fixed:
        raise ProtocolError("grant is truncated")
    info = decode_json(body[fixed:])
    for name, kind in (("username", str), ("level", int), ("kind", str)):
        field(info, name, kind)
    if with_session:
        return body[:32], body[32:48], body[48:80], info
    return body[:32], b"", b"", info


def open_preauth_reply(frames: list[bytes], request: Header, result_key: bytes,
                       refusal_key: bytes) -> bytes:
    """The RESULT body answering pre-auth ``request``; RemoteError for a refusal (sealed
    under ``refusal_key``, or in clear: unauthenticated)."""
    if len(frames) != 1:
        raise ProtocolError("broker reply must be one frame")
    data = frames[0]
    raise_if_clear_error(data)
    kind = data[4] if len(data) > 4 else -1
    key = refusal_key if kind == Kind.REFUSED else result_key
    return open_answer(key, data, Channel.CLIENT, Sender.BROKER, SESSION_REPLIES,
                       request.context, request.counter, "reply")


# -- worker messages (docs/PROTOCOL.md 4.3) ------------------------------------------------

#: What a worker may send, and what the broker may send, sealed on Channel.WORKER.
WORKER_KINDS = frozenset({Kind.READY, Kind.REPLY, Kind.HEARTBEAT, Kind.DISCONNECT})
TO_WORKER_KINDS = frozenset({Kind.READY, Kind.REQUEST, Kind.HEARTBEAT, Kind.DISCONNECT})


#
# REQUEST and REPLY carry a call, so they are on the hot path of every worker-routed call:
# a fixed binary layout around the call's own JSON, which the broker forwards as opaque
# octets (it never parses a caller's args nor re-encodes a worker's result):
#
#   REQUEST = id (8) | timeout ms (u32) | caller level (u8) | service length (u8) | service
#             | username length (u8) | username | args (compact JSON object; empty = {})
#   REPLY   = id (8) | status (u8: 0 ok, 1 error) | JSON (the result; or {"code", "message"})

REQUEST_ID_SIZE = 8
REPLY_OK, REPLY_ERROR = 0, 1
_REQUEST_HEAD = struct.Struct(">8sIB")
_REPLY_HEAD = struct.Struct(">8sB")


def encode_request(rid: bytes, service: bytes, username: bytes, level: int, timeout: float,
                   args: bytes) -> bytes:
    """A REQUEST body; ``service`` and ``username`` UTF-8 (1-255 octets), ``args`` the
    caller's JSON octets as they came."""
    ms = min(max(0, round(timeout * 1000)), 0xFFFFFFFF)
    return b"".join((_REQUEST_HEAD.pack(rid, ms, level), bytes((len(service),)), service,
                     bytes((len(username),)), username, args))


def decode_request(body: bytes) -> tuple[bytes, str, str, int, float, bytes]:
    """(id, service, username, level, timeout s, args JSON octets) of a REQUEST body."""
    try:
        rid, ms, level = _REQUEST_HEAD.unpack_from(body)
        at = _REQUEST_HEAD.size
        service_end = at + 1 + body[at]
        user_end = service_end + 1 + body[service_end]
        if len(body) < user_end:
            raise IndexError
        service = body[at + 1:service_end].decode("utf-8")
        username = body[service_end + 1:user_end].decode("utf-8")
    except (struct.error, IndexError, UnicodeDecodeError):
        raise ProtocolError("REQUEST body is malformed") from None
    return rid, service, username, level, ms / 1000, body[user_end:]


def encode_reply(rid: bytes, ok: bool, data: bytes) -> bytes:
    """A REPLY body: the result's JSON octets when ``ok``, else a refusal's."""
    return _REPLY_HEAD.pack(rid, REPLY_OK if ok else REPLY_ERROR) + data


def decode_reply(body: bytes) -> tuple[bytes, bool, bytes]:
    """(id, ok, JSON octets) of a REPLY body; ProtocolError if it is not one."""
    if len(body) <= _REPLY_HEAD.size or body[REQUEST_ID_SIZE] not in (REPLY_OK, REPLY_ERROR):
        raise ProtocolError("REPLY body is malformed")
    return (body[:REQUEST_ID_SIZE], body[REQUEST_ID_SIZE] == REPLY_OK,
            body[_REPLY_HEAD.size:])


def encode_worker_body(kind: Kind, body: dict[str, Any]) -> bytes:
    """A worker message's body from its fields (HEARTBEAT empty; REQUEST and REPLY binary,
    ``id`` in hex; the others a compact JSON object)."""
    if kind is Kind.HEARTBEAT:
        return b""
    if kind is Kind.REQUEST:
        caller = body["caller"]
        return encode_request(bytes.fromhex(body["id"]), body["service"].encode(),
                              caller["username"].encode(), caller["level"], body["timeout"],
                              compact_json(body["args"]) if body["args"] else b"")
    if kind is Kind.REPLY:
        ok = body["ok"] is True
        return encode_reply(bytes.fromhex(body["id"]), ok,
                            compact_json(body["result"] if ok else body["error"]))
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode_worker_body(kind: Kind, body: bytes) -> dict[str, Any]:
    """The fields of a worker message's body (encode_worker_body's inverse)."""
    if kind is Kind.HEARTBEAT:
        if body:
            raise ProtocolError("HEARTBEAT has an empty body")
        return {}
    if kind is Kind.REQUEST:
        rid, service, username, level, timeout, args = decode_request(body)
        return {"id": rid.hex(), "service": service, "args": decode_json(args) if args else {},
                "caller": {"username": username, "level": level}, "timeout": timeout}
    if kind is Kind.REPLY:
        rid, ok, data = decode_reply(body)
        try:
            value = loads(data.decode("utf-8"))
        except ValueError:
            raise ProtocolError("REPLY body is not valid JSON") from None
        return {"id": rid.hex(), "ok": True, "result": value} if ok else {
            "id": rid.hex(), "ok": False, "error": value}
    return decode_json(body)


def seal_worker_message(key: bytes, sid: bytes, counter: int, sender: Sender, kind: Kind,
                        body: dict[str, Any], nonce: bytes | None = None) -> bytes:
    """One worker-channel envelope: context = the worker's session id (the key hint)."""
    return seal(key, Header(Channel.WORKER, kind, sender, sid, counter),
                         encode_worker_body(kind, body), nonce)


def open_worker_message(key: bytes, data: bytes, sid: bytes, sender: Sender,
                        ) -> tuple[Header, bytes]:
    """Check a worker-channel envelope sealed by ``sender`` in session ``sid``: (header,
    raw body). The body is decoded only after the replay check (decode_worker_body)."""
    kinds = WORKER_KINDS if sender is Sender.WORKER else TO_WORKER_KINDS
    return open_envelope(key, data, Channel.WORKER, sender, kinds, sid)


def open_to_worker(key: bytes, data: bytes, sid: bytes) -> tuple[Header, bytes]:
    """A broker message to a worker; UnauthenticatedRefusal for a clear ERROR."""
    header = peek(data)
    if header.kind == Kind.ERROR:
        _, body = open_clear(data, Channel.WORKER, Sender.BROKER, {Kind.ERROR})
        error = decode_refusal(body)
        raise UnauthenticatedRefusal(error.code.value, error.message)
    return open_worker_message(key, data, sid, Sender.BROKER)


def worker_error(sid: bytes, code: ErrorCode, message: str) -> bytes:
    """A refusal the broker cannot seal (no such session, or the message did not
    authenticate): a clear ERROR envelope, context = the session id the message named."""
    return clear(Header(Channel.WORKER, Kind.ERROR, Sender.BROKER, sid, 0),
                 encode_refusal(code, message))
