"""The auctioneer receiving bidders' requests (AuctioneerCore.handle), under attack."""

from __future__ import annotations

from agora.auction_wire import REPLY_KINDS
from agora.envelope import open_envelope, peek
from agora.errors import ProtocolError
from agora.protocol import Channel, Kind, Sender
from agora.wire import decode_json
from tests.attacks import ChannelHarness, Outcome, register
from tests.auction_helpers import T0, Harness, item


@register
class AuctionRequests(ChannelHarness):
    """A joined member bids higher each time; a request is accepted when a bid is stored."""

    name = "auction"

    def __init__(self) -> None:
        self.h = Harness()
        self.h.core.open_item(item(duration=100_000), "lamp.json", T0)
        self.now = T0
        self.ana = self.h.bidder("ana")
        self.h.join(self.ana)
        self.amount = 1000

    def legitimate(self) -> list[bytes]:
        self.amount += 100
        return self.ana.frames(Kind.BID, {"item": "lamp", "amount": self.amount}, self.now)

    def deliver(self, frames: list[bytes]) -> Outcome:
        stored = len(self.h.store.bids("lamp"))
        reply = self.h.core.handle(frames, self.now)
        assert len(reply) == 1
        if peek(reply[0]).kind == Kind.ERROR:
            return Outcome.refused(decode_json(reply[0][30:])["code"])
        try:
            header, body = open_envelope(self.ana.key, reply[0], Channel.AUCTION,
                                         Sender.AUCTIONEER, REPLY_KINDS)
        except ProtocolError:
            return Outcome.dropped()
        if header.kind == Kind.REFUSED:
            return Outcome.refused(decode_json(body)["code"])
        # A RESULT for a replay is the cached answer: nothing was done again.
        return Outcome.ok() if len(self.h.store.bids("lamp")) > stored else Outcome.dropped()

    def reflected(self) -> list[bytes]:
        frames = self.legitimate()
        return [frames[0], self.h.core.handle(frames, self.now)[0]]

    def other_context(self) -> list[bytes]:
        public_key, envelope = self.legitimate()
        # The same sealed bid moved to another request id: the header is authenticated.
        return [public_key, envelope[:6] + bytes(16) + envelope[22:]]

    def with_public_key(self, key: bytes) -> list[bytes]:
        return [key, self.legitimate()[1]]

    def stale(self) -> list[bytes]:
        self.amount += 100
        return self.ana.frames(Kind.BID, {"item": "lamp", "amount": self.amount},
                               self.now - 600)
