"""One caller, several session requests in flight at once, over one DEALER socket.

    with agent.pipeline(depth=8) as pipe:
        first = pipe.send("echo", {"n": 1})      # the request's counter
        pipe.send("upper", {"text": "hi"})
        counter, answer = pipe.receive()         # the next answer, in any order
    results = agent.call_many([("echo", {"n": i}) for i in range(100)])   # in order

:meth:`Agent.request` waits for each answer before the next request; a :class:`Pipeline`
keeps up to ``depth`` requests of the same session in flight. Each is sealed exactly as
``Agent.request`` seals it (:func:`agora.wire.seal_session_request`, the session's next
counter) and each answer is opened by :func:`agora.wire.open_session_reply` for *its*
counter, so answers are matched to requests by the authenticated counter, whatever order
they come back in. The broker's replay window accepts counters out of order within its
window (docs/PROTOCOL.md 1.5), and its per-session cache answers an exact retransmission
again without acting twice.

An answer is a value, or the :class:`~agora.errors.AgoraError` that request ended with: a
refusal (``RemoteError``; ``authenticated=False`` when it came in clear) or no answer within
the timeout after the agent's retries (``BrokerUnreachable``). One request's refusal or
silence never disturbs the others. Every wait is bounded by the requests' deadlines.

A Pipeline shares its agent's session counter, so use it from the agent's thread (an
``agent.call`` between its requests just takes the next counter). It does not log in again
by itself: an ``unknown-session`` answer is returned like any other refusal (log in again
with ``agent.login()`` and open a new pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from agents.transport import receive
from agora.envelope import peek
from agora.errors import (
    AgoraError,
    BrokerUnreachable,
    LocalError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
)
from agora.protocol import MAX_MESSAGE_SIZE, MAX_PIPELINE, Kind
from agora.sockets import make_socket
from agora.wire import encode_call, open_session_reply

if TYPE_CHECKING:
    from agents.agent import Agent

# Plain ints: no IntFlag arithmetic or look-ups per message.
SNDMORE, EVENTS, POLLIN = int(zmq.SNDMORE), int(zmq.EVENTS), int(zmq.POLLIN)

#: An answer: the call's result, or the error that request ended with.
Answer = Any


@dataclass(slots=True)
class _InFlight:
    sealed: bytes
    deadline: float  # monotonic
    tries: int


class Pipeline:
    """Up to ``depth`` (1-MAX_PIPELINE) requests of ``agent``'s session in flight at once."""

    def __init__(self, agent: Agent, depth: int = 8, timeout: float | None = None,
                 retries: int | None = None) -> None:
        if not 1 <= depth <= MAX_PIPELINE:
            raise LocalError(f"pipeline depth must be 1-{MAX_PIPELINE}")
        if agent.session is None:
            raise LocalError("not logged in")
        self.agent, self.depth = agent, depth
        self.timeout = agent._timeout if timeout is None else timeout
        self.retries = max(1, agent._retries if retries is None else retries)
        self._socket: zmq.Socket | None = make_socket(agent.context, zmq.DEALER)
        self._socket.connect(agent.broker)
        self._in_flight: dict[int, _InFlight] = {}
        self._ready: list[tuple[int, Answer]] = []  # answers collected while sending

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (nor given up)."""
        return len(self._in_flight)

    def send(self, service: str, args: dict[str, Any] | None = None) -> int:
        """Send a CALL; its counter. Waits (bounded) for an answer first if ``depth``
        requests are in flight; that answer is kept for :meth:`receive`."""
        return self.send_request(Kind.CALL, encode_call(service, args))

    def send_request(self, kind: Kind, body: bytes) -> int:
        """Send one session request of ``kind``; its counter (see :meth:`send`)."""
        session = self.agent.session
        if session is None or self._socket is None:
            raise LocalError("not logged in" if session is None else "pipeline is closed")
        while len(self._in_flight) >= self.depth:
            self._ready.append(self._next(None))
        counter, sealed = session.seal_request(kind, body)
        if len(sealed) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(f"message is over the {MAX_MESSAGE_SIZE // 1024} KiB limit")
        self._socket.send(b"", SNDMORE)
        self._socket.send(sealed)
        self._in_flight[counter] = _InFlight(sealed, time.monotonic() + self.timeout, 1)
        return counter

    def receive(self, timeout: float | None = None) -> tuple[int, Answer]:
        """The next answer, whichever request it is for: ``(counter, result or error)``.

        Waits at most ``timeout`` seconds (None: until some request is answered or given
        up, which its deadline bounds); TimeoutError if nothing came in ``timeout``,
        LocalError if nothing is in flight.
        """
        if self._ready:
            return self._ready.pop(0)
        if not self._in_flight:
            raise LocalError("no request in flight")
        return self._next(None if timeout is None else time.monotonic() + timeout)

    def call_many(self, calls: Iterable[tuple[str, dict[str, Any] | None]]) -> list[Answer]:
        """Run ``(service, args)`` calls ``depth`` at a time; their answers in call order."""
        order: list[int] = []
        answers: dict[int, Answer] = {}
        for service, args in calls:
            order.append(self.send(service, args))
            answers.update(self._ready)
            self._ready.clear()
        while self._in_flight or self._ready:
            counter, answer = self.receive()
            answers[counter] = answer
        return [answers[c] for c in order]

    def close(self) -> None:
        """Close the socket; answers still in flight are dropped (the broker acts anyway)."""
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        self._in_flight.clear()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _next(self, until: float | None) -> tuple[int, Answer]:
        """Wait for the next answer, retrying or giving up requests at their deadlines."""
        sock = self._socket
        assert sock is not None
        # Answers already waiting: none of the deadline bookkeeping below is needed. (With a
        # time limit, that is checked first, as before: timeout=0 only asks about deadlines.)
        while until is None and sock.getsockopt(EVENTS) & POLLIN:
            answered = self._open(receive(sock))
            if answered is not None:
                return answered
        while True:
            now = time.monotonic()
            expired = self._expire(now)
            if expired is not None:
                return expired
            if until is not None and now >= until:
                raise TimeoutError("no answer in time")
            wake = min(f.deadline for f in self._in_flight.values())
            if until is not None:
                wake = min(wake, until)
            if not sock.poll(max(1, int((wake - now) * 1000) + 1)):
                continue
            answered = self._open(receive(sock))
            if answered is not None:
                return answered

    def _expire(self, now: float) -> tuple[int, Answer] | None:
        """Retransmit (same octets) a request past its deadline, or give it up."""
        for counter, flight in self._in_flight.items():
            if flight.deadline > now:
                continue
            if flight.tries < self.retries:
                assert self._socket is not None
                self._socket.send_multipart([b"", flight.sealed])  # a retry: rare
                flight.tries += 1
                flight.deadline = now + self.timeout
                continue
            del self._in_flight[counter]
            return counter, BrokerUnreachable(
                f"broker unreachable at {self.agent.broker} (no answer to request {counter} "
                f"in {self.timeout:g}s, {self.retries} tries)")
        return None

    def _open(self, frames: list[bytes]) -> tuple[int, Answer] | None:
        """Match a reply to its request by counter and open it; None to drop it (not for
        a request in flight, or not authentic: the real answer may still come)."""
        session = self.agent.session
        if len(frames) != 2 or frames[0] != b"" or session is None:
            return None
        try:
            counter = peek(frames[1]).counter  # only to find the request; checked below
        except ProtocolError:
            return None
        if counter not in self._in_flight:
            return None
        try:
            answer: Answer = open_session_reply(session.key, frames[1:], session.sid, counter,
                                                session.result_prefix)
        except RemoteError as exc:
            answer = exc
        except ProtocolError:
            return None
        del self._in_flight[counter]
        return counter, answer


def is_error(answer: Answer) -> bool:
    """Whether a pipeline answer is the error its request ended with."""
    return isinstance(answer, AgoraError)


__all__ = ["Answer", "Pipeline", "is_error"]
