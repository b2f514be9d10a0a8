"""The raw baselines: plain pyzmq and plain sockets, no crypto, no JSON, no checks.

Each is the same shape as the agora path it is compared with, so the ratio says what
agora's work costs on top of the transport:

- ``echo``: a ROUTER that sends back what it receives (for REQ->ROUTER and DEALER->ROUTER);
- ``forward``: a ROUTER front end forwarding to a plain DEALER worker behind a ROUTER back
  end and back (the shape of a worker-routed call, as in the ZeroMQ guide's load balancer);
- ``worker``: that plain DEALER worker;
- in-process helpers: a REQ client, a DEALER client with a window of requests in flight,
  a PAIR echo in a thread, one-way PAIR streaming.

The servers run as their own processes (``python -m cli.benchmarks.raw echo``), print their
ports on one line, and exit by themselves once idle for a minute or orphaned.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import zmq

from cli.benchmarks.measure import MAX_OPS, Sample

#: A raw server with no traffic for this long exits by itself.
IDLE_EXIT = 60.0
#: A raw client waits this long for an answer before giving up (raises).
ANSWER_TIMEOUT_MS = 5000


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _alive(parent: int, idle_since: float) -> bool:
    return os.getppid() == parent and time.monotonic() - idle_since < IDLE_EXIT


def serve_echo() -> None:
    context = zmq.Context()
    sock = _socket(context, zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    parent, idle_since = os.getppid(), time.monotonic()
    while _alive(parent, idle_since):
        if sock.poll(200):
            for _ in range(1000):
                try:
                    sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            idle_since = time.monotonic()


def serve_forward() -> None:
    """Front end ROUTER (clients) <-> back end ROUTER (workers, first frame READY)."""
    context = zmq.Context()
    front, back = _socket(context, zmq.ROUTER), _socket(context, zmq.ROUTER)
    ports = front.bind_to_random_port("tcp://127.0.0.1"), back.bind_to_random_port(
        "tcp://127.0.0.1")
    print(*ports, flush=True)
    workers: list[bytes] = []
    turn = 0
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    parent, idle_since = os.getppid(), time.monotonic()
    while _alive(parent, idle_since):
        ready = dict(poller.poll(200))
        if back in ready:
            frames = back.recv_multipart()  # [worker, READY] or [worker, client, b"", body]
            if frames[1:] == [b"READY"]:
                workers.append(frames[0])
            else:
                front.send_multipart(frames[1:])
            idle_since = time.monotonic()
        if front in ready and workers:
            frames = front.recv_multipart()  # [client, b"", body]
            turn = (turn + 1) % len(workers)
            back.send_multipart([workers[turn], *frames])
            idle_since = time.monotonic()


def serve_worker(endpoint: str) -> None:
    context = zmq.Context()
    sock = _socket(context, zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"READY")
    print("ready", flush=True)
    parent, idle_since = os.getppid(), time.monotonic()
    while _alive(parent, idle_since):
        if sock.poll(200):
            sock.send_multipart(sock.recv_multipart())
            idle_since = time.monotonic()


class ReqClient:
    """A REQ socket doing one request at a time (the synchronous caller's floor)."""

    def __init__(self, context: zmq.Context, endpoint: str, payload: bytes) -> None:
        self.sock = _socket(context, zmq.REQ)
        self.sock.setsockopt(zmq.RCVTIMEO, ANSWER_TIMEOUT_MS)
        self.sock.connect(endpoint)
        self.payload = payload

    def call(self) -> None:
        self.sock.send(self.payload)
        self.sock.recv()  # zmq.Again after ANSWER_TIMEOUT_MS: the scenario fails, bounded

    def close(self) -> None:
        self.sock.close(0)


class DealerClient:
    """A DEALER socket keeping ``window`` requests in flight to an echoing ROUTER."""

    def __init__(self, context: zmq.Context, endpoint: str, payload: bytes) -> None:
        self.sock = _socket(context, zmq.DEALER)
        self.sock.connect(endpoint)
        self.payload = payload

    def run(self, seconds: float, window: int = 8) -> Sample:
        clock = time.perf_counter_ns
        sent: dict[int, int] = {}
        latencies: list[int] = []
        start = clock()
        deadline = start + int(seconds * 1e9)
        seq = 0
        now = start
        while (now < deadline and len(latencies) < MAX_OPS) or sent:
            while len(sent) < window and now < deadline:
                seq += 1
                self.sock.send_multipart([b"", seq.to_bytes(8, "big"), self.payload])
                sent[seq] = clock()
            if not self.sock.poll(ANSWER_TIMEOUT_MS):
                raise TimeoutError("raw DEALER baseline stopped answering")
            frames = self.sock.recv_multipart()
            now = clock()
            latencies.append(now - sent.pop(int.from_bytes(frames[1], "big")))
        return Sample(len(latencies), (now - start) / 1e9, latencies)

    def close(self) -> None:
        self.sock.close(0)


class PairEcho:
    """A PAIR pair on loopback; the far end answers each message (in a thread)."""

    def __init__(self, context: zmq.Context, request: bytes, answer: bytes) -> None:
        self.server = _socket(context, zmq.PAIR)
        port = self.server.bind_to_random_port("tcp://127.0.0.1")
        self.client = _socket(context, zmq.PAIR)
        self.client.connect(f"tcp://127.0.0.1:{port}")
        self.request, self.answer = request, answer
        self.stop = threading.Event()
        self.received = 0
        self.echo = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if self.server.poll(100):
                for _ in range(1000):
                    try:
                        self.server.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.received += 1
                    if self.echo:
                        self.server.send(self.answer)

    def round_trip(self) -> None:
        self.client.send(self.request)
        if not self.client.poll(ANSWER_TIMEOUT_MS):
            raise TimeoutError("raw PAIR echo stopped answering")
        self.client.recv()

    def one_way(self, seconds: float, batch: int = 100) -> Sample:
        """Messages per second, counted when the far end has received them all."""
        self.echo = False
        try:
            first = self.received
            start = time.perf_counter()
            sent = 0
            while time.perf_counter() - start < seconds and sent < MAX_OPS:
                for _ in range(batch):
                    self.client.send(self.request)
                sent += batch
            deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
            while self.received - first < sent and time.monotonic() < deadline:
                time.sleep(0.0005)
            if self.received - first < sent:
                raise TimeoutError("raw PAIR receiver fell behind for 5 s")
            return Sample(sent, time.perf_counter() - start)
        finally:
            self.echo = True

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close(0)
        self.server.close(0)


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else ""
    if mode == "echo":
        serve_echo()
    elif mode == "forward":
        serve_forward()
    elif mode == "worker" and len(argv) == 2:
        serve_worker(argv[1])
    else:
        sys.exit("usage: python -m cli.benchmarks.raw echo | forward | worker ENDPOINT")


if __name__ == "__main__":
    main(sys.argv[1:])
