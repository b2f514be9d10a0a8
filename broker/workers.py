"""External service workers: attach, load balancing, heartbeats and deferred replies.

The broker side of the worker protocol (docs/PROTOCOL.md, section 4.3), after the ZeroMQ
guide's Majordomo pattern (7/MDP) but sans-I/O and authenticated: every worker message is
one AGORA/2 envelope on Channel.WORKER, sealed under the worker principal's session key
(context = its session id, counter = the worker's own sequence, checked by a ReplayGuard),
so only a logged-in principal of kind "service" can attach, and a captured message cannot
be replayed.

:class:`WorkerRegistry` is owned by :class:`broker.core.BrokerCore`. ``submit`` turns a
client's CALL into a REQUEST for the least recently used idle worker (or queues it);
``handle`` takes worker messages; ``tick`` sends heartbeats, notices dead workers and
times calls out. Each returns the ``(identity, frames)`` messages to send. A reply is sealed
under the *caller's* session key with the caller's request counter and sent to the socket
identity that last sent that request, so it reaches that caller and no one else.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agora.envelope import (
    NO_CONTEXT,
    ReplayGuard,
    header_prefix,
    open_prefixed,
    peek,
    seal_prefixed,
)
from agora.errors import ProtocolError, RemoteError
from agora.protocol import (
    DEFAULT_CALL_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    MAX_CALL_PAYLOAD,
    MAX_MESSAGE_SIZE,
    MAX_PIPELINE,
    MAX_QUEUED_REQUESTS,
    SERVICE_NAME_RE,
    SESSION_MAX_AGE,
    Channel,
    ErrorCode,
    Kind,
    Level,
    PrincipalKind,
    Sender,
    Status,
)
from agora.wire import (
    REQUEST_ID_SIZE,
    decode_json,
    decode_reply,
    decode_worker_body,
    encode_request,
    field,
    open_worker_message,
    seal_worker_message,
    session_refusal,
    worker_error,
)
from broker.sessions import Session, SessionTable

log = logging.getLogger("agora.broker")

#: A worker still serving one request this long after its caller's deadline is detached.
WEDGED_GRACE = 30.0
#: Requests a worker holds at once. A worker serves one at a time, in order; the second is
#: given only when no worker of the service is idle, so it is waiting in the worker's socket
#: when the first is answered instead of a round trip through the broker later.
WORKER_WINDOW = 2

#: A message to send: (ROUTER identity of the peer, frames after the routing envelope).
Outgoing = tuple[bytes, list[bytes]]
AuditFn = Callable[..., None]

MAX_DESCRIPTION = 200
#: A worker's READY "instance": 8 random octets in hex, the same on each socket it attaches.
INSTANCE = re.compile(r"^[0-9a-f]{16}$")
#: Error codes a worker may pass through to the caller; anything else becomes service-failed.
WORKER_ERROR_CODES = {ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND,
                      ErrorCode.SERVICE_FAILED}
#: How often tick() looks at workers and deadlines (it is called after every message batch).
CHECK_INTERVAL = 0.05
_REPLY = int(Kind.REPLY)  # compared per message as a plain int


@dataclass(slots=True)
class Worker:
    """One attached worker process (one DEALER socket, one worker session)."""

    identity: bytes
    sid: bytes
    username: str
    service: str
    expiry: float  # dead if nothing arrives before this
    next_heartbeat: float
    #: The READY's "instance" ("" if it said none): the same worker on each of its sockets.
    instance: str = ""
    #: ids of the requests it was given and has not answered (at most WORKER_WINDOW),
    #: oldest first -> past this time, a worker still on that request is wedged
    requests: dict[bytes, float] = dataclasses.field(default_factory=dict)
    #: Its REPLY and REQUEST headers but the counter, packed once (envelope.header_prefix).
    reply_prefix: bytes = b""
    request_prefix: bytes = b""

    def __post_init__(self) -> None:
        self.reply_prefix = header_prefix(Channel.WORKER, Kind.REPLY, Sender.WORKER, self.sid)
        self.request_prefix = header_prefix(Channel.WORKER, Kind.REQUEST, Sender.BROKER,
                                            self.sid)


@dataclass
class WorkerService:
    """A service offered by workers. Its level is fixed by the first worker to attach."""

    name: str
    level: Level
    description: str
    workers: dict[bytes, Worker] = dataclasses.field(default_factory=dict)
    idle: deque[bytes] = dataclasses.field(default_factory=deque)  # least recently used first
    #: Workers serving a request with room for one more (under WORKER_WINDOW), oldest first.
    spare: dict[bytes, None] = dataclasses.field(default_factory=dict)
    queue: deque[bytes] = dataclasses.field(default_factory=deque)  # request ids waiting


@dataclass(slots=True)
class PendingCall:
    """A client's call forwarded (or queued) for a worker, answered later."""

    rid: bytes
    service: str
    caller: bytes  # the socket identity that last sent this request (retries change it)
    sid: bytes
    counter: int
    digest: bytes
    username: str
    level: int
    args: bytes  # the caller's JSON octets, forwarded as they came
    deadline: float
    worker: bytes | None = None


