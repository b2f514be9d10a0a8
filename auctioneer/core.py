"""The auctioneer's engine, without sockets (sans-I/O): members, group keys, the auction.

``handle(frames, now)`` answers one request from the ROUTER socket (JOIN, BID, SNAPSHOT,
RESULTS); ``tick(now)`` runs the clock (closing, soft close, heartbeats, member checks);
``open_item(item, file, now)`` starts the next auction. Announcements it makes are signed
datagrams collected in ``outbox`` for the publisher to send. Whether a key is registered
and not revoked is asked through ``registry`` (the broker's ``key_status`` in production,
a dict in tests), so everything here is tested without a network or a sleep.

The auctioneer is the only judge of a bid, and a bid is acknowledged only after the store
has committed it; ties go to the first one stored, because requests are handled one at a
time and a bid must *beat* the best one by the increment.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agora.auction_wire import (
    MAX_CENTS,
    format_money,
    parse_request,
    plain_error,
    rekey_datagram,
    seal_event,
    sealed_reply,
)
from agora.crypto import (
    Box,
    PrivateKey,
    PublicKey,
    SecretBox,
    SigningKey,
    b64,
    new_symmetric_key,
    open_sealed,
)
from agora.errors import AgoraError, LocalError, ProtocolError, RemoteError
from agora.protocol import (
    DEFAULT_SOFT_CLOSE,
    FRESHNESS_WINDOW,
    HEARTBEAT_INTERVAL,
    MEMBER_CHECK_INTERVAL,
    AuctionCommand,
    ErrorCode,
    Event,
    Status,
)
from agora.wire import decode_json
from agora.wire import field as wire_field
from auctioneer.items import Item
from auctioneer.store import AuctionStore

log = logging.getLogger("agora.auctioneer")

#: Members per REKEY datagram (each entry is ~140 bytes of a 60 kB datagram).
REKEY_CHUNK = 300
#: Bids kept in snapshots and announcements for watchers' "last bids".
RECENT_BIDS = 10
#: Answers kept for exact retransmissions (Lazy Pirate retries); also the replay guard.
REPLY_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class KeyStatus:
    """What the broker says about a public key."""

    registered: bool
    username: str | None = None
    revoked: bool = False


Registry = Callable[[bytes], KeyStatus]


@dataclass
class AuctionConfig:
    """Where members find the announcements, and the auction's timing rules."""

    group: str
    port: int
    pub_endpoint: str
    soft_close: float = DEFAULT_SOFT_CLOSE
    heartbeat: float = HEARTBEAT_INTERVAL
    member_check: float = MEMBER_CHECK_INTERVAL


@dataclass
class Bid:
    amount: int
    username: str
    public_key: bytes
    at: float

    def public(self) -> dict[str, Any]:
        return {"amount": self.amount, "bidder": self.username, "at": self.at}


@dataclass
class Lot:
    """The item being auctioned now."""

    item: Item
    file: str
    opened_at: float
    closes_at: float
    bids: list[Bid] = field(default_factory=list)
    closing_announced: bool = False

    @property
    def best(self) -> Bid | None:
        return self.bids[-1] if self.bids else None

    @property
    def minimum(self) -> int:
        best = self.best
        return best.amount + self.item.increment_cents if best else self.item.start_cents


@dataclass
class Member:
    username: str
    box: Box


