"""The NOTICE channel: the broker pushes session-ended, new-login, level and membership
notices to subscribed agents, and heartbeats.

The first half drives the broker core sans-I/O (clock passed in); the second uses a real
broker and real agents, as `agora listen` and the auctioneer do.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import pytest

from agents import Agent
from agents.notices import BROKER_BACK, BROKER_SILENT, UNKNOWN_SESSION, Notice, NoticeReceiver
from agora.crypto import new_symmetric_key
from agora.envelope import Header, timestamp_counter
from agora.errors import RemoteError
from agora.keyfile import KeyPair
from agora.notice_wire import (
    decode_ack,
    decode_notice,
    decode_subscribe,
    encode_ack,
    encode_notice,
    encode_subscribe,
    seal_from_agent,
    seal_from_broker,
)
from agora.protocol import (
    FRESHNESS_WINDOW,
    NOTICE_HEARTBEAT,
    NOTICE_LIVENESS,
    Channel,
    EndReason,
    ErrorCode,
    Kind,
    Level,
    PrincipalKind,
    Sender,
)
from agora.wire import encode_refusal, refusal_fields
from broker.core import BrokerCore
from broker.services import builtin_services
from broker.store import Store
from tests.conftest import PASSWORD
from tests.vectors import load, vector, write

T0 = 1_700_000_000.0


@pytest.fixture
def core():
    store = Store(None)
    core = BrokerCore(store, KeyPair.generate(), builtin_services(), now=T0)
    yield core
    store.db.close()


class Subscriber:
    """An agent's notice socket as the core sees it: a session, an identity, a receiver."""

    def __init__(self, core: BrokerCore, username: str, identity: bytes,
                 kind: PrincipalKind = PrincipalKind.PERSON) -> None:
        self.core, self.identity = core, identity
        self.key = new_symmetric_key()
        self.session = core.sessions.open(username, kind, Level(3), self.key, 0,
                                          "127.0.0.1", T0)
        self.receiver = NoticeReceiver(self.session.sid, self.key)
        self.counter = timestamp_counter(T0)

    def frames(self, kind: Kind, body: bytes = b"", now: float = T0) -> list[bytes]:
        self.counter = max(self.counter + 1, timestamp_counter(now))
        return [seal_from_agent(self.key, self.session.sid, kind, self.counter, body)]

    def send(self, kind: Kind, body: bytes = b"", now: float = T0, identity: bytes | None = None,
             ) -> list:
        return self.core.handle(identity or self.identity, self.frames(kind, body, now), now)

    def subscribe(self, membership: bool = False, now: float = T0) -> list:
        return self.send(Kind.SUBSCRIBE, encode_subscribe(membership), now)

    def opened(self, out: list, now: float = T0) -> list[tuple[Kind, object]]:
        """What this subscriber's socket received in ``out``, checked as the agent does."""
        got = [self.receiver.receive(frames[0], now) for ident, frames in out
               if ident == self.identity]
        return [g for g in got if g is not None]

    def notices(self, out: list, now: float = T0) -> list[dict]:
        return [v for k, v in self.opened(out, now) if k is Kind.NOTICE]


def registered(core, name: str, kind: PrincipalKind = PrincipalKind.PERSON) -> str:
    """A principal in the store with a key and a token (as after `agora register`)."""
    username, _ = core.store.enroll(name, Level(3), T0, kind)
    core.store.complete_registration(username, os.urandom(32), bytes(32), os.urandom(32), T0)
    return username


def subscribed(core, username="ana", identity=b"ana-notices", **kw) -> Subscriber:
    sub = Subscriber(core, username, identity, **kw)
    membership = sub.session.kind is PrincipalKind.SERVICE
    assert [k for k, _ in sub.opened(sub.subscribe(membership))] == [Kind.SUBSCRIBE]
    return sub


def test_subscription_is_acknowledged_with_the_heartbeat_interval(core):
    sub = Subscriber(core, "ana", b"n")
    [(kind, (flags, interval))] = sub.opened(sub.subscribe())
    assert (kind, flags, interval) == (Kind.SUBSCRIBE, 0, NOTICE_HEARTBEAT)