class WorkerRegistry:
    def __init__(self, sessions: SessionTable, builtins: dict[str, Any], audit: AuditFn,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 liveness: int = HEARTBEAT_LIVENESS) -> None:
        self.sessions = sessions
        self.builtins = builtins  # the broker's own services: names workers may not take
        self.audit = audit
        self.call_timeout = call_timeout
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.services: dict[str, WorkerService] = {}
        self.workers: dict[bytes, Worker] = {}
        self.pending: dict[bytes, PendingCall] = {}
        # caller session -> its calls in flight, request counter -> call id, oldest first
        self._by_session: dict[bytes, dict[int, bytes]] = {}
        self._out_counter = itertools.count(1)  # broker -> worker counters, never reused
        # Worker counters per session: only authenticated messages enter it.
        self.guard = ReplayGuard(ttl=SESSION_MAX_AGE)
        self._next_check = 0.0
        #: The operator's record (store.bindings()): service -> {level, usernames}. Only a
        #: bound principal may attach workers of a service, and the level is the record's.
        self.bindings: dict[str, dict[str, Any]] = {}

    # -- what callers see ----------------------------------------------------------------

    def level_of(self, name: str) -> Level | None:
        service = self.services.get(name)
        return service.level if service is not None else None

    def listing(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "level": int(s.level), "description": s.description,
                 "workers": len(s.workers)} for s in self.services.values()]

    def submit(self, session: Session, caller: bytes, counter: int, digest: bytes,
               name: str, args: bytes, now: float) -> list[Outgoing]:
        """Forward a CALL to a worker of ``name``, its args (JSON octets) as they came;
        RemoteError if none can take it."""
        service = self.services[name]
        if not service.workers:
            self.audit(session.username, f"call:{name}", "unavailable", now)
            raise RemoteError(ErrorCode.SERVICE_UNAVAILABLE,
                              f"service {name} has no worker attached")
        if len(args) > MAX_CALL_PAYLOAD:  # it would not fit the REQUEST
            raise RemoteError(ErrorCode.TOO_LARGE, f"arguments are over "
                              f"{MAX_CALL_PAYLOAD // 1024} KiB")
        if len(service.queue) >= MAX_QUEUED_REQUESTS:
            self.audit(session.username, f"call:{name}", "busy", now)
            raise RemoteError(ErrorCode.SERVICE_UNAVAILABLE, f"service {name} is overloaded")
        out: list[Outgoing] = []
        calls = self._by_session.get(session.sid, {})
        if len(calls) >= MAX_PIPELINE:
            # A caller keeps at most this many in flight: its oldest is given up and told
            # so now, rather than left to time out at its end (a worker's late answer to it
            # is dropped as any late reply is).
            out += self._answer(self.pending[calls[next(iter(calls))]], Status.ERROR, {
                "code": ErrorCode.SERVICE_UNAVAILABLE.value,
                "message": f"over {MAX_PIPELINE} calls in flight: this one was given up"},
                "given-up", now)
        calls = self._by_session.setdefault(session.sid, {})
        call = PendingCall(os.urandom(REQUEST_ID_SIZE), name, caller, session.sid, counter, digest,
                           session.username, int(session.level), args, now + self.call_timeout)
        self.pending[call.rid] = call
        calls[counter] = call.rid
        service.queue.append(call.rid)
        return out + self._dispatch(service, now)

    def retransmitted(self, sid: bytes, counter: int, digest: bytes, caller: bytes) -> bool:
        """An exact retry of a call still in flight: answer it on the retry's socket."""
        rid = self._by_session.get(sid, {}).get(counter)
        call = self.pending.get(rid) if rid is not None else None
        if call is None or call.digest != digest:
            return False
        call.caller = caller
        return True

    # -- worker messages -----------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[bytes], now: float) -> list[Outgoing]:
        """One message from a worker socket; never raises for anything the worker sent.

        What did not authenticate gets a clear ERROR (or, replayed, nothing at all); what
        did, and breaks the protocol, a sealed DISCONNECT that detaches the worker.
        """
        if len(frames) != 1:
            return [(identity, [worker_error(NO_CONTEXT, ErrorCode.BAD_REQUEST,
                                             "a worker message is one frame")])]
        data = frames[0]
        if len(data) > MAX_MESSAGE_SIZE:
            return [(identity, [worker_error(NO_CONTEXT, ErrorCode.TOO_LARGE,
                                             "message is over the size limit")])]
        worker = self.workers.get(identity)
        if worker is not None:
            out = self._reply_fast(worker, data, now)
            if out is not None:
                return out
        try:
            sid = peek(data).context
        except ProtocolError as exc:
            return [(identity, [worker_error(NO_CONTEXT, ErrorCode.BAD_REQUEST, str(exc))])]
        session = self.sessions.by_id.get(sid)
        if session is None or session.expired(now):
            out = self._detach(identity, now, "session ended")
            return out + [(identity, [worker_error(sid, ErrorCode.UNKNOWN_SESSION,
                                                   "no such session (log in again)")])]
        try:
            header, raw = open_worker_message(session.key, data, sid, Sender.WORKER)
        except ProtocolError as exc:
            log.info("bad worker message: %s", exc)
            return [(identity, [worker_error(sid, ErrorCode.BAD_REQUEST, str(exc))])]
        admitted = self.guard.admit(sid, header.counter, now,
                                    expires=session.created + SESSION_MAX_AGE)
        if admitted is False:  # dropped unanswered: a replay must not detach the real worker
            self.audit(session.username, "worker", "replayed", now)
            return []
        if admitted is None:
            return self._refuse(session, identity, ErrorCode.TOO_MANY_ATTEMPTS,
                                "too many worker sessions; try again later", now)
        session.last_seen = now
        worker = self.workers.get(identity)
        if worker is not None and worker.sid != sid:
            return self._refuse(session, identity, ErrorCode.BAD_REQUEST,
                                "this socket is attached under another session", now)
        try:
            if header.kind == _REPLY and worker is not None:  # the call path: first
                worker.expiry = now + self.heartbeat_interval * self.liveness
                return self._reply(worker, raw, now)
            command = Kind(header.kind)
            if command is Kind.READY:
                return self._ready(session, identity, decode_worker_body(command, raw), now)
            if worker is None:
                if command is Kind.DISCONNECT:  # nothing to detach (e.g. a socket replaced by
                    return []                  # a READY on a new one, read before this)
                return self._refuse(session, identity, ErrorCode.BAD_REQUEST,
                                    "not attached: send READY first", now)
            worker.expiry = now + self.heartbeat_interval * self.liveness
            decode_worker_body(command, raw)  # HEARTBEAT empty, DISCONNECT JSON
            if command is Kind.DISCONNECT:
                log.info("worker %s of %s detached", worker.username, worker.service)
                return self._detach(identity, now, "worker detached")
            return []  # HEARTBEAT: liveness already refreshed
        except ProtocolError as exc:
            return self._refuse(session, identity, ErrorCode.BAD_REQUEST, str(exc), now)
        except RemoteError as exc:
            return self._refuse(session, identity, exc.code, exc.message, now)

    def _reply_fast(self, worker: Worker, data: bytes, now: float) -> list[Outgoing] | None:
        """The call path: a REPLY from an attached worker in its live session, checked as
        :meth:`handle` checks it (the header is the worker's REPLY header but the counter,
        compared in constant time, then the tag, then the replay guard). None for anything
        else, which :meth:`handle` then takes the long way (and answers as it must)."""
        session = self.sessions.by_id.get(worker.sid)
        if session is None or session.expired(now):
            return None
        try:
            opened = open_prefixed(session.key, data, worker.reply_prefix)
        except ProtocolError:
            return None
        if opened is None:
            return None
        counter, raw = opened
        admitted = self.guard.admit(worker.sid, counter, now,
                                    expires=session.created + SESSION_MAX_AGE)
        if not admitted:
            return None  # replayed or a full guard: the long way drops or refuses it
        session.last_seen = now
        worker.expiry = now + self.heartbeat_interval * self.liveness
        try:
            return self._reply(worker, raw, now)
        except ProtocolError as exc:
            return self._refuse(session, worker.identity, ErrorCode.BAD_REQUEST, str(exc), now)

    def _ready(self, session: Session, identity: bytes, body: dict[str, Any], now: float,
               ) -> list[Outgoing]:
        if identity in self.workers:
            raise ProtocolError("already attached")
        if session.kind is not PrincipalKind.SERVICE:
            raise RemoteError(ErrorCode.FORBIDDEN, "only principals of kind 'service' may "
                              "attach workers")
        name = field(body, "service", str)
        if not SERVICE_NAME_RE.match(name):
            raise ProtocolError("service name must be 1-64 of a-z 0-9 . _ -, "
                                "starting with a letter")
        if name in self.builtins:
            raise RemoteError(ErrorCode.FORBIDDEN, f"{name} is a built-in broker service")
        try:
            asked = Level(field(body, "level", int))
        except ValueError:
            raise ProtocolError("level must be 1-5") from None
        description = str(body.get("description") or "")[:MAX_DESCRIPTION]
        instance = body.get("instance", "")
        if instance != "" and not (isinstance(instance, str) and INSTANCE.match(instance)):
            raise ProtocolError("instance must be 16 lowercase hex digits")
        binding = self.bindings.get(name)
        if binding is None or session.username not in binding["usernames"]:
            raise RemoteError(ErrorCode.FORBIDDEN, f"{session.username} may not offer {name}; "
                              "the operator binds it with `agora admin services bind "
                              f"{name} --principal {session.username} --level N`")
        level = Level(binding["level"])  # the record's, never the first worker's
        if asked != level:
            raise RemoteError(ErrorCode.FORBIDDEN, f"{name} is bound at level {int(level)}; "
                              f"start the worker with --level {int(level)}")
        if session.level < level:
            raise RemoteError(ErrorCode.FORBIDDEN, f"{session.username} has level "
                              f"{int(session.level)}; cannot offer a level {int(level)} service")
        # The same worker on a new socket (it left the old one after a silence): its old
        # attachment goes now, before calls are handed to a socket nobody reads. Its own
        # DISCONNECT on the old socket may be read after this READY, or never.
        out = self._detach_replaced(session.sid, instance, now) if instance else []
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = WorkerService(name, level, description)
        service.level = level
        worker = Worker(identity, session.sid, session.username, name,
                        now + self.heartbeat_interval * self.liveness,
                        now + self.heartbeat_interval, instance=instance)
        self.workers[identity] = worker
        service.workers[identity] = worker
        service.idle.append(identity)
        self.audit(session.username, f"worker:{name}", "attached", now, f"level={int(level)}")
        log.info("worker %s attached for %s (level %d)", session.username, name, level)
        ack = self._to_worker(session, identity, Kind.READY,
                              {"service": name, "level": int(level)})
        return [*out, ack, *self._dispatch(service, now)]

    def _detach_replaced(self, sid: bytes, instance: str, now: float) -> list[Outgoing]:
        """Detach the attachments of worker ``instance`` of session ``sid`` (its old socket:
        the READY being handled comes on another, as ``identity in self.workers`` was
        refused before)."""
        old = [w.identity for w in self.workers.values()
               if w.instance == instance and w.sid == sid]
        out: list[Outgoing] = []
        for identity in old:
            log.info("worker %s attached again on a new socket; its old one is detached",
                     self.workers[identity].username)
            out += self._detach(identity, now, "worker reconnected")
        return out

    def _reply(self, worker: Worker, body: bytes, now: float) -> list[Outgoing]:
        rid, ok, data = decode_reply(body)
        requests = worker.requests
        if requests.pop(rid, None) is None:
            raise ProtocolError("reply to a request this worker was not given")
        service = self.services[worker.service]
        if requests:
            service.spare[worker.identity] = None
        else:
            service.spare.pop(worker.identity, None)
            service.idle.append(worker.identity)
        call = self.pending.get(rid)
        if call is None:
            log.info("late reply from %s for %s dropped", worker.username, worker.service)
            self.audit(worker.username, f"worker:{worker.service}", "late-reply", now)
            out: list[Outgoing] = []
        elif ok:
            # The result's JSON octets go to the caller as they came: the broker does not
            # parse what it only forwards (the caller's decoder checks them).
            out = self._answer(call, Status.OK, {"result": data}, "ok", now)
        else:
            try:
                error = decode_json(data)
            except ProtocolError:
                error = {}
            try:
                code = ErrorCode(error.get("code"))
            except ValueError:
                code = ErrorCode.SERVICE_FAILED
            if code not in WORKER_ERROR_CODES:
                code = ErrorCode.SERVICE_FAILED
            # Cut to one short line by the refusal codec (agora.wire.encode_refusal).
            message = str(error.get("message") or f"service {call.service} failed")
            out = self._answer(call, Status.ERROR, {"code": code.value, "message": message},
                               "failed" if code is ErrorCode.SERVICE_FAILED else "refused", now)
        if service.queue:
            out += self._dispatch(service, now)
        return out

    def rebind(self, bindings: dict[str, dict[str, Any]], now: float) -> list[Outgoing]:
        """The operator changed the bindings: new levels apply at once, and workers whose
        principal may no longer offer their service are detached and told why."""
        self.bindings = bindings
        out: list[Outgoing] = []
        for worker in list(self.workers.values()):
            binding = bindings.get(worker.service)
            if binding is not None and worker.username in binding["usernames"]:
                self.services[worker.service].level = Level(binding["level"])
                continue
            session = self.sessions.get(worker.sid)
            if session is None:
                out += self._detach(worker.identity, now, "session ended")
            else:
                out += self._refuse(session, worker.identity, ErrorCode.FORBIDDEN,
                                    f"{worker.username} may no longer offer {worker.service}",
                                    now)
        return out

    # -- timers --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Dead workers, ended sessions, call deadlines and heartbeats."""
        if now < self._next_check:
            return []
        self._next_check = now + CHECK_INTERVAL
        out: list[Outgoing] = []
        for worker in list(self.workers.values()):
            session = self.sessions.get(worker.sid)
            if session is None:
                out += self._detach(worker.identity, now, "session ended")
                out.append((worker.identity, [worker_error(
                    worker.sid, ErrorCode.UNKNOWN_SESSION, "your session ended")]))
            elif session.level < self.services[worker.service].level:
                out += self._refuse(session, worker.identity, ErrorCode.FORBIDDEN,
                                    "your level is now below the service's", now)
            elif worker.expiry < now:
                log.info("worker %s of %s is silent: presumed dead", worker.username,
                         worker.service)
                out += self._detach(worker.identity, now, "worker died")
            elif worker.requests and next(iter(worker.requests.values())) < now:
                out += self._refuse(session, worker.identity, ErrorCode.TIMEOUT,
                                    "no answer to a request long after its timeout: "
                                    "detached as wedged", now)
            elif worker.next_heartbeat <= now:
                worker.next_heartbeat = now + self.heartbeat_interval
                out.append(self._to_worker(session, worker.identity, Kind.HEARTBEAT,
                                           {}))
        for call in [c for c in self.pending.values() if c.deadline <= now]:
            log.info("call %s by %s timed out", call.service, call.username)
            out += self._answer(call, Status.ERROR, {
                "code": ErrorCode.TIMEOUT.value,
                "message": f"service {call.service} did not answer within "
                           f"{self.call_timeout:g}s"}, "timeout", now)
        return out

    # -- internals -----------------------------------------------------------------------

    def _dispatch(self, service: WorkerService, now: float) -> list[Outgoing]:
        """Hand queued requests to workers: idle ones first, least recently used first, then
        those with room for one more (WORKER_WINDOW)."""
        out: list[Outgoing] = []
        queue, idle, spare = service.queue, service.idle, service.spare
        while queue and (idle or spare):
            call = self.pending.get(queue.popleft())
            if call is None:
                continue  # timed out or abandoned while queued
            if idle:
                identity = idle.popleft()
            else:
                identity = next(iter(spare))
                del spare[identity]
            worker = self.workers[identity]
            session = self.sessions.by_id.get(worker.sid)
            if session is None:  # ended since the last tick: put the call back
                queue.appendleft(call.rid)
                out += self._detach(identity, now, "session ended")
                continue
            # Its caller gets `timeout` at the deadline; a worker still on it well after that
            # is wedged (heartbeats alone prove only that its loop runs, not its handler).
            worker.requests[call.rid] = call.deadline + max(self.call_timeout, WEDGED_GRACE)
            if len(worker.requests) < WORKER_WINDOW:
                spare[identity] = None
            call.worker = identity
            out.append(self._request(session, worker, call, now))
        return out

    def _answer(self, call: PendingCall, status: Status, body: dict[str, Any], outcome: str,
                now: float) -> list[Outgoing]:
        """Answer a pending call, bound to its caller's session and request counter."""
        del self.pending[call.rid]
        calls = self._by_session.get(call.sid)
        if calls is not None and calls.get(call.counter) == call.rid:
            del calls[call.counter]
            if not calls:
                del self._by_session[call.sid]
        self.audit(call.username, f"call:{call.service}", outcome, now)
        session = self.sessions.get(call.sid)
        if session is None:  # the caller logged out or was revoked meanwhile
            return []
        if status is Status.OK:  # = session_reply(..., Kind.RESULT, result), header packed once
            sealed = seal_prefixed(session.key, session.result_head, call.counter,
                                   body["result"])
        else:
            sealed = session_refusal(session.key, call.sid, call.counter,
                                     str(body.get("code")), str(body.get("message")))
        reply = [sealed]
        session.remember(call.counter, call.digest, reply)  # for the caller's retries
        return [(call.caller, reply)]

    def _detach(self, identity: bytes, now: float, reason: str) -> list[Outgoing]:
        """Forget a worker; its in-flight call fails at once instead of timing out."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return []
        service = self.services[worker.service]
        service.workers.pop(identity, None)
        service.spare.pop(identity, None)
        if identity in service.idle:
            service.idle.remove(identity)
        self.audit(worker.username, f"worker:{worker.service}", "detached", now, reason)
        out: list[Outgoing] = []
        for rid in worker.requests:  # its calls fail at once
            call = self.pending.get(rid)
            if call is None:
                continue
            log.info("call %s by %s failed: %s", call.service, call.username, reason)
            out += self._answer(call, Status.ERROR, {
                "code": ErrorCode.SERVICE_FAILED.value,
                "message": f"the worker serving {call.service} went away mid-request "
                           f"({reason})"}, "worker-died", now)
        return out

    def _refuse(self, session: Session, identity: bytes, code: ErrorCode, message: str,
                now: float) -> list[Outgoing]:
        """Detach (if attached) and tell the worker why, sealed under its session."""
        log.info("worker %s refused: %s", session.username, message)
        out = self._detach(identity, now, code.value)
        self.audit(session.username, "worker", "refused", now, code.value)
        out.append(self._to_worker(session, identity, Kind.DISCONNECT,
                                   {"code": code.value, "message": message}))
        return out

    def _request(self, session: Session, worker: Worker, call: PendingCall, now: float,
                 ) -> Outgoing:
        """The REQUEST handing ``call`` to a worker: the caller's args octets as they came."""
        body = encode_request(call.rid, call.service.encode(), call.username.encode(),
                              call.level, max(0.0, call.deadline - now), call.args)
        # = seal(Header(WORKER, REQUEST, BROKER, worker's session id, counter), body)
        return worker.identity, [seal_prefixed(session.key, worker.request_prefix,
                                        next(self._out_counter), body)]

    def _to_worker(self, session: Session, identity: bytes, command: Kind,
                   body: dict[str, Any]) -> Outgoing:
        return identity, [seal_worker_message(session.key, session.sid,
                                              next(self._out_counter), Sender.BROKER,
                                              command, body)]
