"""Wire code shared by the auctioneer and its bidders (docs/PROTOCOL.md, section 6).

No sockets. Three things live here:

- **money**: integer cents everywhere; :func:`parse_money` reads item files and the command
  line (a Decimal string such as ``"12.50"`` or an integer count of cents, never a float);
- **requests** on the auctioneer's ROUTER, each one AGORA/2 envelope (agora/envelope.py)::

      request = [bidder public key (32, clear key hint), envelope]
      reply   = [envelope]

  The request envelope is channel AUCTION, sender BIDDER, kind JOIN / BID / SNAPSHOT /
  RESULTS, context a random 16-byte **request id** (kept across retries of that request),
  counter the bidder's clock in milliseconds. It is sealed under the ``box_key`` of the
  bidder's key pair and the auctioneer's public key: the key hint is how the auctioneer finds
  that key. The reply is sealed under the same key with sender AUCTIONEER, kind RESULT (JSON
  answer) or REFUSED (JSON ``{"code", "message"}``), and the request's context and counter,
  so a reflected request, or the answer to another request, is refused. A request that did
  not prove its key gets a clear ERROR envelope, which the bidder reports as unauthenticated
  (:class:`~agora.errors.UnauthenticatedRefusal`) and never acts on.
- **announcements**: one datagram, the same bytes on UDP multicast and on the PUB mirror::

      envelope (channel ANNOUNCE, sender AUCTIONEER, context = epoch) | Ed25519 signature (64)

  EVENT envelopes are sealed under the epoch's group key, their body a JSON array of one or
  more events in the order they happened (the auctioneer batches what one group commit
  stored: one seal and one signature for all of them); a REKEY envelope is clear, its body
  the new group key boxed to each remaining member. The signature covers the whole
  envelope: members hold the group key, so only the signature proves the auctioneer.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import nacl.exceptions

from agora.crypto import SigningKey, VerifyKey
from agora.envelope import (
    CONTEXT_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    Header,
    clear,
    open_clear,
    open_envelope,
    peek,
    seal,
)
from agora.errors import LocalError, ProtocolError, UnauthenticatedRefusal
from agora.jsontext import loads
from agora.protocol import MAX_DATAGRAM, Channel, ErrorCode, Kind, Sender
from agora.wire import decode_json, decode_refusal, encode_refusal, open_answer

# -- money ----------------------------------------------------------------------------------

#: Upper bound on any amount (10^12 cents): keeps JSON integers exact everywhere.
MAX_CENTS = 10**12


_AMOUNT = re.compile(r"[0-9]{1,20}(\.[0-9]{1,2})?")
_TOO_PRECISE = re.compile(r"[0-9]+\.[0-9]{3,}")


def parse_money(value: Any, name: str = "amount") -> int:
    """Cents from ``"12.50"`` / ``"12"`` (currency units) or an int (already cents).

    A string is digits with at most two decimals: no sign, exponent (``1e3``), NaN or
    infinity. Floats are refused: 0.1 + 0.2 is not money. Raises LocalError with a one-line reason.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise LocalError(f"{name} must be a decimal string like \"12.50\", not a number "
                         "with a binary fraction")
    if isinstance(value, int):
        cents = value
    elif isinstance(value, str):
        text = value.strip()
        if _TOO_PRECISE.fullmatch(text):
            raise LocalError(f"{name} {value[:20]!r} must have at most two decimals")
        if not _AMOUNT.fullmatch(text):
            # No sign, exponent, NaN or infinity: digits, then at most two decimals.
            raise LocalError(f"{name} {value[:20]!r} is not an amount like \"12.50\" "
                             "(digits, at most two decimals)")
        cents = int(Decimal(text) * 100)
    else:
        raise LocalError(f"{name} must be a decimal string like \"12.50\" or integer cents")
    if not 0 <= cents <= MAX_CENTS:
        raise LocalError(f"{name} must be between 0 and {MAX_CENTS // 100}")
    return cents


def format_money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# -- requests and replies -------------------------------------------------------------------

#: The kinds a bidder may send.
REQUEST_KINDS = frozenset({Kind.JOIN, Kind.BID, Kind.SNAPSHOT, Kind.RESULTS})
#: The kinds of a sealed reply.
REPLY_KINDS = frozenset({Kind.RESULT, Kind.REFUSED})
#: Longest item id in a BID (item files allow no more).
MAX_ITEM_ID = 200
_AMOUNT_FIELD = struct.Struct(">Q")


def new_request_id() -> bytes:
    """A fresh request id: the context of one request and of its reply (and its retries)."""
    return os.urandom(CONTEXT_SIZE)


