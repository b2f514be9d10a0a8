"""The broker's protocol engine, without sockets (sans-I/O, like h11).

``BrokerCore.handle(identity, frames, now)`` takes one client message (routing envelope
already removed) and returns the messages to send, as ``(identity, frames)`` pairs;
``tick(now)`` runs the timers. The clock is always passed in, so expiry, rate limits and
freshness are tested without sleeping. :mod:`broker.server` is the socket loop around it.

AGORA/2 envelopes on Channel.WORKER come from service workers and go to
:class:`broker.workers.WorkerRegistry`; a CALL to a worker-served service is answered later,
from ``handle`` (the worker's REPLY) or ``tick`` (timeout, dead worker).

Only the commands in ``self._commands`` exist; of those, BROKER_KEY, REGISTER and LOGIN are
accepted before authentication and can change nothing but the row of the principal whose
secret (one-time ID, symmetric key) they prove. Everything else travels inside a SESSION
envelope, and the identity it acts for is always the session's, never one the request names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agora.crypto import (
    Box,
    SecretBox,
    b64,
    constant_time_equal,
    hash_secret,
    new_symmetric_key,
    new_token,
    normalize_one_time_id,
    open_sealed,
    public_key_from_bytes,
    seal,
    unb64,
)
from agora.envelope import (
    HEADER_SIZE,
    NO_CONTEXT,
    NONCE_SIZE,
    Header,
    open_envelope,
    peek,
)
from agora.errors import ProtocolError, RemoteError
from agora.keyfile import KeyPair
from agora.protocol import (
    DEFAULT_CALL_TIMEOUT,
    FRESHNESS_WINDOW,
    Channel,
    Command,
    EndReason,
    ErrorCode,
    Kind,
    Level,
    PrincipalKind,
    Sender,
)
from agora.wire import (
    client_error,
    decode_call,
    decode_json,
    encode_json,
    error_reply,
    field,
    ok_reply,
    parse_request,
    session_refusal,
    session_result,
)
from broker.membership import Membership
from broker.notices import NoticeHub
from broker.sessions import ExpiringCache, FailureLimiter, Session, SessionTable
from broker.store import Store, principal_state
from broker.workers import Outgoing, WorkerRegistry

log = logging.getLogger("agora.broker")

#: First bytes of every AGORA/2 envelope ("AG", version 2).
AGORA2 = b"AG\x02"

__all__ = ["BrokerCore", "CallContext", "Outgoing", "Service", "WorkerCall"]

#: How often tick() asks SQLite whether an operator changed something (revoke, level).
STORE_POLL_INTERVAL = 0.25
#: How often tick() sweeps expired sessions out of memory.
SESSION_SWEEP_INTERVAL = 1.0
#: Buffered audit rows are written at least this often.
AUDIT_FLUSH_INTERVAL = 0.5
MAX_USERNAME = 64


@dataclass
class CallContext:
    """What a service handler may know about the call: who, when, and the broker."""

    session: Session
    now: float
    core: BrokerCore


@dataclass(frozen=True)
class Service:
    """A service offered inside the broker. ``handler(ctx, args) -> result`` may raise
    RemoteError to refuse; any other exception is reported as ``service-failed``."""

    name: str
    level: Level
    description: str
    handler: Callable[[CallContext, dict[str, Any]], Any]


@dataclass(frozen=True)
class WorkerCall:
    """What ``_call`` returns for a worker-served service: forward it, answer later."""

    service: str
    args: dict[str, Any]


class BrokerCore:
    def __init__(self, store: Store, keys: KeyPair, services: dict[str, Service] | None = None,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT, now: float | None = None) -> None:
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
        # Messages for other peers than the one being answered (a REQUEST to a worker).
        self._outbox: list[Outgoing] = []
        self._seen_nonces = ExpiringCache(ttl=2 * FRESHNESS_WINDOW)
        self._recent_registrations = ExpiringCache(ttl=FRESHNESS_WINDOW, max_items=1000)
        self._audit_buffer: list[dict[str, Any]] = []
        self._last_audit_flush = 0.0
        self._last_store_poll = 0.0
        self._last_session_sweep = 0.0
        self._store_version = store.data_version()
        # The timers tick() runs, in this order (session-ended notices go out before the
        # notice hub drops the subscriptions of ended sessions).
        self._timers: list[tuple[str, Callable[[float], list[Outgoing]]]] = [
            ("session", self._sweep_sessions), ("store", self._poll_store),
            ("worker", self.workers.tick), ("notice", self.notices.flush),
            ("heartbeat", self.notices.tick), ("audit", self._audit_timer)]
        self._timer_failures: dict[str, int] = {}
        # The explicit dispatch tables: nothing outside them can be invoked.
        self._commands: dict[Command, Callable[[bytes, list[bytes], float, str], list[bytes]]] = {
            Command.BROKER_KEY: self._broker_key,
            Command.REGISTER: self._register,
            Command.LOGIN: self._login,
        }
        # Session requests by envelope kind (all sealed under the session key).
        self._session_kinds: dict[int, Callable[[Session, bytes, float], Any]] = {
            Kind.CALL: self._call,
            Kind.LOGOUT: self._logout,
        }

    # -- entry points -----------------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[bytes], now: float,
               address: str = "127.0.0.1") -> list[Outgoing]:
        """Process one client or worker message; never raises for anything a peer sent."""
        channel = _channel(frames)
        if channel == Channel.NOTICE:
            return self._guarded("notice", self.notices.handle, identity, frames, now)
        if channel == Channel.WORKER:
            return self._guarded("worker", self.workers.handle, identity, frames, now)
        if len(frames) == 1 and frames[0][:3] == AGORA2:
            out = self._client(identity, frames[0], now)
        else:
            out = self._preauth(identity, frames, now, address)
        if self._outbox:
            out += self._outbox
            self._outbox = []
        return out + self.notices.flush(now)

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

    def _preauth(self, identity: bytes, frames: list[bytes], now: float, address: str,
                 ) -> list[Outgoing]:
        command: Command | None = None
        try:
            command, body = parse_request(frames)
            reply = self._commands[command](identity, body, now, address)
        except RemoteError as exc:
            reply = error_reply(command, exc.code, exc.message)
        except ProtocolError as exc:
            log.info("bad request: %s", exc)
            reply = error_reply(command, ErrorCode.BAD_REQUEST, str(exc))
        except Exception:
            log.exception("internal error handling %s", command.name if command else "?")
            reply = error_reply(command, ErrorCode.INTERNAL, "internal broker error")
        return [(identity, reply)] if reply else []

    def _client(self, identity: bytes, data: bytes, now: float) -> list[Outgoing]:
        """One AGORA/2 client envelope. Kind, context and counter come from its header."""
        try:
            header = peek(data)
            if header.channel != Channel.CLIENT or header.sender != Sender.CLIENT:
                raise ProtocolError("not a client request")
            handler = self._session_kinds.get(header.kind)
            if handler is None:
                raise ProtocolError(f"unknown request kind {header.kind}")
            return self._session(identity, data, header, handler, now)
        except RemoteError as exc:  # refusals of what could not be authenticated: in clear
            return [(identity, [client_error(exc.code, exc.message, *_echo(data))])]
        except ProtocolError as exc:
            log.info("bad client request: %s", exc)
            return [(identity, [client_error(ErrorCode.BAD_REQUEST, str(exc), *_echo(data))])]
        except Exception:
            log.exception("internal error handling a client request")
            return [(identity, [client_error(ErrorCode.INTERNAL, "internal broker error",
                                             *_echo(data))])]

    def tick(self, now: float) -> list[Outgoing]:
        """Timers: session expiry, operator changes, workers, notices, audit flush.

        Each timer is guarded as message handling is: one that raises is logged (with its
        traceback the first time) and the others, and the broker, keep running.
        """
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
        self._seen_nonces.purge(now)
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
        return self.apply_store_changes(now)

    def _audit_timer(self, now: float) -> list[Outgoing]:
        if now - self._last_audit_flush >= AUDIT_FLUSH_INTERVAL:
            self.flush_audit(now)
        return []

    def flush_audit(self, now: float) -> None:
        self._last_audit_flush = now
        rows, self._audit_buffer = self._audit_buffer, []
        self.store.audit_many(rows)

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
        """Buffer an audit row; hot paths must not wait for a SQLite write."""
        self._audit_buffer.append({"ts": now, "username": username, "action": action,
                                   "outcome": outcome, "detail": detail})
        if len(self._audit_buffer) >= 500:
            self.flush_audit(now)

    # -- pre-authentication commands -------------------------------------------------------

    def _broker_key(self, identity: bytes, body: list[bytes], now: float, address: str,
                    ) -> list[bytes]:
        log.info("broker key sent")
        return ok_reply(Command.BROKER_KEY, self.keys.public_key)

    def _refuse(self, username: str | None, action: str, code: ErrorCode, message: str,
                now: float, count_failure: bool = True) -> RemoteError:
        """Audit a refusal (the only store change a refused request may make)."""
        if count_failure and username is not None:
            self.failures.record(username, now)
        self.store.audit(username, action, "refused", code.value, now)
        log.info("%s %s refused: %s", action, username or "-", code.value)
        return RemoteError(code, message)

    def _check_rate(self, username: str, action: str, now: float) -> None:
        if self.failures.blocked(username, now):
            raise self._refuse(username, action, ErrorCode.TOO_MANY_ATTEMPTS,
                               "too many failed attempts; wait a minute and try again", now,
                               count_failure=False)

    def _check_fresh(self, username: str, action: str, ts: float, now: float) -> None:
        if abs(now - ts) > FRESHNESS_WINDOW:
            raise self._refuse(username, action, ErrorCode.STALE, "request timestamp is too "
                               "old or in the future (check the clock)", now)

    def _register(self, identity: bytes, body: list[bytes], now: float, address: str,
                  ) -> list[bytes]:
        if len(body) != 2:
            raise ProtocolError("REGISTER takes 2 frames")
        client_key, sealed = body
        digest = hash_secret(sealed)
        cached = self._recent_registrations.get(digest, now)
        if cached is not None:  # exact retransmission of a registration we answered
            return cached  # type: ignore[return-value]
        plain = open_sealed(Box(self.keys.private_key, public_key_from_bytes(client_key)), sealed)
        req = decode_json(plain)
        username = _username(req)
        one_time_id = field(req, "one_time_id", str)
        symmetric_key = unb64(field(req, "symmetric_key", str), SecretBox.KEY_SIZE)
        self._check_rate(username, "register", now)
        self._check_fresh(username, "register", float(field(req, "ts", (int, float))), now)
        row = self.store.get(username)
        if row is None:
            raise self._refuse(username, "register", ErrorCode.UNKNOWN_USER,
                               f"unknown user {username!r}", now)
        if row["revoked_at"]:
            raise self._refuse(username, "register", ErrorCode.REVOKED,
                               f"{username} is revoked", now)
        if row["one_time_id_hash"] is None:
            raise self._refuse(username, "register", ErrorCode.BAD_ONE_TIME_ID,
                               "one-time ID already used; ask the operator to re-enroll", now)
        if not constant_time_equal(hash_secret(normalize_one_time_id(one_time_id)),
                                   row["one_time_id_hash"]):
            raise self._refuse(username, "register", ErrorCode.BAD_ONE_TIME_ID,
                               "wrong one-time ID", now)
        if now > row["one_time_id_expires"]:
            raise self._refuse(username, "register", ErrorCode.EXPIRED_ONE_TIME_ID,
                               "one-time ID expired; ask the operator to re-enroll", now)
        other = self.store.by_public_key(client_key)
        if other is not None and other["username"] != username:
            raise self._refuse(username, "register", ErrorCode.BAD_REQUEST,
                               "that public key is registered to someone else", now)
        token = new_token()
        self.store.complete_registration(username, client_key, symmetric_key,
                                         hash_secret(token), now)
        # A re-registration ends the old key's sessions.
        self.sessions.end_user(username, EndReason.RE_REGISTERED)
        answer = seal(SecretBox(symmetric_key), encode_json({
            "token": b64(token), "username": username, "level": row["level"],
            "kind": row["kind"]}))
        reply = ok_reply(Command.REGISTER, answer)
        self._recent_registrations.put(digest, reply, now)
        log.info("register %s ok", username)
        return reply

    def _login(self, identity: bytes, body: list[bytes], now: float, address: str,
               ) -> list[bytes]:
        if len(body) != 2:
            raise ProtocolError("LOGIN takes 2 frames")
        username = _decode_username(body[0])
        sealed = body[1]
        self._check_rate(username, "login", now)
        row = self.store.get(username)
        if row is None:
            raise self._refuse(username, "login", ErrorCode.UNKNOWN_USER,
                               f"unknown user {username!r}", now)
        if row["revoked_at"]:
            raise self._refuse(username, "login", ErrorCode.REVOKED,
                               f"{username} is revoked", now)
        if row["flagged"]:
            raise self._refuse(username, "login", ErrorCode.FLAGGED,
                               f"{username} is locked after token reuse; "
                               "ask the operator to re-enroll", now)
        if principal_state(row) == "re-enrolled":
            raise self._refuse(username, "login", ErrorCode.REENROLLED,
                               "you were re-enrolled: run `agora register --force` with the "
                               "new one-time ID", now)
        if row["symmetric_key"] is None or row["token_hash"] is None:
            raise self._refuse(username, "login", ErrorCode.BAD_CREDENTIALS,
                               f"{username} is not registered", now)
        digest = hash_secret(sealed)
        if (row["last_login_digest"] is not None
                and constant_time_equal(digest, row["last_login_digest"])):
            # Exact retransmission of the last login (its reply was lost). Answer it again:
            # the reply is sealed under the symmetric key, so a replayer learns nothing, and
            # nothing changes. Outside the window it is plainly stale.
            if now - row["last_login_at"] <= FRESHNESS_WINDOW:
                log.info("login %s retransmission answered again", username)
                return ok_reply(Command.LOGIN, row["last_login_reply"])
            raise self._refuse(username, "login", ErrorCode.STALE, "login request is stale", now)
        box = SecretBox(row["symmetric_key"])
        try:
            req = decode_json(open_sealed(box, sealed))
        except ProtocolError:
            raise self._refuse(username, "login", ErrorCode.BAD_CREDENTIALS,
                               "login could not be decrypted (wrong key)", now) from None
        nonce = sealed[: SecretBox.NONCE_SIZE]
        if nonce in self._seen_nonces:
            raise self._refuse(username, "login", ErrorCode.REPLAYED,
                               "login request was replayed", now)
        self._seen_nonces.put(nonce, True, now)
        ts = float(field(req, "ts", (int, float)))
        if abs(now - ts) > FRESHNESS_WINDOW:
            raise self._refuse(username, "login", ErrorCode.STALE, "login request is stale", now)
        port = field(req, "port", int)
        if not 0 <= port <= 65535:
            raise ProtocolError("port out of range")
        listening = req.get("listen", True)
        if not isinstance(listening, bool):
            raise ProtocolError("field 'listen' must be true or false")
        token_hash = hash_secret(unb64(field(req, "token", str), 32))
        if row["last_login_ts"] is not None and ts <= row["last_login_ts"]:
            # Made before the last successful login (both times by the client's clock): a
            # replay of a captured request (the nonce cache does not survive a restart), not
            # a thief's fresh request. Without this, replaying an old login would lock the
            # owner out as "reused".
            raise self._refuse(username, "login", ErrorCode.REPLAYED,
                               "login request is older than the last login", now)
        if not constant_time_equal(token_hash, row["token_hash"]):
            if self.store.is_retired_token(username, token_hash):
                return self._token_reused(username, now)
            raise self._refuse(username, "login", ErrorCode.BAD_CREDENTIALS, "wrong token", now)

        next_token = new_token()
        session_key = new_symmetric_key()
        session = self.sessions.open(username, PrincipalKind(row["kind"]), Level(row["level"]),
                                     session_key, port, address, now, listening)
        answer = seal(box, encode_json({
            "token": b64(next_token), "session": b64(session.sid),
            "session_key": b64(session_key), "username": username, "level": row["level"],
            "kind": row["kind"]}))
        try:
            self.store.rotate_token(username, row["token_hash"], hash_secret(next_token), port,
                                    address, digest, answer, ts, now)
        except Exception:
            self.sessions.end(session.sid)
            raise
        log.info("login %s ok session=%s port=%d", username, session.short_id, port)
        return ok_reply(Command.LOGIN, answer)

    def _token_reused(self, username: str, now: float) -> list[bytes]:
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
        _, body = open_envelope(session.key, data, Channel.CLIENT, Sender.CLIENT)
        # Authenticated from here on: every answer is sealed under the session key.
        nonce = data[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]
        admitted = self.sessions.admit(session, counter, now)
        if not admitted:
            cached = session.answered(counter, nonce)
            if cached is not None:
                log.info("retransmission from %s answered again", session.username)
                return [(identity, cached)]  # exact retransmission: same answer, no new effect
            if self.workers.retransmitted(sid, nonce, identity):
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
        try:
            result = handler(session, body, now)
            if isinstance(result, WorkerCall):
                # Deferred: the worker's REPLY (or tick's timeout) answers, on this session
                # and counter, and fills the session's reply cache for retransmissions then.
                self._outbox += self.workers.submit(session, identity, counter, nonce,
                                                    result.service, result.args, now)
                return []
            reply = [session_result(session.key, sid, counter, result)]
        except RemoteError as exc:
            reply = [session_refusal(session.key, sid, counter, exc.code, exc.message)]
        except ProtocolError as exc:
            reply = [session_refusal(session.key, sid, counter, ErrorCode.BAD_REQUEST,
                                     str(exc))]
        session.remember(counter, nonce, reply)
        return [(identity, reply)]

    def _logout(self, session: Session, body: bytes, now: float) -> Any:
        self.sessions.end(session.sid, EndReason.LOGGED_OUT)
        self.audit_later(session.username, "logout", "ok", now)
        log.info("logout %s session=%s", session.username, session.short_id)
        return {"ended": session.short_id}

    def _call(self, session: Session, body: bytes, now: float) -> Any:
        name, call_args = decode_call(body)
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
            return WorkerCall(name, call_args)
        try:
            result = service.handler(CallContext(session, now, self), call_args)
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


def _echo(data: bytes) -> tuple[bytes, int]:
    """Context and counter of a request's header, to echo in a clear refusal (zeros if the
    request has no readable header)."""
    try:
        header = peek(data)
    except ProtocolError:
        return NO_CONTEXT, 0
    return header.context, header.counter


def _decode_username(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("username is not UTF-8") from None
    if not 0 < len(name) <= MAX_USERNAME:
        raise ProtocolError("username length out of range")
    return name


def _username(req: dict[str, Any]) -> str:
    return _decode_username(field(req, "username", str).encode("utf-8"))
