"""A service worker: serves one service for the broker, over an authenticated DEALER socket.

    agent = Agent(home)                      # a principal of kind "service", registered
    agent.login(password)
    worker = ServiceWorker(agent, "wordcount", word_count, level=2)
    worker.serve()                           # until worker.stop is set (run it in a thread)

The handler is a plain function called with the request's arguments as keyword arguments
(``word_count(text="...")``); if it has a parameter named ``caller`` it also gets a
:class:`Caller` (username and level, as the broker knows them). Arguments that do not fit
its signature give the caller ``bad-request``; a RemoteError it raises is passed on; any
other exception becomes ``service-failed`` (its text stays in this process's log).

The handler runs in the loop's own thread (no hand-off to another thread on the call
path); while it runs, the loop lends the socket to a helper thread that keeps heart-beating
if the call is long. One request at a time, as in 7/MDP (the broker may send the next
one before the first is answered: it waits in the socket): run several workers for
parallelism. When the broker
goes silent, restarts or forgets the session, the worker reconnects (logging in again if
needed) and attaches anew.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from agents.agent import Agent
from agora.envelope import Header, ReplayGuard, header_prefix, open_prefixed, seal, seal_prefixed
from agora.errors import (
    AgoraError,
    LocalError,
    ProtocolError,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.protocol import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    MAX_CALL_PAYLOAD,
    SESSION_MAX_AGE,
    Channel,
    ErrorCode,
    Kind,
    Level,
    Sender,
)
from agora.sockets import make_socket
from agora.wire import (
    compact_json,
    decode_json,
    decode_request,
    decode_worker_body,
    encode_refusal,
    encode_reply,
    encode_worker_body,
    open_to_worker,
)

log = logging.getLogger("agora.worker")

#: Seconds the DISCONNECT said on a socket left for silence may still take to go out
#: (the socket is closed at once; only the process's exit could wait this long for it).
DISCONNECT_LINGER = 0.5

#: Refusals after which attaching again cannot help: stop and tell the operator.
FATAL_CODES = {ErrorCode.FORBIDDEN, ErrorCode.BAD_REQUEST, ErrorCode.REVOKED,
               ErrorCode.FLAGGED}


@dataclass(frozen=True)
class Caller:
    """Who made the call, as the broker's session says (never as the request says)."""

    username: str
    level: int


def invoke(handler: Callable[..., Any], args: dict[str, Any], caller: Caller,
           signature: inspect.Signature | None = None) -> Any:
    """Call ``handler`` with ``args`` as keywords; RemoteError(bad-request) if they do not fit.
    ``signature`` is the handler's, when the caller keeps it (it is looked up otherwise)."""
    if signature is None:
        signature = inspect.signature(handler)
    kwargs = dict(args)
    if "caller" in signature.parameters:
        if "caller" in kwargs:
            raise RemoteError(ErrorCode.BAD_REQUEST, "'caller' is not an argument you can pass")
        kwargs["caller"] = caller
    try:
        bound = signature.bind(**kwargs)
    except TypeError as exc:
        raise RemoteError(ErrorCode.BAD_REQUEST, f"bad arguments: {exc}") from None
    return handler(*bound.args, **bound.kwargs)


