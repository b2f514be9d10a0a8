"""The peer-to-peer message protocol without sockets (sans-I/O): docs/PROTOCOL.md section 5.

Two pieces:

- :class:`PeerEndpoint` is one agent's side of conversation set-up. The initiator builds a
  HELLO (:meth:`~PeerEndpoint.hello`) for the listener's inbox; the listener parses it
  (:meth:`~PeerEndpoint.parse_hello`), looks the sender up in the broker's directory, and
  accepts it (:meth:`~PeerEndpoint.accept`) only if the key in the HELLO is the directory's
  key for that username; it answers WELCOME with the port of a PAIR socket for this one
  conversation. HELLO and WELCOME are sealed with NaCl Box between the two key pairs, so
  each side proves it holds the private key the directory names.
- :class:`Conversation` is the state of one conversation: one precomputed Box, a sending
  sequence number, the highest sequence number received, and the message ids recently
  seen from the peer. :meth:`~Conversation.handle` turns a PAIR message into events
  (:class:`PeerMessage`, :class:`Acked`, :class:`Closed`) and the replies (ACKs) to send.

Every message on a PAIR is ``[PEER_PROTOCOL, Box(nonce || ciphertext)]`` of::

    kind (1) | direction (1) | conversation id (16) | seq (8, big endian) | sent_at (8, double)
    MESSAGE body: message id (16) | UTF-8 text;  ACK and BYE: empty

A *letter* is a message left in the broker's offline mailbox for a collaborator who is not
listening: ``Box(sender -> recipient)`` of::

    kind LETTER (1) | message id (16) | sent_at (8, double) | len (1) | sender |
    len (1) | recipient | UTF-8 text

:meth:`PeerEndpoint.letter` seals one; :meth:`PeerEndpoint.open_letter` checks it (names,
age, and a message id never seen before, remembered for MAILBOX_TTL).

The clock is always passed in; nothing here sleeps, binds or connects.
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from agora.crypto import (
    Box,
    PrivateKey,
    b64,
    constant_time_equal,
    open_sealed,
    public_key_from_bytes,
    seal,
    unb64,
)
from agora.errors import MessageTooLarge, ProtocolError, RemoteError
from agora.protocol import (
    FRESHNESS_WINDOW,
    MAILBOX_TTL,
    MAX_PEER_TEXT,
    PEER_PROTOCOL,
    ErrorCode,
    PeerCommand,
    PeerKind,
)
from agora.wire import decode_json, encode_json, open_with_header
from agora.wire import field as body_field

HEADER = struct.Struct(">BB16sQd")
LETTER_HEADER = struct.Struct(">B16sd")
CONVERSATION_ID_SIZE = 16
MESSAGE_ID_SIZE = 16
#: Message ids remembered per peer, to recognise a retransmission through a new conversation.
RECENT_IDS_PER_PEER = 1024
MAX_USERNAME_BYTES = 64
#: Bound on remembered conversation ids (each is kept for twice the freshness window).
MAX_SEEN_HELLOS = 100_000


class Role(IntEnum):
    """Which end of the conversation a message comes from (sealed, so it cannot be reflected)."""

    INITIATOR = 0
    ACCEPTOR = 1


@dataclass(frozen=True)
class PeerMessage:
    """A message received from a peer and accepted (authentic, in order, not seen before)."""

    sender: str
    text: str
    sent_at: float
    received_at: float
    seq: int
    conversation: str

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.sender, "text": self.text, "sent_at": self.sent_at,
                "received_at": self.received_at, "seq": self.seq,
                "conversation": self.conversation}


@dataclass(frozen=True)
class Acked:
    """The peer acknowledged our message ``seq``."""

    seq: int


@dataclass(frozen=True)
class Closed:
    """The peer ended the conversation (BYE)."""


Event = PeerMessage | Acked | Closed


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of a message text; MessageTooLarge (nothing is sent) over the limit."""
    data = text.encode("utf-8")
    if len(data) > MAX_PEER_TEXT:
        raise MessageTooLarge(f"message is {len(data)} bytes; the limit is "
                              f"{MAX_PEER_TEXT // 1024} KiB")
    return data


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message text is not UTF-8") from None


class RecentIds:
    """A bounded set of message ids, oldest forgotten first."""

    def __init__(self, limit: int = RECENT_IDS_PER_PEER) -> None:
        self.limit = limit
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def add(self, msg_id: bytes) -> bool:
        """Remember ``msg_id``; False if it was already there."""
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