def test_logout_is_pushed_before_the_session_is_forgotten(core):
    sub = subscribed(core)
    core.sessions.end(sub.session.sid, EndReason.LOGGED_OUT)
    [notice] = sub.notices(core.tick(T0 + 0.01))
    assert (notice["type"], notice["reason"]) == ("session-ended", "logged-out")
    assert core.notices.subscriptions == {}


@pytest.mark.parametrize(("operator", "reason"), [
    (lambda store: store.revoke("ana", T0), "revoked"),
    (lambda store: store.reenroll("ana", T0), "re-enrolled"),
    (lambda store: store.flag("ana", "by hand", T0), "flagged"),
])
def test_operator_change_ends_the_session_with_its_reason(core, operator, reason):
    registered(core, "Ana")
    sub = subscribed(core)
    operator(core.store)
    notices = sub.notices(core.apply_store_changes(T0 + 1))
    assert [(n["type"], n["reason"]) for n in notices] == [("session-ended", reason)]
    assert notices[0]["message"]
    assert core.sessions.get(sub.session.sid) is None


def test_new_login_of_the_same_principal_is_told_to_live_sessions_at_once(core):
    sub = subscribed(core)
    other = Subscriber(core, "bob", b"bob-notices")
    other.subscribe()
    out = core.handle(b"x", [b"junk"], T0)  # any message flushes pending session events
    assert sub.notices(out) == other.notices(out) == []
    core.sessions.open("ana", PrincipalKind.PERSON, Level(3), new_symmetric_key(), 4242,
                       "127.0.0.9", T0 + 5, listening=True)
    out = core.tick(T0 + 5)
    [notice] = sub.notices(out)
    assert notice["type"] == "new-login" and notice["listening"] is True
    assert notice["at"] == T0 + 5 and notice["address"] == "127.0.0.9"
    assert other.notices(out) == []


def test_level_change_is_pushed_and_the_session_goes_on(core):
    registered(core, "Ana")
    sub = subscribed(core)
    core.store.set_level("ana", Level(1), T0)
    [notice] = sub.notices(core.apply_store_changes(T0 + 1))
    assert notice == {"type": "level-changed", "level": 1}
    assert core.sessions.get(sub.session.sid) is not None


def test_broker_heartbeats_and_drops_a_silent_subscriber(core):
    sub = subscribed(core)
    beats = [k for k, _ in sub.opened(core.tick(T0 + NOTICE_HEARTBEAT))]
    assert beats == [Kind.HEARTBEAT]
    later = T0 + NOTICE_HEARTBEAT * (NOTICE_LIVENESS + 2)
    core.tick(later)
    assert core.notices.subscriptions == {}


def test_agent_heartbeats_keep_the_subscription_and_the_session(core):
    sub = subscribed(core)
    now = T0
    for _ in range(10):
        now += NOTICE_HEARTBEAT
        sub.send(Kind.HEARTBEAT, now=now)
        core.tick(now)
    assert sub.session.sid in core.notices.subscriptions
    assert sub.session.last_seen == now


def test_replayed_subscribe_cannot_move_the_route(core):
    sub = Subscriber(core, "ana", b"ana-notices")
    frames = sub.frames(Kind.SUBSCRIBE, encode_subscribe(False))
    core.handle(sub.identity, frames, T0)
    assert core.handle(b"eve", frames, T0 + 1) == []
    assert core.notices.subscriptions[sub.session.sid].identity == b"ana-notices"


def test_a_stale_heartbeat_is_dropped_and_a_stale_subscribe_refused_sealed(core):
    sub = subscribed(core)
    late = T0 + FRESHNESS_WINDOW + 1  # both made at T0, received too late
    assert core.handle(sub.identity, sub.frames(Kind.HEARTBEAT, now=T0), late) == []
    out = core.handle(sub.identity, sub.frames(Kind.SUBSCRIBE, encode_subscribe(False), T0),
                      late)
    [(kind, (code, _))] = sub.opened(out, late)
    assert (kind, code) == (Kind.REFUSED, "stale")


