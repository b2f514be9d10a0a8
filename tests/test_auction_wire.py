"""The bidder <-> auctioneer channel on the AGORA/2 envelope: what a bidder believes, what the
auctioneer lets in, and the published vectors (docs/vectors/auction.json, announce.json).

Regenerate the vector files (only when the wire format changes on purpose):
``python -m tests.test_auction_wire``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import zmq
from typer.testing import CliRunner

import cli.auction_cmd
from agents.auction import AuctionClient, AuctionWatcher
from agents.auction_view import JoinInfo
from agora import auction_wire as wire
from agora.crypto import PrivateKey, SigningKey
from agora.envelope import Header, box_key, clear, open_envelope, peek
from agora.errors import ProtocolError, RemoteError, UnauthenticatedRefusal
from agora.protocol import Channel, ErrorCode, Kind, Sender
from cli.app import app
from tests import vectors
from tests.auction_helpers import T0, Harness, item

# -- what the bidder believes ---------------------------------------------------------------


def fake_auctioneer(zctx, answer: Callable[[list[bytes]], list[bytes]]) -> str:
    """A ROUTER that answers one request with ``answer(request frames)``."""
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        if router.poll(5000):
            ident, empty, *frames = router.recv_multipart()
            router.send_multipart([ident, empty, *answer(frames)])
        router.close(0)

    threading.Thread(target=serve, daemon=True).start()
    return f"tcp://127.0.0.1:{port}"


def bid_through_cli(monkeypatch, zctx, auctioneer: PrivateKey,
                    answer: Callable[[list[bytes]], list[bytes]]):
    """``agora auction bid 9999.99`` against a fake auctioneer (join already done)."""
    endpoint = fake_auctioneer(zctx, answer)
    client = AuctionClient(PrivateKey.generate(), bytes(auctioneer.public_key), endpoint,
                           zctx, timeout=2.0, retries=1)

    @contextmanager
    def joined(*args, **kwargs):
        yield client, JoinInfo("ana", "239.255.1.1", 1, "tcp://127.0.0.1:1", bytes(32),
                               bytes(auctioneer.public_key),
                               {"state": {"item": {"id": "lamp"}}})

    monkeypatch.setattr(cli.auction_cmd, "joined", joined)
    return CliRunner().invoke(app, ["auction", "bid", "9999.99"])


def test_bid_reflected_back_as_its_own_reply_is_not_an_acceptance(monkeypatch, zctx):
    result = bid_through_cli(monkeypatch, zctx, PrivateKey.generate(),
                             lambda frames: [frames[-1]])  # the request, echoed back
    assert result.exit_code == 1
    assert "accepted" not in result.output
    assert "reflected" in result.output


def test_cli_says_accepted_only_when_the_auctioneer_says_accepted(monkeypatch, zctx):
    auctioneer = PrivateKey.generate()

    def not_accepted(frames: list[bytes]) -> list[bytes]:
        key = box_key(bytes(auctioneer), frames[0])
        return wire.seal_reply(key, peek(frames[1]), Kind.RESULT,
                               {"accepted": False, "item": "lamp", "amount": 999999})

    result = bid_through_cli(monkeypatch, zctx, auctioneer, not_accepted)
    assert result.exit_code == 1
    assert "not accepted: the auctioneer did not confirm the bid" in result.output
    assert "accepted: 9999.99" not in result.output


def test_clear_refusal_is_reported_as_unauthenticated_never_as_the_auctioneers_word():
    h = Harness()
    ana = h.bidder("ana")
    frames = ana.frames(Kind.SNAPSHOT, {}, T0)
    spoofed = wire.clear_error(peek(frames[1]), ErrorCode.NOT_JOINED, "you were removed")
    with pytest.raises(UnauthenticatedRefusal) as info:
        ana.answer(spoofed, frames)
    assert not isinstance(info.value, RemoteError) and info.value.code == "not-joined"
    # A clear message dressed as an answer is no answer at all.
    fake_result = [clear(Header(Channel.AUCTION, Kind.RESULT, Sender.AUCTIONEER,
                                peek(frames[1]).context, peek(frames[1]).counter),
                         b'{"accepted":true,"item":"lamp","amount":999999}')]
    with pytest.raises(ProtocolError):
        ana.answer(fake_result, frames)


def test_a_spoofed_clear_refusal_does_not_end_a_watch(zctx):
    auctioneer = PrivateKey.generate()
    endpoint = fake_auctioneer(zctx, lambda frames: wire.clear_error(
        peek(frames[1]), ErrorCode.NOT_JOINED, "spoofed: you were removed"))
    ana = PrivateKey.generate()
    h = Harness(private_key=auctioneer)
    h.register(bytes(ana.public_key), "ana")
    join = h.join(AuctionClient(ana, bytes(auctioneer.public_key)))
    client = AuctionClient(ana, bytes(auctioneer.public_key), endpoint, zctx, timeout=2.0,
                           retries=1)
    watcher = AuctionWatcher(client, join, multicast=False, mirror=False)
    try:
        watcher.catch_up()
        assert watcher.removed is None  # a stranger's clear word cannot remove a member
    finally:
        watcher.close()
        client.close()


def test_reply_to_another_request_is_refused():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    low = ana.frames(Kind.BID, {"item": "lamp", "amount": 1000}, T0)
    high = ana.frames(Kind.BID, {"item": "lamp", "amount": 5000}, T0)
    reply_low = h.core.handle(low, T0)
    with pytest.raises(ProtocolError, match="another context"):
        ana.answer(reply_low, high)  # a reply cannot be swapped for another's
    assert ana.answer(reply_low, low)["amount"] == 1000


# -- what the auctioneer lets in ------------------------------------------------------------


@pytest.mark.parametrize("key", [bytes(32), bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")],
    ids=["all-zero", "low-order"])
def test_bad_public_key_is_a_clear_bad_request_not_an_exception(key):
    h = Harness()
    frames = h.bidder("ana").frames(Kind.JOIN, {}, T0)
    reply = h.core.handle([key, frames[1]], T0)
    assert peek(reply[0]).kind == Kind.ERROR and b"bad-request" in reply[0]


def test_strangers_cannot_fill_or_evict_the_replay_memory(monkeypatch):
    import auctioneer.core

    monkeypatch.setattr(auctioneer.core, "REPLY_CACHE_SIZE", 8)
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    captured = ana.frames(Kind.BID, {"item": "lamp", "amount": 1000}, T0)
    first = h.core.handle(captured, T0)
    entries = (len(h.core._guard), len(h.core._replies))
    for n in range(40):  # throw-away keys: authentic requests, but nobody's
        stranger = h.bidder(f"x{n}", registered=False)
        h.core.handle(stranger.frames(Kind.JOIN, {}, T0), T0)
        h.core.handle(stranger.frames(Kind.BID, {"item": "lamp", "amount": 9000}, T0), T0)
    assert (len(h.core._guard), len(h.core._replies)) == entries
    assert h.core.handle(captured, T0 + 1) == first  # the replay is still recognised
    assert [b["amount_cents"] for b in h.store.bids("lamp")] == [1000]


def test_replay_beyond_the_reply_cache_is_refused_not_rerun(monkeypatch):
    import auctioneer.core

    monkeypatch.setattr(auctioneer.core, "REPLY_CACHE_SIZE", 1)
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    captured = ana.frames(Kind.BID, {"item": "lamp", "amount": 1000}, T0)
    h.core.handle(captured, T0)
    h.ask(ana, Kind.SNAPSHOT, {})  # pushes the bid's answer out of the cache
    with pytest.raises(RemoteError) as info:
        ana.answer(h.core.handle(captured, T0 + 1), captured)
    assert info.value.code is ErrorCode.REPLAYED


# -- vectors ----------------------------------------------------------------------------------

KEY_A = bytes(range(32))  # the auctioneer's Curve25519 private key in the vectors
KEY_B = bytes(range(32, 64))  # the bidder's
REQUEST_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
COUNTER = 1_700_000_000_000
NONCE = bytes(range(100, 124))


def _key() -> bytes:
    return box_key(KEY_B, bytes(PrivateKey(KEY_A).public_key))


def auction_vectors() -> list[dict]:
    key = _key()
    out = []
    requests = {Kind.JOIN: {}, Kind.BID: {"item": "lamp", "amount": 1250},
                Kind.SNAPSHOT: {}, Kind.RESULTS: {}}
    for kind, fields in requests.items():
        header = Header(Channel.AUCTION, kind, Sender.BIDDER, REQUEST_ID, COUNTER)
        out.append(vectors.vector(f"auction.{kind.name.lower()}", key, header,
                                  wire.encode_request_body(kind, fields), NONCE, fields))
    replies = {Kind.RESULT: {"accepted": True, "item": "lamp", "amount": 1250,
                             "closes_at": 1700000060.0, "extended": False},
               Kind.REFUSED: {"code": "bid-too-low", "message": "bid must be at least 13.50"}}
    for kind, fields in replies.items():
        header = Header(Channel.AUCTION, kind, Sender.AUCTIONEER, REQUEST_ID, COUNTER)
        out.append(vectors.vector(f"auction.{kind.name.lower()}", key, header,
                                  wire.encode_json(fields), NONCE, fields))
    return out


GROUP_KEY = bytes(range(200, 232))
#: Two events stored by one group commit: one EVENT datagram, one signature.
EVENTS = [{"kind": "bid", "item": "lamp", "amount": 1250, "bidder": "ana",
           "at": 1700000001.0, "closes_at": 1700000060.0, "minimum": 1350},
          {"kind": "extended", "item": "lamp", "closes_at": 1700000070.0}]


def announce_vectors() -> list[dict]:
    group_key = GROUP_KEY
    (body,) = wire.event_bodies([wire.encode_event(e) for e in EVENTS])
    return [
        vectors.vector("announce.event", group_key,
                       Header(Channel.ANNOUNCE, Kind.EVENT, Sender.AUCTIONEER,
                              wire.epoch_context(7), 3), body, NONCE, EVENTS),
        vectors.vector("announce.rekey-entry", _key(),
                       Header(Channel.ANNOUNCE, Kind.REKEY, Sender.AUCTIONEER,
                              wire.epoch_context(7), 1), group_key, NONCE,
                       {"group_key": group_key.hex()}),
    ]


def decode(v: dict) -> dict:
    kind = vectors.header_of(v).kind
    body = bytes.fromhex(v["body"])
    if kind in wire.REQUEST_KINDS:
        return wire.decode_request_body(Kind(kind), body)
    if kind == Kind.REKEY:
        return {"group_key": body.hex()}
    if kind == Kind.EVENT:
        return json.loads(body)  # an array of events
    return wire.decode_json(body)


def encode(v: dict) -> bytes:
    kind = vectors.header_of(v).kind
    if kind in wire.REQUEST_KINDS:
        return wire.encode_request_body(Kind(kind), v["fields"])
    if kind == Kind.REKEY:
        return bytes.fromhex(v["fields"]["group_key"])
    return wire.encode_json(v["fields"])


@pytest.mark.parametrize("name", ["auction", "announce"])
def test_published_vectors_match_the_encoders(name):
    published = vectors.load(name)
    assert published == (auction_vectors() if name == "auction" else announce_vectors())
    assert {vectors.header_of(v).kind for v in vectors.load("auction")} == \
        set(wire.REQUEST_KINDS | wire.REPLY_KINDS)
    for v in published:
        assert encode(v).hex() == v["body"]
        assert decode(v) == v["fields"]


def test_real_encoders_make_the_vector_bytes():
    v = vectors.load("auction")[1]  # the BID
    envelope = wire.seal_request(_key(), Kind.BID, REQUEST_ID, COUNTER,
                                 wire.encode_bid("lamp", 1250), NONCE)
    assert envelope.hex() == v["envelope"]
    header, body = open_envelope(_key(), envelope, Channel.AUCTION, Sender.BIDDER, {Kind.BID})
    assert wire.decode_bid(body) == ("lamp", 1250)


def test_one_signed_event_datagram_carries_a_batch_of_events():
    v = vectors.load("announce")[0]
    signing_key = SigningKey(bytes(range(64, 96)))
    datagram = wire.seal_events(signing_key, GROUP_KEY, 7, 3, EVENTS, NONCE)
    assert datagram[:-64].hex() == v["envelope"]
    checked = wire.verify_datagram(datagram, signing_key.verify_key)
    assert wire.open_events(checked, GROUP_KEY) == [{**e, "epoch": 7, "seq": 3} for e in EVENTS]


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"kind": "bid"}', b'[{"kind": "bid"}, 3]',
                                  b"[" * 10_000, b"\xff"])
def test_an_event_datagram_that_is_not_an_array_of_events_is_refused(body):
    signing_key = SigningKey(bytes(range(64, 96)))
    datagram = wire.seal_event_body(signing_key, GROUP_KEY, 7, 3, body)
    checked = wire.verify_datagram(datagram, signing_key.verify_key)
    with pytest.raises(ProtocolError):
        wire.open_events(checked, GROUP_KEY)


@pytest.mark.parametrize(("item_id", "bidder", "at", "closes_at", "extended"), [
    ("lamp", "ana", 1700000001.0, 1700000060.0, False),
    ("lâmpada \"azul\" \u2603", "joão.silva", 1764000000.123456, 1e22, True),
    ("x" * 200, "b\\o\nb", 0.1 + 0.2, 1764000000.5, False),
])
def test_the_bid_fast_paths_write_what_json_dumps_writes(item_id, bidder, at, closes_at,
                                                          extended):
    assert wire.encode_accepted(item_id, 1250, closes_at, extended) == wire.encode_json(
        {"accepted": True, "item": item_id, "amount": 1250, "closes_at": closes_at,
         "extended": extended})
    assert wire.encode_bid_event(item_id, 1250, bidder, at, closes_at, 1350) == \
        wire.encode_event({"kind": "bid", "item": item_id, "amount": 1250, "bidder": bidder,
                           "at": at, "closes_at": closes_at, "minimum": 1350})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_bid_fast_paths_and_the_encoder_refuse_what_is_not_json(bad):
    # As json.dumps(allow_nan=False): NaN and Infinity are not JSON (RFC 8259).
    for encode in (lambda: wire.encode_accepted("lamp", 1250, bad, False),
                   lambda: wire.encode_bid_event("lamp", 1250, "ana", bad, 1.0, 1350),
                   lambda: wire.encode_bid_event("lamp", 1250, "ana", 1.0, bad, 1350),
                   lambda: wire.encode_json({"closes_at": bad}),
                   lambda: wire.encode_event({"kind": "bid", "at": bad})):
        with pytest.raises(ValueError):
            encode()


def test_a_batch_too_big_for_one_datagram_is_split_in_order():
    events = [wire.encode_event({"kind": "bid", "amount": n, "note": "x" * 100})
              for n in range(500)]
    bodies = wire.event_bodies(events, limit=4_000)
    assert len(bodies) > 1 and all(len(b) <= 4_000 for b in bodies)
    assert [e["amount"] for b in bodies for e in json.loads(b)] == list(range(500))
    big = wire.encode_event({"kind": "opened", "note": "y" * 5_000})
    assert wire.event_bodies([events[0], big, events[1]], limit=4_000)[1] == b"[" + big + b"]"


if __name__ == "__main__":
    vectors.write("auction", auction_vectors())
    vectors.write("announce", announce_vectors())