@dataclass
class Conversation:
    """One conversation with one peer, from this side's point of view."""

    peer: str
    peer_key: bytes
    conversation_id: bytes
    role: Role
    box: Box
    created: float
    last_active: float
    recent_ids: RecentIds = field(default_factory=RecentIds)
    send_seq: int = 0  # the last sequence number we sent
    recv_seq: int = 0  # the highest sequence number accepted from the peer
    acked: int = 0  # the highest of our sequence numbers the peer acknowledged

    @property
    def short_id(self) -> str:
        return self.conversation_id.hex()[:8]

    def _seal(self, kind: PeerKind, seq: int, body: bytes, now: float) -> list[bytes]:
        header = HEADER.pack(kind, self.role, self.conversation_id, seq, now)
        return [PEER_PROTOCOL, seal(self.box, header + body)]

    def message(self, text: str, now: float, msg_id: bytes | None = None,
                ) -> tuple[int, bytes, list[bytes]]:
        """Seal ``text`` as the next message: (seq, message id, frames).

        Pass the ``msg_id`` of an earlier attempt when retransmitting through a new
        conversation, so the receiver shows it once.
        """
        data = encode_text(text)
        msg_id = msg_id or os.urandom(MESSAGE_ID_SIZE)
        self.send_seq += 1
        self.last_active = now
        return self.send_seq, msg_id, self._seal(PeerKind.MESSAGE, self.send_seq,
                                                 msg_id + data, now)

    def bye(self, now: float) -> list[bytes]:
        self.send_seq += 1
        return self._seal(PeerKind.BYE, self.send_seq, b"", now)

    def handle(self, frames: list[bytes], now: float) -> tuple[list[Event], list[list[bytes]]]:
        """Check one PAIR message; return its events and the replies to send.

        Raises ProtocolError (drop it, keep the conversation) for anything not from the
        peer, not for this conversation, reflected, replayed, reordered or malformed.
        """
        if len(frames) != 2 or frames[0] != PEER_PROTOCOL:
            raise ProtocolError("not an agora peer message")
        (kind, direction, conversation_id, seq, sent_at), body = open_with_header(
            self.box, frames[1], HEADER, "peer message")
        if direction != 1 - self.role:  # only the other end's direction is valid here
            raise ProtocolError("message reflected back to its sender")
        if not constant_time_equal(conversation_id, self.conversation_id):
            raise ProtocolError("message belongs to another conversation")
        if kind == PeerKind.ACK:
            if not 0 < seq <= self.send_seq:
                raise ProtocolError(f"acknowledgement of message {seq}, never sent")
            self.acked = max(self.acked, seq)
            self.last_active = now
            return [Acked(seq)], []
        if kind not in (PeerKind.MESSAGE, PeerKind.BYE):
            raise ProtocolError(f"unknown peer message kind {kind}")
        # TCP keeps a conversation in order, so anything not above the highest sequence
        # number accepted is a duplicate, a replay or a reordering: a window of zero.
        if seq <= self.recv_seq:
            raise ProtocolError(f"message {seq} replayed or reordered (last accepted "
                                f"{self.recv_seq})")
        if kind == PeerKind.BYE:
            self.recv_seq = seq
            return [Closed()], []
        if len(body) < MESSAGE_ID_SIZE:
            raise ProtocolError("message has no message id")
        text = _decode_text(body[MESSAGE_ID_SIZE:])
        if not math.isfinite(sent_at):
            raise ProtocolError("message time is not a number")
        self.recv_seq = seq
        self.last_active = now
        ack = self._seal(PeerKind.ACK, seq, b"", now)
        if not self.recent_ids.add(body[:MESSAGE_ID_SIZE]):
            return [], [ack]  # a retransmission we already showed: acknowledge it only
        return [PeerMessage(self.peer, text, sent_at, now, seq, self.short_id)], [ack]


@dataclass(frozen=True)
class Hello:
    """A parsed, not yet verified, conversation request."""

    sender: str
    sender_key: bytes
    sealed: bytes


@dataclass(frozen=True)
class PendingHello:
    """What the initiator keeps between sending HELLO and receiving WELCOME."""

    peer: str
    peer_key: bytes
    conversation_id: bytes
    box: Box
    frames: list[bytes]


