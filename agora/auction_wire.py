"""Wire code shared by the auctioneer and its bidders (docs/PROTOCOL.md, section 6).

No sockets. Three things live here:

- **money**: integer cents everywhere; :func:`parse_money` reads item files and the command
  line (a Decimal string such as ``"12.50"`` or an integer count of cents, never a float);
- **requests** on the auctioneer's ROUTER: ``[AGORA01A, command, bidder key, Box]`` and
  replies ``[AGORA01A, command, status, body]``, where the body is Box-sealed JSON whenever
  the request proved its key, and plain JSON ``{"code", "message"}`` only when it did not;
- **announcements**: one datagram, the same bytes on UDP multicast and on the PUB mirror::

      magic "AGORA01M" (8) | type (1) | epoch (4, BE) | seq (8, BE) | Ed25519 signature (64)
      | payload

  The signature covers everything but itself (header and payload), so a member, who holds
  the group key, still cannot forge one. ``SEALED`` payloads are SecretBox(group key) of a
  JSON event; ``REKEY`` payloads are JSON ``{"epoch", "keys": {fingerprint: Box}}`` carrying
  the epoch's new group key to each remaining member.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import nacl.exceptions

from agora.crypto import (
    Box,
    PrivateKey,
    PublicKey,
    SecretBox,
    SigningKey,
    VerifyKey,
    b64,
    fingerprint,
    open_sealed,
    seal,
    unb64,
)
from agora.errors import LocalError, ProtocolError, RemoteError
from agora.protocol import (
    ANNOUNCEMENT_MAGIC,
    AUCTION_PROTOCOL,
    MAX_DATAGRAM,
    AuctionCommand,
    EnvelopeType,
    ErrorCode,
    Status,
)
from agora.wire import decode_json, encode_json, remote_error

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

def request_frames(command: AuctionCommand, public_key: bytes, sealed: bytes) -> list[bytes]:
    return [AUCTION_PROTOCOL, command.value, public_key, sealed]


def parse_request(frames: list[bytes]) -> tuple[AuctionCommand, bytes, bytes]:
    """``(command, bidder public key, sealed body)``; ProtocolError for anything else."""
    if len(frames) != 4 or frames[0] != AUCTION_PROTOCOL:
        raise ProtocolError("not an agora auction request")
    try:
        command = AuctionCommand(frames[1])
    except ValueError:
        raise ProtocolError("unknown auction command") from None
    if len(frames[2]) != 32:
        raise ProtocolError("bidder public key must be 32 bytes")
    return command, frames[2], frames[3]


def reply_frames(command: AuctionCommand | None, status: Status, body: bytes) -> list[bytes]:
    return [AUCTION_PROTOCOL, command.value if command else b"\x00", status.value, body]


def plain_error(command: AuctionCommand | None, code: ErrorCode, message: str) -> list[bytes]:
    """A refusal to a request that did not prove its key: nothing in it is secret."""
    return reply_frames(command, Status.ERROR, encode_json({"code": code.value,
                                                            "message": message}))


def sealed_reply(box: Box, command: AuctionCommand, status: Status,
                 body: dict[str, Any]) -> list[bytes]:
    return reply_frames(command, status, seal(box, encode_json(body)))


def open_reply(frames: list[bytes], command: AuctionCommand, box: Box) -> dict[str, Any]:
    """The auctioneer's answer, proven to come from it (Box); RemoteError for a refusal.

    A refusal that does not open with the Box is an unauthenticated one (the auctioneer
    could not tell who asked); it is reported as such, never mistaken for an answer.
    """
    if len(frames) != 4 or frames[0] != AUCTION_PROTOCOL:
        raise ProtocolError("auctioneer reply is not an agora auction message")
    status = frames[2]
    if status == Status.OK.value:
        if frames[1] != command.value:
            raise ProtocolError("auctioneer reply does not match the request")
        return decode_json(open_sealed(box, frames[3]))
    if status != Status.ERROR.value:
        raise ProtocolError("auctioneer reply has an unknown status")
    try:
        raise remote_error(open_sealed(box, frames[3]))
    except ProtocolError:
        error = remote_error(frames[3])
        raise RemoteError(error.code, f"{error.message} (unauthenticated refusal)") from None


# -- announcements --------------------------------------------------------------------------

_HEAD = struct.Struct(">8sBIQ")
SIGNATURE_SIZE = 64
HEADER_SIZE = _HEAD.size + SIGNATURE_SIZE


@dataclass(frozen=True)
class Datagram:
    """A verified announcement: header fields and the still-protected payload."""

    type: EnvelopeType
    epoch: int
    seq: int
    payload: bytes


def sign_datagram(signing_key: SigningKey, type_: EnvelopeType, epoch: int, seq: int,
                  payload: bytes) -> bytes:
    head = _HEAD.pack(ANNOUNCEMENT_MAGIC, type_, epoch, seq)
    data = head + signing_key.sign(head + payload).signature + payload
    if len(data) > MAX_DATAGRAM:
        raise LocalError(f"announcement of {len(data)} bytes is over the "
                         f"{MAX_DATAGRAM}-byte datagram limit")
    return data


def peek_datagram(data: bytes) -> tuple[int, int] | None:
    """``(epoch, seq)`` from an announcement's header, *unverified*: only good for dropping
    a duplicate cheaply; anything acted on must go through :func:`verify_datagram`."""
    if len(data) < HEADER_SIZE or not data.startswith(ANNOUNCEMENT_MAGIC):
        return None
    _, _, epoch, seq = _HEAD.unpack_from(data)
    return epoch, seq


def verify_datagram(data: bytes, verify_key: VerifyKey) -> Datagram:
    """Check size, magic and the auctioneer's signature; ProtocolError if any fails."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"datagram of {len(data)} bytes is over the limit")
    if len(data) < HEADER_SIZE or not data.startswith(ANNOUNCEMENT_MAGIC):
        raise ProtocolError("datagram is not an agora announcement")
    magic, type_, epoch, seq = _HEAD.unpack_from(data)
    signature = data[_HEAD.size:HEADER_SIZE]
    payload = data[HEADER_SIZE:]
    try:
        verify_key.verify(data[:_HEAD.size] + payload, signature)
    except nacl.exceptions.BadSignatureError:
        raise ProtocolError("announcement is not signed by the auctioneer") from None
    try:
        kind = EnvelopeType(type_)
    except ValueError:
        raise ProtocolError("announcement has an unknown envelope type") from None
    return Datagram(kind, epoch, seq, payload)


