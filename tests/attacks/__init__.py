"""One attack suite for every AGORA/2 channel (tests/test_attacks.py runs it).

After pyzmq's ``make_auth()`` idea: each channel supplies a :class:`Channel` harness in a
module of this package (``client.py``, ``worker.py``, ``peer.py``, ``auction.py``,
``announce.py``, ``letter.py`` …) and adds it to ``HARNESSES``; the suite sends every attack
to every harness. A harness drives the *receiving* side's sans-I/O core (no sockets) with a
clock it controls.

Outcomes: the receiver must refuse with one of the documented codes (``refused(code)``),
or drop silently (``dropped``) — never ``internal``, never an exception out of the core —
and afterwards still serve a legitimate message (``serves()``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """What the receiving side did with one message."""

    accepted: bool  # acted on it / answered it as a valid request
    code: str | None = None  # the error code of a refusal, None when dropped or accepted

    @staticmethod
    def dropped() -> Outcome:
        return Outcome(False)

    @staticmethod
    def refused(code: str) -> Outcome:
        return Outcome(False, code)

    @staticmethod
    def ok() -> Outcome:
        return Outcome(True)


class ChannelHarness(abc.ABC):
    """One channel's receiving side under attack. Frames exclude ZeroMQ routing frames."""

    name: str
    #: Codes a refusal on this channel may carry (documented in docs/PROTOCOL.md).
    refusal_codes: frozenset[str] = frozenset({
        "bad-request", "stale", "replayed", "unknown-session", "bad-credentials",
        "too-large", "not-joined"})

    @abc.abstractmethod
    def legitimate(self) -> list[bytes]:
        """A fresh, valid message from the legitimate sender (a new one each call)."""

    @abc.abstractmethod
    def deliver(self, frames: list[bytes]) -> Outcome:
        """Hand ``frames`` to the receiving core; report what it did."""

    @abc.abstractmethod
    def reflected(self) -> list[bytes]:
        """A valid message the *receiver* itself sealed (e.g. its reply), sent back to it."""

    @abc.abstractmethod
    def other_context(self) -> list[bytes]:
        """A valid message sealed with the right key for another context (session,
        conversation, item or epoch) than the receiver's."""

    @abc.abstractmethod
    def with_public_key(self, key: bytes) -> list[bytes] | None:
        """The legitimate message, but naming ``key`` as the sender's public key; None when
        the channel carries no public key (then the key attacks do not apply)."""

    def stale(self) -> list[bytes] | None:
        """A valid message made too long ago (clock moved on); None if the channel has no
        freshness rule beyond its counters."""
        return None

    def advance(self, seconds: float) -> None:  # noqa: B027 - optional hook
        """Move the harness's clock (for staleness)."""


HARNESSES: list[type[ChannelHarness]] = []


def register(cls: type[ChannelHarness]) -> type[ChannelHarness]:
    HARNESSES.append(cls)
    return cls
