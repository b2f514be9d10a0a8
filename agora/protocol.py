"""Protocol constants: commands, statuses, error codes, security levels and limits.

One place for every value that travels on the wire, so the broker, the agents, the
auctioneer and docs/PROTOCOL.md can be checked against each other. Each enum says both
the value and its name (unlike the bare ``W_READY = b"\\001"`` constants of the ZeroMQ
guide's mdp.py).
"""

from __future__ import annotations

from enum import Enum, IntEnum

#: First frame of every client <-> broker message (cf. "MDPC01" in 7/MDP).
CLIENT_PROTOCOL = b"AGORA01C"
#: First frame of every worker <-> broker message (cf. "MDPW01").
WORKER_PROTOCOL = b"AGORA01W"

#: Largest message any agora socket accepts (ZMQ_MAXMSGSIZE). Larger ones are dropped by
#: libzmq before they reach our code; senders check the size first and refuse locally.
MAX_MESSAGE_SIZE = 256 * 1024
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

#: Worker liveness (cf. 7/MDP): both sides send a HEARTBEAT every interval when otherwise
#: silent, and a peer silent for LIVENESS intervals is dead.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3
#: A worker-served call not answered in this many seconds gets a ``timeout`` error.
DEFAULT_CALL_TIMEOUT = 5.0
#: Requests queued per service while all its workers are busy; more are refused at once.
MAX_QUEUED_REQUESTS = 1000


class Command(bytes, Enum):
    """Second frame of a client message: what the client asks for."""

    BROKER_KEY = b"\x01"  # pre-auth: fetch the broker's public key
    REGISTER = b"\x02"  # pre-auth: one-time ID -> TOKEN_1
    LOGIN = b"\x03"  # pre-auth: TOKEN_n -> TOKEN_n+1 and a session
    SESSION = b"\x04"  # everything else, sealed under the session key


class SessionOp(IntEnum):
    """Operation inside a SESSION envelope (encrypted, so an observer cannot see it)."""

    CALL = 1  # call a service by name
    LOGOUT = 2  # end this session


class WorkerCommand(IntEnum):
    """Command inside a sealed worker message (cf. 7/MDP's worker commands)."""

    READY = 1  # worker -> broker: attach, offering a service
    REQUEST = 2  # broker -> worker: a call to serve
    REPLY = 3  # worker -> broker: the answer to a REQUEST
    HEARTBEAT = 4  # both ways: still alive
    DISCONNECT = 5  # both ways: detach (from the broker: with the reason)


class Direction(bytes, Enum):
    """Who sealed a worker message: stops a message being reflected back at its sender."""

    TO_BROKER = b"W"
    TO_WORKER = b"B"


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
    ALREADY_REGISTERED = "already-registered"
    REVOKED = "revoked"
    FLAGGED = "flagged"
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
    INTERNAL = "internal"


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
        if text.isdigit():
            return cls(int(text))
        try:
            return cls[text.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown level {value!r}: use 1-5 or a name") from None


class PrincipalKind(str, Enum):
    """Who an enrolled principal is: a person, or a service process (worker, auctioneer)."""

    PERSON = "person"
    SERVICE = "service"
