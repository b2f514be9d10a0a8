"""Announcements through agora's code against raw UDP multicast, on loopback, same run.

raw:   sendto() of a payload of the same size, recv() it back from the group.
agora: AuctioneerCore.announce (SecretBox + Ed25519 signature), Publisher.publish (multicast
       and the PUB mirror), and on the receiving side recv_datagram + AuctionView.feed
       (signature check, decrypt, dedup of the mirror copy) for both paths.

Batches of BATCH messages are sent then received, so no socket buffer overflows; each
side runs for about SECONDS. Prints messages per second for both and the ratio.

    PYTHONPATH=. python bench/bench_multicast.py
"""

from __future__ import annotations

import random
import socket
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.auction_view import AuctionView  # noqa: E402
from agora.multicast import open_receiver, open_sender, recv_datagram  # noqa: E402
from agora.protocol import Event  # noqa: E402
from auctioneer.server import Publisher  # noqa: E402
from tests.auction_helpers import T0, Harness, item  # noqa: E402

SECONDS = 2.0
BATCH = 100


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(sock: socket.socket, want: int, deadline: float, on_data=None) -> int:
    got = 0
    while got < want and time.monotonic() < deadline:
        data = recv_datagram(sock)
        if data is None:
            time.sleep(0)
            continue
        if on_data:
            on_data(data)
        got += 1
    return got


def bench_raw(group: str, port: int, size: int) -> tuple[float, int]:
    sender, receiver = open_sender(), open_receiver(group, port)
    payload = b"x" * size
    sent = received = 0
    start = time.monotonic()
    while time.monotonic() - start < SECONDS:
        for _ in range(BATCH):
            sender.sendto(payload, (group, port))
        sent += BATCH
        received += drain(receiver, BATCH, time.monotonic() + 1.0)
    elapsed = time.monotonic() - start
    sender.close()
    receiver.close()
    return received / elapsed, sent - received


def bench_agora(group: str, port: int) -> tuple[float, int]:
    context = zmq.Context()
    h = Harness()
    client = h.bidder("bench")
    view = AuctionView(h.join(client), client.private_key)
    h.core.open_item(item(duration=3600), "bench.json", T0)
    publisher = Publisher(context, "tcp://127.0.0.1:0", group, port)
    receiver = open_receiver(group, port)
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publisher.endpoint)
    time.sleep(0.2)  # let SUB connect
    for datagram in h.core.take_outbox():
        publisher.publish(datagram)
    events = 0

    def feed(data: bytes) -> None:
        nonlocal events
        events += len(view.feed(data).events)

    sent = received = 0
    start = time.monotonic()
    while time.monotonic() - start < SECONDS:
        for n in range(BATCH):
            h.core.announce(Event.HEARTBEAT, item="lamp", closes_at=T0 + 3600, now=T0 + n)
        for datagram in h.core.take_outbox():
            publisher.publish(datagram)
        sent += BATCH
        received += drain(receiver, BATCH, time.monotonic() + 1.0, feed)
        while sub.poll(0):  # the mirror copies: verified, then dropped as duplicates
            feed(sub.recv())
    elapsed = time.monotonic() - start
    receiver.close()
    sub.close(0)
    publisher.close()
    context.destroy(0)
    if events < received:
        raise SystemExit(f"only {events} of {received} announcements decoded")
    return received / elapsed, sent - received


def main() -> None:
    group = f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = free_udp_port()
    # Size of a heartbeat announcement, so raw sends the same number of bytes.
    h = Harness()
    h.core.announce(Event.HEARTBEAT, item="lamp", closes_at=T0 + 3600, now=T0)
    size = len(h.core.take_outbox()[-1])
    raw_rate, raw_lost = bench_raw(group, port, size)
    agora_rate, agora_lost = bench_agora(group, port)
    print(f"datagram size          {size} bytes")
    print(f"raw UDP multicast      {raw_rate:10.0f} msg/s  (lost {raw_lost})")
    print(f"agora announcements    {agora_rate:10.0f} msg/s  (lost {agora_lost}; "
          "signed, sealed, mirrored on PUB, verified and deduplicated)")
    print(f"ratio agora/raw        {agora_rate / raw_rate:10.2f}")


if __name__ == "__main__":
    main()