def encode_bid(item_id: str, amount: int) -> bytes:
    """A BID body: amount in cents (8, big endian) | item id (UTF-8, 1..200 bytes)."""
    item = item_id.encode("utf-8")
    if not 0 < len(item) <= MAX_ITEM_ID:
        raise LocalError(f"item id must be 1 to {MAX_ITEM_ID} bytes")
    if not 0 <= amount <= MAX_CENTS:
        raise LocalError(f"amount must be between 0 and {MAX_CENTS} cents")
    return _AMOUNT_FIELD.pack(amount) + item


def decode_bid(body: bytes) -> tuple[str, int]:
    """``(item id, amount in cents)`` of a BID body; ProtocolError naming what is wrong."""
    if len(body) < _AMOUNT_FIELD.size + 1:
        raise ProtocolError("bid is missing its amount or item id (8-byte amount, then the "
                            "item id)")
    (amount,) = _AMOUNT_FIELD.unpack_from(body)
    if not 0 < amount <= MAX_CENTS:
        raise ProtocolError(f"amount must be between 1 and {MAX_CENTS} cents")
    raw = body[_AMOUNT_FIELD.size:]
    if len(raw) > MAX_ITEM_ID:
        raise ProtocolError(f"item id is longer than {MAX_ITEM_ID} bytes")
    try:
        return raw.decode("utf-8"), amount
    except UnicodeDecodeError:
        raise ProtocolError("item id is not UTF-8") from None


def encode_request_body(kind: Kind, fields: dict[str, Any]) -> bytes:
    """The body of a request: a BID's fixed layout; JOIN, SNAPSHOT and RESULTS are empty."""
    if kind == Kind.BID:
        return encode_bid(fields["item"], fields["amount"])
    return b""


def decode_request_body(kind: Kind, body: bytes) -> dict[str, Any]:
    if kind == Kind.BID:
        item_id, amount = decode_bid(body)
        return {"item": item_id, "amount": amount}
    if body:
        raise ProtocolError(f"{Kind(kind).name} has an empty body")
    return {}


def seal_request(key: bytes, kind: Kind, request_id: bytes, counter: int,
                 body: bytes, nonce: bytes | None = None) -> bytes:
    return seal(key, Header(Channel.AUCTION, kind, Sender.BIDDER, request_id, counter), body,
                nonce)


def request_frames(public_key: bytes, envelope: bytes) -> list[bytes]:
    return [public_key, envelope]


def seal_reply(key: bytes, request: Header, kind: Kind, body: dict[str, Any] | bytes,
               nonce: bytes | None = None) -> list[bytes]:
    """A sealed RESULT / REFUSED for ``request`` (its context and counter echoed); ``body``
    is the answer, or its JSON already encoded (:func:`encode_accepted`)."""
    header = Header(Channel.AUCTION, kind, Sender.AUCTIONEER, request.context, request.counter)
    return [seal(key, header, body if isinstance(body, bytes) else encode_json(body), nonce)]


def encode_accepted(item_id: str, amount: int, closes_at: float, extended: bool) -> bytes:
    """The JSON answer to an accepted BID, byte for byte what :func:`encode_json` makes of
    ``{"accepted": true, "item", "amount", "closes_at", "extended"}``, made directly: it is
    on every accepted bid's path."""
    return (_ACCEPTED % (_json_str(item_id), amount, _json_float(closes_at),
                         "true" if extended else "false")).encode("utf-8")


def encode_bid_event(item_id: str, amount: int, bidder: str, at: float, closes_at: float,
                     minimum: int) -> bytes:
    """A ``bid`` event's JSON, byte for byte what :func:`encode_event` makes of it."""
    return (_BID_EVENT % (_json_str(item_id), amount, _json_str(bidder), _json_float(at),
                          _json_float(closes_at), minimum)).encode("utf-8")


_ACCEPTED = '{"accepted":true,"item":%s,"amount":%d,"closes_at":%s,"extended":%s}'
_BID_EVENT = ('{"kind":"bid","item":%s,"amount":%d,"bidder":%s,"at":%s,"closes_at":%s,'
              '"minimum":%d}')
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str


def _json_float(value: float) -> str:
    if value != value or value in (math.inf, -math.inf):
        raise ValueError("NaN and Infinity are not JSON")  # as json.dumps(allow_nan=False)
    return float.__repr__(float(value))


def clear_error(request: Header | None, code: ErrorCode, message: str) -> list[bytes]:
    """A refusal in clear, to a request that did not prove its key: nothing in it is secret
    and the bidder treats it as unauthenticated."""
    context, counter = (request.context, request.counter) if request else (bytes(16), 0)
    header = Header(Channel.AUCTION, Kind.ERROR, Sender.AUCTIONEER, context, counter)
    return [clear(header, encode_refusal(code, message))]


