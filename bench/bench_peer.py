"""Peer message round trip (send + acknowledgement) against a raw pyzmq PAIR round trip.

Two agents on loopback with a real broker in a thread: the sender calls ``agent.send`` (seal,
PAIR send, wait for the sealed ACK, check it) while the receiver runs ``agent.messages()``
(open, check sequence and ids, ACK). The raw baseline is a PAIR pair on loopback doing the
same number of ping-pongs with a payload of the same size, measured in the same run.

    PYTHONPATH=. python bench/bench_peer.py [--count 2000]

Bounded: a fixed number of round trips, a few seconds in all.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import zmq

from agents import Agent
from agora.protocol import Level
from broker.server import BrokerServer
from broker.store import Store

PASSWORD = "bench password"  # noqa: S105 - a throwaway agent in a temp dir
TEXT = "x" * 100


def make_agent(server: BrokerServer, admin: Store, root: Path, name: str,
               context: zmq.Context) -> Agent:
    username, otid = admin.enroll(name, Level.CONFIDENTIAL, time.time())
    agent = Agent(root / username, broker=server.endpoint, context=context)
    agent.register(username, otid, server.keys.fingerprint, PASSWORD)
    agent.login(PASSWORD)
    return agent


def bench_agents(count: int, context: zmq.Context, root: Path) -> list[float]:
    server = BrokerServer(root / "broker", "tcp://127.0.0.1:0", context)
    admin = Store(root / "broker" / "broker.db")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    sender = make_agent(server, admin, root, "Ana Lima", context)
    receiver = make_agent(server, admin, root, "Bob Reis", context)
    stop = threading.Event()
    receiver.peer  # noqa: B018 - start the node before the first message
    listening = threading.Thread(target=lambda: [None for _ in receiver.messages(stop=stop)],
                                 daemon=True)
    listening.start()
    try:
        sender.send("bob.reis", "warm-up")  # conversation set-up is not part of the loop
        times = []
        for _ in range(count):
            started = time.perf_counter()
            sender.send("bob.reis", TEXT)
            times.append(time.perf_counter() - started)
        return times
    finally:
        stop.set()
        listening.join(5)
        sender.close()
        receiver.close()
        server.stop.set()
        thread.join(5)
        server.close()
        admin.db.close()


def bench_raw(count: int, context: zmq.Context) -> list[float]:
    """The floor: a PAIR ping-pong on loopback with a payload the size of a sealed message."""
    server = context.socket(zmq.PAIR)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = context.socket(zmq.PAIR)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"tcp://127.0.0.1:{port}")
    payload = [b"AGORA01P", b"x" * (len(TEXT) + 90)]
    ack = [b"AGORA01P", b"x" * 74]

    def echo() -> None:
        for _ in range(count + 1):
            if not server.poll(5000):
                return
            server.recv_multipart()
            server.send_multipart(ack)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(count + 1):
            started = time.perf_counter()
            client.send_multipart(payload)
            if not client.poll(5000):
                raise RuntimeError("raw PAIR echo stopped answering")
            client.recv_multipart()
            times.append(time.perf_counter() - started)
        return times[1:]
    finally:
        thread.join(5)
        client.close(0)
        server.close(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="round trips per side")
    args = parser.parse_args()
    context = zmq.Context()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = bench_raw(args.count, context)
            agents = bench_agents(args.count, context, Path(tmp))
    finally:
        context.destroy(0)
    raw_us, agents_us = statistics.median(raw) * 1e6, statistics.median(agents) * 1e6
    print(f"raw PAIR round trip      median {raw_us:8.1f} us  ({args.count} round trips)")
    print(f"agent send + ACK         median {agents_us:8.1f} us  ({args.count} round trips)")
    print(f"ratio agent / raw        {agents_us / raw_us:.2f}x")
    print(f"throughput agent         {1e6 / agents_us:,.0f} acknowledged messages/s")


if __name__ == "__main__":
    main()
