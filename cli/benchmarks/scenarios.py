"""The six scenarios of ``agora bench``; each measures agora and its raw baseline together.

A scenario is a function ``(setup) -> list[Row]``. Where there is a raw baseline, both sides
run through :func:`cli.benchmarks.measure.interleave`, so the ratio agora/raw of each row is
the median of per-round ratios taken under the same machine load.
"""

from __future__ import annotations

import cProfile
import itertools
import json
import pstats
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from agents import Agent
from agents.auction import AuctionClient, AuctionWatcher
from agents.auction_view import AuctionView
from agents.peer import SEND_WINDOW, Listener
from agents.peer_protocol import MESSAGE_HEAD
from agents.pipeline import Pipeline, is_error
from agora.envelope import MIN_SEALED
from agora.errors import RemoteError
from agora.multicast import open_receiver, open_sender, recv_datagram
from agora.protocol import ErrorCode, Level
from broker.server import BrokerServer
from broker.store import Store
from cli.benchmarks.lab import PASSWORD, rss_bytes
from cli.benchmarks.measure import (
    MAX_OPS,
    Figures,
    Sample,
    interleave,
    median_ratio,
    threaded_loops,
    timed_loop,
)
from cli.benchmarks.raw import DealerClient, PairEcho, ReqClient
from cli.benchmarks.setup import (
    ECHO_SERVICE,
    PIPELINE,
    WORKERS,
    Setup,
    free_udp_port,
    random_group,
)

PAYLOAD = {"text": "hello, agora"}
RAW_PAYLOAD = json.dumps(PAYLOAD).encode()
PEER_TEXT = "x" * 100
#: Texts per ``send_many`` in the one-way peer row: long enough that draining the window at
#: the end of each stream is a small share of it.
STREAM_LENGTH = 512
#: Warm-up operations before any timing (connections, caches, the first JSON).
WARM_UP = 20


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    name: str
    unit: str
    agora: Figures | None = None
    baseline: str | None = None
    raw: Figures | None = None
    ratio: float | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "name": self.name, "unit": self.unit,
                "agora": self.agora.to_dict() if self.agora else None,
                "baseline": self.baseline, "raw": self.raw.to_dict() if self.raw else None,
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "target": self.target, "extra": self.extra}


def compare(scenario: str, name: str, unit: str, baseline: str, target: str | None,
            agora: Callable[[float], Sample], raw: Callable[[float], Sample],
            setup: Setup) -> Row:
    """Interleave ``agora`` and ``raw`` over the plan's rounds; the row with their ratio."""
    samples = interleave({"raw": raw, "agora": agora}, setup.plan.rounds, setup.plan.seconds)
    return Row(scenario, name, unit, Figures.of(samples["agora"]), baseline,
               Figures.of(samples["raw"]), median_ratio(samples["agora"], samples["raw"]),
               target)


def warm(op: Callable[[], Any]) -> None:
    for _ in range(WARM_UP):
        op()


# -- 1. calls -------------------------------------------------------------------------------

def calls(setup: Setup) -> list[Row]:
    client = setup.client
    raw = ReqClient(setup.lab.context, setup.echo_endpoint, RAW_PAYLOAD)
    dealer = DealerClient(setup.lab.context, setup.echo_endpoint, RAW_PAYLOAD)
    pipe = client.pipeline(PIPELINE)
    try:
        def call() -> None:
            client.call("echo", PAYLOAD)

        for op in (raw.call, call):
            warm(op)
        pipelined(pipe, "echo", 0.05)
        return [
            compare("calls", "echo, 1 synchronous caller", "calls/s", "REQ->ROUTER",
                    ">= 0.8 (issue 9)", lambda s: timed_loop(call, s),
                    lambda s: timed_loop(raw.call, s), setup),
            compare("calls", f"echo, 1 caller with {PIPELINE} in flight", "calls/s",
                    f"DEALER->ROUTER, {PIPELINE} in flight", ">= 0.5",
                    lambda s: pipelined(pipe, "echo", s), lambda s: dealer.run(s, PIPELINE),
                    setup),
        ]
    finally:
        pipe.close()
        raw.close()
        dealer.close()