def open_reply(key: bytes, frames: list[bytes], request: Header) -> dict[str, Any]:
    """The auctioneer's answer to ``request``, authenticated; RemoteError for a sealed
    refusal, UnauthenticatedRefusal for a clear one (never to be acted on as an answer),
    ProtocolError for anything else (a reflected request, another request's answer...)."""
    if len(frames) != 1:
        raise ProtocolError("auctioneer reply is not one envelope")
    data = frames[0]
    if peek(data).kind == Kind.ERROR:
        header, body = open_clear(data, Channel.AUCTION, Sender.AUCTIONEER, {Kind.ERROR})
        error = decode_refusal(body)
        raise UnauthenticatedRefusal(error.code.value, error.message)
    return decode_json(open_answer(key, data, Channel.AUCTION, Sender.AUCTIONEER, REPLY_KINDS,
                                   request.context, request.counter, "auctioneer reply"))


def encode_json(obj: Any) -> bytes:
    """Compact JSON (no sort_keys: replies are on the request path)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


# -- announcements --------------------------------------------------------------------------

SIGNATURE_SIZE = 64
#: Bytes of a member's public key that tag its box in a REKEY body.
KEY_TAG_SIZE = 8
#: One REKEY entry: key tag | envelope of the 32-byte group key.
REKEY_ENTRY = KEY_TAG_SIZE + HEADER_SIZE + NONCE_SIZE + KEY_SIZE + TAG_SIZE
ANNOUNCE_KINDS = frozenset({Kind.EVENT, Kind.REKEY})
#: Most octets of JSON events packed into one EVENT body (a batch is split beyond it; one
#: event larger than this goes alone, up to MAX_DATAGRAM).
EVENT_BATCH_BYTES = 16_000
_EPOCH = struct.Struct(">I")


def epoch_context(epoch: int) -> bytes:
    """An announcement's context: the epoch (4 bytes, big endian), then 12 zero bytes."""
    return _EPOCH.pack(epoch) + bytes(CONTEXT_SIZE - _EPOCH.size)


@dataclass(frozen=True)
class Datagram:
    """A signature-checked announcement; its envelope still to be opened."""

    kind: Kind
    epoch: int
    seq: int
    envelope: bytes


def _sign(signing_key: SigningKey, envelope: bytes) -> bytes:
    data = envelope + signing_key.sign(envelope).signature
    if len(data) > MAX_DATAGRAM:
        raise LocalError(f"announcement of {len(data)} bytes is over the "
                         f"{MAX_DATAGRAM}-byte datagram limit")
    return data


def _announce_header(kind: Kind, epoch: int, seq: int) -> Header:
    return Header(Channel.ANNOUNCE, kind, Sender.AUCTIONEER, epoch_context(epoch), seq)


def encode_event(event: dict[str, Any]) -> bytes:
    """One event's JSON, ready for :func:`event_bodies`."""
    return encode_json(event)


def event_bodies(encoded: list[bytes], limit: int = EVENT_BATCH_BYTES) -> list[bytes]:
    """EVENT bodies (JSON arrays) for ``encoded`` events, in order, as few as fit in
    ``limit`` octets each; an event larger than ``limit`` goes alone in its own body."""
    bodies: list[bytes] = []
    batch: list[bytes] = []
    size = 1
    for event in encoded:
        if batch and size + len(event) + 1 > limit:
            bodies.append(b"[" + b",".join(batch) + b"]")
            batch, size = [], 1
        batch.append(event)
        size += len(event) + 1
    if batch:
        bodies.append(b"[" + b",".join(batch) + b"]")
    return bodies


def seal_event_body(signing_key: SigningKey, group_key: bytes, epoch: int, seq: int,
                    body: bytes, nonce: bytes | None = None) -> bytes:
    """An EVENT of an :func:`event_bodies` body under the group key (counter = seq),
    signed once for every event in it."""
    return _sign(signing_key, seal(group_key, _announce_header(Kind.EVENT, epoch, seq),
                                   body, nonce))


def seal_events(signing_key: SigningKey, group_key: bytes, epoch: int, seq: int,
                events: list[dict[str, Any]], nonce: bytes | None = None) -> bytes:
    """One EVENT datagram carrying ``events`` (one or more, in order)."""
    if not events:
        raise LocalError("an EVENT carries at least one event")
    return seal_event_body(signing_key, group_key, epoch, seq, encode_json(events), nonce)


