"""The broker's protocol engine, without sockets (sans-I/O, like h11).

``BrokerCore.handle(identity, frames, now)`` takes one client message (routing envelope
already removed) and returns the messages to send, as ``(identity, frames)`` pairs;
``tick(now)`` runs the timers. The clock is always passed in, so expiry, rate limits and
freshness are tested without sleeping. :mod:`broker.server` is the socket loop around it.

AGORA/2 envelopes on Channel.WORKER come from service workers and go to
:class:`broker.workers.WorkerRegistry`; a CALL to a worker-served service is answered later,
from ``handle`` (the worker's REPLY) or ``tick`` (timeout, dead worker).

Client requests are AGORA/2 envelopes (docs/PROTOCOL.md section 3). Only the kinds in the
two dispatch tables exist: BROKER_KEY, REGISTER and LOGIN before authentication (they can
change nothing but the row of the principal whose secret they prove), and the session
requests, found by their header's context (the session id), sealed under the session key;
the identity a session request acts for is always the session's, never one it names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agora.crypto import (
    constant_time_equal,
    hash_secret,
    new_symmetric_key,
    new_token,
    normalize_one_time_id,
)
from agora.envelope import (
    HEADER_SIZE,
    MIN_SEALED,
    NO_CONTEXT,
    NONCE_SIZE,
    Header,
    ReplayGuard,
    box_key,
    is_fresh,
    open_envelope,
    peek,
    seal,
    seal_prefixed,
)
from agora.errors import ProtocolError, RemoteError
from agora.keyfile import KeyPair
from agora.protocol import (
    DEFAULT_CALL_TIMEOUT,
    FRESHNESS_WINDOW,
    MAX_MESSAGE_SIZE,
    Channel,
    EndReason,
    ErrorCode,
    Kind,
    Level,
    PrincipalKind,
    Sender,
)
from agora.text import printable
from agora.wire import (
    JSONText,
    broker_key_reply,
    client_error,
    compact_json,
    decode_json,
    decode_login,
    decode_register,
    decode_username,
    encode_grant,
    encode_refusal,
    login_context,
    register_context,
    reply_header,
    session_refusal,
    split_call,
)
from broker.audit import AuditBuffer
from broker.membership import Membership
from broker.notices import NoticeHub
from broker.sessions import ExpiringCache, FailureLimiter, Session, SessionTable
from broker.store import Store, principal_state
from broker.workers import Outgoing, WorkerRegistry

log = logging.getLogger("agora.broker")


__all__ = ["BrokerCore", "CallContext", "Outgoing", "Service", "WorkerCall"]

#: How often tick() asks SQLite whether an operator changed something (revoke, level).
STORE_POLL_INTERVAL = 0.25
#: How often tick() sweeps expired sessions out of memory.
SESSION_SWEEP_INTERVAL = 1.0
#: How often the live sessions are published to the store for `agora admin list`.
SESSION_MIRROR_INTERVAL = 1.0
#: Buffered audit rows are written at least this often.
AUDIT_FLUSH_INTERVAL = 0.5
#: Audit rows older than this many days are pruned (``agora broker start --audit-days``).
DEFAULT_AUDIT_DAYS = 90.0
#: How often tick() prunes old audit rows, and how many at most per tick (never a long
#: delete on the broker's thread: a backlog is pruned over several ticks).
AUDIT_PRUNE_INTERVAL = 60.0
AUDIT_PRUNE_BATCH = 500


@dataclass
class CallContext:
    """What a service handler may know about the call: who, when, and the broker."""

    session: Session
    now: float
    core: BrokerCore
    #: The call's arguments as the caller sent them: a JSON object, checked (b"" for none).
    args_json: bytes = b""


@dataclass(frozen=True)
class Service:
    """A service offered inside the broker. ``handler(ctx, args) -> result`` may raise
    RemoteError to refuse; any other exception is reported as ``service-failed``."""

    name: str
    level: Level
    description: str
    handler: Callable[[CallContext, dict[str, Any]], Any]
    #: Which kinds of principal may call it (and see it listed by ``services``).
    callers: frozenset[PrincipalKind] = frozenset(PrincipalKind)


@dataclass(frozen=True)
class WorkerCall:
    """What ``_call`` returns for a worker-served service: forward it, answer later."""

    service: str
    args: bytes  # the caller's JSON octets: forwarded to the worker unparsed


class BrokerCore:
    def __init__(self, store: Store, keys: KeyPair, services: dict[str, Service] | None = None,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT, now: float | None = None,
                 audit_days: float = DEFAULT_AUDIT_DAYS) -> None:
        self.store = store
        self.keys = keys
        self.sessions = SessionTable()
        # Pushes to subscribed agents; told of every session that opens or ends.
        self.notices = NoticeHub(self.sessions, self.audit_later)
        self.sessions.listener = self.notices
        self.membership = Membership(store.principals(), time.time() if now is None else now)
        self._membership_writes = store.membership_writes
        self.services: dict[str, Service] = dict(services or {})
        self.failures = FailureLimiter()
        self.workers = WorkerRegistry(self.sessions, self.services, self.audit_later,
                                      call_timeout)
        self.workers.bindings = store.bindings()  # which principal may offer which service
        # Messages for other peers than the one being answered (a REQUEST to a worker).
        self._outbox: list[Outgoing] = []
        # LOGIN and REGISTER replays inside the freshness window (context = the login or
        # registration context, counter = the request's timestamp); only authenticated,
        # fresh requests enter it.
        self._preauth_guard = ReplayGuard(ttl=2 * FRESHNESS_WINDOW)
        self._recent_registrations = ExpiringCache(ttl=2 * FRESHNESS_WINDOW, max_items=1000)
        self._audit = AuditBuffer()
        # Bookkeeping that need not precede an answer, done by settle() once it is sent:
        # audit decisions (AuditBuffer.add arguments) and answers kept for retransmission.
        self._audit_soon: list[tuple[Any, ...]] = []
        self._remember_soon: list[tuple[Session, int, bytes, list[bytes]]] = []
        self._audit_retention = audit_days * 86400.0
        self._next_audit_prune = 0.0
        #: The address of the peer whose message is being handled (audit ``source``).
        self._source = ""
        self._last_audit_flush = 0.0
        self._last_store_poll = 0.0
        self._last_session_sweep = 0.0
        self._store_version = store.data_version()
        # The timers tick() runs, in this order (session-ended notices go out before the
        # notice hub drops the subscriptions of ended sessions).
        self._timers: list[tuple[str, Callable[[float], list[Outgoing]]]] = [
            ("session", self._sweep_sessions), ("store", self._poll_store),
            ("worker", self.workers.tick), ("notice", self.notices.flush),
            ("heartbeat", self.notices.tick), ("audit", self._audit_timer),
            ("sessions-mirror", self._mirror_sessions)]
        #: Session ids last written to the store's live_sessions (None: not written yet).
        self._mirrored: set[bytes] | None = None
        self._next_mirror = 0.0
        self._timer_failures: dict[str, int] = {}
        # The explicit dispatch tables: nothing outside them can be invoked. Before
        # authentication (a clear key hint frame may precede the envelope):
        self._preauth_kinds: dict[int, Callable[..., list[bytes]]] = {
            Kind.BROKER_KEY: self._broker_key,
            Kind.REGISTER: self._register,
            Kind.LOGIN: self._login,
        }
        # Session requests by envelope kind (all sealed under the session key).
        self._session_kinds: dict[int, Callable[[Session, bytes, float], Any]] = {
            Kind.CALL: self._call,
            Kind.LOGOUT: self._logout,
        }

    # -- entry points -----------------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[bytes], now: float,
               address: str = "127.0.0.1") -> list[Outgoing]:
        """Process one message (its frames after the routing identity and the empty
        delimiter); never raises for anything a peer sent. Worker messages, which come
        without a delimiter, the socket loop passes to :meth:`handle_worker` instead.

        Bookkeeping that need not precede the answers is left for :meth:`settle` (the socket
        loop calls it once they are sent); it is done first here if still pending.
        """
        if self._audit_soon or self._remember_soon:
            self.settle()
        self._source = address
        channel = _channel(frames)
        if channel == _NOTICE:
            return self._guarded("notice", self.notices.handle, identity, frames, now)
        if channel == _WORKER:
            return self._guarded("worker", self.workers.handle, identity, frames, now)
        out = self._client(identity, frames, now, address)
        if self.store.membership_writes != self._membership_writes:
            # A registration or a token-reuse flag just now: push it to subscribers with
            # this answer, not at the next store poll (a join may follow it closely).
            self.sync_membership(now)
        if self._outbox:
            out += self._outbox
            self._outbox = []
        return out + self.notices.flush(now)

    def handle_worker(self, identity: bytes, frames: list[bytes], now: float,
                      ) -> list[Outgoing]:
        """One message from a worker's DEALER socket, which sends no empty delimiter
        (PROTOCOL.md 4.3): its frames after the routing identity, as they came."""
        if self._audit_soon or self._remember_soon:
            self.settle()
        return self._guarded("worker", self.workers.handle, identity, frames, now)

    def settle(self) -> None:
        """Do the bookkeeping left from the messages handled so far: their audit decisions
        and the answers kept for exact retransmissions. Called by the socket loop after it
        sent the answers (so it overlaps the caller's next step), and first thing by
        handle(), tick() and flush_audit(), so none of it is skipped or seen late."""
        if self._remember_soon:
            for session, counter, nonce, reply in self._remember_soon:
                session.remember(counter, nonce, reply)
            self._remember_soon.clear()
        if self._audit_soon:
            add = self._audit.add
            for decision in self._audit_soon:
                add(*decision)
            self._audit_soon.clear()

    def _guarded(self, channel: str,
                 handler: Callable[[bytes, list[bytes], float], list[Outgoing]],
                 identity: bytes, frames: list[bytes], now: float) -> list[Outgoing]:
        """A channel handler that must never raise: an internal error is logged, not sent."""
        try:
            out = handler(identity, frames, now)
        except Exception:
            log.exception("internal error handling a %s message", channel)
            out = []
        return out + self.notices.flush(now)

    def _client(self, identity: bytes, frames: list[bytes], now: float, address: str,
                ) -> list[Outgoing]:
        """One client request: an envelope, after a clear key hint for REGISTER and LOGIN.
        Kind, context and counter come from the envelope's header."""
        try:
            if not frames:
                raise ProtocolError("empty message")
            data = frames[-1]
            header = peek(data)
            if header.channel != _CLIENT or header.sender != _BY_CLIENT:
                raise ProtocolError("not a client request")
            handler = self._session_kinds.get(header.kind)
            if handler is not None:
                if len(frames) != 1:
                    raise ProtocolError("a session request is one frame")
                return self._session(identity, data, header, handler, now)
            preauth = self._preauth_kinds.get(header.kind)
            if preauth is None:
                raise ProtocolError(f"unknown request kind {header.kind}")
            return [(identity, preauth(identity, frames, header, now, address))]
        except RemoteError as exc:  # refusals of what could not be authenticated: in clear
            return [(identity, [client_error(exc.code, exc.message, *_echo(frames))])]
        except ProtocolError as exc:
            log.info("bad client request: %s", exc)
            return [(identity, [client_error(ErrorCode.BAD_REQUEST, str(exc),
                                             *_echo(frames))])]
        except Exception:
            log.exception("internal error handling a client request")
            return [(identity, [client_error(ErrorCode.INTERNAL, "internal broker error",
                                             *_echo(frames))])]

    def tick(self, now: float) -> list[Outgoing]:
        """Timers: session expiry, operator changes, workers, notices, audit flush/pruning.

        Each timer is guarded as message handling is: one that raises is logged (with its
        traceback the first time) and the others, and the broker, keep running.
        """
        self.settle()
        self._source = ""
        out: list[Outgoing] = []
        for name, timer in self._timers:
            try:
                out += timer(now)
            except Exception:
                report_internal_error(self._timer_failures, f"{name} timer")
        return out

    def _sweep_sessions(self, now: float) -> list[Outgoing]:
        # tick() runs after every batch of messages: sweeping all sessions each time would
        # cost O(sessions) per call. Expired sessions are refused per request anyway.
        if now - self._last_session_sweep >= SESSION_SWEEP_INTERVAL:
            self._last_session_sweep = now
            for s in self.sessions.expire(now):
                log.info("session %s of %s expired", s.short_id, s.username)
        for s in self.sessions.take_displaced():
            # Over MAX_SESSIONS_PER_PRINCIPAL: the oldest went to make room for a new login.
            self.audit_later(s.username, "session", "ended", now, "too many sessions")
            log.info("session %s of %s ended: too many sessions", s.short_id, s.username)
        self._preauth_guard.purge(now)
        self._recent_registrations.purge(now)
        return []

    def _poll_store(self, now: float) -> list[Outgoing]:
        if now - self._last_store_poll < STORE_POLL_INTERVAL:
            return []
        self._last_store_poll = now
        version = self.store.data_version()
        # data_version sees other connections' commits (agora admin); the broker's own
        # membership changes (registration, token reuse) are counted by the store.
        if (version == self._store_version
                and self.store.membership_writes == self._membership_writes):
            return []
        self._store_version = version
        self._membership_writes = self.store.membership_writes
        return self.apply_store_changes(now) + self.workers.rebind(self.store.bindings(), now)

    def sync_membership(self, now: float) -> None:
        """Apply the broker's own membership writes (a registration, a token-reuse flag) at
        once, not at the next store poll: a membership snapshot must not lag them. The
        notices this makes go out with the current message's answers."""
        if self.store.membership_writes != self._membership_writes:
            self._membership_writes = self.store.membership_writes
            self._outbox += self.apply_store_changes(now)

    def _mirror_sessions(self, now: float) -> list[Outgoing]:
        """Publish live sessions for the operator (`agora admin list`), about once a second;
        only what changed is written."""
        if now < self._next_mirror:
            return []
        self._next_mirror = now + SESSION_MIRROR_INTERVAL
        live = self.sessions.by_id
        current = set(live)
        reset = self._mirrored is None
        before = set() if reset else self._mirrored
        added = [{"session": s.short_id, "username": s.username, "started_at": s.created,
                  "address": s.address, "port": s.port, "listening": int(s.listening)}
                 for s in (live[sid] for sid in current - before)]
        removed = [sid.hex()[:8] for sid in before - current]
        if reset or added or removed:
            self.store.mirror_sessions(added, removed, reset)
        self._mirrored = current
        return []

    def _audit_timer(self, now: float) -> list[Outgoing]:
        if now - self._last_audit_flush >= AUDIT_FLUSH_INTERVAL:
            self.flush_audit(now)
        if now >= self._next_audit_prune:
            pruned = self.store.prune_audit(now - self._audit_retention, AUDIT_PRUNE_BATCH)
            # A full batch means more are waiting: prune again at the next tick.
            self._next_audit_prune = now + (0 if pruned >= AUDIT_PRUNE_BATCH
                                            else AUDIT_PRUNE_INTERVAL)
        return []

    def flush_audit(self, now: float) -> None:
        """Write the buffered audit rows (a bounded batch: see broker.audit)."""
        self.settle()
        self._last_audit_flush = now
        self.store.write_audit(self._audit.take())

    def apply_store_changes(self, now: float | None = None) -> list[Outgoing]:
        """Bring live sessions and membership in line with the store after a change; the
        notices it makes (session ended, level changed, membership) are returned."""
        now = time.time() if now is None else now
        principals = self.store.principals()
        rows = {r["username"]: r for r in principals}
        out: list[Outgoing] = []
        for s in list(self.sessions.by_id.values()):
            row = rows.get(s.username)
            reason = _end_reason(row)
            if reason is not None:
                self.sessions.end(s.sid, reason)
                log.info("session %s of %s ended: %s", s.short_id, s.username, reason.value)
            elif row is not None and row["level"] != s.level:
                s.level = Level(row["level"])
                log.info("level of %s is now %d", s.username, s.level)
                out += self.notices.level_changed(s)
        out += self.notices.flush(now)
        return out + self.notices.membership(self.membership.update(principals))

    def audit_later(self, username: str | None, action: str, outcome: str, now: float,
                    detail: str = "") -> None:
        """Count an audit decision; hot paths never wait for a SQLite write (tick writes),
        nor for the count itself: it is made by settle(), after the answer went out."""
        self._audit_soon.append((now, username, action, outcome, detail, self._source))

    # -- pre-authentication: BROKER_KEY, REGISTER, LOGIN ----------------------------------
    #
    # Each can change nothing but the row of the principal whose secret it proves. What does
    # not authenticate is refused in clear and counted against its username (junk); what
    # does is answered sealed and never blocked by junk (defect 2 of issue 9).

    def _broker_key(self, identity: bytes, frames: list[bytes], header: Header, now: float,
                    address: str) -> list[bytes]:
        if len(frames) != 1 or len(frames[0]) != HEADER_SIZE:
            raise ProtocolError("BROKER_KEY takes one empty envelope")
        log.debug("broker key sent")
        return [broker_key_reply(self.keys.public_key)]

    def _unauthenticated(self, username: str | None, action: str, code: ErrorCode,
                         message: str, now: float, enrolled: bool = True) -> RemoteError:
        """A refusal of what did not authenticate: counted against the username (unknown
        names share one count), audited, answered in clear. Audited as a counted row
        (broker.audit): a stranger's flood of refusals is one row per minute, source and
        code whose count says how big the flood was, and the username, which nobody proved,
        is escaped and never part of the row's key. Logged only while the name is under its
        limit: a log line per junk request would be the flood again."""
        key = self.failures.key_for(username, enrolled)
        self._audit.add(now, username, action, "refused", code.value, self._source,
                        authenticated=False)
        if not self.failures.blocked(key, now):
            log.info("%s %s refused: %s", action, printable(username), code.value)
        self.failures.record(key, now)
        return RemoteError(code, message)

    def _sealed_refusal(self, key: bytes, header: Header, username: str | None, action: str,
                        code: ErrorCode | str, message: str, now: float) -> list[bytes]:
        """A refusal of an authenticated request: audited, sealed under its key."""
        code = ErrorCode(code)
        self.audit_later(username, action, "refused", now, code.value)
        log.info("%s %s refused: %s", action, printable(username), code.value)
        return [seal(key, reply_header(Kind.REFUSED, header), encode_refusal(code, message))]

    def _register(self, identity: bytes, frames: list[bytes], header: Header, now: float,
                  address: str) -> list[bytes]:
        if len(frames) != 2:
            raise ProtocolError("REGISTER takes 2 frames: public key, envelope")
        client_key, data = frames
        if not constant_time_equal(header.context, register_context(client_key)):
            raise ProtocolError("REGISTER context does not match the public key")
        box = box_key(bytes(self.keys.private_key), client_key)  # BadKey: bad-request
        try:
            _, body = open_envelope(box, data, Channel.CLIENT, Sender.CLIENT, (Kind.REGISTER,))
        except ProtocolError:
            raise RemoteError(ErrorCode.BAD_REQUEST,
                              "registration could not be authenticated") from None
        # Authenticated as the holder of client_key's private key (anyone may make a key
        # pair: the one-time ID is what proves the person). Answers are sealed from here.
        try:
            return self._register_sealed(box, client_key, data, header, body, now)
        except RemoteError as exc:
            return self._sealed_refusal(box, header, getattr(exc, "username", None),
                                        "register", exc.code,
                                        exc.message, now)
        except ProtocolError as exc:
            return self._sealed_refusal(box, header, None, "register", ErrorCode.BAD_REQUEST,
                                        str(exc), now)

    def _register_sealed(self, box: bytes, client_key: bytes, data: bytes, header: Header,
                         body: bytes, now: float) -> list[bytes]:
        nonce = data[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]
        if not is_fresh(header.counter, now, FRESHNESS_WINDOW):
            raise _Refusal(None, ErrorCode.STALE, "registration is stale (check the clock)")
        admitted = self._preauth_guard.admit(header.context, header.counter, now)
        if not admitted:
            cached = self._recent_registrations.get(nonce, now)
            if cached is not None:  # exact retransmission of a registration we answered
                return cached  # type: ignore[return-value]
            raise _Refusal(None, ErrorCode.REPLAYED, "registration was replayed")
        symmetric_key, username, one_time_id = decode_register(body)
        row = self.store.get(username)
        key = self.failures.key_for(username, row is not None)
        if self.failures.blocked(key, now):
            # The one-time ID is the secret here: checking it while blocked would let a
            # guesser go on. Enrolled names are counted apart, unknown ones share a count.
            raise _Refusal(username, ErrorCode.TOO_MANY_ATTEMPTS,
                           "too many failed attempts; wait a minute and try again")
        if row is None:
            self.failures.record(key, now)
            raise _Refusal(username, ErrorCode.UNKNOWN_USER, f"unknown user {username!r}")
        if row["revoked_at"]:
            raise _Refusal(username, ErrorCode.REVOKED, f"{username} is revoked")
        if row["one_time_id_hash"] is None:
            if self._is_retried_registration(row, client_key, symmetric_key):
                log.info("register %s: retried registration answered again", username)
            else:
                self.failures.record(key, now)
                raise _Refusal(username, ErrorCode.BAD_ONE_TIME_ID,
                               "one-time ID already used; ask the operator to re-enroll")
        else:
            if not constant_time_equal(hash_secret(normalize_one_time_id(one_time_id)),
                                       row["one_time_id_hash"]):
                self.failures.record(key, now)
                raise _Refusal(username, ErrorCode.BAD_ONE_TIME_ID, "wrong one-time ID")
            if now > row["one_time_id_expires"]:
                raise _Refusal(username, ErrorCode.EXPIRED_ONE_TIME_ID,
                               "one-time ID expired; ask the operator to re-enroll")
            other = self.store.by_public_key(client_key)
            if other is not None and other["username"] != username:
                raise _Refusal(username, ErrorCode.BAD_REQUEST,
                               "that public key is registered to someone else")
        token = new_token()
        self.store.complete_registration(username, client_key, symmetric_key,
                                         hash_secret(token), now)
        # A re-registration ends the old key's sessions.
        self.sessions.end_user(username, EndReason.RE_REGISTERED)
        reply = [seal(symmetric_key, reply_header(Kind.RESULT, header), encode_grant(
            token, {"username": username, "level": row["level"], "kind": row["kind"]}))]
        self._recent_registrations.put(nonce, reply, now)
        log.info("register %s ok", username)
        return reply

    @staticmethod
    def _is_retried_registration(row: dict[str, Any], client_key: bytes,
                                 symmetric_key: bytes) -> bool:
        """Whether a registration for an already registered principal is its owner's retry
        after a lost reply: the same key pair (proved by the Box) and the same symmetric key
        (inside it), and no login since (a login means TOKEN_1 arrived). Then TOKEN_1 is
        issued again in place of the one whose reply was lost."""
        return (row["public_key"] is not None and row["symmetric_key"] is not None
                and row["token_hash"] is not None and not row["flagged"]
                and constant_time_equal(row["public_key"], client_key)
                and constant_time_equal(row["symmetric_key"], symmetric_key)
                and (row["last_login_at"] is None
                     or row["last_login_at"] < row["registered_at"]))

    def _login(self, identity: bytes, frames: list[bytes], header: Header, now: float,
               address: str) -> list[bytes]:
        if len(frames) != 2:
            raise ProtocolError("LOGIN takes 2 frames: username, envelope")
        username = decode_username(frames[0])
        data = frames[1]
        if not constant_time_equal(header.context, login_context(username)):
            raise ProtocolError("LOGIN context does not match the username")
        row = self.store.get(username)
        if row is None:
            raise self._unauthenticated(username, "login", ErrorCode.UNKNOWN_USER,
                                        f"unknown user {username!r}", now, enrolled=False)
        key = row["symmetric_key"]
        try:
            if key is None:
                raise ProtocolError("not registered")
            _, body = open_envelope(key, data, Channel.CLIENT, Sender.CLIENT, (Kind.LOGIN,))
        except ProtocolError:
            if self.failures.blocked(self.failures.key_for(username), now):
                raise self._unauthenticated(username, "login", ErrorCode.TOO_MANY_ATTEMPTS,
                                            "too many failed attempts; wait a minute and "
                                            "try again", now) from None
            raise self._unauthenticated(username, "login", ErrorCode.BAD_CREDENTIALS,
                                        "login could not be authenticated (wrong key, or "
                                        "not registered)", now) from None
        # The request proved the symmetric key: nothing a stranger sent can block it, and
        # every answer from here on is sealed under that key.
        try:
            return self._login_sealed(key, row, username, data, header, body, now, address)
        except RemoteError as exc:
            return self._sealed_refusal(key, header, username, "login", exc.code,
                                        exc.message, now)
        except ProtocolError as exc:
            return self._sealed_refusal(key, header, username, "login",
                                        ErrorCode.BAD_REQUEST, str(exc), now)

    def _login_sealed(self, key: bytes, row: dict[str, Any], username: str, data: bytes,
                      header: Header, body: bytes, now: float, address: str) -> list[bytes]:
        nonce = data[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]
        last = row["last_login_digest"]
        if last is not None and row["last_login_reply"] and constant_time_equal(nonce, last):
            # The exact request of the last rotation, its reply lost: answer it again however
            # late (kept until the next rotation succeeds). Sealed under the symmetric key,
            # so a replayer learns nothing, and nothing changes.
            log.info("login %s retransmission answered again", username)
            return [row["last_login_reply"]]
        if row["revoked_at"]:
            raise RemoteError(ErrorCode.REVOKED, f"{username} is revoked")
        if row["flagged"]:
            raise RemoteError(ErrorCode.FLAGGED, f"{username} is locked after token reuse; "
                              "ask the operator to re-enroll")
        if principal_state(row) == "re-enrolled":
            raise RemoteError(ErrorCode.REENROLLED, "you were re-enrolled: run `agora "
                              "register --force` with the new one-time ID")
        if row["token_hash"] is None:
            raise RemoteError(ErrorCode.BAD_CREDENTIALS, f"{username} is not registered")
        if not is_fresh(header.counter, now, FRESHNESS_WINDOW):
            raise RemoteError(ErrorCode.STALE, "login request is stale (check the clock)")
        if not self._preauth_guard.admit(header.context, header.counter, now):
            raise RemoteError(ErrorCode.REPLAYED, "login request was replayed")
        token, port, listening = decode_login(body)
        ts = header.counter / 1000
        if row["last_login_ts"] is not None and ts <= row["last_login_ts"]:
            # Made before the last successful login (both times by the client's clock): a
            # replay of a captured request (the replay guard does not survive a restart),
            # not a thief's fresh request; without this, replaying an old login would lock
            # the owner out as "reused".
            raise RemoteError(ErrorCode.REPLAYED, "login request is older than the last login")
        token_hash = hash_secret(token)
        if not constant_time_equal(token_hash, row["token_hash"]):
            if self.store.is_retired_token(username, token_hash):
                self._token_reused(username, now)
            raise RemoteError(ErrorCode.BAD_CREDENTIALS, "wrong token")

        next_token = new_token()
        session_key = new_symmetric_key()
        session = self.sessions.open(username, PrincipalKind(row["kind"]), Level(row["level"]),
                                     session_key, port, address, now, listening)
        answer = seal(key, reply_header(Kind.RESULT, header), encode_grant(
            next_token, {"username": username, "level": row["level"], "kind": row["kind"]},
            session.sid, session_key))
        try:
            self.store.rotate_token(username, row["token_hash"], hash_secret(next_token), port,
                                    address, nonce, answer, ts, now)
        except Exception:
            self.sessions.end(session.sid)
            raise
        log.info("login %s ok session=%s port=%d", username, session.short_id, port)
        return [answer]

    def _token_reused(self, username: str, now: float) -> None:
        """An old token came back in a fresh request: someone else has the credentials.

        Like OAuth refresh-token reuse detection, we cannot tell owner from thief, so the
        whole token family dies: all sessions end and the principal is flagged until the
        operator re-enrolls them face to face.
        """
        ended = self.sessions.end_user(username, EndReason.TOKEN_REUSED)
        self.store.flag(username, "token reuse detected", now)
        log.warning("login %s: old token reused; %d session(s) ended, user flagged",
                    username, len(ended))
        raise RemoteError(ErrorCode.TOKEN_REUSED,
                          "this token was already used; all sessions of "
                          f"{username} are ended and the operator is alerted")

    # -- authenticated session -------------------------------------------------------------

    def _session(self, identity: bytes, data: bytes, header: Header,
                 handler: Callable[[Session, bytes, float], Any], now: float,
                 ) -> list[Outgoing]:
        """A session request: found by the header's context, authenticated by its key,
        admitted once by the session's replay window, answered sealed on (sid, counter)."""
        sid, counter = header.context, header.counter
        session = self.sessions.get(sid)
        if session is not None and session.expired(now):
            self.sessions.end(sid, EndReason.EXPIRED)
            session = None
        if session is None:
            log.info("session request refused: unknown session")
            raise RemoteError(ErrorCode.UNKNOWN_SESSION, "no such session (log in again)")
        _, body = open_envelope(session.key, data, Channel.CLIENT, Sender.CLIENT,
                                header=header)
        # Authenticated from here on: every answer is sealed under the session key.
        nonce = data[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]
        admitted = self.sessions.admit(session, counter, now)
        if not admitted:
            cached = session.answered(counter, nonce)
            if cached is not None:
                log.info("retransmission from %s answered again", session.username)
                return [(identity, cached)]  # exact retransmission: same answer, no new effect
            if self.workers.retransmitted(sid, counter, nonce, identity):
                return []  # a retry of a call a worker is still serving: answered when it is
            if admitted is None:
                code, message = ErrorCode.SERVICE_UNAVAILABLE, "broker is full; try later"
            else:
                log.info("replayed request in session %s of %s refused", session.short_id,
                         session.username)
                self.audit_later(session.username, "session", "replayed", now)
                code, message = ErrorCode.REPLAYED, "request replayed"
            return [(identity, [session_refusal(session.key, sid, counter, code, message)])]
        session.last_seen = now
        session.requests += 1
        try:
            result = handler(session, body, now)
            if isinstance(result, WorkerCall):
                # Deferred: the worker's REPLY (or tick's timeout) answers, on this session
                # and counter, and fills the session's reply cache for retransmissions then.
                self._outbox += self.workers.submit(session, identity, counter, nonce,
                                                    result.service, result.args, now)
                return []
            # = session_result(session.key, sid, counter, result), header packed once
            body = result if type(result) is JSONText else compact_json(result)
            if len(body) > _MAX_RESULT:  # sealed, over the caller's bound: it would drop it
                raise RemoteError(ErrorCode.SERVICE_FAILED, "the answer is over the "
                                  f"{MAX_MESSAGE_SIZE // 1024} KiB message limit")
            reply = [seal_prefixed(session.key, session.result_head, counter, body)]
        except RemoteError as exc:
            reply = [session_refusal(session.key, sid, counter, exc.code, exc.message)]
        except ProtocolError as exc:
            reply = [session_refusal(session.key, sid, counter, ErrorCode.BAD_REQUEST,
                                     str(exc))]
        self._remember_soon.append((session, counter, nonce, reply))
        return [(identity, reply)]

    def _logout(self, session: Session, body: bytes, now: float) -> Any:
        self.sessions.end(session.sid, EndReason.LOGGED_OUT)
        self.audit_later(session.username, "logout", "ok", now)
        log.info("logout %s session=%s", session.username, session.short_id)
        return {"ended": session.short_id}

    def _call(self, session: Session, body: bytes, now: float) -> Any:
        name, raw_args = split_call(body)
        service = self.services.get(name)
        level = service.level if service is not None else self.workers.level_of(name)
        if level is None:
            self.audit_later(session.username, f"call:{name[:40]}", "unknown", now)
            raise RemoteError(ErrorCode.UNKNOWN_SERVICE, f"no service named {name[:40]!r}")
        # The level is the one the broker stores for this session, never one the request says.
        if session.level < level:
            self.audit_later(session.username, f"call:{name}", "forbidden", now)
            log.info("call %s by %s forbidden", name, session.username)
            raise RemoteError(ErrorCode.FORBIDDEN, f"{name} needs level {int(level)} "
                              f"({level.label}); you have {int(session.level)}")
        if service is None:
            return WorkerCall(name, raw_args)
        if session.kind not in service.callers:
            self.audit_later(session.username, f"call:{name}", "forbidden", now)
            raise RemoteError(ErrorCode.FORBIDDEN, f"{name} is for "
                              f"{' and '.join(sorted(k.value for k in service.callers))} "
                              "principals")
        call_args = decode_json(raw_args) if raw_args else {}
        try:
            result = service.handler(CallContext(session, now, self, raw_args), call_args)
        except (RemoteError, ProtocolError):
            self.audit_later(session.username, f"call:{name}", "refused", now)
            raise
        except Exception:
            log.exception("service %s failed", name)
            self.audit_later(session.username, f"call:{name}", "failed", now)
            raise RemoteError(ErrorCode.SERVICE_FAILED, f"service {name} failed") from None
        self.audit_later(session.username, f"call:{name}", "ok", now)
        # One line per request, as the operator expects; `broker start --quiet` drops it for
        # throughput (it costs a measurable share of a call, see `agora bench`).
        log.info("call %s by %s ok", name, session.username)
        return result


def report_internal_error(failures: dict[str, int], what: str) -> None:
    """Log an internal error from inside an ``except``: with its traceback the first time,
    then one line at the 10th, 100th, 1000th... time, so a timer failing 20 times a second
    neither floods the log nor goes unnoticed."""
    count = failures[what] = failures.get(what, 0) + 1
    if count == 1:
        log.exception("internal error in the %s; the broker keeps serving", what)
    elif str(count).rstrip("0") == "1":
        log.error("internal error in the %s again (%d times)", what, count)


#: The largest result body whose sealed answer still fits the message bound every receiver
#: applies (a built-in service's answer; a worker's is bounded by the worker).
_MAX_RESULT = MAX_MESSAGE_SIZE - MIN_SEALED

# Plain ints for the hot path's comparisons (no enum look-ups per message).
_CLIENT, _NOTICE, _WORKER = int(Channel.CLIENT), int(Channel.NOTICE), int(Channel.WORKER)
_BY_CLIENT = int(Sender.CLIENT)


def _channel(frames: list[bytes]) -> int | None:
    """The AGORA/2 channel of a one-frame envelope message (from its clear header)."""
    if len(frames) == 1 and len(frames[0]) >= HEADER_SIZE and frames[0][:3] == b"AG\x02":
        return frames[0][3]
    return None


def _end_reason(row: dict[str, Any] | None) -> EndReason | None:
    """Why a live session of this principal must end now, if it must."""
    if row is None:
        return EndReason.REMOVED
    if row["revoked_at"]:
        return EndReason.REVOKED
    if row["flagged"]:
        return EndReason.FLAGGED
    if not row["token_hash"]:
        return EndReason.RE_ENROLLED
    return None


def _echo(frames: list[bytes]) -> tuple[bytes, int]:
    """Context and counter of a request's header, to echo in a clear refusal (zeros if the
    request has no readable header)."""
    try:
        header = peek(frames[-1])
    except (ProtocolError, IndexError):
        return NO_CONTEXT, 0
    return header.context, header.counter


class _Refusal(RemoteError):
    """A refusal of an authenticated pre-auth request, with the username it concerns."""

    def __init__(self, username: str | None, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.username = username