def _caller(agent: Agent, service: str) -> Callable[[], None]:
    return lambda: agent.call(service, PAYLOAD)


def pipelined(pipe: Pipeline, service: str, seconds: float) -> Sample:
    """One caller keeping ``pipe.depth`` calls in flight for ``seconds`` (then draining);
    each call's latency from its send to its answer. A call that failed fails the side."""
    clock = time.perf_counter_ns
    sent: dict[int, int] = {}
    latencies: list[int] = []
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    while (now < deadline and len(latencies) < MAX_OPS) or sent:
        while len(sent) < pipe.depth and now < deadline:
            sent[pipe.send(service, PAYLOAD)] = clock()
        counter, answer = pipe.receive()
        now = clock()
        if is_error(answer):
            raise answer
        latencies.append(now - sent.pop(counter))
    return Sample(len(latencies), (now - start) / 1e9, latencies)


# -- 2. worker-routed calls -----------------------------------------------------------------

def workers(setup: Setup) -> list[Row]:
    client = setup.client
    setup.worker_ready()
    raw = ReqClient(setup.lab.context, setup.forward_endpoint, RAW_PAYLOAD)
    dealer = DealerClient(setup.lab.context, setup.echo_endpoint, RAW_PAYLOAD)
    pipe = client.pipeline(PIPELINE)
    try:
        call = _caller(client, ECHO_SERVICE)
        for op in (raw.call, call):
            warm(op)
        pipelined(pipe, ECHO_SERVICE, 0.05)
        return [
            compare("workers", "worker-routed call, 1 synchronous caller", "calls/s",
                    "REQ->ROUTER->DEALER worker", ">= 0.7", lambda s: timed_loop(call, s),
                    lambda s: timed_loop(raw.call, s), setup),
            compare("workers", f"worker-routed calls, 1 caller with {PIPELINE} in flight, "
                    f"{WORKERS} workers", "calls/s", f"DEALER->ROUTER, {PIPELINE} in flight",
                    ">= 0.21", lambda s: pipelined(pipe, ECHO_SERVICE, s),
                    lambda s: dealer.run(s, PIPELINE), setup),
        ]
    finally:
        pipe.close()
        raw.close()
        dealer.close()


# -- 3 and 6. logins, and the broker's memory per session -----------------------------------

def logins(setup: Setup) -> list[Row]:
    """Logins back to back on a broker of their own; its RSS after 1, 100, 1000 sessions.

    Each login rotates the token and opens a session that stays open, so n logins leave n
    sessions in the broker. The sessions are opened first, by an agent whose credentials
    file is in memory (its fsync is not what is measured there: the broker's memory is);
    then the login rate is measured in timed rounds by an agent whose file is on disk,
    written and fsync'ed before and after each login (durable token rotation).
    """
    broker = setup.session_broker
    opener = broker.agent("Bench Sessions", login=False, homes=setup.lab.memory_dir)
    pid = broker.child.pid
    rss = {0: rss_bytes(pid)}
    done = 0
    for target in sorted(setup.plan.sessions):
        for _ in range(target - done):
            opener.login(listen=False)
        done = target
        rss[done] = rss_bytes(pid)
    agent = broker.agent("Bench Login", login=False)
    for _ in range(3):
        agent.login(listen=False)  # warm-up: the inbox socket, the file's first writes
    samples = [timed_loop(lambda: agent.login(listen=False), setup.plan.seconds)
               for _ in range(setup.plan.rounds)]
    split = login_cost_split(setup)
    rows = [Row("logins", "logins, 1 agent, durable token rotation", "logins/s",
                Figures.of(samples),
                extra={"cost_split": split, "argon2id": "excluded (credentials stay open)"})]
    base = rss[0]
    for n in sorted(setup.plan.sessions):
        rows.append(Row("sessions", f"broker RSS, {n:,} session(s)", "MB",
                        target="< 100 MB" if n == 1000 else None,
                        extra={"sessions": n, "rss_mb": round(rss[n] / 2**20, 1),
                               "per_session_kb": round((rss[n] - base) / n / 1024, 2)}))
    return rows


