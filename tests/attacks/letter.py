"""Offline letters under attack: a recipient's :class:`PeerEndpoint` opening what the broker
hands it as ana's letters (the sender's key from the directory), sans-I/O. A bad letter is
dropped with a log line; the mailbox never answers the sender."""

from __future__ import annotations

from agents.peer_protocol import PeerEndpoint
from agora.crypto import PrivateKey
from agora.errors import ProtocolError
from agora.protocol import MAILBOX_TTL
from tests.attacks import ChannelHarness, Outcome, register

NOW = 1_800_000_000.0


@register
class Letters(ChannelHarness):
    name = "letter"

    def __init__(self) -> None:
        self.now = NOW
        self.ana = PeerEndpoint("ana", PrivateKey.generate())
        self.bob = PeerEndpoint("bob", PrivateKey.generate())

    def legitimate(self) -> list[bytes]:
        return [self.ana.letter("bob", self.bob.public_key, "while you were out", self.now)]

    def deliver(self, frames: list[bytes]) -> Outcome:
        if len(frames) != 1:
            return Outcome.dropped()
        try:
            msg = self.bob.open_letter("ana", self.ana.public_key, frames[0], self.now)
        except ProtocolError:
            return Outcome.dropped()
        return Outcome.ok() if msg is not None else Outcome.dropped()

    def reflected(self) -> list[bytes]:
        # A letter bob wrote to ana, handed back to bob as if ana had left it: one box key
        # for both directions, so only the names inside tell them apart.
        return [self.bob.letter("ana", self.ana.public_key, "bob to ana", self.now)]

    def other_context(self) -> list[bytes]:
        # Sealed with the right key, for another recipient (carol, say, sharing no name).
        return [self.ana.letter("carol", self.bob.public_key, "for carol", self.now)]

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # letters carry no key: the sender's comes from the directory

    def stale(self) -> list[bytes]:
        return [self.ana.letter("bob", self.bob.public_key, "old",
                                self.now - MAILBOX_TTL - 60)]
