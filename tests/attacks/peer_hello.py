"""The peer channel's inbox under attack: a listener's :class:`PeerEndpoint` receiving HELLOs,
with the broker's directory as a dict (what the socket shell looks up), sans-I/O."""

from __future__ import annotations

from agents.peer_protocol import PeerEndpoint, Refused
from agora.crypto import PrivateKey
from agora.errors import ProtocolError
from tests.attacks import ChannelHarness, Outcome, register

NOW = 1_800_000_000.0


@register
class PeerInbox(ChannelHarness):
    name = "peer-hello"

    def __init__(self) -> None:
        self.now = NOW
        self.ana = PeerEndpoint("ana", PrivateKey.generate())
        self.bob = PeerEndpoint("bob", PrivateKey.generate())
        self.directory = {"ana": self.ana.public_key, "bob": self.bob.public_key}

    def legitimate(self) -> list[bytes]:
        return self.ana.hello("bob", self.bob.public_key, self.now).frames

    def deliver(self, frames: list[bytes]) -> Outcome:
        try:
            hello = self.bob.parse_hello(frames)
        except ProtocolError:
            return Outcome.refused("bad-request")  # the shell answers a clear bad-request
        directory_key = self.directory.get(hello.sender)
        if directory_key is None:
            return Outcome.refused("unknown-user")
        try:
            self.bob.accept(hello, directory_key, self.now)
        except Refused as exc:
            return Outcome.refused(exc.code.value)
        return Outcome.ok()

    def reflected(self) -> list[bytes]:
        # The listener's own WELCOME, sent back to its inbox.
        pending = self.ana.hello("bob", self.bob.public_key, self.now)
        hello = self.bob.parse_hello(pending.frames)
        conversation = self.bob.accept(hello, self.ana.public_key, self.now)
        return [b"ana", self.ana.public_key, *self.bob.welcome(conversation, hello, 4242)]

    def other_context(self) -> list[bytes]:
        # Sealed with the right key, but for another listener's inbox.
        return self.ana.hello("carol", self.bob.public_key, self.now).frames

    def with_public_key(self, key: bytes) -> list[bytes]:
        frames = self.legitimate()
        return [frames[0], key, frames[2]]

    def stale(self) -> list[bytes]:
        return self.ana.hello("bob", self.bob.public_key,
                              self.now - 2 * self.bob.hello_window).frames
