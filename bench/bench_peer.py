"""Peer message round trip (send + acknowledgement) against a raw pyzmq PAIR round trip.

Two agents on loopback with a real broker in a thread: the sender calls ``agent.send`` (seal,
PAIR send, wait for the sealed ACK, check it) while the receiver runs ``agent.messages()``
(open, check sequence and ids, ACK). The raw baseline is a PAIR pair on loopback doing the
same number of ping-pongs with a payload of the same size, measured in the same run.

    PYTHONPATH=. python bench/bench_peer.py [--count 2000]

The two alternate in rounds (so both see the same machine load) and the best median of
each is reported. Bounded: a fixed number of round trips, a few seconds in all.
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
from agents.peer import Listener
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


class AgentPair:
    """A broker in a thread and two logged-in agents; the receiver listens in a thread."""

    def __init__(self, context: zmq.Context, root: Path) -> None:
        self.server = BrokerServer(root / "broker", "tcp://127.0.0.1:0", context)
        self.admin = Store(root / "broker" / "broker.db")
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.sender = make_agent(self.server, self.admin, root, "Ana Lima", context)
        self.receiver = make_agent(self.server, self.admin, root, "Bob Reis", context)
        self.listener = Listener(self.receiver, lambda msg: None)
        self.listening = threading.Thread(target=self.listener.run, daemon=True)
        self.listening.start()
        self.sender.send("bob.reis", "warm-up")  # conversation set-up is not measured

    def round_trip(self) -> None:
        self.sender.send("bob.reis", TEXT)

    def close(self) -> None:
        self.listener.stop.set()
        self.listening.join(5)
        self.sender.close()
        self.receiver.close()
        self.server.stop.set()
        self.thread.join(5)
        self.server.close()
        self.admin.db.close()


class RawPair:
    """The floor: a PAIR ping-pong on loopback, payloads the size of sealed messages."""

    def __init__(self, context: zmq.Context) -> None:
        self.server = context.socket(zmq.PAIR)
        self.server.setsockopt(zmq.LINGER, 0)
        port = self.server.bind_to_random_port("tcp://127.0.0.1")
        self.client = context.socket(zmq.PAIR)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.connect(f"tcp://127.0.0.1:{port}")
        self.payload = [b"AGORA01P", b"x" * (len(TEXT) + 90)]
        self.ack = [b"AGORA01P", b"x" * 74]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._echo, daemon=True)
        self.thread.start()
        self.round_trip()

    def _echo(self) -> None:
        while not self.stop.is_set():
            if self.server.poll(100):
                self.server.recv_multipart()
                self.server.send_multipart(self.ack)

    def round_trip(self) -> None:
        self.client.send_multipart(self.payload)
        if not self.client.poll(5000):
            raise RuntimeError("raw PAIR echo stopped answering")
        self.client.recv_multipart()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close(0)
        self.server.close(0)


def timed(round_trip, count: int) -> float:
    """Median seconds of ``count`` round trips."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="round trips per side")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds; the best median of each side is reported")
    args = parser.parse_args()
    per_round = max(1, args.count // args.rounds)
    context = zmq.Context()
    raw_medians, agent_medians = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw, agents = RawPair(context), AgentPair(context, Path(tmp))
            try:
                for _ in range(args.rounds):  # alternate, so both see the same machine load
                    raw_medians.append(timed(raw.round_trip, per_round))
                    agent_medians.append(timed(agents.round_trip, per_round))
            finally:
                agents.close()
                raw.close()
    finally:
        context.destroy(0)
    raw_us, agents_us = min(raw_medians) * 1e6, min(agent_medians) * 1e6
    total = per_round * args.rounds
    print(f"raw PAIR round trip      median {raw_us:8.1f} us  ({total} round trips)")
    print(f"agent send + ACK         median {agents_us:8.1f} us  ({total} round trips)")
    print(f"ratio agent / raw        {agents_us / raw_us:.2f}x")
    print(f"throughput agent         {1e6 / agents_us:,.0f} acknowledged messages/s")


if __name__ == "__main__":
    main()