class PeerEndpoint:
    """One agent's side of conversation set-up. Identity comes from its own key pair."""

    def __init__(self, username: str, private_key: PrivateKey,
                 hello_window: float = FRESHNESS_WINDOW) -> None:
        self.username = username
        self.private_key = private_key
        self.public_key = bytes(private_key.public_key)
        self.hello_window = hello_window
        #: Conversation ids accepted recently (expiry time): a replayed HELLO is refused.
        self._seen_hellos: OrderedDict[bytes, float] = OrderedDict()
        self._recent_ids: dict[str, RecentIds] = {}
        #: Letter ids accepted (hex -> sent_at), kept MAILBOX_TTL; the shell persists it.
        self.seen_letters: dict[str, float] = {}

    def _recent(self, peer: str) -> RecentIds:
        # Shared by all conversations with one peer, so a retransmission that arrives on a
        # new conversation (the old one went stale) is still recognised.
        return self._recent_ids.setdefault(peer, RecentIds())

    # -- initiator --------------------------------------------------------------------------

    def hello(self, peer: str, peer_key: bytes, now: float) -> PendingHello:
        box = Box(self.private_key, public_key_from_bytes(peer_key))
        conversation_id = os.urandom(CONVERSATION_ID_SIZE)
        sealed = seal(box, encode_json({"from": self.username, "to": peer,
                                        "conversation": b64(conversation_id), "ts": now}))
        frames = [PEER_PROTOCOL, PeerCommand.HELLO.value, self.username.encode("utf-8"),
                  self.public_key, sealed]
        return PendingHello(peer, peer_key, conversation_id, box, frames)

    def welcome_received(self, pending: PendingHello, frames: list[bytes], now: float,
                         ) -> tuple[Conversation, int]:
        """Check the listener's answer; return the conversation and its PAIR port.

        Raises RemoteError for a REFUSE, ProtocolError for anything not sealed by the peer.
        """
        if len(frames) < 2 or frames[0] != PEER_PROTOCOL:
            raise ProtocolError("answer to HELLO is not an agora peer message")
        if frames[1] == PeerCommand.REFUSE.value and len(frames) == 3:
            body = decode_json(frames[2])
            raise RemoteError(str(body.get("code", "internal")),
                              f"{pending.peer} refused the conversation: "
                              f"{str(body.get('message', ''))[:200]}")
        if frames[1] != PeerCommand.WELCOME.value or len(frames) != 3:
            raise ProtocolError("answer to HELLO is neither WELCOME nor REFUSE")
        body = decode_json(open_sealed(pending.box, frames[2]))
        conversation_id = unb64(body_field(body, "conversation", str), CONVERSATION_ID_SIZE)
        if not constant_time_equal(conversation_id, pending.conversation_id):
            raise ProtocolError("WELCOME answers another conversation")
        port = body_field(body, "port", int)
        if not 0 < port < 65536:
            raise ProtocolError("WELCOME port out of range")
        conversation = Conversation(pending.peer, pending.peer_key, conversation_id,
                                    Role.INITIATOR, pending.box, now, now,
                                    self._recent(pending.peer))
        return conversation, port

    # -- listener ---------------------------------------------------------------------------

    @staticmethod
    def parse_hello(frames: list[bytes]) -> Hello:
        """Split a HELLO (routing identity removed); cheap checks only, before any look-up."""
        if len(frames) != 5 or frames[0] != PEER_PROTOCOL:
            raise ProtocolError("not an agora conversation request")
        if frames[1] != PeerCommand.HELLO.value:
            raise ProtocolError("unexpected command on the inbox")
        raw_name, key, sealed = frames[2], frames[3], frames[4]
        if not 0 < len(raw_name) <= MAX_USERNAME_BYTES:
            raise ProtocolError("username length out of range")
        try:
            sender = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("username is not UTF-8") from None
        public_key_from_bytes(key)
        return Hello(sender, key, sealed)

    def accept(self, hello: Hello, directory_key: bytes, now: float) -> Conversation:
        """Verify a HELLO against the key the directory holds for its sender.

        Raises RemoteError (refuse, with a reason the initiator may see) or ProtocolError.
        """
        if not constant_time_equal(hello.sender_key, directory_key):
            raise RemoteError(ErrorCode.BAD_CREDENTIALS, f"the key presented is not "
                              f"{hello.sender}'s key in the directory")
        box = Box(self.private_key, public_key_from_bytes(hello.sender_key))
        body = decode_json(open_sealed(box, hello.sealed))
        if body.get("from") != hello.sender or body.get("to") != self.username:
            raise ProtocolError("HELLO names another sender or recipient")
        ts = body_field(body, "ts", (int, float))
        if not abs(now - ts) <= self.hello_window:
            raise RemoteError(ErrorCode.STALE, "conversation request is too old or in the "
                              "future (check the clock)")
        conversation_id = unb64(body_field(body, "conversation", str), CONVERSATION_ID_SIZE)
        self._purge_hellos(now)
        if conversation_id in self._seen_hellos:
            raise RemoteError(ErrorCode.REPLAYED, "conversation request replayed")
        self._seen_hellos[conversation_id] = now + 2 * self.hello_window
        while len(self._seen_hellos) > MAX_SEEN_HELLOS:
            self._seen_hellos.popitem(last=False)
        return Conversation(hello.sender, hello.sender_key, conversation_id, Role.ACCEPTOR,
                            box, now, now, self._recent(hello.sender))

    def _purge_hellos(self, now: float) -> None:
        while self._seen_hellos:
            conversation_id, expiry = next(iter(self._seen_hellos.items()))
            if expiry >= now:
                break
            del self._seen_hellos[conversation_id]

    # -- letters (offline mailbox) ----------------------------------------------------------

    def letter(self, recipient: str, recipient_key: bytes, text: str, now: float,
               msg_id: bytes | None = None) -> bytes:
        """Seal ``text`` for ``recipient``'s mailbox; only they can open it, only from us."""
        data = encode_text(text)
        box = Box(self.private_key, public_key_from_bytes(recipient_key))
        return seal(box, LETTER_HEADER.pack(PeerKind.LETTER, msg_id or os.urandom(
            MESSAGE_ID_SIZE), now) + _name(self.username) + _name(recipient) + data)

    def open_letter(self, sender: str, sender_key: bytes, sealed: bytes, now: float,
                    ) -> PeerMessage | None:
        """Check a letter the broker says ``sender`` left; None if already shown.

        ``sender_key`` comes from the directory: a letter the broker (or anyone) attributes
        to the wrong sender does not open. Raises ProtocolError for a letter that is
        forged, for someone else, too old to be checked for replay, or replayed.
        """
        plain = open_sealed(Box(self.private_key, public_key_from_bytes(sender_key)), sealed)
        if len(plain) < LETTER_HEADER.size + 2:
            raise ProtocolError("letter too short")
        kind, msg_id, sent_at = LETTER_HEADER.unpack_from(plain)
        if kind != PeerKind.LETTER:
            raise ProtocolError("not a letter")
        named_sender, rest = _unname(plain[LETTER_HEADER.size:])
        named_recipient, data = _unname(rest)
        if named_sender != sender or named_recipient != self.username:
            raise ProtocolError("letter names another sender or recipient")
        if not (math.isfinite(sent_at)
                and now - MAILBOX_TTL <= sent_at <= now + self.hello_window):
            raise ProtocolError("letter is too old (or from the future) to check for replay")
        text = _decode_text(data)
        self._forget_letters(now)
        if msg_id.hex() in self.seen_letters:
            raise ProtocolError("letter replayed")
        self.seen_letters[msg_id.hex()] = sent_at
        if not self._recent(sender).add(msg_id):
            return None  # it came through a conversation already
        return PeerMessage(sender, text, sent_at, now, 0, "mailbox")

    def _forget_letters(self, now: float) -> None:
        # Older letters are refused by age, so their ids need not be remembered.
        for key in [k for k, t in self.seen_letters.items() if t < now - MAILBOX_TTL]:
            del self.seen_letters[key]

    @staticmethod
    def welcome(conversation: Conversation, port: int, now: float) -> list[bytes]:
        return [PEER_PROTOCOL, PeerCommand.WELCOME.value, seal(conversation.box, encode_json(
            {"conversation": b64(conversation.conversation_id), "port": port, "ts": now}))]

    @staticmethod
    def refuse(code: ErrorCode, message: str) -> list[bytes]:
        return [PEER_PROTOCOL, PeerCommand.REFUSE.value,
                encode_json({"code": code.value, "message": message})]


def _name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > MAX_USERNAME_BYTES:
        raise ProtocolError("username too long")
    return bytes([len(raw)]) + raw


def _unname(data: bytes) -> tuple[str, bytes]:
    if not data or len(data) < 1 + data[0]:
        raise ProtocolError("letter is truncated")
    end = 1 + data[0]
    try:
        return data[1:end].decode("utf-8"), data[end:]
    except UnicodeDecodeError:
        raise ProtocolError("name in letter is not UTF-8") from None
