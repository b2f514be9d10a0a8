"""Protocol constants: commands, statuses, error codes, security levels and limits.

One place for every value that travels on the wire, so the broker, the agents, the
auctioneer and docs/PROTOCOL.md can be checked against each other. Each enum says both
the value and its name (unlike the bare ``W_READY = b"\\001"`` constants of the ZeroMQ
guide's mdp.py).
"""

from __future__ import annotations

import re
from enum import Enum, IntEnum

# -- AGORA/2 envelope (docs/PROTOCOL.md section 2, agora/envelope.py) ----------------------

class Channel(IntEnum):
    """Which conversation between which parties an envelope belongs to (header byte 3)."""

    CLIENT = 1  # agent <-> broker: BROKER_KEY, REGISTER, LOGIN, session requests
    WORKER = 2  # service worker <-> broker
    PEER = 3  # agent <-> agent: conversation set-up and messages
    LETTER = 4  # agent -> agent through the broker's offline mailbox
    AUCTION = 5  # bidder <-> auctioneer requests and replies
    ANNOUNCE = 6  # auctioneer -> members: multicast and PUB announcements
    NOTICE = 7  # broker -> agent: pushed notices (session ended, new login, membership)


class Sender(IntEnum):
    """The role that sealed an envelope (header byte 5): the message's direction."""

    CLIENT = 1
    BROKER = 2
    WORKER = 3
    INITIATOR = 4  # the peer that opened a conversation
    ACCEPTOR = 5  # the peer that accepted it
    BIDDER = 6
    AUCTIONEER = 7


class Kind(IntEnum):
    """What an envelope carries (header byte 4). Values are unique across channels."""

    ERROR = 0  # a refusal in clear, JSON {"code", "message"}: unauthenticated by nature
    BROKER_KEY = 1  # in clear both ways: the broker's public key
    REGISTER = 2
    LOGIN = 3
    CALL = 4
    LOGOUT = 5
    SUBSCRIBE = 6
    RESULT = 7  # a sealed answer to a request
    REFUSED = 8  # a sealed refusal of a request, JSON {"code", "message"}
    READY = 10
    REQUEST = 11
    REPLY = 12
    HEARTBEAT = 13
    DISCONNECT = 14
    HELLO = 20
    WELCOME = 21
    MESSAGE = 22
    ACK = 23
    BYE = 24
    LETTER = 25
    JOIN = 30
    BID = 31
    SNAPSHOT = 32
    RESULTS = 33
    EVENT = 40
    REKEY = 41
    NOTICE = 50


class NoticeType(str, Enum):
    """The ``type`` of a NOTICE the broker pushes to a subscribed agent (PROTOCOL.md 4.5)."""

    SESSION_ENDED = "session-ended"  # this session is over (``reason``: an EndReason)
    NEW_LOGIN = "new-login"  # another session of this principal started
    LEVEL_CHANGED = "level-changed"  # the operator changed this principal's level
    MEMBERSHIP = "membership"  # (service subscribers that asked) a member's key changed


class EndReason(str, Enum):
    """Why the broker ended a session (the ``reason`` of a session-ended notice)."""

    TOKEN_REUSED = "token-reused"  # noqa: S105 - a reason code, not a secret
    REVOKED = "revoked"
    FLAGGED = "flagged"
    RE_ENROLLED = "re-enrolled"
    RE_REGISTERED = "re-registered"
    LEVEL_CHANGED = "level-changed"
    LOGGED_OUT = "logged-out"
    REPLACED = "replaced"  # a newer session of the principal took its place
    EXPIRED = "expired"
    REMOVED = "removed"


#: Broker and subscriber each send a NOTICE-channel HEARTBEAT this often when otherwise
#: silent; a subscription not heard from for NOTICE_LIVENESS intervals is dropped, and an
#: agent that hears nothing for as long subscribes again.
NOTICE_HEARTBEAT = 1.0
NOTICE_LIVENESS = 3
#: SUBSCRIBE flag: also push membership notices (service principals only).
SUBSCRIBE_MEMBERSHIP = 0x01


#: Largest message any agora socket accepts (ZMQ_MAXMSGSIZE). Larger ones are dropped by
#: libzmq before they reach our code; senders check the size first and refuse locally.
MAX_MESSAGE_SIZE = 256 * 1024
#: Most frames one message may have (routing envelope included). ZMQ_MAXMSGSIZE bounds each
#: frame only; agora.sockets.recv_bounded bounds the whole message, count and total size.
MAX_MESSAGE_FRAMES = 16
#: Most connections one bound agora socket (broker, auctioneer) keeps; more are shut at once.
#: Each costs libzmq about 27 KiB, so this bounds that memory near 110 MiB.
MAX_CONNECTIONS = 4096
#: Largest JSON args or result of a worker-served call: room is left for the envelope that
#: carries it on the next hop, which must stay under MAX_MESSAGE_SIZE.
MAX_CALL_PAYLOAD = MAX_MESSAGE_SIZE - 4096

#: A request whose timestamp is further than this from the receiver's clock is stale.
FRESHNESS_WINDOW = 120.0

#: One-time IDs expire after this many seconds unless the operator says otherwise.
DEFAULT_ONE_TIME_ID_TTL = 72 * 3600

#: Failures allowed per username within RATE_WINDOW before "too many attempts".
RATE_LIMIT = 5
RATE_WINDOW = 60.0

