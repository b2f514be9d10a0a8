"""The broker's socket loop: a ZeroMQ ROUTER around :class:`broker.core.BrokerCore`.

All the protocol lives in the core; this module only receives, strips and re-adds the
routing envelope, polls with a timeout so timers run and shutdown is prompt, and sends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import zmq

from agora.errors import LocalError, NoBroker
from agora.files import InstanceLock, file_lock, private_dir
from agora.keyfile import KeyPair, load_or_create
from agora.protocol import (
    DEFAULT_CALL_TIMEOUT,
    MAX_MESSAGE_FRAMES,
    MAX_MESSAGE_SIZE,
    MAX_SESSIONS_PER_PRINCIPAL,
    Channel,
)
from agora.sockets import ConnectionGuard, bind_router, recv_routed
from broker.core import DEFAULT_AUDIT_DAYS, BrokerCore, Outgoing, report_internal_error
from broker.notes import NotesStore
from broker.services import builtin_services
from broker.store import Store

log = logging.getLogger("agora.broker")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
KEY_FILE = "broker.key"
#: Held while a data directory is opened or created, so two processes make one key.
LOCK_FILE = "broker.lock"
#: Held by the running broker: a second one on the same data directory is refused.
PID_FILE = "broker.pid"
POLL_MS = 100
# Plain ints: no IntFlag arithmetic or look-ups per frame.
SNDMORE, EVENTS, POLLIN = int(zmq.SNDMORE), int(zmq.EVENTS), int(zmq.POLLIN)
#: Most messages handled per wake-up before their answers are sent (see serve()).
BATCH = 64
#: The clear start of every envelope on channel WORKER: magic, version, channel (1.3).
WORKER_HEAD = b"AG\x02" + bytes((int(Channel.WORKER),))
#: How often the core's timers run (heartbeats, call timeouts, expiry, audit flush).
TICK_INTERVAL = 0.05


def open_store(data_dir: Path, create: bool = False) -> tuple[Store, KeyPair]:
    """Open the broker's data directory: database and key file.

    Only ``create=True`` (``agora broker start``, ``agora broker init``) makes a new one;
    operator commands refuse a directory without a broker key (NoBroker), so a typo in
    ``--data-dir`` never makes a second broker. Both run under the directory's lock file: an
    operator command racing a starting broker waits for its key instead of making its own.
    A database whose key file is gone is refused by both (LocalError): a new key would be a
    new broker identity behind every fingerprint handed out.
    """
    data_dir = Path(data_dir)
    key_path, db_path = data_dir / KEY_FILE, data_dir / "broker.db"
    if not key_path.is_file() and db_path.is_file():
        # The key is made before the database, so this is a lost key, not a new broker. A
        # new key would silently be a new broker identity: every fingerprint handed out
        # face to face would stop matching. The operator decides, not this function.
        raise LocalError(f"{db_path} exists but its key {key_path} is missing: restore the "
                         "key from a backup, or move the database aside to start a new broker")
    if not create and not key_path.is_file():
        raise NoBroker(f"no broker at {data_dir}: start one with `agora broker start "
                       f"--data-dir {data_dir}` or `agora broker init`")
    if create:
        if data_dir.exists() and not data_dir.is_dir():
            raise LocalError(f"{data_dir} is not a directory")
        private_dir(data_dir)
    with file_lock(data_dir / LOCK_FILE):
        keys = load_or_create(key_path)
        store = Store(db_path)
        for path in data_dir.glob("broker.db*"):
            os.chmod(path, 0o600)
    return store, keys


def init_broker(data_dir: Path) -> tuple[KeyPair, bool]:
    """Create a broker's data directory (key and database) if it holds none: (keys, created)."""
    created = not (Path(data_dir) / KEY_FILE).is_file()
    store, keys = open_store(data_dir, create=True)
    store.db.close()
    return keys, created