def test_unknown_session_is_refused_in_clear(core):
    sub = Subscriber(core, "ana", b"n")
    core.sessions.end(sub.session.sid)
    [(kind, (code, _))] = sub.opened(sub.subscribe())
    assert (kind, code) == (Kind.ERROR, "unknown-session")


def test_membership_notices_are_for_service_principals_only(core):
    person = Subscriber(core, "ana", b"n")
    [(kind, (code, _))] = person.opened(person.subscribe(membership=True))
    assert (kind, code) == (Kind.REFUSED, "forbidden")


@pytest.mark.parametrize("body", [b"", b"\x00\x00", b"\x80"],
                         ids=["empty", "two-octets", "unknown-flag"])
def test_a_malformed_subscribe_is_refused_sealed_and_subscribes_nothing(core, body):
    sub = Subscriber(core, "ana", b"n")
    [(kind, (code, _))] = sub.opened(sub.send(Kind.SUBSCRIBE, body))
    assert (kind, code) == (Kind.REFUSED, "bad-request")
    assert core.notices.subscriptions == {}
    assert [k for k, _ in sub.opened(sub.subscribe())] == [Kind.SUBSCRIBE]  # a good one works


@pytest.mark.parametrize(("kind", "body"), [
    (Kind.NOTICE, b"not json"),
    (Kind.NOTICE, b"[1]"),
    (Kind.NOTICE, b'{"level":1}'),  # no type
    (Kind.NOTICE, b"[" * 100_000),
    (Kind.NOTICE, '{"type":"x"}'.encode("utf-16")),  # JSON bodies are UTF-8 only
    (Kind.SUBSCRIBE, b"\x00"),  # an acknowledgement is 5 octets
    (Kind.REFUSED, b"[]"),
], ids=["notice-not-json", "notice-not-object", "notice-without-type", "notice-nested-too-deep",
        "notice-not-utf8", "short-ack", "refusal-not-object"])
def test_a_malformed_broker_message_is_dropped_and_does_not_spend_its_counter(kind, body):
    receiver = NoticeReceiver(bytes(16), key := new_symmetric_key())
    bad = seal_from_broker(key, bytes(16), kind, 1, body)
    assert receiver.receive(bad, T0) is None
    good = seal_from_broker(key, bytes(16), Kind.NOTICE, 1,
                            encode_notice({"type": "level-changed", "level": 1}))
    assert receiver.receive(good, T0) == (Kind.NOTICE, {"type": "level-changed", "level": 1})


def test_membership_snapshot_and_notices_join_without_a_gap(core):
    registered(core, "Ana")
    registered(core, "Auctioneer", PrincipalKind.SERVICE)
    core.apply_store_changes(T0)
    auctioneer = subscribed(core, "auctioneer", b"auc", kind=PrincipalKind.SERVICE)
    snapshot = core.membership.snapshot()
    assert [m["username"] for m in snapshot["members"]] == ["ana", "auctioneer"]
    core.store.set_level("ana", Level(2), T0)
    core.store.revoke("ana", T0)
    notices = auctioneer.notices(core.apply_store_changes(T0 + 1))
    assert [(n["version"], n["username"], n["state"], n["level"]) for n in notices] == [
        (snapshot["version"] + 1, "ana", "revoked", 2)]
    assert [m["username"] for m in core.membership.snapshot()["members"]] == ["auctioneer"]


def test_registration_and_token_reuse_flag_reach_membership_subscribers(core):
    core.store.enroll("Ana", Level(3), T0)
    registered(core, "Auctioneer", PrincipalKind.SERVICE)
    core.apply_store_changes(T0)
    auctioneer = subscribed(core, "auctioneer", b"auc", kind=PrincipalKind.SERVICE)
    core.store.complete_registration("ana", bytes(range(32)), bytes(32), b"t" * 32, T0)
    [joined] = auctioneer.notices(core.tick(T0 + 1))
    assert (joined["change"], joined["state"]) == ("registered", "registered")
    core.store.flag("ana", "token reuse detected", T0)
    [flagged] = auctioneer.notices(core.tick(T0 + 2))
    assert (flagged["state"], flagged["version"]) == ("flagged", joined["version"] + 1)


