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

The handler runs in a helper thread so the worker keeps heart-beating during long calls;
one request at a time, as in 7/MDP: run several workers for parallelism. When the broker
goes silent, restarts or forgets the session, the worker reconnects (logging in again if
needed) and attaches anew.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from agents.agent import Agent
from agora.errors import AgoraError, LocalError, ProtocolError, RemoteError
from agora.protocol import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    MAX_CALL_PAYLOAD,
    Direction,
    ErrorCode,
    Level,
    WorkerCommand,
)
from agora.sockets import make_socket
from agora.wire import (
    open_worker_message,
    parse_to_worker_frames,
    seal_worker_message,
    worker_frames,
)

log = logging.getLogger("agora.worker")

#: Refusals after which attaching again cannot help: stop and tell the operator.
FATAL_CODES = {ErrorCode.FORBIDDEN, ErrorCode.BAD_REQUEST, ErrorCode.REVOKED,
               ErrorCode.FLAGGED}


@dataclass(frozen=True)
class Caller:
    """Who made the call, as the broker's session says (never as the request says)."""

    username: str
    level: int


def invoke(handler: Callable[..., Any], args: dict[str, Any], caller: Caller) -> Any:
    """Call ``handler`` with ``args`` as keywords; RemoteError(bad-request) if they do not fit."""
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
        self.level = Level(int(level))
        self.description = description or (inspect.getdoc(handler) or "").split("\n")[0]
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.attach_timeout = attach_timeout
        #: Set to stop serve(); it detaches politely and returns within a heartbeat.
        self.stop = threading.Event()
        #: Set once the broker acknowledged READY (cleared while reconnecting).
        self.attached = threading.Event()
        self.served = 0
        #: The thread serving, when started by run_worker().
        self.thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self._last_in = 0  # highest broker counter seen: older ones are replays
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{service}")
        # The helper thread writes a byte here when the handler is done, so the loop (which
        # alone owns the socket) wakes at once instead of at its next poll timeout.
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._wake_open = True

    # -- the loop ------------------------------------------------------------------------

    def serve(self) -> None:
        """Attach and serve until ``stop`` is set; RemoteError if the broker refuses us.

        Call it once per ServiceWorker: it releases the helper thread when it returns.
        """
        try:
            while not self.stop.is_set():
                self._connect()
                self._serve_connection()
        finally:
            self._close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._wake_lock:  # a handler finishing later must not write to a reused fd
                self._wake_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _serve_connection(self) -> None:
        """One attachment: returns to reconnect, raises when it cannot go on."""
        assert self._socket is not None
        expiry = time.monotonic() + self.attach_timeout
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        busy: tuple[str, Future[Any]] | None = None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        # Bounded so stop and heartbeats are noticed even when nothing arrives.
        poll_ms = min(100, int(self.heartbeat_interval * 1000))
        while not self.stop.is_set():
            ready = dict(poller.poll(poll_ms))
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._socket in ready:
                try:
                    command, body = self._receive()
                except ProtocolError as exc:
                    log.info("ignored a bad message from the broker: %s", exc)
                    continue
                except RemoteError as exc:
                    self._refused(exc)
                    return
                expiry = time.monotonic() + self.heartbeat_interval * self.liveness
                if command is WorkerCommand.READY:
                    self.attached.set()
                    log.info("attached as %s (level %d)", self.service, self.level)
                elif command is WorkerCommand.REQUEST:
                    rid = body.get("id")
                    if busy is not None or not isinstance(rid, str):
                        log.info("ignored a request (busy, or without an id)")
                    else:
                        busy = (rid, self._pool.submit(self._run, body.get("args"),
                                                       body.get("caller")))
                        busy[1].add_done_callback(self._wake)
                elif command is WorkerCommand.DISCONNECT:
                    self._refused(RemoteError(str(body.get("code", "internal")),
                                              str(body.get("message", "disconnected"))))
                    return
            if busy is not None and busy[1].done():
                self.served += 1  # counted before the caller can see the answer
                self._send(WorkerCommand.REPLY, {"id": busy[0], **busy[1].result()})
                busy = None
                next_heartbeat = time.monotonic() + self.heartbeat_interval
            now = time.monotonic()
            if now >= expiry:
                log.info("broker silent for %.1fs: reconnecting", self.heartbeat_interval
                         * self.liveness)
                self.attached.clear()
                return
            if now >= next_heartbeat:
                self._send(WorkerCommand.HEARTBEAT, {})
                next_heartbeat = now + self.heartbeat_interval
        if self.attached.is_set():
            self._send(WorkerCommand.DISCONNECT, {})

    def _wake(self, future: Future[Any]) -> None:
        with self._wake_lock:
            if self._wake_open:
                os.write(self._wake_w, b".")

    def _run(self, args: Any, caller: Any) -> dict[str, Any]:
        """Run the handler (in the helper thread); the REPLY body, ok or error."""
        try:
            if not isinstance(args, dict) or not isinstance(caller, dict):
                raise RemoteError(ErrorCode.BAD_REQUEST, "malformed request")
            result = invoke(self.handler, args, Caller(str(caller.get("username")),
                                                       int(caller.get("level") or 0)))
            # It must travel as JSON and fit the broker's reply to the caller: fail here.
            if len(json.dumps(result)) > MAX_CALL_PAYLOAD:
                raise RemoteError(ErrorCode.SERVICE_FAILED, f"result of {self.service} is "
                                  f"over {MAX_CALL_PAYLOAD // 1024} KiB")
            return {"ok": True, "result": result}
        except RemoteError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except Exception as exc:
            log.exception("handler of %s failed", self.service)
            return {"ok": False, "error": {"code": ErrorCode.SERVICE_FAILED.value,
                                           "message": f"service {self.service} failed "
                                                      f"({type(exc).__name__})"}}

    def _refused(self, exc: RemoteError) -> None:
        self.attached.clear()
        if exc.code in FATAL_CODES:
            raise exc
        log.info("broker said %s: %s; attaching again", exc.code.value, exc.message)
        if exc.code is ErrorCode.UNKNOWN_SESSION:
            self.agent.login()  # the broker restarted or the session expired
            self._last_in = 0  # a new session key: the broker's counters start again
        else:
            time.sleep(min(1.0, self.heartbeat_interval))

    # -- socket and sealing --------------------------------------------------------------

    def _connect(self) -> None:
        self._close()
        sock = make_socket(self.agent.context, zmq.DEALER, send_timeout=1.0)
        sock.connect(self.agent.broker)
        self._socket = sock
        self._send(WorkerCommand.READY, {"service": self.service, "level": int(self.level),
                                         "description": self.description})

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def _send(self, command: WorkerCommand, body: dict[str, Any]) -> None:
        session = self.agent.session
        if session is None or self._socket is None:
            raise LocalError("worker is not logged in")
        session.counter += 1  # shared with the agent's own requests: one counter per session
        sealed = seal_worker_message(session.box, session.counter, Direction.TO_BROKER,
                                     command, body)
        try:
            self._socket.send_multipart([b"", *worker_frames(session.sid, sealed)])
        except zmq.Again:
            log.info("could not send %s to the broker", command.name)

    def _receive(self) -> tuple[WorkerCommand, dict[str, Any]]:
        assert self._socket is not None and self.agent.session is not None
        frames = self._socket.recv_multipart()
        if not frames or frames[0] != b"":
            raise ProtocolError("missing empty delimiter")
        sealed = parse_to_worker_frames(frames[1:])
        counter, command, body = open_worker_message(self.agent.session.box, sealed,
                                                     Direction.TO_WORKER)
        if counter <= self._last_in:
            raise ProtocolError("replayed broker message")
        self._last_in = counter
        return command, body


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