def login_cost_split(setup: Setup) -> dict[str, float]:
    """Where a login's CPU goes (crypto / store / sockets / other), from cProfile.

    Profiles an in-process BrokerServer thread and the agent's thread together; the two
    blocking receives (each side waiting for the other) are left out.
    """
    root = setup.lab.root / "profiled-broker"
    server = BrokerServer(root, "tcp://127.0.0.1:0", setup.lab.context)
    admin = Store(root / "broker.db")
    broker_profile, agent_profile = cProfile.Profile(), cProfile.Profile()
    thread = threading.Thread(target=broker_profile.runcall, args=(server.serve,), daemon=True)
    thread.start()
    try:
        username, otid = admin.enroll("Bench Profiled", Level.CONFIDENTIAL, time.time())
        agent = Agent(root / "home", broker=server.endpoint, context=setup.lab.context,
                      timeout=5.0, retries=1)
        setup.lab.agents.append(agent)
        agent.register(username, otid, server.keys.fingerprint, PASSWORD)
        agent.login(listen=False)
        agent_profile.runcall(lambda: [agent.login(listen=False)
                                       for _ in range(setup.plan.profile_logins)])
    finally:
        server.stop.set()
        thread.join(5)
        server.close()
        admin.db.close()
    totals = {"crypto": 0.0, "store": 0.0, "sockets": 0.0, "other": 0.0}
    for profile in (broker_profile, agent_profile):
        for (filename, _, name), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
            kind = _cost_kind(filename, name)
            if kind:
                totals[kind] += own
    whole = sum(totals.values()) or 1.0
    return {k: round(v / whole, 3) for k, v in totals.items()}


def _cost_kind(filename: str, name: str) -> str | None:
    where = f"{filename} {name}"
    if filename.endswith("broker/server.py") and name == "serve":
        return None  # the loop's own time is its blocking receive (pyzmq's is inlined)
    if "zmq" in where or "Socket" in name:
        if "recv" in name or "poll" in name:
            return None  # waiting for the other side, not work
        return "sockets"
    if any(s in where for s in ("nacl", "sodium", "blake2", "hmac", "compare_digest",
                                "agora/crypto.py")):
        return "crypto"
    if any(s in where for s in ("sqlite", "fsync", "posix.replace", "posix.open", "fchmod",
                                "tempfile", "flock", "_io.", "io.open", "BufferedWriter",
                                "read_bytes",
                                "posix.close", "posix.unlink", "agora/files.py")):
        return "store"
    if "runcall" in name or "disable" in name:
        return None
    return "other"


# -- 4. peer messages -----------------------------------------------------------------------

def peers(setup: Setup) -> list[Row]:
    sender, receiver = setup.agents("Bench Peer", 2, listen=True)
    listener = Listener(receiver, lambda msg: None)
    listening = threading.Thread(target=listener.run, daemon=True)
    listening.start()
    # Payloads the size of a MESSAGE envelope and of its ACK (AGORA/2, one frame each).
    raw = PairEcho(setup.lab.context, b"x" * (MIN_SEALED + MESSAGE_HEAD.size + len(PEER_TEXT)),
                   b"x" * MIN_SEALED)
    try:
        def send() -> None:
            sender.send(receiver.username, PEER_TEXT, queue=False)

        warm(send)  # the first one opens the conversation (directory look-up, HELLO)
        warm(raw.round_trip)
        return [
            compare("peers", "message + ACK, end to end encrypted", "msgs/s",
                    "PAIR round trip", ">= 0.8", lambda s: timed_loop(send, s),
                    lambda s: timed_loop(raw.round_trip, s), setup),
            compare("peers", f"one-way messages, acknowledged, {SEND_WINDOW} in flight",
                    "msgs/s", "PAIR one-way stream", None,
                    lambda s: streamed(sender, receiver.username, s), raw.one_way, setup),
        ]
    finally:
        listener.stop.set()
        listening.join(5)
        raw.close()


