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

from agora.files import private_dir
from agora.keyfile import KeyPair, load_or_create
from agora.protocol import DEFAULT_CALL_TIMEOUT
from agora.sockets import bind_router
from broker.core import BrokerCore, Outgoing, report_internal_error
from broker.notes import NotesStore
from broker.services import builtin_services
from broker.store import Store

log = logging.getLogger("agora.broker")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
POLL_MS = 100
#: How often the core's timers run (heartbeats, call timeouts, expiry, audit flush).
TICK_INTERVAL = 0.05


def open_store(data_dir: Path) -> tuple[Store, KeyPair]:
    """Open (creating if needed) the broker's data directory: database and key file."""
    data_dir = private_dir(Path(data_dir))
    db_path = data_dir / "broker.db"
    store = Store(db_path)
    for path in data_dir.glob("broker.db*"):
        os.chmod(path, 0o600)
    return store, load_or_create(data_dir / "broker.key")


class BrokerServer:
    """Owns the ROUTER socket and the core. ``serve()`` runs until ``stop`` is set."""

    def __init__(self, data_dir: Path, endpoint: str = DEFAULT_ENDPOINT,
                 context: zmq.Context | None = None,
                 call_timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.store, self.keys = open_store(data_dir)
        self.core = BrokerCore(self.store, self.keys,
                               builtin_services(NotesStore(self.store.db)), call_timeout)
        self.context = context or zmq.Context.instance()
        try:
            self.socket, self.endpoint = bind_router(self.context, endpoint)
        except zmq.ZMQError:
            self.store.db.close()  # a broker that cannot bind holds nothing open
            raise
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
                    # The identity frame uncopied, for its metadata (the peer's address);
                    # the rest copied, which is cheaper for small frames.
                    identity = self.socket.recv(copy=False)
                    rest = self.socket.recv_multipart() if identity.more else []
                except zmq.Again:
                    pass
                else:
                    self._send(self._dispatch(identity, rest))
                now = time.time()
                if now >= next_tick:
                    next_tick = now + TICK_INTERVAL
                    try:
                        self._send(self.core.tick(now))
                    except Exception:  # the core guards each timer; this is the last line
                        report_internal_error(self._failures, "timers")
        finally:
            self.core.flush_audit(time.time())
            log.info("broker stopped")

    def _dispatch(self, identity: zmq.Frame, rest: list[bytes]) -> list[Outgoing]:
        # Envelope: [identity, empty delimiter, body...], as a REQ socket sends it; DEALER
        # peers (workers) send the empty frame themselves, as in 7/MDP.
        if len(rest) < 2 or rest[0] != b"":
            log.info("dropped a message without a routing envelope")
            return []
        try:
            address = identity.get("Peer-Address") or "127.0.0.1"
        except zmq.ZMQError:
            address = "127.0.0.1"
        return self.core.handle(identity.bytes, rest[1:], time.time(), address)

    def _send(self, outgoing: list[Outgoing]) -> None:
        for identity, body in outgoing:
            try:
                self.socket.send_multipart([identity, b"", *body])
            except zmq.ZMQError as exc:  # peer gone, or its queue is full: drop, keep serving
                log.info("could not send reply: %s", exc.strerror)

    def close(self) -> None:
        self.socket.close(0)
        self.store.db.close()
