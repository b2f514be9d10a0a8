"""Codecs of the NOTICE channel: the broker pushes notices to subscribed agents (PROTOCOL.md 4.5).

Plain functions, no sockets. Every message is ONE frame, one AGORA/2 envelope
(agora/envelope.py) on ``Channel.NOTICE`` under the session key, context = the session id
(16 octets: the receiver finds the session, and so the key, from the clear header):

    agent -> broker (sender CLIENT, counter = ms timestamp, strictly increasing)
        SUBSCRIBE    flags (u8): bit 0 = membership notices too
        HEARTBEAT    empty
        DISCONNECT   empty: unsubscribe

    broker -> agent (sender BROKER, counter = the subscription's sequence, 1, 2, 3 ...)
        SUBSCRIBE    flags granted (u8) | heartbeat interval in ms (u32): subscribed
        HEARTBEAT    empty
        NOTICE       JSON object with "type" (agora.protocol.NoticeType) and its fields
        REFUSED      JSON {"code", "message"}: a sealed refusal of a SUBSCRIBE
        ERROR        in clear, JSON {"code", "message"}: only when the broker cannot seal
                     (it does not know the session); a hint, never an answer
"""

from __future__ import annotations

import json
import struct
from typing import Any

from agora.envelope import Header, clear, open_clear, open_envelope, peek, seal
from agora.errors import ProtocolError, UnauthenticatedRefusal
from agora.jsontext import loads
from agora.protocol import SUBSCRIBE_MEMBERSHIP, Channel, ErrorCode, Kind, Sender
from agora.wire import encode_refusal, refusal_fields

#: What an agent may send, and what the broker may send, sealed.
AGENT_KINDS = frozenset({Kind.SUBSCRIBE, Kind.HEARTBEAT, Kind.DISCONNECT})
BROKER_KINDS = frozenset({Kind.SUBSCRIBE, Kind.HEARTBEAT, Kind.NOTICE, Kind.REFUSED})
KNOWN_FLAGS = SUBSCRIBE_MEMBERSHIP

_ACK = struct.Struct(">BI")


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _object(body: bytes) -> dict[str, Any]:
    try:
        obj = loads(body.decode("utf-8"))  # UTF-8 only, as every JSON body (PROTOCOL.md 1)
    except ValueError:
        raise ProtocolError("notice body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("notice body must be a JSON object")
    return obj


# -- agent -> broker ------------------------------------------------------------------------

def encode_subscribe(membership: bool) -> bytes:
    return bytes([SUBSCRIBE_MEMBERSHIP if membership else 0])


def decode_subscribe(body: bytes) -> int:
    """The flags of a SUBSCRIBE body; ProtocolError for a wrong size or unknown flags."""
    if len(body) != 1:
        raise ProtocolError("SUBSCRIBE body must be one octet of flags")
    if body[0] & ~KNOWN_FLAGS:
        raise ProtocolError("SUBSCRIBE has unknown flags")
    return body[0]


def seal_from_agent(key: bytes, sid: bytes, kind: Kind, counter: int,
                    body: bytes = b"", nonce: bytes | None = None) -> bytes:
    return seal(key, Header(Channel.NOTICE, kind, Sender.CLIENT, sid, counter), body, nonce)


def open_from_agent(key: bytes, data: bytes, sid: bytes) -> tuple[Header, bytes]:
    return open_envelope(key, data, Channel.NOTICE, Sender.CLIENT, AGENT_KINDS, sid)


# -- broker -> agent ------------------------------------------------------------------------

def encode_ack(flags: int, heartbeat: float) -> bytes:
    return _ACK.pack(flags, int(heartbeat * 1000))


def decode_ack(body: bytes) -> tuple[int, float]:
    """(flags granted, heartbeat interval in seconds) of the broker's SUBSCRIBE."""
    if len(body) != _ACK.size:
        raise ProtocolError("subscription acknowledgement must be 5 octets")
    flags, interval_ms = _ACK.unpack(body)
    return flags, interval_ms / 1000


def encode_notice(fields: dict[str, Any]) -> bytes:
    return _json(fields)


def decode_notice(body: bytes) -> dict[str, Any]:
    notice = _object(body)
    if not isinstance(notice.get("type"), str):
        raise ProtocolError("notice without a type")
    return notice


def seal_from_broker(key: bytes, sid: bytes, kind: Kind, counter: int, body: bytes = b"",
                     nonce: bytes | None = None) -> bytes:
    return seal(key, Header(Channel.NOTICE, kind, Sender.BROKER, sid, counter), body, nonce)


def clear_error(sid: bytes, code: ErrorCode, message: str) -> bytes:
    """A refusal the broker cannot seal (it does not know the session ``sid``)."""
    return clear(Header(Channel.NOTICE, Kind.ERROR, Sender.BROKER, sid, 0),
                 encode_refusal(code, message))


def open_from_broker(key: bytes, data: bytes, sid: bytes) -> tuple[Header, bytes]:
    """A broker message on this session; UnauthenticatedRefusal for a clear ERROR."""
    header = peek(data)
    if header.kind == Kind.ERROR:
        _, body = open_clear(data, Channel.NOTICE, Sender.BROKER, {Kind.ERROR})
        raise UnauthenticatedRefusal(*refusal_fields(body))
    return open_envelope(key, data, Channel.NOTICE, Sender.BROKER, BROKER_KINDS, sid)