def seal_event(signing_key: SigningKey, group_box: SecretBox, epoch: int, seq: int,
               event: dict[str, Any]) -> bytes:
    """Encrypt an event under the group key, then sign the whole datagram."""
    body = dict(event, epoch=epoch, seq=seq)
    return sign_datagram(signing_key, EnvelopeType.SEALED, epoch, seq,
                         seal(group_box, encode_json(body)))


def open_event(datagram: Datagram, group_box: SecretBox) -> dict[str, Any]:
    event = decode_json(open_sealed(group_box, datagram.payload))
    if event.get("epoch") != datagram.epoch or event.get("seq") != datagram.seq:
        raise ProtocolError("announcement body does not match its header")
    return event


def rekey_datagram(signing_key: SigningKey, private_key: PrivateKey, epoch: int, seq: int,
                   group_key: bytes, members: list[bytes]) -> bytes:
    """The new group key, Box-encrypted (auctioneer -> member) to each member in ``members``.

    The epoch is inside each box, so a box cannot be moved into another epoch's message.
    """
    secret = struct.pack(">I", epoch) + group_key
    keys = {fingerprint(m): b64(seal(Box(private_key, PublicKey(m)), secret)) for m in members}
    return sign_datagram(signing_key, EnvelopeType.REKEY, epoch, seq,
                         encode_json({"kind": "rekey", "epoch": epoch, "seq": seq,
                                      "keys": keys}))


def open_rekey(datagram: Datagram, box: Box, public_key: bytes) -> bytes | None:
    """This member's new group key, or None when the message leaves this member out."""
    body = decode_json(datagram.payload)
    keys = body.get("keys")
    if body.get("epoch") != datagram.epoch or not isinstance(keys, dict):
        raise ProtocolError("rekey announcement is malformed")
    entry = keys.get(fingerprint(public_key))
    if entry is None:
        return None
    secret = open_sealed(box, unb64(entry if isinstance(entry, str) else ""))
    if len(secret) != 4 + SecretBox.KEY_SIZE or struct.unpack(">I", secret[:4])[0] != \
            datagram.epoch:
        raise ProtocolError("rekey box is for another epoch")
    return secret[4:]


__all__ = [
    "Datagram", "HEADER_SIZE", "MAX_CENTS", "format_money", "open_event", "open_rekey",
    "open_reply", "parse_money", "parse_request", "peek_datagram", "plain_error", "rekey_datagram",
    "reply_frames", "request_frames", "seal_event", "sealed_reply", "sign_datagram",
    "verify_datagram",
]
