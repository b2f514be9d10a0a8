"""The peer channel's conversation PAIR under attack: a :class:`Conversation` (the
listener's side) receiving MESSAGE envelopes from the initiator, sans-I/O."""

from __future__ import annotations

from agents.peer_protocol import Conversation, PeerEndpoint, PeerMessage
from agora.crypto import PrivateKey
from agora.errors import ProtocolError
from tests.attacks import ChannelHarness, Outcome, register

NOW = 1_800_000_000.0


def connect(ana: PeerEndpoint, bob: PeerEndpoint, now: float,
            ) -> tuple[Conversation, Conversation]:
    """A conversation set up the real way: (ana's side, bob's side)."""
    pending = ana.hello(bob.username, bob.public_key, now)
    hello = bob.parse_hello(pending.frames)
    bob_side = bob.accept(hello, ana.public_key, now)
    ana_side, _ = ana.welcome_received(pending, bob.welcome(bob_side, hello, 4242), now)
    return ana_side, bob_side


@register
class PeerConversation(ChannelHarness):
    name = "peer"

    def __init__(self) -> None:
        self.now = NOW
        self.ana = PeerEndpoint("ana", PrivateKey.generate())
        self.bob = PeerEndpoint("bob", PrivateKey.generate())
        self.sender, self.receiver = connect(self.ana, self.bob, self.now)

    def legitimate(self) -> list[bytes]:
        return self.sender.message("hello bob", self.now)[2]

    def deliver(self, frames: list[bytes]) -> Outcome:
        try:
            events, replies = self.receiver.handle(frames, self.now)
        except ProtocolError:
            return Outcome.dropped()
        # Anything handled counts as accepted, even a duplicate only acknowledged: the
        # message ids must not be what stops a replay (the conversation's guard must).
        assert [type(e) for e in events] in ([PeerMessage], []) and len(replies) == 1
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        return self.receiver.message("bob's own message", self.now)[2]

    def other_context(self) -> list[bytes]:
        # Another conversation between the same two agents: the same box key.
        other_sender, _ = connect(self.ana, self.bob, self.now)
        return other_sender.message("for the other conversation", self.now)[2]

    def with_public_key(self, key: bytes) -> list[bytes] | None:
        return None  # no key travels on a conversation (peer_hello covers the HELLO's)