def streamed(sender: Agent, peer: str, seconds: float) -> Sample:
    """Acknowledged peer messages sent as streams (``send_many``) for about ``seconds``;
    each message's latency from its send to its ACK."""
    texts = [PEER_TEXT] * STREAM_LENGTH
    latencies: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and len(latencies) < MAX_OPS:
        receipts = sender.peer.send_many(peer, texts, queue=False)
        latencies += [int(r.round_trip * 1e9) for r in receipts]
    return Sample(len(latencies), time.perf_counter() - start, latencies)


# -- 5. bids --------------------------------------------------------------------------------

class Watching:
    """A watcher in a thread that remembers which accepted bids it ended up knowing."""

    def __init__(self, client: AuctionClient) -> None:
        self.seen: set[int] = set()
        self.recovered_up_to = 0  # bids up to this amount came in a snapshot
        self.watcher = AuctionWatcher(client, client.join(), self._on_event)
        self.thread = threading.Thread(target=self.watcher.serve, kwargs={"timeout": 600},
                                       daemon=True)
        self.thread.start()

    def _on_event(self, event: dict[str, Any], view: AuctionView) -> None:
        if event.get("kind") == "bid":
            self.seen.add(event["amount"])
        elif event.get("kind") == "snapshot" and view.best:
            self.recovered_up_to = max(self.recovered_up_to, view.best["amount"])

    def has(self, amount: int) -> bool:
        return amount in self.seen or amount <= self.recovered_up_to

    def stop(self) -> None:
        self.watcher.stop.set()
        self.thread.join(5)
        self.watcher.close()


#: Seconds of bidding in one run at most (see bids()).
BIDDING_BUDGET = 12.0


def bids(setup: Setup) -> list[Row]:
    plan = setup.plan
    endpoint = setup.auction_endpoint
    name = setup.auctioneer_name
    agents = setup.agents("Bench Bidder", plan.bidders + plan.watchers)
    clients = [AuctionClient.for_agent(a, name, endpoint, timeout=5.0, retries=1)
               for a in agents]
    bidders, watching = clients[:plan.bidders], []
    try:
        item = _open_item(bidders[0])
        watching = [Watching(c) for c in clients[plan.bidders:]]
        for c in bidders:
            c.join()
        amounts = itertools.count(1)
        lock = threading.Lock()
        accepted: list[int] = []
        rejected = [0]

        def bidder(client: AuctionClient) -> Callable[[], None]:
            def bid() -> None:
                with lock:
                    amount = next(amounts)
                try:
                    client.bid(item, amount)
                except RemoteError as exc:
                    if exc.code is not ErrorCode.BID_TOO_LOW:
                        raise
                    rejected[0] += 1  # overtaken by another bidder's higher bid
                else:
                    accepted.append(amount)
            return bid

        ops = [bidder(c) for c in bidders]

        # The auctioneer remembers every request of the last 2 x FRESHNESS_WINDOW for replay
        # (at most REPLAY_CONTEXTS, 100,000) and refuses service past that, as it should;
        # at several thousand bids/s a long run would reach it. Bidding is therefore capped
        # at BIDDING_BUDGET seconds per run, spread over the rounds (a rate needs no more).
        bid_seconds = min(plan.seconds, BIDDING_BUDGET / plan.rounds)

        def run_bids(seconds: float) -> Sample:
            before = len(accepted)
            sample = threaded_loops(ops, min(seconds, bid_seconds))
            return Sample(len(accepted) - before, sample.seconds, sample.latencies_ns)

        signer = SignVerify()
        multicast = RawMulticast()
        try:
            samples = interleave({"bids": run_bids, "sign": signer.run,
                                  "multicast": multicast.run}, plan.rounds, plan.seconds)
        finally:
            multicast.close()
        delivery = _delivery(watching, accepted)
    finally:
        for w in watching:
            w.stop()
        for c in clients:
            c.close()
    bid_figures = Figures.of(samples["bids"])
    extra = {"bidders": plan.bidders, "watchers": plan.watchers, "accepted": len(accepted),
             "rejected_overtaken": rejected[0], **delivery}
    return [
        Row("bids", f"accepted bids, {plan.bidders} bidders, {plan.watchers} watchers",
            "bids/s", bid_figures, "Ed25519 sign+verify", Figures.of(samples["sign"]),
            median_ratio(samples["bids"], samples["sign"]), ">= 0.3, 100 % delivered", extra),
        Row("bids", "(same bids)", "bids/s", bid_figures, "raw UDP multicast datagrams",
            Figures.of(samples["multicast"]),
            median_ratio(samples["bids"], samples["multicast"]), None),
    ]


