"""Helpers for the auction tests: an in-memory auctioneer core and bidders, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.auction import AuctionClient
from agents.auction_view import AuctionView, JoinInfo
from agora.crypto import PrivateKey, SigningKey, b64
from agora.protocol import Kind
from auctioneer.core import AuctionConfig, AuctioneerCore
from auctioneer.items import Item
from auctioneer.store import AuctionStore

T0 = 1_700_000_000.0


def item(item_id: str = "lamp", duration: float = 60, start: int = 1000, increment: int = 100,
         reserve: int | None = None) -> Item:
    return Item(item_id, f"The {item_id}", "a thing", start, increment, duration, reserve)


@dataclass
class FakeBroker:
    """The broker's membership as it pushes it: public key -> (username, revoked)."""

    keys: dict[bytes, tuple[str, bool]] = field(default_factory=dict)
    version: int = 1000

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.member(key) for key, (_, revoked) in self.keys.items() if not revoked]

    def member(self, key: bytes) -> dict[str, Any]:
        username, revoked = self.keys[key]
        return {"username": username, "kind": "person", "level": 2,
                "state": "revoked" if revoked else "registered", "public_key": b64(key)}

    def notice(self, key: bytes) -> dict[str, Any]:
        self.version += 1
        return {"type": "membership", "version": self.version, "change": "test",
                **self.member(key)}


class Harness:
    """An AuctioneerCore on an in-memory (or file) store, and bidders talking to it.

    The fake broker pushes membership to the core as the real one does; every request is
    preceded by ``broker_heard`` unless ``broker_silent`` is set (the broker is down)."""

    def __init__(self, db: Path | None = None, soft_close: float = 10.0,
                 private_key: PrivateKey | None = None,
                 signing_key: SigningKey | None = None,
                 registry: FakeBroker | None = None, now: float = T0) -> None:
        self.private_key = private_key or PrivateKey.generate()
        self.signing_key = signing_key or SigningKey.generate()
        self.registry = registry or FakeBroker()
        self.broker_silent = False
        self.store = AuctionStore(db)
        self.core = AuctioneerCore(self.private_key, self.signing_key, self.store,
                                   AuctionConfig("239.255.1.2", 5000, "tcp://127.0.0.1:1",
                                                 soft_close), now)
        self.core.membership_snapshot(self.registry.version, self.registry.snapshot(), now)

    def register(self, public_key: bytes, username: str, now: float = T0) -> None:
        self.registry.keys[public_key] = (username, False)
        self.core.member_changed(self.registry.notice(public_key), now)

    def bidder(self, username: str, registered: bool = True) -> AuctionClient:
        key = PrivateKey.generate()
        if registered:
            self.register(bytes(key.public_key), username)
        return AuctionClient(key, bytes(self.private_key.public_key))

    def revoke(self, client: AuctionClient, now: float = T0) -> None:
        """The operator revokes ``client``'s collaborator; the broker pushes the change."""
        username, _ = self.registry.keys[client.public_key]
        self.registry.keys[client.public_key] = (username, True)
        self.core.member_changed(self.registry.notice(client.public_key), now)

    def ask(self, client: AuctionClient, kind: Kind, body: dict[str, Any],
            now: float = T0) -> dict[str, Any]:
        frames = client.frames(kind, body, now)
        if not self.broker_silent:
            self.core.broker_heard(now)
        return client.answer(self.core.handle(frames, now), frames)

    def join(self, client: AuctionClient, now: float = T0) -> JoinInfo:
        return client.join_info(self.ask(client, Kind.JOIN, {}, now))

    def bid(self, client: AuctionClient, amount: int, item_id: str = "lamp",
            now: float = T0) -> dict[str, Any]:
        return self.ask(client, Kind.BID, {"item": item_id, "amount": amount}, now)

    def view(self, client: AuctionClient, now: float = T0) -> AuctionView:
        return AuctionView(self.join(client, now), client.private_key)
