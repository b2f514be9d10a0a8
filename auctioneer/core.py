"""The auctioneer's engine, without sockets (sans-I/O): members, group keys, the auction.

``handle(frames, now)`` answers one request from the ROUTER socket (JOIN, BID, SNAPSHOT,
RESULTS); ``tick(now)`` runs the clock (closing, soft close, heartbeats, member checks);
``open_item(item, file, now)`` starts the next auction. Announcements it makes are signed
datagrams collected in ``outbox`` for the publisher to send.

Who may take part is the broker's word, pushed, never asked for: the shell feeds
``membership_snapshot`` (the whole valid membership at a version), ``member_changed`` (one
pushed membership notice) and ``broker_heard`` (any authenticated word from the broker) in,
and reads ``wants_snapshot`` out. The core never calls out, so a broker that is down cannot
stall it; it fails closed instead: once the broker has been unheard-of for longer than
MEMBERSHIP_SILENCE_LIMIT, joins and bids are refused with ``service-unavailable``.
Everything here is tested without a network or a sleep.

The auctioneer is the only judge of a bid, and a bid is acknowledged only after the store
has committed it; ties go to the first one stored, because requests are handled one at a
time and a bid must *beat* the best one by the increment.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agora.auction_wire import (
    REQUEST_KINDS,
    clear_error,
    decode_request_body,
    encode_accepted,
    encode_bid_event,
    encode_event,
    event_bodies,
    format_money,
    rekey_datagram,
    seal_event_body,
    seal_reply,
)
from agora.crypto import PrivateKey, SigningKey, b64, new_symmetric_key, unb64
from agora.envelope import (
    Header,
    ReplayGuard,
    box_key,
    context_id,
    is_fresh,
    open_envelope,
    peek,
)
from agora.errors import LocalError, ProtocolError, RemoteError
from agora.protocol import (
    DEFAULT_SOFT_CLOSE,
    FRESHNESS_WINDOW,
    HEARTBEAT_INTERVAL,
    MAX_MESSAGE_SIZE,
    MEMBERSHIP_SILENCE_LIMIT,
    Channel,
    ErrorCode,
    Event,
    Kind,
    Sender,
)
from agora.wire import decode_json, encode_refusal
from auctioneer.items import Item
from auctioneer.store import AuctionStore

log = logging.getLogger("agora.auctioneer")

#: Members per REKEY datagram (each entry is 110 bytes of a 60 kB datagram).
REKEY_CHUNK = 500
#: Bids kept in snapshots and announcements for watchers' "last bids".
RECENT_BIDS = 10
#: Answers kept for exact retransmissions (Lazy Pirate retries), members' requests only.
REPLY_CACHE_SIZE = 10_000
#: Requests remembered by the replay guard (members' admitted requests only).
REPLAY_CONTEXTS = 100_000


#: The broker's word for a member whose key is valid (membership notices and snapshots).
REGISTERED = "registered"


@dataclass
class Roster:
    """The broker's pushed membership: valid keys, and when the broker was last heard."""

    version: int | None = None  # None until the first snapshot
    heard_at: float | None = None
    keys: dict[bytes, str] = field(default_factory=dict)  # valid key -> username
    by_name: dict[str, bytes] = field(default_factory=dict)
    gone: dict[bytes, str] = field(default_factory=dict)  # key -> state it left in


@dataclass
class AuctionConfig:
    """Where members find the announcements, and the auction's timing rules."""

    group: str
    port: int
    pub_endpoint: str
    soft_close: float = DEFAULT_SOFT_CLOSE
    heartbeat: float = HEARTBEAT_INTERVAL
    silence_limit: float = MEMBERSHIP_SILENCE_LIMIT


@dataclass
class Bid:
    amount: int
    username: str
    public_key: bytes
    at: float
    void: bool = False  # the bidder was revoked: the bid no longer counts

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
    def valid_bids(self) -> list[Bid]:
        return [b for b in self.bids if not b.void]

    @property
    def best(self) -> Bid | None:
        """The best bid that still counts (bids only ever rise, so the last valid one)."""
        return next((b for b in reversed(self.bids) if not b.void), None)

    @property
    def minimum(self) -> int:
        best = self.best
        return best.amount + self.item.increment_cents if best else self.item.start_cents


@dataclass
class Member:
    username: str
    key: bytes  # box_key(auctioneer, member), computed once