class Keywords:
    """How a handler takes its arguments, worked out once: for a handler whose parameters
    can all be passed by keyword, :meth:`invoke` checks the names itself (what
    ``Signature.bind`` would refuse, it refuses, with bind's own words) and calls it
    directly; any other handler goes through :func:`invoke`."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self.signature = inspect.signature(handler)
        params = self.signature.parameters.values()
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.simple = all(p.kind in keyword or p.kind is inspect.Parameter.VAR_KEYWORD
                          for p in params)
        self.names = frozenset(p.name for p in params if p.kind in keyword)
        self.required = frozenset(p.name for p in params
                                  if p.kind in keyword and p.default is p.empty)
        self.any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.wants_caller = "caller" in self.signature.parameters

    def invoke(self, args: dict[str, Any], caller: Caller) -> Any:
        """``invoke(handler, args, caller)``, without binding a signature per call."""
        if not self.simple or "caller" in args:
            return invoke(self.handler, args, caller, self.signature)
        kwargs = {**args, "caller": caller} if self.wants_caller else args
        if not self.required.issubset(kwargs) or not (self.any_name
                                                      or self.names.issuperset(kwargs)):
            return invoke(self.handler, args, caller, self.signature)  # bind says why
        return self.handler(**kwargs)


class ServiceWorker:
    def __init__(self, agent: Agent, service: str, handler: Callable[..., Any],
                 level: int | Level = Level.PUBLIC, description: str = "",
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 liveness: int = HEARTBEAT_LIVENESS, attach_timeout: float = 5.0) -> None:
        if agent.session is None:
            raise LocalError("log the worker's agent in before serving")
        self.agent = agent
        self.service = service
        self.handler = handler
        self._keywords = Keywords(handler)  # its signature, worked out once
        self.level = Level(int(level))
        self.description = description or (inspect.getdoc(handler) or "").split("\n")[0]
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.attach_timeout = attach_timeout
        #: Set to stop serve(); it detaches politely and returns within a heartbeat (after
        #: the running call, if there is one).
        self.stop = threading.Event()
        #: Set once the broker acknowledged READY (cleared while reconnecting).
        self.attached = threading.Event()
        self.served = 0
        #: Said in every READY: the broker then knows a READY on a new socket (after a
        #: silence) is this worker again, and detaches the old socket's attachment at once.
        self.instance = secrets.token_hex(8)
        #: The thread serving, when started by run_worker().
        self.thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        # The broker's counters per session: a replayed broker message is dropped.
        self._guard = ReplayGuard(ttl=SESSION_MAX_AGE, max_contexts=16)
        # Whoever holds this lock owns the socket (and the session counter): the loop, all
        # the time except while a handler runs, when the heart-beating helper may take it.
        self._socket_lock = threading.Lock()
        self._handler_started: float | None = None  # monotonic time, while a handler runs
        self._last_sent = 0.0
        # The session's REQUEST (in) and REPLY (out) headers but the counter, packed once per
        # session (envelope.header_prefix): (session id, request prefix, reply prefix).
        self._prefixes = (b"", b"", b"")

    @property
    def in_call(self) -> bool:
        """Whether a handler is running now (in the thread that called :meth:`serve`)."""
        return self._handler_started is not None

    # -- the loop ------------------------------------------------------------------------

    def serve(self) -> None:
        """Attach and serve until ``stop`` is set; RemoteError if the broker refuses us.

        A handler running when ``stop`` is set finishes first (its answer is sent).
        """
        done = threading.Event()
        helper = threading.Thread(target=self._heartbeat_during_calls, args=(done,),
                                  daemon=True, name=f"worker-{self.service}-heartbeat")
        self._socket_lock.acquire()
        helper.start()
        try:
            while not self.stop.is_set():
                self._connect()
                self._serve_connection()
        finally:
            self._close()
            done.set()
            self._socket_lock.release()
            helper.join(self.heartbeat_interval + 1)

    def _heartbeat_during_calls(self, done: threading.Event) -> None:
        """The helper thread: heartbeats while a long handler keeps the loop busy."""
        while not done.wait(self.heartbeat_interval / 4):
            started = self._handler_started
            if started is None or time.monotonic() - self._last_sent < self.heartbeat_interval:
                continue
            if self._socket_lock.acquire(timeout=self.heartbeat_interval / 4):
                try:
                    if self._handler_started is not None and self._socket is not None:
                        self._send(Kind.HEARTBEAT, {})
                finally:
                    self._socket_lock.release()

    def _call(self, args: bytes, caller: Caller) -> tuple[bool, bytes]:
        """Run the handler here, lending the socket to the helper thread meanwhile."""
        self._handler_started = time.monotonic()
        self._socket_lock.release()
        try:
            return self._run(args, caller)
        finally:
            self._socket_lock.acquire()
            self._handler_started = None

    def _serve_connection(self) -> None:
        """One attachment: returns to reconnect, raises when it cannot go on."""
        assert self._socket is not None
        # A blocking receive with a timeout (no poller: one system call less per request),
        # bounded so stop and heartbeats are noticed even when nothing arrives.
        self._socket.setsockopt(zmq.RCVTIMEO, min(100, int(self.heartbeat_interval * 1000)))
        silence = self.heartbeat_interval * self.liveness
        expiry = time.monotonic() + self.attach_timeout
        while not self.stop.is_set():
            try:
                kind, raw = self._receive()
            except zmq.Again:  # nothing within the timeout
                kind = None
            except ProtocolError as exc:
                log.info("ignored a bad message from the broker: %s", exc)
                continue
            except RemoteError as exc:
                self._refused(exc)
                return
            if kind == _REQUEST:
                try:
                    rid, _, username, level, _, args = decode_request(raw)
                except ProtocolError as exc:
                    log.info("ignored a bad request from the broker: %s", exc)
                    continue
                ok, answer = self._call(args, Caller(username, level))
                self.served += 1  # counted before the caller can see the answer
                self._send_body(Kind.REPLY, encode_reply(rid, ok, answer))
                # What the broker sent during a long call is read next: not silence.
                now = time.monotonic()
                expiry = now + silence
            else:
                now = time.monotonic()
                if kind is not None:
                    expiry = now + silence
                    if kind == _READY:
                        self.attached.set()
                        log.info("attached as %s (level %d)", self.service, self.level)
                    elif kind == _DISCONNECT:
                        try:
                            body = decode_worker_body(Kind.DISCONNECT, raw)
                        except ProtocolError:
                            body = {}  # sealed by the broker all the same: detached
                        self._refused(RemoteError(str(body.get("code", "internal")),
                                                  str(body.get("message", "disconnected"))))
                        return
                elif now >= expiry:
                    log.info("broker silent for %.1fs: reconnecting", silence)
                    self.attached.clear()
                    # Say so on the old socket before leaving it: a broker that was only
                    # slow then detaches this attachment as it reads on, instead of handing
                    # calls to a socket nobody reads (they would fail seconds later as
                    # "worker died"). Given a moment to go out; nobody waits for it.
                    self._send(Kind.DISCONNECT, {})
                    self._close(linger=DISCONNECT_LINGER)
                    return
            if now - self._last_sent >= self.heartbeat_interval:
                self._send(Kind.HEARTBEAT, {})
        if self.attached.is_set():
            self._send(Kind.DISCONNECT, {})

    def _run(self, args: bytes, caller: Caller) -> tuple[bool, bytes]:
        """Run the handler on the request's args (JSON octets): (ok, the REPLY's JSON)."""
        try:
            try:
                kwargs = decode_json(args) if args else {}
            except ProtocolError:
                raise RemoteError(ErrorCode.BAD_REQUEST, "arguments are not a JSON "
                                  "object") from None
            result = self._keywords.invoke(kwargs, caller)
            # Encoded once, here: it must travel as JSON and fit the broker's reply to the
            # caller, which forwards these octets as they are.
            data = compact_json(result)
            if len(data) > MAX_CALL_PAYLOAD:
                raise RemoteError(ErrorCode.SERVICE_FAILED, f"result of {self.service} is "
                                  f"over {MAX_CALL_PAYLOAD // 1024} KiB")
            return True, data
        except RemoteError as exc:
            return False, encode_refusal(exc.code, exc.message)
        except Exception as exc:
            log.exception("handler of %s failed", self.service)
            return False, encode_refusal(ErrorCode.SERVICE_FAILED,
                                         f"service {self.service} failed "
                                         f"({type(exc).__name__})")

    def _refused(self, exc: RemoteError) -> None:
        self.attached.clear()
        if exc.code in FATAL_CODES:
            raise exc
        log.info("broker said %s: %s; attaching again", exc.code.value, exc.message)
        if exc.code is ErrorCode.UNKNOWN_SESSION:
            self.agent.login()  # the broker restarted or the session expired: a new session
        else:
            time.sleep(min(1.0, self.heartbeat_interval))

    # -- socket and sealing --------------------------------------------------------------

    def _connect(self) -> None:
        self._close()
        sock = make_socket(self.agent.context, zmq.DEALER, send_timeout=1.0)
        sock.connect(self.agent.broker)
        self._socket = sock
        self._send(Kind.READY, {"service": self.service, "level": int(self.level),
                                "description": self.description, "instance": self.instance})

    def _close(self, linger: float = 0.0) -> None:
        if self._socket is not None:
            self._socket.close(int(linger * 1000))
            self._socket = None

    def _send(self, command: Kind, body: dict[str, Any]) -> None:
        self._send_body(command, encode_worker_body(command, body))

    def _send_body(self, command: Kind, body: bytes) -> None:
        session = self.agent.session
        sock = self._socket
        if session is None or sock is None:
            raise LocalError("worker is not logged in")
        # The worker's own sequence in this session (the agent's requests have theirs).
        with _COUNTER_LOCK:
            session.worker_counter += 1
            counter = session.worker_counter
        if command is Kind.REPLY:  # = seal(Header(WORKER, REPLY, WORKER, sid, counter), body)
            envelope = seal_prefixed(session.key, self._prefix(session.sid)[2], counter, body)
        else:
            envelope = seal(session.key, Header(Channel.WORKER, command, Sender.WORKER,
                                                session.sid, counter), body)
        try:
            sock.send(envelope)  # one frame, no empty delimiter (PROTOCOL.md 4.3)
            self._last_sent = time.monotonic()
        except zmq.Again:
            log.info("could not send %s to the broker", command.name)

    def _receive(self) -> tuple[int, bytes]:
        """One broker message: (kind, raw body); zmq.Again if none came in time;
        ProtocolError to ignore it; RemoteError UNKNOWN_SESSION when the broker says (in
        clear) it does not know the session."""
        session = self.agent.session
        sock = self._socket
        assert sock is not None and session is not None
        # One frame, the envelope (no empty delimiter: PROTOCOL.md 4.3), received uncopied
        # for its "more" flag (no RCVMORE look-up); the broker is the only peer of this socket.
        frame = sock.recv(copy=False)
        if frame.more:
            _discard(sock, frame)
            raise ProtocolError("not a worker-channel message")
        data = frame.bytes
        # A REQUEST in this session: checked against its header packed once (constant time),
        # then the tag; anything else the long way, which says why it is refused.
        opened = open_prefixed(session.key, data, self._prefix(session.sid)[1])
        if opened is not None:
            counter, raw = opened
            if not self._guard.admit(session.sid, counter, time.time()):
                raise ProtocolError("replayed broker message")
            return _REQUEST, raw
        try:
            header, raw = open_to_worker(session.key, data, session.sid)
        except UnauthenticatedRefusal as exc:
            # Unauthenticated: acted on only by logging in again, which proves itself.
            if exc.code == ErrorCode.UNKNOWN_SESSION.value:
                raise RemoteError(ErrorCode.UNKNOWN_SESSION, exc.message) from None
            raise
        if not self._guard.admit(session.sid, header.counter, time.time()):
            raise ProtocolError("replayed broker message")
        return header.kind, raw


    def _prefix(self, sid: bytes) -> tuple[bytes, bytes, bytes]:
        """(sid, REQUEST prefix, REPLY prefix) of session ``sid``, packed once per session."""
        if self._prefixes[0] != sid:
            self._prefixes = (sid, header_prefix(Channel.WORKER, Kind.REQUEST, Sender.BROKER,
                                                 sid),
                              header_prefix(Channel.WORKER, Kind.REPLY, Sender.WORKER, sid))
        return self._prefixes


def _discard(sock: zmq.Socket, frame: zmq.Frame) -> None:
    """Throw away the rest of a message whose ``frame`` was just received."""
    while frame.more:
        frame = sock.recv(copy=False)


#: Worker-channel kinds as plain ints, compared per message without making enum members.
_READY, _REQUEST, _DISCONNECT = int(Kind.READY), int(Kind.REQUEST), int(Kind.DISCONNECT)

_COUNTER_LOCK = threading.Lock()



def run_worker(agent: Agent, service: str, handler: Callable[..., Any], level: int,
               description: str = "", stop: threading.Event | None = None) -> ServiceWorker:
    """Start a ServiceWorker in a daemon thread; wait until the broker accepted it."""
    worker = ServiceWorker(agent, service, handler, level, description)
    if stop is not None:
        worker.stop = stop
    errors: list[AgoraError] = []

    def target() -> None:
        try:
            worker.serve()
        except AgoraError as exc:
            errors.append(exc)
            worker.stop.set()

    worker.thread = threading.Thread(target=target, daemon=True, name=f"worker-{service}")
    worker.thread.start()
    deadline = time.monotonic() + worker.attach_timeout
    while not worker.attached.wait(0.02):
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            worker.stop.set()
            raise LocalError(f"the broker did not accept worker {service} in time")
    return worker
