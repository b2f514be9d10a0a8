"""A bidder's picture of the auction, built from announcements (sans-I/O).

:class:`AuctionView` is fed raw datagrams — from multicast and from the PUB mirror, in any
interleaving — and keeps the current item, best bid, closing time, last bids and results.
It accepts only datagrams signed by the auctioneer key learnt at join (members hold the
group key, so the signature is what proves the auctioneer), opens EVENT envelopes with the
epoch's group key and REKEY entries with this member's box key, drops duplicates and
replays by ``(epoch, seq)`` (both paths carry the same bytes), and says when it has
noticed a gap or lacks an epoch's key, so that the shell asks for a snapshot, as in the
ZeroMQ guide's "Clone" pattern. It never raises for anything received.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agora.auction_wire import open_events, open_rekey, peek_datagram, verify_datagram
from agora.crypto import PrivateKey, VerifyKey, unb64
from agora.envelope import KEY_SIZE, box_key
from agora.errors import ProtocolError
from agora.protocol import Event, Kind

log = logging.getLogger("agora.auction")

#: Group keys kept for recent epochs (late datagrams of the previous item still open).
KEPT_EPOCHS = 3


@dataclass(frozen=True)
class JoinInfo:
    """What the join answer told this member. ``group_key`` is a secret: never print it."""

    username: str
    group: str
    port: int
    pub_endpoint: str
    verify_key: bytes
    auctioneer_key: bytes
    snapshot: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {"username": self.username, "group": self.group, "port": self.port,
                "pub_endpoint": self.pub_endpoint, "epoch": self.snapshot.get("epoch"),
                "state": self.snapshot.get("state")}


@dataclass
class Feed:
    """Result of feeding one datagram: events to show, and whether to ask for a snapshot."""

    events: list[dict[str, Any]] = field(default_factory=list)
    need_snapshot: bool = False


class AuctionView:
    def __init__(self, join: JoinInfo, private_key: PrivateKey) -> None:
        self.verify_key = VerifyKey(join.verify_key)
        self.public_key = bytes(private_key.public_key)
        self.key = box_key(bytes(private_key), join.auctioneer_key)
        self.keys: dict[int, bytes] = {}
        self.epoch = 0
        self.last_seq = 0
        self.item: dict[str, Any] | None = None
        self.status = "idle"
        self.closes_at: float | None = None
        self.minimum: int | None = None
        self.best: dict[str, Any] | None = None
        self.bids: deque[dict[str, Any]] = deque(maxlen=10)
        self.results: list[dict[str, Any]] = []
        self.dropped = 0
        #: Datagrams whose signature checked out: proof the auctioneer is alive, even when
        #: their content cannot be opened yet (a missed re-key).
        self.heard = 0
        self.apply_snapshot(join.snapshot)

    # -- input ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> Feed:
        header = peek_datagram(data)
        if header is not None and header <= (self.epoch, self.last_seq):
            # Already seen (the other path's copy) or older: dropping it unverified is safe,
            # and halves the signature checks, since every datagram arrives twice.
            return Feed()
        try:
            dgram = verify_datagram(data, self.verify_key)
        except ProtocolError as exc:
            self.dropped += 1
            log.info("dropped a datagram: %s", exc)
            return Feed()
        self.heard += 1
        if (dgram.epoch, dgram.seq) <= (self.epoch, self.last_seq):
            return Feed()  # seen on the other path already, or a replay
        in_order = (dgram.epoch == self.epoch and dgram.seq == self.last_seq + 1) or \
            (dgram.epoch > self.epoch and dgram.seq == 1)
        position = (self.epoch, self.last_seq)
        self.epoch, self.last_seq = dgram.epoch, dgram.seq
        try:
            if dgram.kind is Kind.REKEY:
                key = open_rekey(dgram, self.public_key, self.key)
                if key is not None:
                    self._add_key(dgram.epoch, key)
                    return Feed([{"kind": Event.REKEY.value, "epoch": dgram.epoch}],
                                not in_order)
                return Feed([], not in_order)
            group_key = self.keys.get(dgram.epoch)
            if group_key is None:  # missed the rekey, or left out of it: the snapshot tells
                self.epoch, self.last_seq = position
                return Feed([], True)
            events = open_events(dgram, group_key)
        except ProtocolError as exc:
            # Signed but not openable: it must not move the view past what it skipped.
            self.epoch, self.last_seq = position
            self.dropped += 1
            log.info("dropped a signed datagram that does not open: %s", exc)
            return Feed([], True)
        for event in events:
            self._apply(event)
        return Feed(events, not in_order)

    def apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace the picture with the auctioneer's: state, epoch, key and sequence."""
        try:
            epoch, seq = int(snapshot["epoch"]), int(snapshot["seq"])
            key = unb64(snapshot["group_key"], KEY_SIZE)
            state = snapshot["state"]
            if not isinstance(state, dict):
                raise TypeError
        except (KeyError, TypeError, ValueError, ProtocolError):
            raise ProtocolError("snapshot is malformed") from None
        self._add_key(epoch, key)
        self.epoch, self.last_seq = epoch, seq
        self.apply_state(state)
        last = state.get("last_result")
        if last and not any(r.get("item") == last.get("item") for r in self.results):
            self.results.append(last)

    def _add_key(self, epoch: int, key: bytes) -> None:
        self.keys[epoch] = key
        for old in sorted(self.keys)[:-KEPT_EPOCHS]:
            del self.keys[old]

    # -- state ----------------------------------------------------------------------------

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == Event.OPENED.value:
            self.apply_state(event)
        elif kind == Event.BID.value:
            self.best = {"amount": event.get("amount"), "bidder": event.get("bidder"),
                         "at": event.get("at")}
            self.bids.appendleft(self.best)
            self.closes_at = event.get("closes_at", self.closes_at)
            self.minimum = event.get("minimum", self.minimum)
        elif kind == Event.EXTENDED.value:
            self.closes_at = event.get("closes_at", self.closes_at)
        elif kind == Event.VOIDED.value:
            # A revoked bidder's bids no longer count: the auctioneer's new best and bids.
            self.best = event.get("best")
            self.minimum = event.get("minimum", self.minimum)
            self.bids.clear()
            for bid in event.get("bids") or []:
                self.bids.appendleft(bid)
        elif kind == Event.CLOSING.value:
            self.status = "closing"
        elif kind == Event.CLOSED.value:
            self.status = "closed"
            self.results.append({k: v for k, v in event.items() if k not in ("epoch", "seq")})
        elif kind == Event.HEARTBEAT.value and event.get("item") is None \
                and self.status != "closed":
            self.item, self.status = None, "idle"

    def apply_state(self, state: dict[str, Any]) -> None:
        self.item = state.get("item")
        self.status = state.get("status", "idle")
        self.closes_at = state.get("closes_at")
        self.minimum = state.get("minimum")
        self.best = state.get("best")
        self.bids.clear()
        for bid in state.get("bids") or []:
            self.bids.appendleft(bid)

    @property
    def winner(self) -> dict[str, Any] | None:
        return self.results[-1] if self.results else None
