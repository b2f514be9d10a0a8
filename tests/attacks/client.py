"""Client channel harnesses: the broker's core receiving session requests, LOGINs and
REGISTERs (docs/PROTOCOL.md section 3), sans-I/O with a clock the harness controls.

"Accepted" means the broker *acted*: a call it served (an ``ok`` audit row), a token it
rotated, a registration it completed. An exact retransmission answered from the broker's
cache acts on nothing, so it counts as dropped, not accepted.
"""

from __future__ import annotations

from nacl.public import PrivateKey

from agora.envelope import box_key, open_envelope, peek, seal, timestamp_counter
from agora.errors import RemoteError
from agora.keyfile import KeyPair
from agora.protocol import Channel, Kind, Level, PrincipalKind, Sender
from agora.wire import (
    decode_grant,
    decode_refusal,
    encode_call,
    encode_login,
    encode_register,
    encode_username,
    login_context,
    raise_if_clear_error,
    register_context,
    reply_header,
    request_header,
    seal_session_request,
    session_result,
)
from broker.core import BrokerCore
from broker.services import builtin_services
from broker.store import Store
from tests.attacks import ChannelHarness, Outcome, register

T0 = 1_700_000_000.0


class _Broker(ChannelHarness):
    """Common parts: a core over an in-memory store, its clock, reply decoding."""

    def __init__(self) -> None:
        self.now = T0
        self.keys = KeyPair.generate()
        self.store = Store(None)
        self.core = BrokerCore(self.store, self.keys, builtin_services(), now=T0)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def _reply(self, frames: list[bytes]) -> bytes | None:
        out = [f for ident, f in self.core.handle(b"attacker", frames, self.now)
               if ident == b"attacker"]
        return out[0][0] if out else None

    @staticmethod
    def _refusal(data: bytes, key: bytes) -> Outcome:
        """The outcome of a refusal, clear or sealed under ``key``."""
        try:
            raise_if_clear_error(data)
        except RemoteError as exc:
            return Outcome.refused(exc.code.value)
        _, body = open_envelope(key, data, Channel.CLIENT, Sender.BROKER, {Kind.REFUSED})
        return Outcome.refused(decode_refusal(body).code.value)


@register
class BrokerReceivesSessionRequest(_Broker):
    """A logged-in session calling ``echo``; another session beside it."""

    name = "client-session"

    def __init__(self) -> None:
        super().__init__()
        self.key = bytes(range(32))
        self.session = self.core.sessions.open("ana", PrincipalKind.PERSON, Level(3),
                                               self.key, 0, "127.0.0.1", T0)
        self.other = self.core.sessions.open("bob", PrincipalKind.PERSON, Level(3),
                                             bytes(range(1, 33)), 0, "127.0.0.1", T0)
        self.counter = 0

    def legitimate(self) -> list[bytes]:
        self.counter += 1
        return [seal_session_request(self.key, self.session.sid, self.counter, Kind.CALL,
                                     encode_call("echo", {"n": self.counter}))]

    def deliver(self, frames: list[bytes]) -> Outcome:
        served = self._served()
        data = self._reply(frames)
        if data is None:
            return Outcome.dropped()
        if peek(data).kind != Kind.RESULT:
            return self._refusal(data, self.key)
        open_envelope(self.key, data, Channel.CLIENT, Sender.BROKER, {Kind.RESULT},
                      self.session.sid)
        return Outcome.ok() if self._served() > served else Outcome.dropped()

    def _served(self) -> int:
        self.core.flush_audit(0.0)  # counted audit rows (issue 10): read them from the store
        return sum(row["count"] for row in self.core.store.audit_rows(limit=10_000)
                   if row["action"] == "call:echo" and row["outcome"] == "ok")

    def reflected(self) -> list[bytes]:
        self.counter += 1
        return [session_result(self.key, self.session.sid, self.counter, {"n": 1})]

    def other_context(self) -> list[bytes]:
        self.counter += 1  # sealed with this session's key, addressed to the other session
        return [seal_session_request(self.key, self.other.sid, self.counter, Kind.CALL,
                                     encode_call("echo"))]

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # no public key travels in a session


