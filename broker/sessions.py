"""In-memory session table and the small bounded caches the broker keeps beside it.

Sessions live in memory on purpose: every service call checks its session here, never in
SQLite, so the hot path costs a dict lookup, one envelope open and one replay-window check.
A broker restart ends all sessions; agents notice ``unknown-session`` and log in again.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from agora.envelope import ReplayGuard, header_prefix
from agora.protocol import (
    MAX_PIPELINE,
    MAX_SESSIONS_PER_PRINCIPAL,
    RATE_LIMIT,
    RATE_WINDOW,
    SESSION_IDLE_TIMEOUT,
    SESSION_MAX_AGE,
    Channel,
    EndReason,
    Kind,
    Level,
    PrincipalKind,
    Sender,
)

SESSION_ID_SIZE = 16
#: Answers kept per session for exact retransmissions: room for a pipelining caller's
#: requests in flight (agents.pipeline, at most MAX_PIPELINE).
REPLY_CACHE_SIZE = MAX_PIPELINE
#: Most sessions whose replay windows are kept; a login beyond it is refused, never a live
#: window evicted.
MAX_SESSIONS = 100_000


@dataclass
class Session:
    """One logged-in agent process.

    ``key`` is the session key's raw bytes (the envelope seals with it directly). Client
    requests are guarded by the table's :class:`ReplayGuard` (context = ``sid``);
    ``counter`` is the highest *worker* message counter seen on this session.
    """

    sid: bytes
    username: str
    kind: PrincipalKind
    level: Level
    key: bytes
    port: int
    address: str
    created: float
    last_seen: float
    counter: int = 0
    #: Session requests admitted so far (whoami reports it).
    requests: int = 0
    #: Whether this session takes peer conversations on ``port`` (one-shot commands do not).
    listening: bool = True
    # counter -> (request nonce, reply) of the last answered requests, so an exact
    # retransmission (Lazy Pirate retry) gets the same answer instead of acting twice.
    replies: dict[int, tuple[bytes, list[bytes]]] = field(default_factory=dict)
    #: The packed header of a RESULT answer in this session but its counter
    #: (agora.envelope.header_prefix): results are sealed without packing a header each time.
    result_head: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.result_head = header_prefix(Channel.CLIENT, Kind.RESULT, Sender.BROKER,
                                         self.sid)

    @property
    def short_id(self) -> str:
        return self.sid.hex()[:8]

    def remember(self, counter: int, nonce: bytes, reply: list[bytes]) -> None:
        """Keep the answer to request ``counter`` (sealed with ``nonce``) for its retries."""
        replies = self.replies
        replies[counter] = (nonce, reply)
        if len(replies) > REPLY_CACHE_SIZE:
            del replies[next(iter(replies))]

    def answered(self, counter: int, nonce: bytes) -> list[bytes] | None:
        """The cached answer if this is an exact retransmission of request ``counter``."""
        entry = self.replies.get(counter)
        if entry is not None and entry[0] == nonce:
            return entry[1]
        return None

    def expired(self, now: float) -> bool:
        return (now - self.last_seen > SESSION_IDLE_TIMEOUT
                or now - self.created > SESSION_MAX_AGE)


class SessionListener(Protocol):
    """Told of every session that starts and ends (the notice hub pushes notices for them)."""

    def opened(self, session: Session) -> None: ...

    def ended(self, session: Session, reason: EndReason) -> None: ...


@dataclass
class SessionTable:
    """Live sessions by id and by principal; at most ``max_per_user`` per principal.

    Opening one more ends that principal's oldest session (the oldest one-shot session,
    i.e. not listening, when there is one, so a running listener is ended last) and puts it
    in ``displaced`` for the core to audit; the listener (the notice hub) tells it, with
    the reason ``replaced``.
    """

    by_id: dict[bytes, Session] = field(default_factory=dict)
    listener: SessionListener | None = None
    #: One replay window per live session (context = session id); ended sessions leave it.
    guard: ReplayGuard = field(
        default_factory=lambda: ReplayGuard(ttl=SESSION_MAX_AGE, max_contexts=MAX_SESSIONS))
    #: The same sessions by username, oldest first: a principal's look-up is O(theirs).
    by_user: dict[str, dict[bytes, Session]] = field(default_factory=dict)
    max_per_user: int = MAX_SESSIONS_PER_PRINCIPAL
    #: Sessions ended because their principal opened more than ``max_per_user``.
    displaced: list[Session] = field(default_factory=list)

    def open(self, username: str, kind: PrincipalKind, level: Level, key: bytes, port: int,
             address: str, now: float, listening: bool = True) -> Session:
        sid = secrets.token_bytes(SESSION_ID_SIZE)
        session = Session(sid, username, kind, level, key, port, address, now, now,
                          listening=listening)
        mine = self.by_user.setdefault(username, {})
        while len(mine) >= self.max_per_user:
            oldest = next((s for s in mine.values() if not s.listening),
                          next(iter(mine.values())))
            self._remove(oldest, EndReason.REPLACED)
            self.displaced.append(oldest)
        self.by_id[sid] = session
        mine[sid] = session
        if self.listener is not None:
            self.listener.opened(session)
        return session

    def admit(self, session: Session, counter: int, now: float) -> bool | None:
        """Record authenticated request ``counter`` of ``session``: True if new, False if
        seen (or below the window), None if the guard is full of live sessions."""
        return self.guard.admit(session.sid, counter, now, session.created + SESSION_MAX_AGE)

    def get(self, sid: bytes) -> Session | None:
        return self.by_id.get(sid)

    def of_user(self, username: str) -> list[Session]:
        """The principal's live sessions, oldest first."""
        return list(self.by_user.get(username, {}).values())

    def end(self, sid: bytes, reason: EndReason = EndReason.LOGGED_OUT) -> Session | None:
        session = self.by_id.get(sid)
        if session is not None:
            self._remove(session, reason)
        return session

    def end_user(self, username: str, reason: EndReason = EndReason.REVOKED) -> list[Session]:
        ended = self.of_user(username)
        for s in ended:
            self._remove(s, reason)
        return ended

    def expire(self, now: float) -> list[Session]:
        ended = [s for s in self.by_id.values() if s.expired(now)]
        for s in ended:
            self._remove(s, EndReason.EXPIRED)
        return ended

    def take_displaced(self) -> list[Session]:
        taken, self.displaced = self.displaced, []
        return taken

    def _remove(self, session: Session, reason: EndReason) -> None:
        self.guard.forget(session.sid)
        del self.by_id[session.sid]
        mine = self.by_user.get(session.username)
        if mine is not None:
            mine.pop(session.sid, None)
            if not mine:
                del self.by_user[session.username]
        if self.listener is not None:
            self.listener.ended(session, reason)

    def __len__(self) -> int:
        return len(self.by_id)


