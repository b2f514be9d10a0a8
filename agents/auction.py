"""A collaborator's side of the auction: join, bid, snapshot, results, and watching.

    client = AuctionClient.for_agent(agent, "auctioneer", endpoint)   # key from the broker
    join = client.join()
    client.bid(join.snapshot["state"]["item"]["id"], 1250)
    watcher = AuctionWatcher(client, join); watcher.serve(until=lambda v: bool(v.results))

The auctioneer's Curve25519 key comes from the broker's ``lookup`` over this agent's
authenticated session, never from the auctioneer itself; every request is an AGORA/2
envelope under the box key of this agent's registered key pair and the auctioneer's key, with
a fresh request id as its context, and every answer an envelope back under the same key with
the same context, sealed by the other role, so both sides know who speaks and a reflected
or swapped reply is refused.
The watcher merges UDP multicast and the PUB mirror into one :class:`AuctionView`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from agents.agent import Agent
from agents.auction_view import AuctionView, JoinInfo
from agents.transport import BrokerConnection
from agora.auction_wire import (
    encode_request_body,
    new_request_id,
    open_reply,
    request_frames,
    seal_request,
)
from agora.crypto import PrivateKey, unb64
from agora.envelope import Header, box_key, peek, timestamp_counter
from agora.errors import (
    AgoraError,
    AuctioneerUnreachable,
    BrokerUnreachable,
    LocalError,
    ProtocolError,
    RemoteError,
)
from agora.multicast import open_receiver, recv_datagram
from agora.protocol import (
    DEFAULT_AUCTION_ENDPOINT,
    DEFAULT_MULTICAST_INTERFACE,
    MAX_DATAGRAM,
    Kind,
    PrincipalKind,
)
from agora.sockets import make_socket
from agora.wire import field

log = logging.getLogger("agora.auction")

DEFAULT_AUCTIONEER = "auctioneer"
#: A watcher asks for at most one snapshot per this many seconds.
SNAPSHOT_INTERVAL = 0.5


def auctioneer_key(agent: Agent, username: str) -> bytes:
    """The auctioneer's registered public key, from the broker's directory."""
    answer = agent.call("lookup", {"username": username})
    if answer.get("kind") != PrincipalKind.SERVICE.value:
        raise LocalError(f"{username} is not a service principal; refusing to treat it as "
                         "the auctioneer")
    return unb64(field(answer, "public_key", str), 32)


class AuctionClient:
    """Requests to the auctioneer's ROUTER socket. Not thread-safe: one thread each."""

    def __init__(self, private_key: PrivateKey, auctioneer_public_key: bytes,
                 endpoint: str = DEFAULT_AUCTION_ENDPOINT, context: zmq.Context | None = None,
                 timeout: float = 2.5, retries: int = 3) -> None:
        self.private_key = private_key
        self.public_key = bytes(private_key.public_key)
        self.auctioneer_key = auctioneer_public_key
        self.key = box_key(bytes(private_key), auctioneer_public_key)  # once per client
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.conn = BrokerConnection(endpoint, self.context, timeout, retries)

    @classmethod
    def for_agent(cls, agent: Agent, auctioneer: str = DEFAULT_AUCTIONEER,
                  endpoint: str = DEFAULT_AUCTION_ENDPOINT, **kwargs: Any) -> AuctionClient:
        """A client for a logged-in agent; looks the auctioneer's key up at the broker."""
        return cls(agent.private_key, auctioneer_key(agent, auctioneer), endpoint,
                   agent.context, **kwargs)

    def frames(self, kind: Kind, body: dict[str, Any], now: float | None = None,
               request_id: bytes | None = None) -> list[bytes]:
        """A request (no I/O): this key in clear, then the envelope with a new request id
        (or ``request_id``) as context and the clock in ms as counter. Retries send these
        same frames again."""
        counter = timestamp_counter(time.time() if now is None else now)
        envelope = seal_request(self.key, kind, request_id or new_request_id(), counter,
                                encode_request_body(kind, body))
        return request_frames(self.public_key, envelope)

    def answer(self, reply: list[bytes], request: list[bytes]) -> dict[str, Any]:
        """The auctioneer's reply to the ``request`` frames, opened and checked (no I/O):
        RemoteError for a sealed refusal, UnauthenticatedRefusal for a clear one,
        ProtocolError for a reply that is not the auctioneer's answer to this request."""
        return open_reply(self.key, reply, _header(request))

    def request(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        frames = self.frames(kind, body)
        try:
            reply = self.conn.request(frames)
        except BrokerUnreachable:
            raise AuctioneerUnreachable(f"auctioneer unreachable at {self.endpoint}") from None
        return self.answer(reply, frames)

    def join(self) -> JoinInfo:
        return self.join_info(self.request(Kind.JOIN, {}))

    def join_info(self, answer: dict[str, Any]) -> JoinInfo:
        try:
            return JoinInfo(
                username=field(answer, "username", str), group=field(answer, "group", str),
                port=field(answer, "port", int),
                pub_endpoint=field(answer, "pub_endpoint", str),
                verify_key=unb64(field(answer, "verify_key", str), 32),
                auctioneer_key=self.auctioneer_key,
                snapshot={k: answer.get(k) for k in ("epoch", "seq", "group_key", "state")})
        except ProtocolError:
            raise ProtocolError("join answer is malformed") from None

    def bid(self, item_id: str, amount_cents: int) -> dict[str, Any]:
        """Place a bid; the answer says it was stored. RemoteError says why not."""
        return self.request(Kind.BID, {"item": item_id, "amount": amount_cents})

    def snapshot(self) -> dict[str, Any]:
        return self.request(Kind.SNAPSHOT, {})

    def results(self) -> list[dict[str, Any]]:
        return field(self.request(Kind.RESULTS, {}), "results", list)

    def close(self) -> None:
        self.conn.close()


def _header(request: list[bytes]) -> Header:
    if len(request) != 2:
        raise LocalError("an auction request is [public key, envelope]")
    return peek(request[1])


class AuctionWatcher:
    """Follows the announcements; ``serve()`` runs until ``stop``, ``until`` or a deadline.

    ``on_event(event, view)`` is called for each new event, after the view applied it.
    """

    def __init__(self, client: AuctionClient, join: JoinInfo,
                 on_event: Callable[[dict[str, Any], AuctionView], None] | None = None,
                 interface: str = DEFAULT_MULTICAST_INTERFACE, multicast: bool = True,
                 mirror: bool = True) -> None:
        self.client = client
        self.join = join
        self.view = AuctionView(join, client.private_key)
        self.on_event = on_event
        self.stop = threading.Event()
        self.removed: str | None = None  # why the auctioneer no longer answers us
        self.snapshots = 0
        self._udp = open_receiver(join.group, join.port, interface) if multicast else None
        self._sub: zmq.Socket | None = None
        if mirror:
            self._sub = make_socket(client.context, zmq.SUB, max_size=MAX_DATAGRAM)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._sub.connect(join.pub_endpoint)
        self._last_snapshot = 0.0
        self.last_heard = time.monotonic()  # joining counts as hearing from it

    def serve(self, until: Callable[[AuctionView], bool] | None = None,
              timeout: float | None = None) -> AuctionView:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        if self._udp is not None:
            poller.register(self._udp, zmq.POLLIN)
        if self._sub is not None:
            poller.register(self._sub, zmq.POLLIN)
        while not self.stop.is_set() and not (until and until(self.view)):
            if deadline is not None and time.monotonic() >= deadline:
                break
            ready = dict(poller.poll(100))
            need_snapshot = False
            if self._udp is not None and self._udp.fileno() in ready:
                for _ in range(1000):
                    data = recv_datagram(self._udp)
                    if data is None:
                        break
                    need_snapshot |= self._feed(data)
            if self._sub is not None and self._sub in ready:
                for _ in range(1000):
                    try:
                        data = self._sub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    need_snapshot |= self._feed(data)
            if need_snapshot:
                self.catch_up()
            if self.removed:
                break
        return self.view

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since the last signed word from the auctioneer (heartbeats come every
        HEARTBEAT_INTERVAL, so more than a few means it is gone or cut off)."""
        return (time.monotonic() if now is None else now) - self.last_heard

    def _feed(self, data: bytes) -> bool:
        heard = self.view.heard
        feed = self.view.feed(data)
        if self.view.heard != heard:
            self.last_heard = time.monotonic()
        for event in feed.events:
            if self.on_event:
                self.on_event(event, self.view)
        return feed.need_snapshot

    def catch_up(self) -> None:
        """Ask the auctioneer for its state (rate-limited); a refusal ends the watch."""
        now = time.monotonic()
        if now - self._last_snapshot < SNAPSHOT_INTERVAL:
            return
        self._last_snapshot = now
        try:
            snapshot = self.client.snapshot()
            self.view.apply_snapshot(snapshot)
            self.snapshots += 1
            self.last_heard = time.monotonic()
            if self.on_event:
                self.on_event({"kind": "snapshot", "epoch": self.view.epoch}, self.view)
        except RemoteError as exc:
            self.removed = f"{exc.message} [{exc.code.value}]"
            log.warning("the auctioneer refused a snapshot: %s", self.removed)
        except AgoraError as exc:
            log.warning("snapshot failed, will retry: %s", exc)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._sub is not None:
            self._sub.close(0)