# -- real broker, real agents ---------------------------------------------------------------

def wait_for(stream, kind: str, timeout: float = 5.0) -> Notice:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for notice in stream.poll(0.2):
            if notice.type == kind:
                return notice
    raise AssertionError(f"no {kind} notice within {timeout}s")


def test_token_reuse_tells_the_live_session_at_once(broker, tmp_path):
    owner = broker.agent("Ana Lima")
    stream = owner.subscribe()
    thief_home = tmp_path / "thief"
    shutil.copytree(owner.home, thief_home)
    thief = Agent(thief_home, broker=broker.endpoint, context=broker.context, timeout=2,
                  retries=2)
    broker.agents.append(thief)
    thief.login(PASSWORD)  # rotates the token the owner's copy still holds
    new_login = wait_for(stream, "new-login")
    assert new_login.authenticated and new_login.fields["listening"] is True
    with pytest.raises(RemoteError) as err:
        Agent(owner.home, broker=broker.endpoint, context=broker.context, timeout=2,
              retries=1).login(PASSWORD)  # the owner's copy presents the retired token
    assert err.value.code is ErrorCode.TOKEN_REUSED
    ended = wait_for(stream, "session-ended")
    assert (ended.reason, ended.message) == (
        "token-reused", "your token was used from another copy — see your operator")
    assert stream.ended == ended
    stream.close()


def test_person_cannot_subscribe_to_membership_or_fetch_it(broker):
    ana = broker.agent("Ana Lima")
    with pytest.raises(RemoteError) as err:
        ana.subscribe(membership=True)
    assert err.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(RemoteError) as err:
        ana.call("membership")
    assert err.value.code is ErrorCode.FORBIDDEN


def test_service_follows_membership_from_snapshot_then_notices(broker):
    auctioneer = broker.agent("Auctioneer", kind=PrincipalKind.SERVICE)
    bidder = broker.agent("Bia Lance", level=2)
    stream = auctioneer.subscribe(membership=True)
    assert stream.membership_granted
    snapshot = auctioneer.call("membership")
    members = {m["username"]: m for m in snapshot["members"]}
    assert members["bia.lance"]["level"] == 2 and members["bia.lance"]["public_key"]
    broker.admin.revoke(bidder.username, time.time())
    notice = wait_for(stream, "membership")
    assert notice.fields["version"] == snapshot["version"] + 1
    assert (notice.fields["username"], notice.fields["state"]) == ("bia.lance", "revoked")
    assert notice.fields["public_key"] == members["bia.lance"]["public_key"]
    stream.close()


def test_silent_broker_is_reported_then_unknown_session_after_restart(broker):
    broker.server.core.notices.heartbeat = 0.2
    ana = broker.agent("Ana Lima")
    stream = ana.subscribe()
    assert stream.heartbeat == 0.2
    broker.pause()
    silent = wait_for(stream, BROKER_SILENT)
    assert not silent.authenticated
    assert stream.silent_for() >= 0.6
    stream.close()


def test_a_broker_heard_again_after_silence_is_reported_back_on_the_same_session(broker):
    broker.server.core.notices.heartbeat = 0.2
    ana = broker.agent("Ana Lima")
    stream = ana.subscribe()
    broker.pause()  # paused, not restarted: it still knows the session
    wait_for(stream, BROKER_SILENT)
    broker.resume()
    back = wait_for(stream, BROKER_BACK)
    assert not back.authenticated and stream.subscribed and stream.ended is None
    stream.close()


def test_subscribing_after_the_broker_forgot_the_session_says_so(broker):
    ana = broker.agent("Ana Lima")
    ana.session = dataclasses.replace(ana.session, sid=os.urandom(16))  # as after a restart
    with pytest.raises(RemoteError) as err:
        ana.subscribe()
    assert err.value.code is ErrorCode.UNKNOWN_SESSION
    assert UNKNOWN_SESSION == "unknown-session"


# -- known-answer vectors (docs/vectors/notice.json) ----------------------------------------

