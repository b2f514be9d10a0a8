"""Issue 10, whole-message bound: ZMQ_MAXMSGSIZE is per frame; every receive loop (broker,
auctioneer, peer inbox) drops a message over MAX_MESSAGE_FRAMES frames or MAX_MESSAGE_SIZE
bytes in all before any work, and answers the next message as usual.

The pattern of each loop test: a DEALER sends a multi-frame message whose frames each pass
ZMQ_MAXMSGSIZE, then a small junk message. Replies come back in order, so the first reply
must be the junk message's refusal: an oversized message that was handled would be
answered (refused) first.
"""

from __future__ import annotations

import time

import zmq

from agora.protocol import MAX_MESSAGE_FRAMES, MAX_MESSAGE_SIZE
from agora.sockets import recv_bounded
from tests.conftest import raw_dealer

FRAME = b"f" * (200 * 1024)  # under the per-frame limit; three of them are over the total


def test_recv_bounded_drops_too_many_frames_or_too_many_bytes_and_goes_on(zctx):
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 3000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    sock = raw_dealer(zctx, f"tcp://127.0.0.1:{port}")
    sock.send_multipart([b"a"] * (MAX_MESSAGE_FRAMES + 1))
    sock.send_multipart([FRAME, FRAME])  # 400 KiB in two frames of 200
    sock.send_multipart([b"small", b"message"])
    assert recv_bounded(router) is None
    assert recv_bounded(router) is None
    assert recv_bounded(router)[1:] == [b"small", b"message"]
    exactly = [b"x" * (MAX_MESSAGE_SIZE // 2 - 8)] * 2  # at the bound, with the identity
    sock.send_multipart(exactly)
    assert recv_bounded(router)[1:] == exactly
    sock.close(0)
    router.close(0)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_broker_drops_a_multi_frame_message_over_the_bound_and_shuts_its_sender(broker, zctx):
    attacker, other = raw_dealer(zctx, broker.endpoint), raw_dealer(zctx, broker.endpoint)
    attacker.send_multipart([b"", b"ana", FRAME, FRAME])
    assert wait_for(lambda: broker.server.guard.shut_oversized == 1)
    other.send_multipart([b"", b"junk"])  # not an envelope: refused in clear
    assert b"bad-request" in other.recv_multipart()[-1]
    assert not attacker.poll(100)  # the big one was never answered: it was never handled
    attacker.close(0)
    other.close(0)


def test_auctioneer_drops_a_multi_frame_message_over_the_bound(zctx, broker, tmp_path):
    from tests.test_auction_net import AuctionHarness

    auction = AuctionHarness(broker, tmp_path, zctx)
    try:
        attacker = raw_dealer(zctx, auction.server.endpoint)
        other = raw_dealer(zctx, auction.server.endpoint)
        # Handled, the big one would be refused as bad-request (not key + one envelope).
        attacker.send_multipart([b"", b"k" * 32, FRAME, FRAME])
        assert wait_for(lambda: auction.server.guard.shut_oversized == 1)
        other.send_multipart([b"", b"x"])
        assert b"bad-request" in other.recv_multipart()[-1]
        assert not attacker.poll(100)  # never answered: never handled
        attacker.close(0)
        other.close(0)
    finally:
        auction.stop()


def test_peer_inbox_drops_a_multi_frame_message_over_the_bound(zctx, broker):
    from tests.test_peer import Listening

    bob = broker.agent("Bob Reis")
    with Listening(bob):
        sock = raw_dealer(zctx, f"tcp://127.0.0.1:{bob.info.port}")
        sock.send_multipart([b"GET / HTTP/1.1", FRAME, FRAME])
        sock.send_multipart([b"GET / HTTP/1.0"])
        first = sock.recv_multipart()
        sock.close(0)
    assert b"bad-request" in first[-1]
    assert bob.peer.dropped == 1  # only the small one reached the inbox's handler


# -- per-connection state ---------------------------------------------------------------

def test_connections_past_the_bound_are_shut_and_memory_is_returned_when_they_go(zctx):
    from agora.sockets import ConnectionGuard

    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    guard = ConnectionGuard(router, max_connections=3)
    socks = [raw_dealer(zctx, f"tcp://127.0.0.1:{port}") for _ in range(6)]
    for s in socks:
        s.setsockopt(zmq.RECONNECT_IVL, -1)  # a shut connection stays shut
    assert wait_for(lambda: guard.service(time.time()) or guard.refused == 3)
    assert wait_for(lambda: guard.service(time.time()) or guard.live == 3)
    for s in socks:
        s.close(0)
    assert wait_for(lambda: guard.service(time.time()) or guard.live == 0)
    assert wait_for(lambda: guard.service(time.time() + 10) or guard.trims >= 1)
    guard.close()
    router.close(0)


def test_broker_counts_connections_and_forgets_closed_ones(broker, zctx):
    socks = [raw_dealer(zctx, broker.endpoint) for _ in range(20)]
    guard = broker.server.guard
    assert wait_for(lambda: guard.live == 20)
    for s in socks:
        s.close(0)
    assert wait_for(lambda: guard.live == 0 and guard.trims >= 1)
