"""The broker's NOTICE channel: pushes to subscribed agents, sans-I/O (PROTOCOL.md 4.5).

An agent opens a DEALER to the broker and sends SUBSCRIBE sealed in its session; the broker
remembers that socket's route for the session and from then on pushes, sealed under the
session key with the subscription's own sequence as counter:

- ``session-ended`` (with an :class:`~agora.protocol.EndReason`) *before* the broker forgets
  the session (it still holds the key to seal it),
- ``new-login`` when another session of the same principal starts,
- ``level-changed`` when the operator changes the principal's level,
- ``membership`` changes, to service principals that asked for them,
- a HEARTBEAT every ``heartbeat`` seconds, so the agent knows the broker is alive.

The agent heartbeats too; a subscription silent for ``liveness`` intervals is dropped (the
agent subscribes again when it hears nothing). One subscription per session: a newer
SUBSCRIBE moves it to the newer socket.

:class:`NoticeHub` is a :class:`~broker.sessions.SessionListener`: the session table tells
it of every session that opens or ends, and :meth:`flush` turns those events into messages.
Every entry point returns ``(identity, frames)`` messages, like the rest of the broker core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agora.envelope import ReplayGuard, is_fresh, peek
from agora.errors import ProtocolError
from agora.notice_wire import (
    clear_error,
    decode_subscribe,
    encode_ack,
    encode_notice,
    open_from_agent,
    seal_from_broker,
)
from agora.protocol import (
    FRESHNESS_WINDOW,
    MAX_MESSAGE_SIZE,
    NOTICE_HEARTBEAT,
    NOTICE_LIVENESS,
    SESSION_MAX_AGE,
    SUBSCRIBE_MEMBERSHIP,
    EndReason,
    ErrorCode,
    Kind,
    NoticeType,
    PrincipalKind,
)
from agora.wire import encode_refusal
from broker.sessions import Session, SessionTable

log = logging.getLogger("agora.broker")

Outgoing = tuple[bytes, list[bytes]]
AuditFn = Callable[..., None]

#: What a person reads for each reason a session ended.
END_MESSAGES = {
    EndReason.TOKEN_REUSED: "your token was used from another copy — see your operator",
    EndReason.REVOKED: "the operator revoked your access",
    EndReason.FLAGGED: "your access is locked (flagged) — see your operator",
    EndReason.RE_ENROLLED: "you were re-enrolled: register again with the new one-time ID",
    EndReason.RE_REGISTERED: "this principal registered a new key",
    EndReason.LEVEL_CHANGED: "the operator changed your level",
    EndReason.LOGGED_OUT: "you logged out",
    EndReason.REPLACED: "a newer session of yours took its place",
    EndReason.EXPIRED: "it expired — log in again",
    EndReason.REMOVED: "your principal no longer exists",
}


@dataclass
class Subscription:
    """One session's notice route: the DEALER socket that last subscribed."""

    session: Session
    identity: bytes
    membership: bool
    expiry: float  # dropped when the agent is silent past this


