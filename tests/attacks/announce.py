"""A watcher (AuctionView) receiving announcement datagrams, under attack."""

from __future__ import annotations

from agora.envelope import HEADER_SIZE
from agora.protocol import Event, Kind
from tests.attacks import ChannelHarness, Outcome, register
from tests.auction_helpers import T0, Harness, item


@register
class Announcements(ChannelHarness):
    """A datagram is accepted when the view takes an event from it."""

    name = "announce"
    refusal_codes = frozenset()  # a watcher never answers: everything bad is dropped

    def __init__(self) -> None:
        self.h = Harness()
        self.h.core.open_item(item(duration=100_000), "lamp.json", T0)
        self.ana = self.h.bidder("ana")
        self.view = self.h.view(self.ana)
        self.h.core.take_outbox()
        self.n = 0

    def legitimate(self) -> list[bytes]:
        self.n += 1
        self.h.core.announce(Event.HEARTBEAT, item="lamp", closes_at=None, now=T0 + self.n)
        return self.h.core.take_outbox()

    def deliver(self, frames: list[bytes]) -> Outcome:
        events = [e for f in frames for e in self.view.feed(f).events]
        return Outcome.ok() if events else Outcome.dropped()

    def reflected(self) -> list[bytes]:
        # What a watcher itself seals is a request to the auctioneer: never an announcement.
        return [self.ana.frames(Kind.SNAPSHOT, {}, T0)[1]]

    def other_context(self) -> list[bytes]:
        # A genuine event moved to another epoch and signed again with the auctioneer's own
        # key: the epoch is in the authenticated header, so the group key's tag fails.
        (datagram,) = self.legitimate()
        envelope = datagram[:-64]
        moved = envelope[:6] + (self.h.core.epoch + 1).to_bytes(4, "big") + envelope[10:]
        assert len(moved) > HEADER_SIZE
        return [moved + self.h.signing_key.sign(moved).signature]

    def with_public_key(self, key: bytes) -> None:
        return None  # announcements name no key

    def stale(self) -> list[bytes]:
        old = self.legitimate()  # made, never delivered...
        self.h.core.rotate("test")  # ...then a new epoch the watcher has moved on to
        self.view.apply_snapshot(self.h.ask(self.ana, Kind.SNAPSHOT, {}, T0))
        self.h.core.take_outbox()
        return old