class AuctioneerCore:
    def __init__(self, private_key: PrivateKey, signing_key: SigningKey, store: AuctionStore,
                 registry: Registry, config: AuctionConfig, now: float) -> None:
        self.private_key = private_key
        self.signing_key = signing_key
        self.store = store
        self.registry = registry
        self.config = config
        self.outbox: list[bytes] = []
        self.members: dict[bytes, Member] = {
            key: Member(name, self._make_box(key)) for key, name in store.members().items()}
        self.lot: Lot | None = None
        self.last_result: dict[str, Any] | None = None
        self._replies: OrderedDict[bytes, tuple[float, list[bytes]]] = OrderedDict()
        self._next_heartbeat = now
        self._next_member_check = now + config.member_check
        self.epoch = 0
        self.seq = 0
        self.group_key = b""
        self.group_box: SecretBox | None = None
        self._handlers = {
            AuctionCommand.JOIN: self._join, AuctionCommand.BID: self._bid,
            AuctionCommand.SNAPSHOT: self._snapshot, AuctionCommand.RESULTS: self._results,
        }
        # A restart is a new epoch: group keys are never written to disk.
        self.rotate("start")
        self._resume(now)

    # -- group keys -----------------------------------------------------------------------

    def _make_box(self, public_key: bytes) -> Box:
        return Box(self.private_key, PublicKey(public_key))

    def rotate(self, why: str) -> None:
        """A new epoch and group key, sent to each current member in REKEY datagrams."""
        self.epoch = self.store.next_epoch()
        self.seq = 0
        self.group_key = new_symmetric_key()
        self.group_box = SecretBox(self.group_key)
        keys = list(self.members)
        for start in range(0, max(len(keys), 1), REKEY_CHUNK):
            self.seq += 1
            self.outbox.append(rekey_datagram(self.signing_key, self.private_key, self.epoch,
                                              self.seq, self.group_key,
                                              keys[start:start + REKEY_CHUNK]))
        log.info("group key rotated (%s): epoch %d, %d member(s)", why, self.epoch, len(keys))

    def announce(self, kind: Event, **fields: Any) -> None:
        assert self.group_box is not None
        self.seq += 1
        self.outbox.append(seal_event(self.signing_key, self.group_box, self.epoch, self.seq,
                                      {"kind": kind.value, **fields}))

    def take_outbox(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    # -- the auction ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.lot is None

    def _resume(self, now: float) -> None:
        """Pick up the item that was open when the process stopped, with all its bids."""
        rows = self.store.open_items()
        if not rows:
            return
        row = rows[0]
        lot = Lot(Item.from_dict(decode_json(row["item"].encode())), row["file"],
                  row["opened_at"], row["closes_at"])
        lot.bids = [Bid(b["amount_cents"], b["username"], b["public_key"], b["ts"])
                    for b in self.store.bids(lot.item.id)]
        self.lot = lot
        log.info("resumed item %s with %d bid(s)", lot.item.id, len(lot.bids))
        self.announce(Event.OPENED, **self.state(now))

    def open_item(self, item: Item, file: str, now: float) -> None:
        """Start ``item``'s auction (new group key first); LocalError if it cannot run."""
        if self.lot is not None:
            raise LocalError("an auction is already running")
        if self.store.known_item(item.id):
            raise LocalError(f"item id {item.id!r} was already auctioned")
        self.rotate(f"item {item.id}")
        lot = Lot(item, file, now, now + item.duration)
        self.store.open_item(item, file, now, lot.closes_at)
        self.lot = lot
        log.info("opened item %s (%s), closes in %gs", item.id, item.title, item.duration)
        self.announce(Event.OPENED, **self.state(now))

    def tick(self, now: float) -> list[str]:
        """Run the clock; returns the files of items that finished (to move to done/)."""
        finished = []
        lot = self.lot
        if lot is not None:
            if not lot.closing_announced and now >= lot.closes_at - self.config.soft_close:
                lot.closing_announced = True
                self.announce(Event.CLOSING, item=lot.item.id, closes_at=lot.closes_at)
            if now >= lot.closes_at:
                finished.append(self._close(lot, now))
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat
            self.announce(Event.HEARTBEAT, item=lot.item.id if self.lot else None,
                          closes_at=self.lot.closes_at if self.lot else None, now=now)
        if now >= self._next_member_check:
            self._next_member_check = now + self.config.member_check
            self.check_members()
        self._purge_replies(now)
        return finished

    def _close(self, lot: Lot, now: float) -> str:
        best = lot.best
        reserve = lot.item.reserve_cents
        sold = best is not None and (reserve is None or best.amount >= reserve)
        if best is None:
            reason = "no bids"
        elif not sold:
            reason = "reserve price not met"
        else:
            reason = "sold"
        winner = best.username if sold and best else None
        price = best.amount if sold and best else None
        self.store.close_item(lot.item.id, sold, winner, price, now)
        self.lot = None
        self.last_result = {"item": lot.item.id, "title": lot.item.title, "sold": sold,
                            "winner": winner, "price_cents": price, "reason": reason,
                            "closed_at": now}
        log.info("closed item %s: %s", lot.item.id,
                 f"sold to {winner} for {format_money(price)}" if price is not None else reason)
        self.announce(Event.CLOSED, **self.last_result)
        return lot.file

    def state(self, now: float) -> dict[str, Any]:
        """What a watcher needs to draw the auction: the heart of SNAPSHOT and OPENED."""
        lot = self.lot
        if lot is None:
            return {"item": None, "status": "idle", "last_result": self.last_result}
        best = lot.best
        return {"item": lot.item.to_dict(), "status": "open", "opened_at": lot.opened_at,
                "closes_at": lot.closes_at, "minimum": lot.minimum,
                "best": best.public() if best else None,
                "bids": [b.public() for b in lot.bids[-RECENT_BIDS:]],
                "soft_close": self.config.soft_close, "last_result": self.last_result}

    # -- members --------------------------------------------------------------------------

    def check_members(self) -> None:
        """Ask the broker about every member; drop the revoked and re-key without them."""
        removed = []
        for key, member in list(self.members.items()):
            try:
                status = self.registry(key)
            except AgoraError as exc:  # broker down: keep everyone, try again later
                log.warning("cannot check members with the broker: %s", exc)
                return
            if not status.registered or status.revoked:
                removed.append(member.username)
                self._forget_member(key)
        if removed:
            log.info("removed revoked member(s): %s", ", ".join(removed))
            self.rotate("member revoked")

    def _forget_member(self, key: bytes) -> None:
        del self.members[key]
        self.store.remove_member(key)

    # -- requests -------------------------------------------------------------------------

    def handle(self, frames: list[bytes], now: float) -> list[bytes]:
        """Answer one request; never raises for anything a peer can send."""
        try:
            command, public_key, sealed = parse_request(frames)
        except ProtocolError as exc:
            log.info("dropped an auction request: %s", exc)
            return plain_error(None, ErrorCode.BAD_REQUEST, str(exc))
        digest = hashlib.blake2b(public_key + sealed, digest_size=32).digest()
        cached = self._replies.get(digest)
        if cached is not None:
            # An exact retransmission (a retry, or a replay): same answer, nothing redone.
            log.info("repeated %s request answered from cache, nothing done again",
                     command.name)
            return cached[1]
        member = self.members.get(public_key)
        box = member.box if member else self._make_box(public_key)
        try:
            body = decode_json(open_sealed(box, sealed))
            ts = wire_field(body, "ts", (int, float))
        except ProtocolError:
            log.info("refused a %s request that does not open with the key it names",
                     command.name)
            return plain_error(command, ErrorCode.BAD_REQUEST,
                               "request is not sealed with the private key of the key it names")
        try:
            if abs(now - ts) > FRESHNESS_WINDOW:
                raise RemoteError(ErrorCode.STALE, "request is too old or from the future; "
                                  "check the clock")
            reply = sealed_reply(box, command, Status.OK,
                                 self._handlers[command](public_key, body, now))
        except RemoteError as exc:
            log.info("refused %s: %s", command.name, exc.message)
            reply = sealed_reply(box, command, Status.ERROR, exc.to_dict())
        except ProtocolError as exc:
            log.info("refused a malformed %s: %s", command.name, exc)
            reply = sealed_reply(box, command, Status.ERROR,
                                 {"code": ErrorCode.BAD_REQUEST.value, "message": str(exc)})
        self._replies[digest] = (now + 2 * FRESHNESS_WINDOW, reply)
        while len(self._replies) > REPLY_CACHE_SIZE:
            self._replies.popitem(last=False)
        return reply

    def _purge_replies(self, now: float) -> None:
        while self._replies:
            digest, (expires, _) = next(iter(self._replies.items()))
            if expires > now:
                break
            del self._replies[digest]

    def _member(self, public_key: bytes) -> Member:
        member = self.members.get(public_key)
        if member is None:
            raise RemoteError(ErrorCode.NOT_JOINED, "this key has not joined the auction")
        return member

    def _join(self, public_key: bytes, body: dict[str, Any], now: float) -> dict[str, Any]:
        status = self._key_status(public_key)
        if not status.registered or not status.username:
            raise RemoteError(ErrorCode.UNKNOWN_USER,
                              "this key does not belong to a registered collaborator")
        if status.revoked:
            raise RemoteError(ErrorCode.REVOKED, f"{status.username} is revoked")
        if public_key not in self.members:
            self.store.add_member(public_key, status.username, now)
            self.members[public_key] = Member(status.username, self._make_box(public_key))
            log.info("%s joined", status.username)
        return {"username": status.username, "group": self.config.group,
                "port": self.config.port, "pub_endpoint": self.config.pub_endpoint,
                "verify_key": b64(bytes(self.signing_key.verify_key)),
                **self._snapshot(public_key, body, now)}

    def _key_status(self, public_key: bytes) -> KeyStatus:
        """The broker's word on a key, now; fails closed when the broker cannot answer."""
        try:
            return self.registry(public_key)
        except AgoraError as exc:
            raise RemoteError(ErrorCode.SERVICE_UNAVAILABLE,
                              f"cannot check your key with the broker now: {exc}") from None

    def _check_bidder(self, public_key: bytes, member: Member) -> None:
        """Ask the broker about this bidder now, not at the next periodic check: a bid from a
        key revoked a second ago must not win. Fails closed, like a join."""
        status = self._key_status(public_key)
        if not status.registered or status.revoked:
            self._forget_member(public_key)
            log.info("bid from revoked member %s refused; re-keying", member.username)
            self.rotate("member revoked")
            raise RemoteError(ErrorCode.REVOKED, f"{member.username} is revoked")

    def _snapshot(self, public_key: bytes, body: dict[str, Any], now: float) -> dict[str, Any]:
        self._member(public_key)
        return {"epoch": self.epoch, "seq": self.seq, "group_key": b64(self.group_key),
                "state": self.state(now)}

    def _results(self, public_key: bytes, body: dict[str, Any], now: float) -> dict[str, Any]:
        self._member(public_key)
        return {"results": self.store.results()}

    def _bid(self, public_key: bytes, body: dict[str, Any], now: float) -> dict[str, Any]:
        member = self._member(public_key)
        self._check_bidder(public_key, member)
        item_id = wire_field(body, "item", str)
        amount = wire_field(body, "amount", int)
        if not 0 < amount <= MAX_CENTS:
            raise ProtocolError(f"amount must be between 1 and {MAX_CENTS} cents")
        lot = self.lot
        if lot is None:
            raise RemoteError(ErrorCode.AUCTION_CLOSED, "no auction is open")
        if item_id != lot.item.id:
            raise RemoteError(ErrorCode.AUCTION_CLOSED,
                              f"item {item_id[:64]!r} is not open (now: {lot.item.id})")
        if now >= lot.closes_at:
            raise RemoteError(ErrorCode.AUCTION_CLOSED, f"the auction for {item_id} has closed")
        if amount < lot.minimum:
            raise RemoteError(ErrorCode.BID_TOO_LOW,
                              f"bid must be at least {format_money(lot.minimum)}")
        extended = now >= lot.closes_at - self.config.soft_close
        closes_at = lot.closes_at + self.config.soft_close if extended else lot.closes_at
        # Stored (committed) before anything is announced or acknowledged.
        self.store.add_bid(lot.item.id, amount, member.username, public_key, now, closes_at)
        bid = Bid(amount, member.username, public_key, now)
        lot.bids.append(bid)
        lot.closes_at = closes_at
        self.announce(Event.BID, item=lot.item.id, **bid.public(), closes_at=closes_at,
                      minimum=lot.minimum)
        if extended:
            self.announce(Event.EXTENDED, item=lot.item.id, closes_at=closes_at)
        return {"accepted": True, "item": lot.item.id, "amount": amount,
                "closes_at": closes_at, "extended": extended}