class FailureLimiter:
    """At most ``limit`` failures per key in a sliding window, and it never forgets a count
    that still matters.

    Keys are the usernames of enrolled principals (their number is the operator's to
    decide); every name that is not enrolled shares the one key :attr:`UNKNOWN`
    (:meth:`key_for`), so spraying made-up names fills nothing and evicts nothing. Should
    ``max_keys`` live keys exist even so, further names share :attr:`UNKNOWN` too: a live
    count is never dropped to make room.
    """

    UNKNOWN = "\x00unknown"

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW,
                 max_keys: int = 100_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._failures: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def key_for(self, username: str | None, enrolled: bool = True) -> str:
        if username is None or not enrolled:
            return self.UNKNOWN
        return username

    def blocked(self, key: str, now: float) -> bool:
        times = self._failures.get(key)
        if not times:
            return False
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times) >= self.limit

    def record(self, key: str, now: float) -> None:
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= self.max_keys:
                self._purge(now)
            if len(self._failures) >= self.max_keys:
                key = self.UNKNOWN
            times = self._failures.setdefault(key, deque())
        times.append(now)
        if len(times) > self.limit:
            times.popleft()

    def _purge(self, now: float) -> None:
        """Drop keys whose every failure is older than the window (they block nothing)."""
        for key in [k for k, t in self._failures.items() if not t or now - t[-1] > self.window]:
            del self._failures[key]


class ExpiringCache:
    """A bounded map whose entries vanish after ``ttl`` seconds (seen nonces, recent replies)."""

    def __init__(self, ttl: float, max_items: int = 100_000) -> None:
        self.ttl, self.max_items = ttl, max_items
        self._items: OrderedDict[bytes, tuple[float, object]] = OrderedDict()

    def get(self, key: bytes, now: float) -> object | None:
        item = self._items.get(key)
        if item is None or item[0] < now:
            return None
        return item[1]

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def put(self, key: bytes, value: object, now: float) -> None:
        self._items[key] = (now + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def purge(self, now: float) -> None:
        while self._items:
            key, (expiry, _) = next(iter(self._items.items()))
            if expiry >= now:
                break
            del self._items[key]