class AuctioneerCore:
    def __init__(self, private_key: PrivateKey, signing_key: SigningKey, store: AuctionStore,
                 config: AuctionConfig, now: float) -> None:
        self.private_key = private_key
        self._secret = bytes(private_key)
        self.signing_key = signing_key
        self.store = store
        self.config = config
        self.roster = Roster()
        #: Effect out: the shell should fetch the broker's membership snapshot and feed it.
        self.wants_snapshot = True
        self.outbox: list[bytes] = []
        #: Events announced since the last datagram was sealed (encoded JSON, in order):
        #: sealed and signed together, as few datagrams as fit, by :meth:`take_outbox`.
        self._events: list[bytes] = []
        self.members: dict[bytes, Member] = {}
        for key, name in store.members().items():
            try:
                self.members[key] = Member(name, box_key(self._secret, key))
            except ProtocolError:
                log.warning("dropped stored member %s: unusable key", name)
        self.lot: Lot | None = None
        self.last_result: dict[str, Any] | None = None
        self._guard = ReplayGuard(ttl=2 * FRESHNESS_WINDOW, max_contexts=REPLAY_CONTEXTS)
        # request slot -> (expiry, counter, reply), for exact retransmissions
        self._replies: OrderedDict[bytes, tuple[float, int, list[bytes]]] = OrderedDict()
        # bidder key + request id -> (expiry, item, amount, closes_at, extended) of the bids
        # stored in the last 2 x FRESHNESS_WINDOW. A retry of a stored bid (its answer lost,
        # even in a crash) has the original's counter, so it is fresh only that long: it can
        # only be one of these. No more requests than the replay guard admits get in here.
        self._stored: OrderedDict[bytes, tuple[float, str, int, float, bool]] = OrderedDict()
        for key, request_id, item_id, amount, closes_at, extended in store.bids_since(
                now - 2 * FRESHNESS_WINDOW):
            self._stored[key + request_id] = (now + 2 * FRESHNESS_WINDOW, item_id, amount,
                                              closes_at, extended)
        self._next_heartbeat = now
        self.epoch = 0
        self.seq = 0
        self.group_key = b""
        self._handlers = {
            Kind.JOIN: self._join, Kind.BID: self._bid,
            Kind.SNAPSHOT: self._snapshot, Kind.RESULTS: self._results,
        }
        # A restart is a new epoch: group keys are never written to disk.
        self.rotate("start")
        self._resume(now)

    # -- group keys -----------------------------------------------------------------------

    def rotate(self, why: str) -> None:
        """A new epoch and group key, sent to each current member in REKEY datagrams."""
        self._seal_events()  # what was announced before belongs to the old epoch
        self.epoch = self.store.next_epoch()
        self.seq = 0
        self.group_key = new_symmetric_key()
        members = [(key, m.key) for key, m in self.members.items()]
        for start in range(0, max(len(members), 1), REKEY_CHUNK):
            self.seq += 1
            self.outbox.append(rekey_datagram(self.signing_key, self.epoch, self.seq,
                                              self.group_key,
                                              members[start:start + REKEY_CHUNK]))
        log.info("group key rotated (%s): epoch %d, %d member(s)", why, self.epoch,
                 len(members))

    def announce(self, kind: Event, **fields: Any) -> None:
        """Queue an event; it is sealed and signed with the others of its batch."""
        self._events.append(encode_event({"kind": kind.value, **fields}))

    def _seal_events(self) -> None:
        """Seal the queued events into EVENT datagrams (one signature each), in order."""
        if not self._events:
            return
        for body in event_bodies(self._events):
            self.seq += 1
            self.outbox.append(seal_event_body(self.signing_key, self.group_key, self.epoch,
                                               self.seq, body))
        self._events = []

    @property
    def has_outbox(self) -> bool:
        """Whether anything announced is waiting for :meth:`take_outbox`."""
        return bool(self._events or self.outbox)

    def take_outbox(self) -> list[bytes]:
        """The datagrams to publish, in order: everything announced so far is in them."""
        self._seal_events()
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
        lot.bids = [Bid(b["amount_cents"], b["username"], b["public_key"], b["ts"],
                        bool(b["void"])) for b in self.store.bids(lot.item.id)]
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
        self._purge_replies(now)
        return finished

    def _close(self, lot: Lot, now: float) -> str:
        best = lot.best
        reserve = lot.item.reserve_cents
        sold = best is not None and (reserve is None or best.amount >= reserve)
        if best is None:
            reason = "no valid bids (bidders revoked)" if lot.bids else "no bids"
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
        """What a watcher needs to draw the auction: the heart of SNAPSHOT and OPENED.

        Always the same fields; with no item open, ``item``, ``opened_at``, ``closes_at``,
        ``minimum`` and ``best`` are null, ``bids`` is empty and ``status`` is "idle".
        """
        lot = self.lot
        if lot is None:
            return {"item": None, "status": "idle", "opened_at": None, "closes_at": None,
                    "minimum": None, "best": None, "bids": [],
                    "soft_close": self.config.soft_close, "last_result": self.last_result}
        best = lot.best
        return {"item": lot.item.to_dict(), "status": "open", "opened_at": lot.opened_at,
                "closes_at": lot.closes_at, "minimum": lot.minimum,
                "best": best.public() if best else None,
                "bids": [b.public() for b in lot.valid_bids[-RECENT_BIDS:]],
                "soft_close": self.config.soft_close, "last_result": self.last_result}

    # -- members --------------------------------------------------------------------------

    def broker_heard(self, now: float) -> None:
        """Event: an authenticated message (a notice, a heartbeat) from the broker at ``now``."""
        if self.roster.heard_at is None or now > self.roster.heard_at:
            self.roster.heard_at = now

    def membership_snapshot(self, version: int, members: list[dict[str, Any]],
                            now: float) -> None:
        """Event: the broker's whole valid membership at ``version`` (its ``membership``
        service). Replaces what the core knew; joined members not in it are removed."""
        keys, names = {}, {}
        for m in members:
            key = _key_of(m)
            if key is not None and m.get("state") == REGISTERED and \
                    isinstance(m.get("username"), str):
                keys[key], names[m["username"]] = m["username"], key
        self.roster = Roster(version, self.roster.heard_at, keys, names)
        self.wants_snapshot = False
        self.broker_heard(now)
        log.info("membership from the broker: %d valid key(s) at version %d", len(keys),
                 version)
        gone = [key for key in self.members if key not in keys]
        if gone:
            self.remove_members(gone, "member no longer valid")

    def member_changed(self, notice: dict[str, Any], now: float) -> None:
        """Event: one ``membership`` notice the broker pushed (a member registered, was
        revoked, flagged, re-enrolled, changed level...). A revoked member is removed at
        once: its bids stop counting and the group is re-keyed without it."""
        roster = self.roster
        version, username = notice.get("version"), notice.get("username")
        if not isinstance(version, int) or not isinstance(username, str):
            log.warning("ignored a malformed membership notice")
            return
        self.broker_heard(now)
        if roster.version is None:
            self.wants_snapshot = True  # the snapshot will include it
            return
        if version <= roster.version:
            return  # already in what we hold
        if version > roster.version + 1:
            self.wants_snapshot = True  # one was missed: the snapshot repairs it
        roster.version = version
        key, state = _key_of(notice), notice.get("state")
        old = roster.by_name.pop(username, None)
        if old is not None:
            roster.keys.pop(old, None)
            roster.gone[old] = str(state)
        if key is not None and state == REGISTERED:
            roster.keys[key], roster.by_name[username] = username, key
            roster.gone.pop(key, None)
        elif key is not None:
            roster.gone[key] = str(state)
        gone = [k for k in (old, key) if k is not None and k in self.members
                and k not in roster.keys]
        if gone:
            self.remove_members(gone, f"member {state}")

    def _vouch(self, public_key: bytes, now: float) -> str | None:
        """The username of a valid key by the broker's pushed membership, or None. Fails
        closed: service-unavailable when the broker has been unheard-of too long."""
        roster = self.roster
        if roster.version is None or roster.heard_at is None:
            raise RemoteError(ErrorCode.SERVICE_UNAVAILABLE, "the auctioneer has no "
                              "membership from the broker yet; try again shortly")
        silent = now - roster.heard_at
        if silent > self.config.silence_limit:
            raise RemoteError(ErrorCode.SERVICE_UNAVAILABLE,
                              f"the auctioneer has not heard from the broker for "
                              f"{silent:.0f}s (limit {self.config.silence_limit:g}s), so it "
                              "cannot vouch for any key; try again later")
        return roster.keys.get(public_key)

    def remove_members(self, keys: list[bytes], why: str) -> None:
        """Drop members at once: their bids stop counting, and a new group key goes to the
        others only (then the voided bids are announced, under the new key)."""
        names, voided = [], []
        for key in keys:
            member = self.members.pop(key, None)
            if member is None:
                continue
            names.append(member.username)
            self.store.remove_member(key)
            if self.lot is not None and self._void_bids(self.lot, key):
                voided.append(member.username)
        if not names:
            return
        log.info("removed revoked member(s): %s", ", ".join(names))
        self.rotate(why)
        lot = self.lot
        if lot is not None and voided:
            best = lot.best
            log.info("bids of %s on %s no longer count; best is now %s", ", ".join(voided),
                     lot.item.id, f"{format_money(best.amount)} by {best.username}"
                     if best else "none")
            self.announce(Event.VOIDED, item=lot.item.id, bidders=voided,
                          best=best.public() if best else None, minimum=lot.minimum,
                          bids=[b.public() for b in lot.valid_bids[-RECENT_BIDS:]])

    def _void_bids(self, lot: Lot, public_key: bytes) -> bool:
        hit = [b for b in lot.bids if b.public_key == public_key and not b.void]
        for bid in hit:
            bid.void = True
        if hit:
            self.store.void_bids(lot.item.id, public_key)
        return bool(hit)

    # -- requests -------------------------------------------------------------------------

    def handle(self, frames: list[bytes], now: float) -> list[bytes]:
        """Answer one request ``[public key, envelope]``; never raises for anything a peer
        can send. The order of checks is the spec's (PROTOCOL.md 6.2): shape, key, tag,
        freshness, replay, membership; only then may the request enter the replay guard
        and the reply cache, so strangers' keys can fill neither."""
        if sum(len(f) for f in frames) > MAX_MESSAGE_SIZE:
            return clear_error(None, ErrorCode.TOO_LARGE, "request is over the size limit")
        if len(frames) != 2:
            return clear_error(None, ErrorCode.BAD_REQUEST, "an auction request is two "
                               "frames: the bidder's public key, then one envelope")
        public_key, data = frames
        try:
            request = peek(data)
        except ProtocolError as exc:
            return clear_error(None, ErrorCode.BAD_REQUEST, str(exc))
        member = self.members.get(public_key)
        try:
            key = member.key if member else box_key(self._secret, public_key)
            header, body = open_envelope(key, data, Channel.AUCTION, Sender.BIDDER,
                                         REQUEST_KINDS)
        except ProtocolError as exc:
            log.info("refused an auction request in clear: %s", exc)
            return clear_error(request, ErrorCode.BAD_REQUEST, str(exc))
        kind = header.kind  # a plain int (one of REQUEST_KINDS): no enum made per request
        if not is_fresh(header.counter, now, FRESHNESS_WINDOW):
            return self._refuse(key, header, ErrorCode.STALE, "request is too old or from "
                                "the future (counter = your clock in ms); check the clock")
        slot = context_id(public_key, header.context)
        if self._guard.seen(slot, header.counter):
            cached = self._replies.get(slot)
            if cached is not None and cached[1] == header.counter:
                # An exact retransmission (a retry, or a replay): same answer, nothing redone.
                log.info("repeated %s request answered from cache", Kind(kind).name)
                return cached[2]
            return self._refuse(key, header, ErrorCode.REPLAYED, "request was seen before")
        try:
            username = self._admissible(kind, public_key, member, now)
        except RemoteError as exc:
            log.info("refused %s: %s", Kind(kind).name, exc.message)
            return self._refuse(key, header, exc.code, exc.message)
        if not self._guard.admit(slot, header.counter, now):
            return self._refuse(key, header, ErrorCode.SERVICE_UNAVAILABLE,
                                "too many requests in flight; try again shortly")
        try:
            fields = decode_request_body(kind, body)
            reply = seal_reply(key, header, Kind.RESULT,
                               self._handlers[kind](public_key, username, fields, header, now))
        except RemoteError as exc:
            # Outbid is the auction's everyday business, not worth a line each.
            log.log(logging.DEBUG if exc.code is ErrorCode.BID_TOO_LOW else logging.INFO,
                    "refused %s: %s", Kind(kind).name, exc.message)
            reply = self._refuse(key, header, exc.code, exc.message)
        except ProtocolError as exc:
            log.info("refused a malformed %s: %s", Kind(kind).name, exc)
            reply = self._refuse(key, header, ErrorCode.BAD_REQUEST, str(exc))
        self._replies[slot] = (now + 2 * FRESHNESS_WINDOW, header.counter, reply)
        while len(self._replies) > REPLY_CACHE_SIZE:
            self._replies.popitem(last=False)
        return reply

    def _refuse(self, key: bytes, header: Header, code: ErrorCode,
                message: str) -> list[bytes]:
        return seal_reply(key, header, Kind.REFUSED, encode_refusal(code, message))

    def _admissible(self, kind: Kind, public_key: bytes, member: Member | None,
                    now: float) -> str:
        """The username behind an authenticated request, if it may be served at all: a
        registered, valid collaborator for JOIN, a joined member for everything else."""
        if kind == Kind.JOIN:
            username = self._vouch(public_key, now)
            if username is None:
                if self.roster.gone.get(public_key) in ("revoked", "flagged"):
                    raise RemoteError(ErrorCode.REVOKED, "this key's collaborator is "
                                      f"{self.roster.gone[public_key]}")
                raise RemoteError(ErrorCode.UNKNOWN_USER,
                                  "this key does not belong to a registered collaborator")
            return username
        if member is None:
            raise RemoteError(ErrorCode.NOT_JOINED, "this key has not joined the auction")
        return member.username

    def _purge_replies(self, now: float) -> None:
        self._guard.purge(now)
        for cache in (self._replies, self._stored):
            while cache:
                slot, entry = next(iter(cache.items()))
                if entry[0] > now:
                    break
                del cache[slot]

    def _join(self, public_key: bytes, username: str, fields: dict[str, Any],
              header: Header, now: float) -> dict[str, Any]:
        if public_key not in self.members:
            self.store.add_member(public_key, username, now)
            self.members[public_key] = Member(username, box_key(self._secret, public_key))
            log.info("%s joined", username)
        return {"username": username, "group": self.config.group,
                "port": self.config.port, "pub_endpoint": self.config.pub_endpoint,
                "verify_key": b64(bytes(self.signing_key.verify_key)),
                **self._snapshot(public_key, username, fields, header, now)}

    def _check_bidder(self, public_key: bytes, username: str, now: float) -> None:
        """The broker's latest word on this bidder (state, no call): a key revoked since it
        joined is removed now if its notice has not done so already. Fails closed."""
        if self._vouch(public_key, now) is None:
            log.info("bid from no longer valid member %s refused", username)
            self.remove_members([public_key], "member revoked")
            raise RemoteError(ErrorCode.REVOKED, f"{username} is no longer a valid member")

    def _snapshot(self, public_key: bytes, username: str, fields: dict[str, Any],
                  header: Header, now: float) -> dict[str, Any]:
        self._seal_events()  # so that seq counts every event the state already shows
        return {"epoch": self.epoch, "seq": self.seq, "group_key": b64(self.group_key),
                "state": self.state(now)}

    def _results(self, public_key: bytes, username: str, fields: dict[str, Any],
                 header: Header, now: float) -> dict[str, Any]:
        return {"results": self.store.results()}

    def _bid(self, public_key: bytes, username: str, fields: dict[str, Any], header: Header,
             now: float) -> dict[str, Any] | bytes:
        self._check_bidder(public_key, username, now)
        request = public_key + header.context
        stored = self._stored.get(request)
        if stored is not None:
            # A retry of a bid already stored (its reply lost, perhaps in a crash): the
            # original acceptance, never a second bid nor "too low" against itself.
            log.info("retried bid of %s answered from the store", username)
            _, item_id, amount, closes_at, extended = stored
            return {"accepted": True, "item": item_id, "amount": amount,
                    "closes_at": closes_at, "extended": extended}
        item_id, amount = fields["item"], fields["amount"]  # bounds checked by decode_bid
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
        # Stored (committed), with its request id, before anything is announced or answered.
        self.store.add_bid(lot.item.id, amount, username, public_key, now, closes_at,
                           header.context, extended)
        self._stored[request] = (now + 2 * FRESHNESS_WINDOW, lot.item.id, amount, closes_at,
                                 extended)
        lot.bids.append(Bid(amount, username, public_key, now))
        lot.closes_at = closes_at
        # The event and the answer as JSON made directly (the same bytes json.dumps makes
        # of Event.BID's fields and of the answer): this is every accepted bid's path.
        self._events.append(encode_bid_event(lot.item.id, amount, username, now, closes_at,
                                             amount + lot.item.increment_cents))
        if extended:
            self.announce(Event.EXTENDED, item=lot.item.id, closes_at=closes_at)
        return encode_accepted(lot.item.id, amount, closes_at, extended)


def _key_of(member: dict[str, Any]) -> bytes | None:
    try:
        value = member.get("public_key")
        return unb64(value, 32) if isinstance(value, str) else None
    except ProtocolError:
        return None