class BrokerServer:
    """Owns the ROUTER socket and the core. ``serve()`` runs until ``stop`` is set."""

    def __init__(self, data_dir: Path, endpoint: str = DEFAULT_ENDPOINT,
                 context: zmq.Context | None = None,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 audit_days: float = DEFAULT_AUDIT_DAYS,
                 max_sessions_per_principal: int = MAX_SESSIONS_PER_PRINCIPAL) -> None:
        self.store, self.keys = open_store(data_dir, create=True)
        try:
            # Two brokers on one database would each hold their own sessions and replay
            # memory over the same principals: refused, as PostgreSQL refuses a second
            # postmaster on one data directory.
            self.running = InstanceLock(Path(data_dir) / PID_FILE, "broker")
        except BaseException:
            self.store.db.close()
            raise
        self.core = BrokerCore(self.store, self.keys,
                               builtin_services(NotesStore(self.store.db)), call_timeout,
                               audit_days=audit_days)
        self.core.sessions.max_per_user = max_sessions_per_principal
        self.context = context or zmq.Context.instance()
        try:
            self.socket, self.endpoint = bind_router(self.context, endpoint)
        except zmq.ZMQError:
            self.store.db.close()  # a broker that cannot bind holds nothing open
            self.running.release()
            raise
        # Connections are bounded, and their memory goes back when they close (issue 10).
        self.guard = ConnectionGuard(self.socket)
        self.stop = threading.Event()
        self._failures: dict[str, int] = {}

    def serve(self) -> None:
        log.info("broker listening on %s (key %s)", self.endpoint, self.keys.fingerprint)
        # A blocking receive with a timeout instead of poll + receive: one system call less
        # per message on the hot path, and the timeout still lets timers and shutdown run.
        self.socket.setsockopt(zmq.RCVTIMEO, POLL_MS)
        next_tick = 0.0
        try:
            while not self.stop.is_set():
                try:
                    message = recv_routed(self.socket, guard=self.guard)
                except zmq.Again:
                    pass
                else:
                    # The first answer goes out at once, before looking for more work: a
                    # synchronous caller gets it without waiting for anything else.
                    self._send(self._dispatch(*message))
                    self.core.settle()
                    self._drain()
                now = time.time()
                if now >= next_tick:
                    next_tick = now + TICK_INTERVAL
                    try:
                        self._send(self.core.tick(now))
                        self.guard.service(now)
                    except Exception:  # the core guards each timer; this is the last line
                        report_internal_error(self._failures, "timers")
        finally:
            self.core.flush_audit(time.time())
            log.info("broker stopped")

    def _drain(self) -> None:
        """Handle the messages already waiting (at most BATCH), then send their answers
        together: on a busy broker (pipelining callers, several workers) one wake-up of the
        socket's I/O thread then carries many answers instead of one."""
        out: list[Outgoing] = []
        for _ in range(BATCH):
            # Asking the socket costs less than poll(0) or a receive that raises zmq.Again.
            if not self.socket.getsockopt(EVENTS) & POLLIN:
                break
            out += self._dispatch(*recv_routed(self.socket, guard=self.guard))
        if out:
            self._send(out)
            self.core.settle()

    def _dispatch(self, identity: bytes, rest: list[bytes] | None,
                  last: zmq.Frame) -> list[Outgoing]:
        if rest is None:  # recv_rest threw it away and shut its connection
            log.info("dropped a message over %d frames or %d bytes",
                     MAX_MESSAGE_FRAMES, MAX_MESSAGE_SIZE)
            return []
        first = rest[0]
        if first:
            # No delimiter: a worker's DEALER, whose every message is [identity, envelope]
            # on channel WORKER (PROTOCOL.md 4.3); anything else without one is dropped.
            if first[:4] != WORKER_HEAD:
                log.info("dropped a message without a routing envelope")
                return []
            return self.core.handle_worker(identity, rest, time.time())
        # [identity, empty delimiter, body...], as a REQ socket sends it (clients, and the
        # DEALERs of the NOTICE channel and pipelined callers, which add the empty frame).
        if len(rest) < 2 or rest[-1][:4] == WORKER_HEAD:
            log.info("dropped a message without a routing envelope")
            return []
        address = "127.0.0.1"
        if len(rest) > 2:  # a key hint and an envelope: only REGISTER and LOGIN record it
            try:
                address = last.get("Peer-Address") or address
            except zmq.ZMQError:
                pass
        return self.core.handle(identity, rest[1:], time.time(), address)

    def _send(self, outgoing: list[Outgoing]) -> None:
        # Frame by frame: send_multipart's checks cost more than the sends of 3 small frames.
        send = self.socket.send
        for identity, body in outgoing:
            try:
                send(identity, SNDMORE)
                if len(body) == 1 and body[0][:4] == WORKER_HEAD:  # to a worker: no delimiter
                    send(body[0])
                    continue
                if not body:
                    send(b"")
                    continue
                send(b"", SNDMORE)
                for frame in body[:-1]:
                    send(frame, SNDMORE)
                send(body[-1])
            except zmq.ZMQError as exc:  # peer gone, or its queue is full: drop, keep serving
                log.info("could not send reply: %s", exc.strerror)

    def close(self) -> None:
        self.guard.close()
        self.socket.close(0)
        self.store.db.close()
        self.running.release()
