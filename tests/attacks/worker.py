"""Worker channel harness: the broker's WorkerRegistry receiving worker messages."""

from __future__ import annotations

import json

from agora.crypto import new_symmetric_key
from agora.envelope import HEADER_SIZE, open_envelope, peek
from agora.keyfile import KeyPair
from agora.protocol import Channel, Kind, Level, PrincipalKind, Sender
from agora.wire import decode_json, seal_worker_message
from broker.core import BrokerCore
from broker.store import Store
from tests.attacks import ChannelHarness, Outcome, register

T0 = 1_700_000_000.0


@register
class BrokerReceivesWorker(ChannelHarness):
    """A worker attached as ``upper``; its legitimate messages are HEARTBEATs and READYs
    (a READY from a fresh socket identity attaches one more worker: an answer we can see)."""

    name = "worker"

    def __init__(self) -> None:
        self.core = BrokerCore(Store(None), KeyPair.generate(), {}, now=T0)
        self.key = new_symmetric_key()
        self.session = self.core.sessions.open("w", PrincipalKind.SERVICE, Level(3), self.key,
                                               0, "127.0.0.1", T0)
        self.other = self.core.sessions.open("v", PrincipalKind.SERVICE, Level(3),
                                             new_symmetric_key(), 0, "127.0.0.1", T0)
        # The operator's record (store.bindings()): "w" may offer upper at level 1.
        self.core.workers.bindings = {"upper": {"service": "upper", "level": 1,
                                                "usernames": ["w"]}}
        self.counter = 0
        self.sockets = 0

    def _ready(self, sid: bytes) -> list[bytes]:
        self.counter += 1
        return [seal_worker_message(self.key, sid, self.counter, Sender.WORKER, Kind.READY,
                                    {"service": "upper", "level": 1})]

    def legitimate(self) -> list[bytes]:
        return self._ready(self.session.sid)

    def deliver(self, frames: list[bytes]) -> Outcome:
        self.sockets += 1
        identity = b"socket-%d" % self.sockets
        out = [f for ident, f in self.core.handle(identity, frames, T0) if ident == identity]
        if not out:
            return Outcome.dropped()
        data = out[0][-1]
        if not data.startswith(b"AG\x02"):  # not this channel: the client path refused it
            return Outcome.refused(json.loads(data)["code"])
        header = peek(data)
        if header.kind == Kind.ERROR:
            return Outcome.refused(decode_json(data[HEADER_SIZE:])["code"])
        _, body = open_envelope(self.key, data, Channel.WORKER, Sender.BROKER,
                                {Kind.READY, Kind.DISCONNECT}, self.session.sid)
        if header.kind == Kind.DISCONNECT:
            return Outcome.refused(decode_json(body)["code"])
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        self.counter += 1
        return [seal_worker_message(self.key, self.session.sid, self.counter, Sender.BROKER,
                                    Kind.READY, {"service": "upper", "level": 1})]

    def other_context(self) -> list[bytes]:
        return self._ready(self.other.sid)

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # no public key travels on this channel