class NoticeHub:
    def __init__(self, sessions: SessionTable, audit: AuditFn,
                 heartbeat: float = NOTICE_HEARTBEAT, liveness: int = NOTICE_LIVENESS,
                 max_subscriptions: int = 100_000) -> None:
        self.sessions = sessions
        self.audit = audit
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.subscriptions: dict[bytes, Subscription] = {}
        self._by_user: dict[str, set[bytes]] = {}
        # Agent counters are ms timestamps: one window per session, as long as the session.
        self.guard = ReplayGuard(ttl=SESSION_MAX_AGE, max_contexts=max_subscriptions)
        self._seq: dict[bytes, int] = {}  # per session, kept across re-subscriptions
        self._events: list[tuple[Session, EndReason | None]] = []
        self._next_beat = 0.0

    # -- session events (SessionListener) -------------------------------------------------

    def opened(self, session: Session) -> None:
        self._events.append((session, None))

    def ended(self, session: Session, reason: EndReason) -> None:
        self._events.append((session, reason))

    def flush(self, now: float) -> list[Outgoing]:
        """Notices for the sessions that opened or ended since the last flush."""
        out: list[Outgoing] = []
        events, self._events = self._events, []
        for session, reason in events:
            if reason is None:
                out += self._new_login(session)
            else:
                out += self._session_ended(session, reason, now)
        return out

    def _new_login(self, session: Session) -> list[Outgoing]:
        notice = {"type": NoticeType.NEW_LOGIN.value, "at": session.created,
                  "session": session.short_id, "listening": session.listening,
                  "address": session.address}
        return [self._notice(sub, notice)
                for sid in self._by_user.get(session.username, ())
                if sid != session.sid and (sub := self.subscriptions.get(sid)) is not None]

    def _session_ended(self, session: Session, reason: EndReason, now: float,
                       ) -> list[Outgoing]:
        sub = self.subscriptions.get(session.sid)
        out = []
        if sub is not None:
            out.append(self._notice(sub, {
                "type": NoticeType.SESSION_ENDED.value, "reason": reason.value,
                "message": END_MESSAGES[reason], "at": now}))
            log.info("told session %s of %s it ended (%s)", session.short_id,
                     session.username, reason.value)
        self._forget(session.sid)
        return out

    # -- other pushes -----------------------------------------------------------------------

    def level_changed(self, session: Session) -> list[Outgoing]:
        sub = self.subscriptions.get(session.sid)
        if sub is None:
            return []
        return [self._notice(sub, {"type": NoticeType.LEVEL_CHANGED.value,
                                   "level": int(session.level)})]

    def membership(self, changes: list[dict[str, Any]]) -> list[Outgoing]:
        """Membership notices to every subscription that asked for them."""
        if not changes:
            return []
        subs = [s for s in self.subscriptions.values() if s.membership]
        return [self._notice(sub, change) for change in changes for sub in subs]

    # -- agent messages ------------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[bytes], now: float) -> list[Outgoing]:
        """One agent message on the NOTICE channel; never raises for anything sent."""
        if len(frames) != 1:
            return [(identity, [clear_error(bytes(16), ErrorCode.BAD_REQUEST,
                                            "a notice message is one frame")])]
        data = frames[0]
        if len(data) > MAX_MESSAGE_SIZE:
            return [(identity, [clear_error(bytes(16), ErrorCode.TOO_LARGE,
                                            "message is over the size limit")])]
        try:
            sid = peek(data).context
        except ProtocolError as exc:
            return [(identity, [clear_error(bytes(16), ErrorCode.BAD_REQUEST, str(exc))])]
        session = self.sessions.get(sid)
        if session is None or session.expired(now):
            return [(identity, [clear_error(sid, ErrorCode.UNKNOWN_SESSION,
                                            "no such session (log in again)")])]
        try:
            header, body = open_from_agent(session.key, data, sid)
        except ProtocolError as exc:
            log.info("bad notice-channel message: %s", exc)
            return [(identity, [clear_error(sid, ErrorCode.BAD_REQUEST, str(exc))])]
        kind = Kind(header.kind)
        if not is_fresh(header.counter, now, FRESHNESS_WINDOW):
            if kind is not Kind.SUBSCRIBE:
                return []
            return [self._refuse(session, identity, ErrorCode.STALE,
                                 "request timestamp is too old or in the future "
                                 "(check the clock)")]
        admitted = self.guard.admit(sid, header.counter, now,
                                    expires=session.created + SESSION_MAX_AGE)
        if admitted is False:
            self.audit(session.username, "notices", "replayed", now)
            return []  # never answered: a replayed SUBSCRIBE must not move the route
        if admitted is None:
            return [self._refuse(session, identity, ErrorCode.TOO_MANY_ATTEMPTS,
                                 "too many subscriptions; try again later")]
        session.last_seen = now  # a subscribed agent is alive: its session stays open
        if kind is Kind.SUBSCRIBE:
            return self._subscribe(session, identity, body, now)
        sub = self.subscriptions.get(sid)
        if sub is None or sub.identity != identity:
            return []
        if kind is Kind.DISCONNECT:
            self._drop(sid)
        else:
            sub.expiry = now + self.heartbeat * self.liveness
        return []

    def _subscribe(self, session: Session, identity: bytes, body: bytes, now: float,
                   ) -> list[Outgoing]:
        try:
            flags = decode_subscribe(body)
        except ProtocolError as exc:
            return [self._refuse(session, identity, ErrorCode.BAD_REQUEST, str(exc))]
        membership = bool(flags & SUBSCRIBE_MEMBERSHIP)
        if membership and session.kind is not PrincipalKind.SERVICE:
            self.audit(session.username, "notices", "forbidden", now, "membership")
            return [self._refuse(session, identity, ErrorCode.FORBIDDEN,
                                 "membership notices are for service principals")]
        self.subscriptions[session.sid] = sub = Subscription(
            session, identity, membership, now + self.heartbeat * self.liveness)
        self._by_user.setdefault(session.username, set()).add(session.sid)
        log.info("session %s of %s subscribed to notices%s", session.short_id,
                 session.username, " and membership" if membership else "")
        return [self._send(sub.session, identity, Kind.SUBSCRIBE,
                           encode_ack(flags, self.heartbeat))]

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Heartbeats to every subscription, and silent ones dropped."""
        if now < self._next_beat:
            return []
        self._next_beat = now + self.heartbeat
        out: list[Outgoing] = []
        for sid, sub in list(self.subscriptions.items()):
            if sub.expiry < now or self.sessions.get(sid) is None:
                log.info("notice subscription of %s dropped: agent silent",
                         sub.session.username)
                self._drop(sid)
            else:
                out.append(self._send(sub.session, sub.identity, Kind.HEARTBEAT, b""))
        return out

    # -- internals -------------------------------------------------------------------------

    def _notice(self, sub: Subscription, notice: dict[str, Any]) -> Outgoing:
        return self._send(sub.session, sub.identity, Kind.NOTICE, encode_notice(notice))

    def _refuse(self, session: Session, identity: bytes, code: ErrorCode,
                message: str) -> Outgoing:
        return self._send(session, identity, Kind.REFUSED, encode_refusal(code, message))

    def _send(self, session: Session, identity: bytes, kind: Kind, body: bytes) -> Outgoing:
        seq = self._seq.get(session.sid, 0) + 1
        self._seq[session.sid] = seq
        return identity, [seal_from_broker(session.key, session.sid, kind, seq, body)]

    def _drop(self, sid: bytes) -> None:
        sub = self.subscriptions.pop(sid, None)
        if sub is not None:
            users = self._by_user.get(sub.session.username)
            if users is not None:
                users.discard(sid)
                if not users:
                    del self._by_user[sub.session.username]

    def _forget(self, sid: bytes) -> None:
        self._drop(sid)
        self._seq.pop(sid, None)
        self.guard.forget(sid)

