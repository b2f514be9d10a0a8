"""The peer-to-peer message protocol without sockets (sans-I/O): docs/PROTOCOL.md section 5.

Every sealed peer message is one AGORA/2 envelope (:mod:`agora.envelope`) under the box key
of the two agents' key pairs, computed once per peer (:meth:`PeerEndpoint.key_for`) and kept.

- :class:`PeerEndpoint` is one agent's side of conversation set-up on the listener's inbox.
  The initiator builds a HELLO (:meth:`~PeerEndpoint.hello`); the listener splits it
  (:meth:`~PeerEndpoint.parse_hello`), looks the sender up in the broker's directory and
  accepts it (:meth:`~PeerEndpoint.accept`) only if the key it presents is the directory's
  key, the envelope opens under it, it names both agents, is fresh and was never seen. Its
  answer is WELCOME (the port of a PAIR for this one conversation) or a refusal: sealed
  (Kind.REFUSED) once the HELLO proved its key, clear (Kind.ERROR) before.
- :class:`Conversation` is the state of one conversation: its key, a sending sequence
  number, a :class:`~agora.envelope.ReplayGuard` with window 0 over the peer's sequence
  numbers (TCP keeps a conversation in order) and the message ids recently seen from the
  peer. :meth:`~Conversation.receive` checks a PAIR message and gives the ACK to send at
  once; :meth:`~Conversation.settle` then turns it into events (:class:`PeerMessage`,
  :class:`Acked`, :class:`Closed`); :meth:`~Conversation.handle` does both.
- Letters, for the broker's offline mailbox: :meth:`PeerEndpoint.letter` seals one,
  :meth:`PeerEndpoint.open_letter` checks it (names, age, an id never seen before).

Frames (no ZeroMQ routing frames, no empty delimiter)::

    HELLO       [sender username, sender public key, envelope]   (two clear key hints)
    WELCOME, REFUSED, ERROR, MESSAGE, ACK, BYE, and a letter: [envelope]

Envelope headers (channel, kind, sender, context, counter) and bodies::

    HELLO    PEER  HELLO    INITIATOR conversation id  ms timestamp  name(sender) name(listener)
    WELCOME  PEER  WELCOME  ACCEPTOR  conversation id  HELLO's       port (u16)
    REFUSED  PEER  REFUSED  ACCEPTOR  conversation id  HELLO's       JSON {"code","message"}
    ERROR    PEER  ERROR    ACCEPTOR  HELLO's or 0s    HELLO's or 0  JSON, in clear
    MESSAGE  PEER  MESSAGE  own role  conversation id  seq           id (16) sent_at ms (u64) text
    ACK      PEER  ACK      own role  conversation id  acked seq     empty
    BYE      PEER  BYE      own role  conversation id  seq           empty
    letter   LETTER LETTER  INITIATOR message id       ms timestamp  name(sender) name(to) text

    name(x) = len (u8, 1-64) | UTF-8 username

The clock is always passed in; nothing here sleeps, binds or connects.
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agora.crypto import constant_time_equal
from agora.envelope import (
    CONTEXT_SIZE,
    NO_CONTEXT,
    Header,
    ReplayGuard,
    box_key,
    clear,
    header_prefix,
    is_fresh,
    open_clear,
    open_envelope,
    open_prefixed,
    peek,
    public_key,
    seal,
    seal_prefixed,
    timestamp_counter,
)
from agora.errors import (
    LocalError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.protocol import (
    FRESHNESS_WINDOW,
    MAILBOX_TTL,
    MAX_MESSAGE_SIZE,
    MAX_PEER_TEXT,
    Channel,
    ErrorCode,
    Kind,
    Sender,
)
from agora.wire import encode_refusal, refusal_fields

CONVERSATION_ID_SIZE = CONTEXT_SIZE
MESSAGE_ID_SIZE = 16
#: message id (16) | sent_at in ms (u64): the fixed start of a MESSAGE body.
MESSAGE_HEAD = struct.Struct(">16sQ")
PORT = struct.Struct(">H")
#: Message ids remembered per peer, to recognise a retransmission through a new conversation.
RECENT_IDS_PER_PEER = 1024
MAX_USERNAME_BYTES = 64
#: Bound on remembered HELLOs (each is kept for twice the freshness window).
MAX_SEEN_HELLOS = 100_000
#: Box keys kept (one per peer key); the least recently used is recomputed when needed.
MAX_BOX_KEYS = 4096
#: Roles on a conversation: ours -> the one that must have sealed what we receive.
OTHER = {Sender.INITIATOR: Sender.ACCEPTOR, Sender.ACCEPTOR: Sender.INITIATOR}
# Plain ints on the hot path (an IntEnum member costs an attribute look-up and a hash).
_PEER, _MESSAGE, _ACK, _BYE = int(Channel.PEER), int(Kind.MESSAGE), int(Kind.ACK), int(Kind.BYE)
_PAIR_KINDS = frozenset({_MESSAGE, _ACK, _BYE})
_ANSWER_KINDS = frozenset({Kind.WELCOME, Kind.REFUSED})


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


class Arrival(NamedTuple):
    """A PAIR message :meth:`Conversation.receive` accepted, for :meth:`Conversation.settle`
    (the fields of a MESSAGE; only ``kind``, ``seq`` and ``at`` for an ACK or a BYE)."""

    kind: int
    seq: int
    msg_id: bytes
    sent_at: int  # ms, as the sender's clock said
    text: str
    at: float  # when it was received


class Refused(RemoteError):
    """The listener refuses a HELLO; ``frames`` is the answer to send (sealed REFUSED once
    the HELLO proved its key, clear ERROR before)."""

    def __init__(self, code: ErrorCode, message: str, frames: list[bytes]) -> None:
        super().__init__(code, message)
        self.frames = frames


# -- bodies (docs/PROTOCOL.md 5.3, 5.4, 5.7; vectors in docs/vectors/peer.json, letter.json) --

def encode_text(text: str) -> bytes:
    """UTF-8 bytes of a message text; MessageTooLarge (nothing is sent) over the limit, and
    LocalError for text that is not Unicode (lone surrogates: a command line's bad UTF-8)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalError("the message is not text (it holds bytes that are not UTF-8)") from None
    if len(data) > MAX_PEER_TEXT:
        raise MessageTooLarge(f"message is {len(data)} bytes; the limit is "
                              f"{MAX_PEER_TEXT // 1024} KiB")
    return data


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message text is not UTF-8") from None


def _name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_USERNAME_BYTES:
        raise ProtocolError("username must be 1-64 bytes")
    return bytes([len(raw)]) + raw


def _unname(data: bytes) -> tuple[str, bytes]:
    if not data or not 0 < data[0] <= MAX_USERNAME_BYTES or len(data) < 1 + data[0]:
        raise ProtocolError("name is truncated or out of range")
    end = 1 + data[0]
    try:
        return data[1:end].decode("utf-8"), data[end:]
    except UnicodeDecodeError:
        raise ProtocolError("name is not UTF-8") from None


def encode_names(sender: str, recipient: str) -> bytes:
    """The HELLO body, and the start of a letter's: who writes to whom."""
    return _name(sender) + _name(recipient)


def decode_names(body: bytes) -> tuple[str, str, bytes]:
    """(sender, recipient, what follows) of a HELLO or letter body."""
    sender, rest = _unname(body)
    recipient, rest = _unname(rest)
    return sender, recipient, rest


def encode_welcome(port: int) -> bytes:
    return PORT.pack(port)


def decode_welcome(body: bytes) -> int:
    if len(body) != PORT.size or not (port := PORT.unpack(body)[0]):
        raise ProtocolError("WELCOME body is not a port")
    return port


def encode_message(msg_id: bytes, sent_at_ms: int, text: bytes) -> bytes:
    return MESSAGE_HEAD.pack(msg_id, sent_at_ms) + text


def decode_message(body: bytes) -> tuple[bytes, int, str]:
    """(message id, sent_at in ms, text) of a MESSAGE body."""
    if len(body) < MESSAGE_HEAD.size:
        raise ProtocolError("message has no message id")
    msg_id, sent_at = MESSAGE_HEAD.unpack_from(body)
    return msg_id, sent_at, _decode_text(body[MESSAGE_HEAD.size:])


def encode_letter(sender: str, recipient: str, text: bytes) -> bytes:
    return encode_names(sender, recipient) + text


def decode_letter(body: bytes) -> tuple[str, str, str]:
    sender, recipient, rest = decode_names(body)
    return sender, recipient, _decode_text(rest)


# -- conversations ------------------------------------------------------------------------------

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
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


def _conversation_guard() -> ReplayGuard:
    # One context (this conversation), window 0: TCP keeps a conversation in order, so a
    # sequence number not above the highest accepted is a duplicate, replay or reordering.
    return ReplayGuard(ttl=math.inf, max_contexts=1, window=0)


@dataclass(eq=False)
class Conversation:
    """One conversation with one peer, from this side's point of view."""

    peer: str
    peer_key: bytes
    conversation_id: bytes
    role: Sender  # ours: INITIATOR or ACCEPTOR
    key: bytes  # the box key of the two key pairs
    created: float
    last_active: float
    recent_ids: RecentIds = field(default_factory=RecentIds)
    send_seq: int = 0  # the last sequence number we sent
    acked: int = 0  # the highest of our sequence numbers the peer acknowledged
    received: int = 0  # messages (MESSAGE, BYE) accepted from the peer
    guard: ReplayGuard = field(default_factory=_conversation_guard)
    #: (sequence number, its ACK sealed ahead of time by settle()), or None.
    _next_ack: tuple[int, bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._me, self._other = int(self.role), int(OTHER[self.role])
        self.short_id = self.conversation_id.hex()[:8]
        # Headers packed once (all but the counter): what we seal, by kind, and what the
        # peer must have sealed, by the kind octet an incoming envelope claims.
        cid = self.conversation_id
        self._out_message, self._out_ack, self._out_bye = (
            header_prefix(_PEER, kind, self._me, cid) for kind in (_MESSAGE, _ACK, _BYE))
        self._expected = {kind: header_prefix(_PEER, kind, self._other, cid)
                          for kind in _PAIR_KINDS}

    def _seal(self, kind: int, counter: int, body: bytes) -> bytes:
        return seal(self.key, Header(_PEER, kind, self._me, self.conversation_id, counter), body)

    def message(self, text: str, now: float, msg_id: bytes | None = None,
                ) -> tuple[int, bytes, list[bytes]]:
        """Seal ``text`` as the next message: (seq, message id, frames).

        Pass the ``msg_id`` of an earlier attempt when retransmitting through a new
        conversation, so the receiver shows it once.
        """
        data = encode_text(text)
        msg_id = msg_id or os.urandom(MESSAGE_ID_SIZE)
        seq = self.send_seq = self.send_seq + 1
        self.last_active = now
        body = encode_message(msg_id, int(now * 1000), data)
        return seq, msg_id, [seal_prefixed(self.key, self._out_message, seq, body)]

    def bye(self, now: float) -> list[bytes]:
        self.send_seq += 1
        return [seal_prefixed(self.key, self._out_bye, self.send_seq, b"")]

    def handle(self, frames: list[bytes], now: float) -> tuple[list[Event], list[list[bytes]]]:
        """Check one PAIR message; return its events and the replies to send: exactly
        :meth:`receive` then :meth:`settle`, for callers with nothing to do in between.

        Raises ProtocolError (drop it, keep the conversation) for anything not from the
        peer, not for this conversation, reflected, replayed, reordered or malformed.
        """
        ack, arrival = self.receive(frames, now)
        return self.settle(arrival), [] if ack is None else [[ack]]

    def receive(self, frames: list[bytes], now: float) -> tuple[bytes | None, Arrival]:
        """Check one PAIR message: (the ACK to send for it now or None, what arrived).

        Only what must come before the ACK is done here (authenticate, decode, admit the
        sequence number), so a sender waiting for it waits for nothing else; pass the
        arrival to :meth:`settle` once the ACK is sent. ProtocolError as :meth:`handle`.
        """
        if len(frames) != 1:
            raise ProtocolError("a conversation message is one frame")
        data = frames[0]
        if len(data) > MAX_MESSAGE_SIZE:
            raise ProtocolError("message is over the size limit")
        # The kind octet (not yet authenticated) only chooses which header to expect: the
        # whole header must then be that one, and the tag authenticates it.
        expected = self._expected.get(data[4]) if len(data) > 4 else None
        opened = None if expected is None else open_prefixed(self.key, data, expected)
        if opened is None:  # not a header this conversation expects: the full checks say why
            header, body = open_envelope(self.key, data, _PEER, self._other, _PAIR_KINDS,
                                         self.conversation_id)
            seq = header.counter
        else:
            seq, body = opened
        kind = data[4]
        if kind == _ACK:
            # Idempotent, so no replay memory: a replayed ACK moves nothing.
            if not 0 < seq <= self.send_seq:
                raise ProtocolError(f"acknowledgement of message {seq}, never sent")
            if seq > self.acked:
                self.acked = seq
            self.last_active = now
            return None, Arrival(_ACK, seq, b"", 0, "", now)
        msg_id, sent_at, text = decode_message(body) if kind == _MESSAGE else (b"", 0, "")
        if not self.guard.admit(self.conversation_id, seq, now):
            raise ProtocolError(f"message {seq} replayed or reordered")
        self.received += 1
        self.last_active = now
        if kind == _BYE:
            return None, Arrival(_BYE, seq, b"", 0, "", now)
        ready, self._next_ack = self._next_ack, None
        ack = ready[1] if ready is not None and ready[0] == seq else self._ack(seq)
        return ack, Arrival(_MESSAGE, seq, msg_id, sent_at, text, now)

    def settle(self, arrival: Arrival) -> list[Event]:
        """What an arrival from :meth:`receive` means: a :class:`PeerMessage` (none for a
        retransmission already shown, which was acknowledged all the same), :class:`Acked`
        or :class:`Closed`. After a MESSAGE it seals the ACK of the next sequence number
        ahead of time, so the next message's ACK goes out without a seal; it is kept
        unsent until that message is authenticated and admitted (PROTOCOL.md 5.4)."""
        kind, seq = arrival.kind, arrival.seq
        if kind == _ACK:
            return [Acked(seq)]
        if kind == _BYE:
            return [Closed()]
        self._next_ack = (seq + 1, self._ack(seq + 1))
        if not self.recent_ids.add(arrival.msg_id):
            return []  # a retransmission we already showed: acknowledged only
        return [PeerMessage(self.peer, arrival.text, arrival.sent_at / 1000, arrival.at, seq,
                            self.short_id)]

    def _ack(self, seq: int) -> bytes:
        return seal_prefixed(self.key, self._out_ack, seq, b"")


# -- set-up -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    """A split HELLO whose key hint is a usable key; not yet checked against the directory."""

    sender: str
    sender_key: bytes
    envelope: bytes
    header: Header
    key: bytes  # the box key with sender_key: kept only once the directory vouched for it


@dataclass(frozen=True)
class PendingHello:
    """What the initiator keeps between sending HELLO and receiving the answer."""

    peer: str
    peer_key: bytes
    conversation_id: bytes
    counter: int
    key: bytes
    frames: list[bytes]


class PeerEndpoint:
    """One agent's side of conversation set-up and letters. Identity: its own key pair."""

    def __init__(self, username: str, private_key: Any,
                 hello_window: float = FRESHNESS_WINDOW) -> None:
        self.username = username
        self._secret = bytes(private_key)
        self.public_key = bytes(private_key.public_key)
        self.hello_window = hello_window
        #: HELLOs accepted recently (context = conversation id, counter = its timestamp);
        #: only HELLOs that authenticated, are fresh and match the directory enter it.
        self.hellos = ReplayGuard(ttl=2 * hello_window, max_contexts=MAX_SEEN_HELLOS)
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent_ids: dict[str, RecentIds] = {}
        #: Letter ids accepted (hex -> sent_at), kept MAILBOX_TTL; the shell persists it.
        self.seen_letters: dict[str, float] = {}

    def key_for(self, peer_key: bytes) -> bytes:
        """The box key with ``peer_key`` (BadKey for an unusable key): computed once per
        peer and kept. Call it only with a key the directory vouched for."""
        key = self._keys.get(peer_key)
        if key is None:
            key = box_key(self._secret, peer_key)
        self._remember(peer_key, key)
        return key

    def _remember(self, peer_key: bytes, key: bytes) -> None:
        self._keys[peer_key] = key
        self._keys.move_to_end(peer_key)
        if len(self._keys) > MAX_BOX_KEYS:
            self._keys.popitem(last=False)

    def _recent(self, peer: str) -> RecentIds:
        # Shared by all conversations with one peer, so a retransmission that arrives on a
        # new conversation (the old one went stale) is still recognised.
        return self._recent_ids.setdefault(peer, RecentIds())

    # -- initiator --------------------------------------------------------------------------

    def hello(self, peer: str, peer_key: bytes, now: float) -> PendingHello:
        """A HELLO for ``peer`` (``peer_key`` from the directory), and what to keep."""
        key = self.key_for(peer_key)
        conversation_id = os.urandom(CONVERSATION_ID_SIZE)
        counter = timestamp_counter(now)
        envelope = seal(key, Header(Channel.PEER, Kind.HELLO, Sender.INITIATOR,
                                    conversation_id, counter), encode_names(self.username, peer))
        frames = [self.username.encode("utf-8"), self.public_key, envelope]
        return PendingHello(peer, peer_key, conversation_id, counter, key, frames)

    def welcome_received(self, pending: PendingHello, frames: list[bytes], now: float,
                         ) -> tuple[Conversation, int]:
        """Check the listener's answer; return the conversation and its PAIR port.

        Raises RemoteError for a sealed refusal, UnauthenticatedRefusal for a clear one
        (anyone could have sent it: report it, never act on it), ProtocolError for anything
        else not sealed by the peer for this HELLO.
        """
        if len(frames) != 1:
            raise ProtocolError("answer to HELLO is not one frame")
        data = frames[0]
        if peek(data).kind == Kind.ERROR:
            _, body = open_clear(data, Channel.PEER, Sender.ACCEPTOR, {Kind.ERROR})
            code, message = refusal_fields(body)
            raise UnauthenticatedRefusal(code, f"{pending.peer} refused the conversation: "
                                         f"{message}")
        header, body = open_envelope(pending.key, data, Channel.PEER, Sender.ACCEPTOR,
                                     _ANSWER_KINDS, pending.conversation_id)
        if header.counter != pending.counter:
            raise ProtocolError("answer is for another HELLO")
        if header.kind == Kind.REFUSED:
            code, message = refusal_fields(body)
            raise RemoteError(code, f"{pending.peer} refused the conversation: {message}")
        port = decode_welcome(body)
        conversation = Conversation(pending.peer, pending.peer_key, pending.conversation_id,
                                    Sender.INITIATOR, pending.key, now, now,
                                    self._recent(pending.peer))
        return conversation, port

    # -- listener ---------------------------------------------------------------------------

    @staticmethod
    def refuse(code: ErrorCode, message: str, context: bytes = NO_CONTEXT,
               counter: int = 0) -> list[bytes]:
        """A clear refusal (Kind.ERROR), for a HELLO that did not prove its key."""
        return [clear(Header(Channel.PEER, Kind.ERROR, Sender.ACCEPTOR, context, counter),
                      encode_refusal(code, message))]

    def parse_hello(self, frames: list[bytes]) -> Hello:
        """Split a HELLO (routing identity removed); cheap checks only, before any look-up.

        ProtocolError (answer a clear ``bad-request``) for anything that is not a HELLO with
        a usable key hint: BadKey for a malformed, all-zero or low-order key.
        """
        if len(frames) != 3:
            if frames and frames[0] == b"":
                raise ProtocolError("the inbox takes no empty delimiter frame (use a DEALER)")
            raise ProtocolError("a conversation request is three frames")
        raw_name, key, envelope = frames
        if sum(map(len, frames)) > MAX_MESSAGE_SIZE:
            raise ProtocolError("conversation request is over the size limit")
        if not 0 < len(raw_name) <= MAX_USERNAME_BYTES:
            raise ProtocolError("username length out of range")
        try:
            sender = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("username is not UTF-8") from None
        header = peek(envelope)
        if (header.channel, header.kind, header.sender) != (Channel.PEER, Kind.HELLO,
                                                             Sender.INITIATOR):
            raise ProtocolError("not a conversation request")
        public_key(key)
        # A low-order key is refused here, before any look-up.
        shared = self._keys.get(key) or box_key(self._secret, key)
        return Hello(sender, key, envelope, header, shared)

    def accept(self, hello: Hello, directory_key: bytes, now: float) -> Conversation:
        """Verify a HELLO against the key the directory holds for its sender.

        Raises :class:`Refused` carrying the answer: clear before the HELLO proved its key
        (``bad-credentials``, ``bad-request``), sealed after (``bad-request``, ``stale``,
        ``replayed``, ``too-many-attempts``).
        """
        context, counter = hello.header.context, hello.header.counter

        def clear_refusal(code: ErrorCode, message: str) -> Refused:
            return Refused(code, message, self.refuse(code, message, context, counter))

        if not constant_time_equal(hello.sender_key, directory_key):
            raise clear_refusal(ErrorCode.BAD_CREDENTIALS, f"the key presented is not "
                                f"{hello.sender}'s key in the directory")
        key = hello.key
        self._remember(hello.sender_key, key)  # the directory vouched for this key
        try:
            _, body = open_envelope(key, hello.envelope, Channel.PEER, Sender.INITIATOR,
                                    {Kind.HELLO})
        except ProtocolError as exc:
            raise clear_refusal(ErrorCode.BAD_REQUEST, str(exc)) from None

        def refusal(code: ErrorCode, message: str) -> Refused:
            return Refused(code, message, [seal(key, Header(
                Channel.PEER, Kind.REFUSED, Sender.ACCEPTOR, context, counter),
                encode_refusal(code, message))])

        try:
            sender, recipient, rest = decode_names(body)
        except ProtocolError as exc:
            raise refusal(ErrorCode.BAD_REQUEST, str(exc)) from None
        if sender != hello.sender or recipient != self.username or rest:
            raise refusal(ErrorCode.BAD_REQUEST, "HELLO names another sender or recipient")
        if not is_fresh(counter, now, self.hello_window):
            raise refusal(ErrorCode.STALE, "conversation request is too old or in the "
                          "future (check the clock)")
        admitted = self.hellos.admit(context, counter, now)
        if admitted is None:
            raise refusal(ErrorCode.TOO_MANY_ATTEMPTS, "too many conversation requests; "
                          "try again later")
        if not admitted:
            raise refusal(ErrorCode.REPLAYED, "conversation request replayed")
        return Conversation(hello.sender, hello.sender_key, context, Sender.ACCEPTOR, key,
                            now, now, self._recent(hello.sender))

    @staticmethod
    def welcome(conversation: Conversation, hello: Hello, port: int) -> list[bytes]:
        """The WELCOME answering ``hello``: the port of the conversation's PAIR."""
        return [seal(conversation.key, Header(Channel.PEER, Kind.WELCOME, Sender.ACCEPTOR,
                                              conversation.conversation_id,
                                              hello.header.counter), encode_welcome(port))]

    # -- letters (offline mailbox) ----------------------------------------------------------

    def letter(self, recipient: str, recipient_key: bytes, text: str, now: float,
               msg_id: bytes | None = None) -> bytes:
        """Seal ``text`` for ``recipient``'s mailbox; only they can open it, only from us."""
        body = encode_letter(self.username, recipient, encode_text(text))
        return seal(self.key_for(recipient_key), Header(
            Channel.LETTER, Kind.LETTER, Sender.INITIATOR, msg_id or os.urandom(MESSAGE_ID_SIZE),
            timestamp_counter(now)), body)

    def open_letter(self, sender: str, sender_key: bytes, sealed: bytes, now: float,
                    ) -> PeerMessage | None:
        """Check a letter the broker says ``sender`` left; None if already shown.

        ``sender_key`` comes from the directory: a letter the broker (or anyone) attributes
        to the wrong sender does not open. Raises ProtocolError for a letter that is
        forged, for someone else, too old to be checked for replay, or replayed.

        Letter ids are remembered in :attr:`seen_letters`, not in a ReplayGuard: each letter
        is a context of its own with one counter, and the memory must outlive the process
        (the shell keeps it in the agent's home), which the in-memory guard does not.
        """
        if len(sealed) > MAX_MESSAGE_SIZE:
            raise ProtocolError("letter is over the size limit")
        header, body = open_envelope(self.key_for(sender_key), sealed, Channel.LETTER,
                                     Sender.INITIATOR, {Kind.LETTER})
        named_sender, named_recipient, text = decode_letter(body)
        if named_sender != sender or named_recipient != self.username:
            raise ProtocolError("letter names another sender or recipient")
        counter = header.counter
        if not (is_fresh(counter, now, MAILBOX_TTL)
                and counter <= timestamp_counter(now + self.hello_window)):
            raise ProtocolError("letter is too old (or from the future) to check for replay")
        self._forget_letters(now)
        msg_id = header.context
        if msg_id.hex() in self.seen_letters:
            raise ProtocolError("letter replayed")
        sent_at = counter / 1000
        self.seen_letters[msg_id.hex()] = sent_at
        if not self._recent(sender).add(msg_id):
            return None  # it came through a conversation already
        return PeerMessage(sender, text, sent_at, now, 0, "mailbox")

    def _forget_letters(self, now: float) -> None:
        # Older letters are refused by age, so their ids need not be remembered.
        for key in [k for k, t in self.seen_letters.items() if t < now - MAILBOX_TTL]:
            del self.seen_letters[key]


__all__ = [
    "Acked", "Arrival", "Closed", "Conversation", "Event", "Hello", "PeerEndpoint",
    "PeerMessage", "PendingHello", "Refused",
]