def rekey_datagram(signing_key: SigningKey, epoch: int, seq: int, group_key: bytes,
                   members: list[tuple[bytes, bytes]], nonce: bytes | None = None) -> bytes:
    """The new group key boxed to each ``(public key, box key)`` in ``members``.

    Body: entries of key tag (first 8 bytes of the member's public key) | envelope (REKEY,
    same context and counter as the datagram) of the group key under the member's box key,
    so a box cannot be moved into another epoch's or another datagram's REKEY.
    """
    header = _announce_header(Kind.REKEY, epoch, seq)
    body = b"".join(public[:KEY_TAG_SIZE] + seal(key, header, group_key, nonce)
                    for public, key in members)
    return _sign(signing_key, clear(header, body))


def peek_datagram(data: bytes) -> tuple[int, int] | None:
    """``(epoch, seq)`` from an announcement's header, *unverified*: only good for dropping
    a duplicate cheaply; anything acted on must go through :func:`verify_datagram`."""
    try:
        header = peek(data)
    except ProtocolError:
        return None
    if header.channel != Channel.ANNOUNCE:
        return None
    return _EPOCH.unpack_from(header.context)[0], header.counter


def verify_datagram(data: bytes, verify_key: VerifyKey) -> Datagram:
    """Check size, the auctioneer's signature and the header; ProtocolError if any fails."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"datagram of {len(data)} bytes is over the limit")
    if len(data) < HEADER_SIZE + SIGNATURE_SIZE:
        raise ProtocolError("datagram is not an agora announcement")
    envelope, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
    header = peek(envelope)
    try:
        verify_key.verify(envelope, signature)
    except nacl.exceptions.BadSignatureError:
        raise ProtocolError("announcement is not signed by the auctioneer") from None
    if header.channel != Channel.ANNOUNCE or header.sender != Sender.AUCTIONEER or \
            header.kind not in ANNOUNCE_KINDS or any(header.context[_EPOCH.size:]):
        raise ProtocolError("signed message is not an announcement")
    return Datagram(Kind(header.kind), _EPOCH.unpack_from(header.context)[0], header.counter,
                    envelope)


def open_events(datagram: Datagram, group_key: bytes) -> list[dict[str, Any]]:
    """The events of an EVENT datagram, in order, each with the datagram's ``epoch`` and
    ``seq`` from the header; ProtocolError unless the body is a non-empty array of objects."""
    _, body = open_envelope(group_key, datagram.envelope, Channel.ANNOUNCE, Sender.AUCTIONEER,
                            {Kind.EVENT}, epoch_context(datagram.epoch))
    try:
        events = loads(body.decode("utf-8"))  # UTF-8 only, as decode_json
    except ValueError:
        raise ProtocolError("announcement is not JSON") from None
    if not isinstance(events, list) or not events or \
            not all(isinstance(e, dict) for e in events):
        raise ProtocolError("announcement is not an array of events")
    position = {"epoch": datagram.epoch, "seq": datagram.seq}
    return [{**e, **position} for e in events]


def open_rekey(datagram: Datagram, public_key: bytes, box_key: bytes) -> bytes | None:
    """This member's new group key, or None when the REKEY leaves this member out."""
    body = datagram.envelope[HEADER_SIZE:]
    if datagram.kind != Kind.REKEY or len(body) % REKEY_ENTRY:
        raise ProtocolError("rekey announcement is malformed")
    tag = public_key[:KEY_TAG_SIZE]
    context = epoch_context(datagram.epoch)
    for start in range(0, len(body), REKEY_ENTRY):
        if body[start:start + KEY_TAG_SIZE] != tag:
            continue
        try:
            header, key = open_envelope(box_key, body[start + KEY_TAG_SIZE:start + REKEY_ENTRY],
                                        Channel.ANNOUNCE, Sender.AUCTIONEER, {Kind.REKEY},
                                        context)
        except ProtocolError:
            continue  # another member's key with the same tag
        if header.counter == datagram.seq:
            return key
    return None


__all__ = [
    "Datagram", "EVENT_BATCH_BYTES", "MAX_CENTS", "REKEY_ENTRY", "REPLY_KINDS",
    "REQUEST_KINDS", "clear_error", "decode_bid", "decode_request_body", "encode_accepted",
    "encode_bid", "encode_bid_event", "encode_event", "encode_request_body", "epoch_context",
    "event_bodies", "format_money", "new_request_id", "open_events", "open_rekey",
    "open_reply", "parse_money", "peek_datagram", "rekey_datagram", "request_frames",
    "seal_event_body", "seal_events", "seal_reply", "seal_request", "verify_datagram",
]