#: Sessions end after this long without a request, and after SESSION_MAX_AGE in any case.
SESSION_IDLE_TIMEOUT = 30 * 60.0
SESSION_MAX_AGE = 12 * 3600.0
#: Live sessions one principal may hold; a new login past this ends their oldest session
#: (a one-shot one before a listening one) and tells it why.
MAX_SESSIONS_PER_PRINCIPAL = 32

#: Worker liveness (cf. 7/MDP): both sides send a HEARTBEAT every interval when otherwise
#: silent, and a peer silent for LIVENESS intervals is dead.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3
#: A worker-served call not answered in this many seconds gets a ``timeout`` error.
DEFAULT_CALL_TIMEOUT = 5.0
#: What a worker-served service may be called: 1-64 of a-z 0-9 . _ -, starting with a letter.
SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
#: Requests queued per service while all its workers are busy; more are refused at once.
MAX_QUEUED_REQUESTS = 1000
#: Most session requests one caller may keep in flight at once (agents.pipeline); the
#: broker's per-session answer cache and worker call table are sized for it.
MAX_PIPELINE = 16


#: Largest text of one peer message, in UTF-8 bytes; its envelope adds 94 bytes (AGORA/2).
MAX_PEER_TEXT = 64 * 1024
#: Largest sealed letter the broker's offline mailbox accepts (text + names + envelope).
MAX_LETTER_SIZE = MAX_PEER_TEXT + 512
#: Letters older than this are deleted unread; recipients remember letter ids this long.
MAILBOX_TTL = 7 * 24 * 3600.0


class Status(bytes, Enum):
    """Third frame of a broker reply."""

    OK = b"\x00"
    ERROR = b"\x01"


class ErrorCode(str, Enum):
    """Machine-readable error codes; each error reply carries one and a one-line message."""

    BAD_REQUEST = "bad-request"
    TOO_LARGE = "too-large"
    UNKNOWN_USER = "unknown-user"
    BAD_ONE_TIME_ID = "bad-one-time-id"
    EXPIRED_ONE_TIME_ID = "expired-one-time-id"
    REVOKED = "revoked"
    FLAGGED = "flagged"
    REENROLLED = "re-enrolled"  # a new one-time ID waits: register again (--force)
    BAD_CREDENTIALS = "bad-credentials"
    TOKEN_REUSED = "token-reused"  # noqa: S105 - an error code, not a secret
    TOO_MANY_ATTEMPTS = "too-many-attempts"
    STALE = "stale"
    REPLAYED = "replayed"
    UNKNOWN_SESSION = "unknown-session"
    FORBIDDEN = "forbidden"
    UNKNOWN_SERVICE = "unknown-service"
    SERVICE_UNAVAILABLE = "service-unavailable"
    SERVICE_FAILED = "service-failed"
    TIMEOUT = "timeout"
    NOT_FOUND = "not-found"
    OFFLINE = "offline"
    MAILBOX_FULL = "mailbox-full"
    INTERNAL = "internal"
    NOT_JOINED = "not-joined"  # auction: a bid or snapshot from a key that has not joined
    BID_TOO_LOW = "bid-too-low"
    AUCTION_CLOSED = "auction-closed"  # no item open, or not the item the bid names


class Level(IntEnum):
    """Security levels, ordered: a principal may use what is at or below its level."""

    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    SECRET = 4
    TOP_SECRET = 5

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, value: int | str) -> Level:
        """Accept 3, "3", "confidential" or "CONFIDENTIAL"; raise ValueError otherwise."""
        text = str(value).strip()
        try:
            return cls(int(text)) if text.isdigit() else cls[text.upper().replace("-", "_")]
        except (KeyError, ValueError):
            raise ValueError(f"unknown level {value!r}: use 1-5 or a name") from None


class PrincipalKind(str, Enum):
    """Who an enrolled principal is: a person, or a service process (worker, auctioneer)."""

    PERSON = "person"
    SERVICE = "service"


# -- auction (docs/PROTOCOL.md section 6) ---------------------------------------------------

#: Largest announcement datagram; bigger ones are never sent and dropped on receipt.
MAX_DATAGRAM = 60_000
DEFAULT_MULTICAST_GROUP = "239.255.42.42"
DEFAULT_MULTICAST_PORT = 5562
DEFAULT_MULTICAST_INTERFACE = "127.0.0.1"
#: TTL 0: host-local. Raise it (with a LAN interface) only for a real LAN auction.
DEFAULT_MULTICAST_TTL = 0
DEFAULT_AUCTION_ENDPOINT = "tcp://127.0.0.1:5560"
DEFAULT_AUCTION_PUB = "tcp://127.0.0.1:5561"
#: A bid accepted this close to the end pushes the end back by as much (soft close).
DEFAULT_SOFT_CLOSE = 10.0
#: Seconds between heartbeats: they let listeners notice a lost tail of announcements.
HEARTBEAT_INTERVAL = 1.0
#: The auctioneer fails closed (joins and bids refused with service-unavailable) once it
#: has not heard from the broker (membership notices, heartbeats) for this many seconds.
MEMBERSHIP_SILENCE_LIMIT = 10.0


class Event(str, Enum):
    """The ``kind`` of an announcement."""

    REKEY = "rekey"
    OPENED = "opened"
    BID = "bid"
    EXTENDED = "extended"
    CLOSING = "closing"
    CLOSED = "closed"
    HEARTBEAT = "heartbeat"
    VOIDED = "voided"  # a revoked bidder's bids no longer count: the new best bid
