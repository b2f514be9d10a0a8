"""Known-answer vectors of the peer channel and letters (docs/vectors/peer.json, letter.json),
built by the channel's own encoders from fixed keys and nonces.

Regenerate only when the wire format changes on purpose: ``python -m tests.peer_vectors``.
The key of every vector is the box key of two fixed key pairs (ana's secret 0x01..0x20,
bob's secret 0x21..0x40), the same at both ends.
"""

from __future__ import annotations

from typing import Any

from nacl.public import PrivateKey

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
from agora.envelope import Header, box_key
from agora.protocol import Channel, ErrorCode, Kind, Sender
from agora.wire import encode_refusal, refusal_fields
from tests.vectors import vector, write

ANA = PrivateKey(bytes(range(1, 33)))
BOB = PrivateKey(bytes(range(33, 65)))
KEY = box_key(bytes(ANA), bytes(BOB.public_key))
CONVERSATION = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")
MESSAGE_ID = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
HELLO_AT = 1_800_000_000_000  # ms


def _nonce(i: int) -> bytes:
    return bytes([i]) * 24


#: kind -> (encoder from fields to body, decoder from body to fields)
CODECS: dict[int, tuple[Any, Any]] = {
    Kind.HELLO: (lambda f: encode_names(f["from"], f["to"]),
                 lambda b: dict(zip(("from", "to"), decode_names(b)[:2], strict=True))),
    Kind.WELCOME: (lambda f: encode_welcome(f["port"]), lambda b: {"port": decode_welcome(b)}),
    Kind.REFUSED: (lambda f: encode_refusal(ErrorCode(f["code"]), f["message"]),
                   lambda b: dict(zip(("code", "message"), refusal_fields(b), strict=True))),
    Kind.MESSAGE: (lambda f: encode_message(bytes.fromhex(f["message_id"]), f["sent_at_ms"],
                                            f["text"].encode()),
                   lambda b: dict(zip(("message_id", "sent_at_ms", "text"),
                                      (decode_message(b)[0].hex(), *decode_message(b)[1:]),
                                      strict=True))),
    Kind.ACK: (lambda f: b"", lambda b: {}),
    Kind.BYE: (lambda f: b"", lambda b: {}),
    Kind.LETTER: (lambda f: encode_letter(f["from"], f["to"], f["text"].encode()),
                  lambda b: dict(zip(("from", "to", "text"), decode_letter(b), strict=True))),
}


def _make(name: str, header: Header, fields: dict[str, Any], i: int) -> dict[str, Any]:
    body = CODECS[header.kind][0](fields)
    return vector(name, KEY, header, body, _nonce(i), fields)


def peer_vectors() -> list[dict[str, Any]]:
    def h(kind: Kind, sender: Sender, counter: int) -> Header:
        return Header(Channel.PEER, kind, sender, CONVERSATION, counter)

    return [
        _make("peer.hello", h(Kind.HELLO, Sender.INITIATOR, HELLO_AT),
              {"from": "ana.lima", "to": "bob.reis"}, 1),
        _make("peer.welcome", h(Kind.WELCOME, Sender.ACCEPTOR, HELLO_AT), {"port": 40123}, 2),
        _make("peer.refused", h(Kind.REFUSED, Sender.ACCEPTOR, HELLO_AT),
              {"code": "stale", "message": "conversation request is too old or in the "
               "future (check the clock)"}, 3),
        _make("peer.message", h(Kind.MESSAGE, Sender.INITIATOR, 1),
              {"message_id": MESSAGE_ID.hex(), "sent_at_ms": HELLO_AT + 5,
               "text": "olá, Bob"}, 4),
        _make("peer.ack", h(Kind.ACK, Sender.ACCEPTOR, 1), {}, 5),
        _make("peer.bye", h(Kind.BYE, Sender.INITIATOR, 2), {}, 6),
    ]


def letter_vectors() -> list[dict[str, Any]]:
    header = Header(Channel.LETTER, Kind.LETTER, Sender.INITIATOR, MESSAGE_ID, HELLO_AT)
    return [_make("letter.letter", header, {"from": "ana.lima", "to": "bob.reis",
                                            "text": "while you were out"}, 7)]


if __name__ == "__main__":
    write("peer", peer_vectors())
    write("letter", letter_vectors())
