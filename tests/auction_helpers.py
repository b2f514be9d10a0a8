"""Helpers for the auction tests: an in-memory auctioneer core and bidders, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.auction import AuctionClient
from agents.auction_view import AuctionView, JoinInfo
from agora.crypto import PrivateKey, SigningKey
from agora.protocol import Kind
from auctioneer.core import AuctionConfig, AuctioneerCore, KeyStatus
from auctioneer.items import Item
from auctioneer.store import AuctionStore

T0 = 1_700_000_000.0


def item(item_id: str = "lamp", duration: float = 60, start: int = 1000, increment: int = 100,
         reserve: int | None = None) -> Item:
    return Item(item_id, f"The {item_id}", "a thing", start, increment, duration, reserve)


@dataclass
class FakeRegistry:
    """The broker's key_status as a dict: public key -> (username, revoked)."""

    keys: dict[bytes, tuple[str, bool]] = field(default_factory=dict)

    def __call__(self, public_key: bytes) -> KeyStatus:
        if public_key not in self.keys:
            return KeyStatus(False)
        username, revoked = self.keys[public_key]
        return KeyStatus(True, username, revoked)


class Harness:
    """An AuctioneerCore on an in-memory (or file) store, and bidders talking to it."""

    def __init__(self, db: Path | None = None, soft_close: float = 10.0,
                 private_key: PrivateKey | None = None,
                 signing_key: SigningKey | None = None,
                 registry: FakeRegistry | None = None, now: float = T0) -> None:
        self.private_key = private_key or PrivateKey.generate()
        self.signing_key = signing_key or SigningKey.generate()
        self.registry = registry or FakeRegistry()
        self.store = AuctionStore(db)
        self.core = AuctioneerCore(self.private_key, self.signing_key, self.store,
                                   self.registry, AuctionConfig("239.255.1.2", 5000,
                                                                "tcp://127.0.0.1:1",
                                                                soft_close), now)

    def bidder(self, username: str, registered: bool = True) -> AuctionClient:
        key = PrivateKey.generate()
        if registered:
            self.registry.keys[bytes(key.public_key)] = (username, False)
        return AuctionClient(key, bytes(self.private_key.public_key))

    def ask(self, client: AuctionClient, kind: Kind, body: dict[str, Any],
            now: float = T0) -> dict[str, Any]:
        frames = client.frames(kind, body, now)
        return client.answer(self.core.handle(frames, now), frames)

    def join(self, client: AuctionClient, now: float = T0) -> JoinInfo:
        return client.join_info(self.ask(client, Kind.JOIN, {}, now))

    def bid(self, client: AuctionClient, amount: int, item_id: str = "lamp",
            now: float = T0) -> dict[str, Any]:
        return self.ask(client, Kind.BID, {"item": item_id, "amount": amount}, now)

    def revoke(self, client: AuctionClient, now: float = T0) -> None:
        """The operator revokes ``client``'s collaborator; the auctioneer learns of it."""
        username, _ = self.registry.keys[client.public_key]
        self.registry.keys[client.public_key] = (username, True)
        self.core.check_members()

    def view(self, client: AuctionClient, now: float = T0) -> AuctionView:
        return AuctionView(self.join(client, now), client.private_key)