@register
class BrokerReceivesLogin(_Broker):
    """A registered principal logging in with TOKEN_n under its symmetric key."""

    name = "client-login"

    def __init__(self) -> None:
        super().__init__()
        self.symmetric_key = bytes(range(64, 96))
        self.token = bytes(range(32))
        for name in ("Ana Lima", "Bob Stone"):
            username, _ = self.store.enroll(name, Level.CONFIDENTIAL, T0)
            self.store.complete_registration(username, bytes(PrivateKey.generate().public_key),
                                             self.symmetric_key if name == "Ana Lima"
                                             else bytes(32), _hash(self.token), T0)
        self.counter = timestamp_counter(T0)

    def _login(self, username: str = "ana.lima", context: bytes | None = None,
               counter: int | None = None) -> list[bytes]:
        self.counter += 1
        header = request_header(Kind.LOGIN, context or login_context(username),
                                counter if counter is not None else self.counter)
        return [encode_username(username),
                seal(self.symmetric_key, header, encode_login(self.token, 40001, True))]

    def legitimate(self) -> list[bytes]:
        self.now += 0.01  # logins follow one another in time
        self.counter = max(self.counter, timestamp_counter(self.now))
        return self._login()

    def deliver(self, frames: list[bytes]) -> Outcome:
        before = self.store.get("ana.lima")["token_hash"]
        data = self._reply(frames)
        if data is None:
            return Outcome.dropped()
        if peek(data).kind != Kind.RESULT:
            return self._refusal(data, self.symmetric_key)
        _, body = open_envelope(self.symmetric_key, data, Channel.CLIENT, Sender.BROKER,
                                {Kind.RESULT})
        if self.store.get("ana.lima")["token_hash"] == before:
            return Outcome.dropped()  # the last login's answer again: nothing rotated
        self.token = decode_grant(body, with_session=True)[0]
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        header = reply_header(Kind.RESULT, request_header(Kind.LOGIN, login_context(
            "ana.lima"), self.counter + 1))
        return [b"ana.lima", seal(self.symmetric_key, header, b"\x00" * 80)]

    def other_context(self) -> list[bytes]:
        return self._login(context=login_context("bob.stone"))

    def stale(self) -> list[bytes] | None:
        return self._login(counter=timestamp_counter(self.now - 600))

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # LOGIN carries a username, not a key


@register
class BrokerReceivesRegister(_Broker):
    """A fresh key pair registering an enrolled principal with its one-time ID."""

    name = "client-register"
    refusal_codes = ChannelHarness.refusal_codes | {"bad-one-time-id"}

    def __init__(self) -> None:
        super().__init__()
        self.enrolled = 0
        self.counter = timestamp_counter(T0)
        self.last: tuple[str, bytes] = ("", b"")

    def legitimate(self) -> list[bytes]:
        self.enrolled += 1
        username, otid = self.store.enroll(f"Person {self.enrolled}", Level.PUBLIC, self.now)
        private = bytes(PrivateKey.generate())
        return self._register(private, username, otid)

    def _register(self, private: bytes, username: str, otid: str,
                  counter: int | None = None, hint: bytes | None = None) -> list[bytes]:
        self.counter += 1
        public = bytes(PrivateKey(private).public_key)
        header = request_header(Kind.REGISTER, register_context(public),
                                counter if counter is not None else self.counter)
        self.last = (username, bytes(range(32)))
        sealed = seal(box_key(private, self.keys.public_key), header,
                      encode_register(bytes(range(32)), username, otid))
        return [hint if hint is not None else public, sealed]

    def deliver(self, frames: list[bytes]) -> Outcome:
        registered = sum(1 for r in self.store.principals() if r["registered_at"])
        data = self._reply(frames)
        if data is None:
            return Outcome.dropped()
        if peek(data).kind != Kind.RESULT:
            try:
                box = box_key(bytes(self.keys.private_key), frames[0])
            except Exception:
                box = bytes(32)
            return self._refusal(data, box)
        if sum(1 for r in self.store.principals() if r["registered_at"]) == registered:
            return Outcome.dropped()  # the cached answer to a retransmission
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        frames = self.legitimate()
        header = reply_header(Kind.RESULT, peek(frames[1]))
        private = bytes(PrivateKey.generate())
        return [frames[0], seal(box_key(private, self.keys.public_key), header, b"x" * 40)]

    def other_context(self) -> list[bytes]:
        frames = self.legitimate()  # its context names another key than the hint's
        return [bytes(PrivateKey.generate().public_key), frames[1]]

    def stale(self) -> list[bytes] | None:
        self.enrolled += 1
        username, otid = self.store.enroll(f"Person {self.enrolled}", Level.PUBLIC, self.now)
        return self._register(bytes(PrivateKey.generate()), username, otid,
                              counter=timestamp_counter(self.now - 600))

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        frames = self.legitimate()
        return [key, frames[1]]


def _hash(token: bytes) -> bytes:
    from agora.crypto import hash_secret
    return hash_secret(token)
