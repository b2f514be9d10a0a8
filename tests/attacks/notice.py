"""NOTICE channel harnesses: the broker receiving SUBSCRIBE, and the agent receiving notices."""

from __future__ import annotations

import json
import os

from agents.notices import NoticeReceiver
from agora.crypto import new_symmetric_key
from agora.envelope import open_envelope, peek, timestamp_counter
from agora.keyfile import KeyPair
from agora.notice_wire import (
    encode_notice,
    encode_subscribe,
    seal_from_agent,
    seal_from_broker,
)
from agora.protocol import Channel, Kind, Level, PrincipalKind, Sender
from agora.wire import refusal_fields
from broker.core import BrokerCore
from broker.store import Store
from tests.attacks import ChannelHarness, Outcome, register

T0 = 1_700_000_000.0


@register
class BrokerReceivesSubscribe(ChannelHarness):
    name = "notice-broker"

    def __init__(self) -> None:
        self.now = T0
        self.core = BrokerCore(Store(None), KeyPair.generate(), {}, now=T0)
        self.key = new_symmetric_key()
        self.session = self.core.sessions.open("ana", PrincipalKind.PERSON, Level(3),
                                               self.key, 0, "127.0.0.1", T0)
        other_key = new_symmetric_key()
        self.other = self.core.sessions.open("bob", PrincipalKind.PERSON, Level(3),
                                             other_key, 0, "127.0.0.1", T0)
        self.counter = timestamp_counter(T0)

    def _subscribe(self, sid: bytes, counter: int | None = None) -> list[bytes]:
        self.counter = max(self.counter + 1, timestamp_counter(self.now))
        return [seal_from_agent(self.key, sid, Kind.SUBSCRIBE,
                                counter if counter is not None else self.counter,
                                encode_subscribe(False))]

    def legitimate(self) -> list[bytes]:
        return self._subscribe(self.session.sid)

    def deliver(self, frames: list[bytes]) -> Outcome:
        out = self.core.handle(b"agent", frames, self.now)
        replies = [f for ident, f in out if ident == b"agent"]
        if not replies:
            return Outcome.dropped()
        data = replies[0][0]
        if not data.startswith(b"AG\x02"):  # not for this channel: the client path refused it
            return Outcome.refused(json.loads(replies[0][-1])["code"])
        header = peek(data)
        if header.kind == Kind.ERROR:
            return Outcome.refused(refusal_fields(data[30:])[0])
        _, body = open_envelope(self.key, data, Channel.NOTICE, Sender.BROKER,
                                {Kind.SUBSCRIBE, Kind.REFUSED}, self.session.sid)
        if header.kind == Kind.REFUSED:
            return Outcome.refused(refusal_fields(body)[0])
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        return [seal_from_broker(self.key, self.session.sid, Kind.SUBSCRIBE, 1,
                                 encode_subscribe(False))]

    def other_context(self) -> list[bytes]:
        return self._subscribe(self.other.sid)

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # no public key travels on this channel

    def stale(self) -> list[bytes]:
        return self._subscribe(self.session.sid, timestamp_counter(self.now - 3600))


@register
class AgentReceivesNotices(ChannelHarness):
    name = "notice-agent"

    def __init__(self) -> None:
        self.sid, self.key = os.urandom(16), new_symmetric_key()
        self.receiver = NoticeReceiver(self.sid, self.key)
        self.seq = 0

    def _notice(self, sid: bytes) -> list[bytes]:
        self.seq += 1
        return [seal_from_broker(self.key, sid, Kind.NOTICE, self.seq, encode_notice(
            {"type": "session-ended", "reason": "token-reused", "message": "m", "at": T0}))]

    def legitimate(self) -> list[bytes]:
        return self._notice(self.sid)

    def deliver(self, frames: list[bytes]) -> Outcome:
        if len(frames) != 1:
            return Outcome.dropped()
        got = self.receiver.receive(frames[0], T0)
        if got is None or got[0] is Kind.ERROR:
            return Outcome.dropped()  # a clear refusal is never taken as a notice
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        self.seq += 1
        return [seal_from_agent(self.key, self.sid, Kind.SUBSCRIBE, self.seq,
                                encode_subscribe(False))]

    def other_context(self) -> list[bytes]:
        return self._notice(os.urandom(16))

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None