def _open_item(client: AuctionClient, timeout: float = 15.0) -> str:
    """Join, and wait (bounded) until the auctioneer has opened the bench's item."""
    client.join()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = (client.snapshot().get("state") or {}).get("item")
        if item:
            return item["id"]
        time.sleep(0.05)
    raise RuntimeError("the auctioneer did not open the bench item")


def _delivery(watching: list[Watching], accepted: list[int],
              timeout: float = 10.0) -> dict[str, Any]:
    """Wait (bounded) for every watcher to know every accepted bid; the fractions."""
    if not accepted:
        return {"delivered_pct": 0.0, "seen_directly_pct": 0.0}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.has(a) for w in watching for a in accepted[-1:]) and all(
                all(w.has(a) for a in accepted) for w in watching):
            break
        time.sleep(0.05)
    ended = min(sum(w.has(a) for a in accepted) for w in watching) / len(accepted)
    direct = min(sum(a in w.seen for a in accepted) for w in watching) / len(accepted)
    return {"delivered_pct": round(100 * ended, 2), "seen_directly_pct": round(100 * direct, 2)}


class SignVerify:
    """The raw limit of a signed announcement: Ed25519 sign, then verify, of 300 bytes."""

    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.message = b"x" * 300

    def once(self) -> None:
        self.key.verify_key.verify(self.key.sign(self.message))

    def run(self, seconds: float) -> Sample:
        return timed_loop(self.once, seconds)


class RawMulticast:
    """Raw UDP multicast on loopback: batches sent, then received back from the group."""

    BATCH = 100

    def __init__(self) -> None:
        self.group, self.port = random_group(), free_udp_port()
        self.sender = open_sender("127.0.0.1", 0)
        self.receiver = open_receiver(self.group, self.port, "127.0.0.1")
        self.payload = b"x" * 300

    def run(self, seconds: float) -> Sample:
        received = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and received < MAX_OPS:
            for _ in range(self.BATCH):
                self.sender.sendto(self.payload, (self.group, self.port))
            got, deadline = 0, time.monotonic() + 1.0
            while got < self.BATCH and time.monotonic() < deadline:
                if recv_datagram(self.receiver) is None:
                    time.sleep(0)
                else:
                    got += 1
            received += got
        return Sample(received, time.perf_counter() - start)

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


#: The scenarios in the order they run; ``logins`` also gives the sessions rows.
SCENARIOS: dict[str, Callable[[Setup], list[Row]]] = {
    "calls": calls, "workers": workers, "logins": logins, "peers": peers, "bids": bids,
}
#: The issue's six scenario names, as rows carry them.
ROW_SCENARIOS = ("calls", "workers", "logins", "peers", "bids", "sessions")


