"""Notices the broker pushes to a logged-in agent: the agent side of the NOTICE channel.

    stream = agent.subscribe()                 # waits for the broker's acknowledgement
    while True:
        for notice in stream.poll(timeout=1.0):
            if notice.type == "session-ended":
                print(f"your session was ended: {notice.message}")
            elif notice.type == "new-login": ...
        if stream.silent_for() > 3: ...        # "no word from the broker for N s"

A :class:`NoticeStream` owns its own DEALER socket, so it may be polled from one thread while
the agent makes requests from another (the agent's REQ socket is separate). It follows the
agent's session: after ``agent.login()`` (a new session) the next ``poll`` subscribes again.

Every broker message is an AGORA/2 envelope sealed under the session key, checked for its
channel, sender, kind, session and sequence (a replayed one is dropped). The broker
heartbeats every second; after ``liveness`` silent intervals the stream reports a local
``broker-silent`` notice once and subscribes again on a fresh socket, and reports
``broker-back`` when the broker is heard again. A clear ``unknown-session`` refusal (the
broker restarted, or forgot the session) is reported as an *unauthenticated* notice: a hint
to log in again, never proof that the session ended; only a sealed ``session-ended`` is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from agora.envelope import ReplayGuard, timestamp_counter
from agora.errors import (
    BrokerUnreachable,
    LocalError,
    ProtocolError,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.notice_wire import (
    decode_ack,
    decode_notice,
    encode_subscribe,
    open_from_broker,
    seal_from_agent,
)
from agora.protocol import (
    NOTICE_HEARTBEAT,
    NOTICE_LIVENESS,
    SESSION_MAX_AGE,
    SUBSCRIBE_MEMBERSHIP,
    ErrorCode,
    Kind,
    NoticeType,
)
from agora.sockets import make_socket
from agora.wire import refusal_fields

if TYPE_CHECKING:
    from agents.agent import Agent

log = logging.getLogger("agora.notices")

#: Local notices (``authenticated`` False): what the stream itself observed.
BROKER_SILENT = "broker-silent"
BROKER_BACK = "broker-back"
UNKNOWN_SESSION = "unknown-session"


@dataclass(frozen=True)
class Notice:
    """One notice. ``fields`` is the broker's JSON body (with ``type``) for pushed notices.

    ``authenticated`` is False for what the stream observed itself (silence, the broker
    back) and for clear refusals: act on those only by checking (e.g. logging in again).
    """

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    authenticated: bool = True

    @property
    def reason(self) -> str | None:
        """The EndReason of a ``session-ended`` notice (e.g. ``token-reused``)."""
        return self.fields.get("reason")

    @property
    def message(self) -> str:
        """One line for a person."""
        return str(self.fields.get("message", ""))


class NoticeReceiver:
    """The checks on one broker message of a session's NOTICE channel, sans-I/O.

    ``receive(data, now)`` returns ``(kind, value)`` for an authentic, new message:
    SUBSCRIBE (flags, heartbeat seconds), HEARTBEAT None, NOTICE the notice's fields,
    REFUSED (code, message) — or ``(Kind.ERROR, (code, message))`` for a clear refusal
    (unauthenticated) — and None for anything dropped (malformed, forged, replayed).
    """

    def __init__(self, sid: bytes, key: bytes) -> None:
        self.sid, self.key = sid, key
        self._guard = ReplayGuard(ttl=SESSION_MAX_AGE, max_contexts=1)

    def receive(self, data: bytes, now: float) -> tuple[Kind, Any] | None:
        try:
            header, body = open_from_broker(self.key, data, self.sid)
        except UnauthenticatedRefusal as exc:
            return Kind.ERROR, (exc.code, exc.message)
        except ProtocolError as exc:
            log.info("ignored a notice-channel message: %s", exc)
            return None
        try:
            value: Any = None
            if header.kind == Kind.SUBSCRIBE:
                value = decode_ack(body)
            elif header.kind == Kind.REFUSED:
                value = refusal_fields(body)
            elif header.kind == Kind.NOTICE:
                value = decode_notice(body)
        except ProtocolError as exc:
            log.info("ignored a malformed notice: %s", exc)
            return None
        # Only what authenticated and decoded enters the guard.
        if not self._guard.admit(self.sid, header.counter, now):
            log.info("ignored a replayed notice-channel message")
            return None
        return Kind(header.kind), value



class NoticeStream:
    """The notices of one agent's session. Use it from one thread."""

    def __init__(self, agent: Agent, membership: bool = False,
                 heartbeat: float = NOTICE_HEARTBEAT, liveness: int = NOTICE_LIVENESS) -> None:
        self.agent = agent
        self.membership = membership
        self.heartbeat = heartbeat
        self.liveness = liveness
        #: time.monotonic() of the last authenticated message from the broker.
        self.last_heard = time.monotonic()
        #: Whether the broker acknowledged the current subscription.
        self.subscribed = False
        #: Whether the broker will send membership notices on this stream.
        self.membership_granted = False
        #: The session-ended notice, once one came: the session is over.
        self.ended: Notice | None = None
        self._socket: zmq.Socket | None = None
        self._sid: bytes | None = None
        self._key = b""
        self._receiver: NoticeReceiver | None = None
        self._counter = 0
        self._next_heartbeat = 0.0
        self._next_subscribe = 0.0
        self._silent = False
        self._unknown = False  # the broker said (in clear) it does not know the session
        self._pending: list[Notice] = []

    # -- public ---------------------------------------------------------------------------

    def wait_subscribed(self, timeout: float) -> None:
        """Subscribe and wait for the broker's acknowledgement (BrokerUnreachable if none,
        RemoteError if it refused). Notices that arrive meanwhile are kept for poll()."""
        deadline = time.monotonic() + timeout
        while not self.subscribed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnreachable(f"no notice subscription from the broker at "
                                        f"{self.agent.broker} within {timeout:g}s")
            self._pending += self._poll_once(min(left, 0.1))
            if self._unknown:
                raise RemoteError(ErrorCode.UNKNOWN_SESSION, "the broker does not know this "
                                  "session (log in again)")

    def poll(self, timeout: float = 0.0) -> list[Notice]:
        """Notices that arrived, waiting up to ``timeout`` seconds for the first one."""
        deadline = time.monotonic() + timeout
        out, self._pending = self._pending, []
        while not out:
            out += self._poll_once(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                break
        return out

    def silent_for(self) -> float:
        """Seconds since the broker was last heard on this stream."""
        return time.monotonic() - self.last_heard

    def close(self) -> None:
        """Unsubscribe (best effort) and close the socket."""
        if self._socket is not None and self._sid is not None and self.ended is None:
            self._send(Kind.DISCONNECT, b"")
        self._close_socket()

    def __enter__(self) -> NoticeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop -------------------------------------------------------------------------

    def _poll_once(self, timeout: float) -> list[Notice]:
        out: list[Notice] = []
        self._follow_session()
        now = time.monotonic()
        silence = self.heartbeat * self.liveness
        wake = min(now + timeout, self._next_heartbeat, self.last_heard + silence)
        if self._socket is not None and self._socket.poll(max(0, int((wake - now) * 1000))):
            while True:
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out += self._receive(frames)
        elif self._socket is None:
            time.sleep(max(0.0, min(timeout, 0.1)))
        now = time.monotonic()
        if now - self.last_heard > silence and self.ended is None:
            if not self._silent:
                self._silent = True
                out.append(Notice(BROKER_SILENT, {"seconds": round(now - self.last_heard)},
                                  authenticated=False))
            if now >= self._next_subscribe and not self._unknown:
                self._subscribe()  # on a fresh socket: the old one may be stuck
        if self._socket is not None and now >= self._next_heartbeat and self.subscribed:
            self._send(Kind.HEARTBEAT, b"")
            self._next_heartbeat = now + self.heartbeat
        return out

    def _follow_session(self) -> None:
        session = self.agent.session
        if session is None:
            if self._sid is None:
                raise LocalError("log the agent in before subscribing to notices")
            return  # logged out: keep the socket until the caller closes the stream
        if session.sid != self._sid:
            self._sid, self._key = session.sid, session.key
            self._receiver = NoticeReceiver(self._sid, self._key)
            self.ended, self._unknown = None, False
            self.last_heard = time.monotonic()
            self._subscribe()

    def _subscribe(self) -> None:
        self._close_socket()
        self.subscribed = False
        self._socket = make_socket(self.agent.context, zmq.DEALER, send_timeout=1.0)
        self._socket.connect(self.agent.broker)
        self._send(Kind.SUBSCRIBE, encode_subscribe(self.membership))
        self._next_subscribe = time.monotonic() + self.heartbeat * self.liveness
        self._next_heartbeat = time.monotonic() + self.heartbeat

    def _receive(self, frames: list[bytes]) -> list[Notice]:
        if len(frames) != 2 or frames[0] != b"" or self._receiver is None:
            log.info("ignored a malformed notice-channel message")
            return []
        got = self._receiver.receive(frames[1], time.time())
        if got is None:
            return []
        kind, value = got
        if kind is Kind.ERROR:
            code, message = value
            if code == ErrorCode.UNKNOWN_SESSION.value:
                self._unknown, self.subscribed = True, False
                return [Notice(UNKNOWN_SESSION, {"code": code, "message": message},
                               authenticated=False)]
            log.info("broker refused in clear (unauthenticated): %s %s", code, message)
            return []
        out: list[Notice] = []
        self.last_heard = time.monotonic()
        if self._silent:
            self._silent = False
            out.append(Notice(BROKER_BACK, {}, authenticated=False))
        if kind is Kind.SUBSCRIBE:
            flags, interval = value
            self.heartbeat = interval or self.heartbeat  # the broker's own pace
            self.subscribed = True
            self.membership_granted = bool(flags & SUBSCRIBE_MEMBERSHIP)
        elif kind is Kind.REFUSED:
            self.subscribed = False
            raise RemoteError(*value)
        elif kind is Kind.NOTICE:
            out.append(Notice(value["type"], value))
            if value["type"] == NoticeType.SESSION_ENDED.value:
                self.ended = out[-1]
                self.subscribed = False
        return out

    def _send(self, kind: Kind, body: bytes) -> None:
        assert self._socket is not None and self._sid is not None
        # ms timestamps, strictly increasing: the broker's freshness and replay rule.
        self._counter = max(self._counter + 1, timestamp_counter(time.time()))
        envelope = seal_from_agent(self._key, self._sid, kind, self._counter, body)
        try:
            self._socket.send_multipart([b"", envelope])
        except zmq.Again:
            log.info("could not send %s to the broker", kind.name)

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


__all__ = ["BROKER_BACK", "BROKER_SILENT", "UNKNOWN_SESSION", "Notice", "NoticeReceiver",
           "NoticeStream"]