VECTOR_KEY = bytes(range(32))
VECTOR_NONCE = bytes(range(100, 124))
VECTOR_SID = bytes.fromhex("5e5510e1d0000000000000000000beef")


def _encode(name: str, fields: dict) -> bytes:
    """The channel's own encoder for each vector's fields."""
    if name.startswith("notice.agent.subscribe"):
        return encode_subscribe(fields["membership"])
    if name == "notice.broker.subscribe":
        return encode_ack(fields["flags"], fields["heartbeat"])
    if name == "notice.broker.refused":
        return encode_refusal(ErrorCode(fields["code"]), fields["message"])
    if name.startswith("notice.broker.notice"):
        return encode_notice(fields)
    return b""  # heartbeats and disconnect: empty


def _decode(name: str, body: bytes) -> dict:
    if name.startswith("notice.agent.subscribe"):
        return {"membership": bool(decode_subscribe(body) & 1)}
    if name == "notice.broker.subscribe":
        flags, heartbeat = decode_ack(body)
        return {"flags": flags, "heartbeat": heartbeat}
    if name == "notice.broker.refused":
        code, message = refusal_fields(body)
        return {"code": code, "message": message}
    if name.startswith("notice.broker.notice"):
        return decode_notice(body)
    assert body == b""
    return {}


NOTICE_VECTORS = [
    ("notice.agent.subscribe", Kind.SUBSCRIBE, Sender.CLIENT, 1_700_000_000_000,
     {"membership": False}),
    ("notice.agent.subscribe-membership", Kind.SUBSCRIBE, Sender.CLIENT, 1_700_000_000_001,
     {"membership": True}),
    ("notice.agent.heartbeat", Kind.HEARTBEAT, Sender.CLIENT, 1_700_000_001_000, {}),
    ("notice.agent.disconnect", Kind.DISCONNECT, Sender.CLIENT, 1_700_000_002_000, {}),
    ("notice.broker.subscribe", Kind.SUBSCRIBE, Sender.BROKER, 1,
     {"flags": 1, "heartbeat": 1.0}),
    ("notice.broker.heartbeat", Kind.HEARTBEAT, Sender.BROKER, 2, {}),
    ("notice.broker.notice-session-ended", Kind.NOTICE, Sender.BROKER, 3,
     {"type": "session-ended", "reason": "token-reused",
      "message": "your token was used from another copy — see your operator",
      "at": 1700000003.5}),
    ("notice.broker.notice-new-login", Kind.NOTICE, Sender.BROKER, 4,
     {"type": "new-login", "at": 1700000004.25, "session": "0a1b2c3d", "listening": True,
      "address": "127.0.0.1"}),
    ("notice.broker.notice-level-changed", Kind.NOTICE, Sender.BROKER, 5,
     {"type": "level-changed", "level": 2}),
    ("notice.broker.notice-membership", Kind.NOTICE, Sender.BROKER, 6,
     {"type": "membership", "version": 1700000000001, "change": "revoked",
      "username": "bia.lance", "kind": "person", "level": 2, "state": "revoked",
      "public_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}),
    ("notice.broker.refused", Kind.REFUSED, Sender.BROKER, 7,
     {"code": "forbidden", "message": "membership notices are for service principals"}),
]


def build_notice_vectors() -> list[dict]:
    return [vector(name, VECTOR_KEY, Header(Channel.NOTICE, kind, sender, VECTOR_SID, counter),
                   _encode(name, fields), VECTOR_NONCE, fields)
            for name, kind, sender, counter, fields in NOTICE_VECTORS]


@pytest.mark.parametrize("v", load("notice"), ids=lambda v: v["name"])
def test_notice_vector_body_codec_both_ways(v):
    assert _encode(v["name"], v["fields"]).hex() == v["body"]
    assert _decode(v["name"], bytes.fromhex(v["body"])) == v["fields"]


def test_notice_vectors_cover_every_message_kind():
    assert load("notice") == build_notice_vectors()


if __name__ == "__main__":  # regenerate docs/vectors/notice.json (only when the format changes)
    write("notice", build_notice_vectors())
