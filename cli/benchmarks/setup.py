"""What the scenarios share, started once and early: brokers, workers, raw servers, agents.

:meth:`Setup.launch` starts every process the chosen scenarios need at once (their start-up
overlaps); the properties below wait for a process only when a scenario first needs it.
"""

from __future__ import annotations

import json
import random
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from agents import Agent
from agora.protocol import Level, PrincipalKind
from cli.benchmarks.lab import Broker, Child, Lab
from cli.processes import agora_command

ECHO_SERVICE = "bench.echo"
AUCTION_ITEM = "bench-lot"
#: Calls in flight in the pipelined scenarios (one agent, agents.pipeline).
PIPELINE = 8
#: Worker processes serving ECHO_SERVICE: a worker takes one request at a time (7/MDP), so
#: with PIPELINE calls in flight one worker would serialise them; two keep one busy while
#: the broker hands the other its next request, without a third process to schedule on the
#: bench machine's two cores.
WORKERS = 2


@dataclass(frozen=True)
class Plan:
    """How long and how much: the default run, or ``--quick``."""

    rounds: int
    seconds: float
    sessions: tuple[int, ...]
    bidders: int = 4
    watchers: int = 4
    profile_logins: int = 100

    @classmethod
    def default(cls) -> Plan:
        return cls(rounds=5, seconds=0.8, sessions=(1, 100, 1000))

    @classmethod
    def quick(cls) -> Plan:
        return cls(rounds=3, seconds=0.2, sessions=(1, 100, 1000), profile_logins=20)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_group() -> str:
    """A host-local multicast group (239.255.0.0/16, sent with TTL 0 on 127.0.0.1)."""
    return f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"


class Setup:
    def __init__(self, lab: Lab, plan: Plan) -> None:
        self.lab, self.plan = lab, plan

    def launch(self, scenarios: set[str]) -> None:
        """Start every process the scenarios need now, without waiting for any."""
        if scenarios & {"calls", "workers", "peers", "bids"}:
            self.broker  # noqa: B018
        if scenarios & {"calls", "workers"}:
            self.echo_server  # noqa: B018
        if "workers" in scenarios:
            self.forwarder  # noqa: B018
        if "logins" in scenarios:
            self.session_broker  # noqa: B018
        if "workers" in scenarios:
            self.worker  # noqa: B018
        if "bids" in scenarios:
            self.auctioneer  # noqa: B018

    # -- processes -----------------------------------------------------------------------

    @cached_property
    def broker(self) -> Broker:
        return Broker(self.lab, "broker")

    @cached_property
    def session_broker(self) -> Broker:
        """A broker of its own for logins and sessions, so its memory is theirs alone."""
        # One principal opens them all: its cap is lifted, so the figure is n sessions' memory.
        return Broker(self.lab, "session-broker",
                      ["--max-sessions-per-principal", str(max(self.plan.sessions) + 10)])

    @cached_property
    def echo_server(self) -> Child:
        return self.lab.raw("raw-echo", "echo")

    @cached_property
    def echo_endpoint(self) -> str:
        port = self.echo_server.expect(r"^(\d+)$").group(1)
        return f"tcp://127.0.0.1:{port}"

    @cached_property
    def forwarder(self) -> Child:
        return self.lab.raw("raw-forward", "forward")

    @cached_property
    def forward_endpoint(self) -> str:
        front, back = self.forwarder.expect(r"^(\d+) (\d+)$").groups()
        worker = self.lab.raw("raw-worker", "worker", f"tcp://127.0.0.1:{back}")
        worker.expect("ready")
        return f"tcp://127.0.0.1:{front}"

    @cached_property
    def worker(self) -> list[Child]:
        """WORKERS ``agora worker run`` processes serving ECHO_SERVICE, each bound to it."""
        children = []
        for i in range(WORKERS):
            agent = self.broker.agent(f"Bench Worker {i}", PrincipalKind.SERVICE, login=False)
            self.broker.bind(ECHO_SERVICE, agent.username, Level.PUBLIC)
            children.append(self.lab.spawn(f"worker-{i}", [
                *agora_command(), "worker", "run", "cli.benchmarks.handlers:echo",
                "--service", ECHO_SERVICE, "--level", "1", "--home", str(agent.home),
                "--broker", self.broker.endpoint]))
        return children

    def worker_ready(self) -> None:
        if not getattr(self, "_worker_ready", False):
            for child in self.worker:
                child.expect("worker ready")
            self._worker_ready = True

    @cached_property
    def auctioneer(self) -> Child:
        agent = self.broker.agent("Bench Auctioneer", PrincipalKind.SERVICE, login=False)
        self.auctioneer_name = agent.username
        items = self.lab.root / "items"
        items.mkdir()
        (items / f"{AUCTION_ITEM}.json").write_text(json.dumps({
            "id": AUCTION_ITEM, "title": "Bench lot", "description": "bids from agora bench",
            "starting_price_cents": 1, "min_increment_cents": 1, "duration": 3600}))
        self.group, self.group_port = random_group(), free_udp_port()
        return self.lab.spawn("auctioneer", [
            *agora_command(), "auctioneer", "start", "--items", str(items),
            "--home", str(agent.home), "--broker", self.broker.endpoint,
            "--data-dir", str(self.lab.root / "auctioneer"),
            "--bind", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
            "--group", self.group, "--port", str(self.group_port),
            "--interface", "127.0.0.1", "--ttl", "0", "--pause", "0.1"])

    @cached_property
    def auction_endpoint(self) -> str:
        return self.auctioneer.expect(r"auctioneer ready at (\S+)").group(1)

    # -- agents --------------------------------------------------------------------------

    @cached_property
    def client(self) -> Agent:
        return self.broker.agent("Bench Client")

    def agents(self, name: str, count: int, listen: bool = False) -> list[Agent]:
        """``count`` registered, logged-in agents, made in parallel (Argon2id each)."""
        broker = self.broker  # made here, once: cached_property is not thread-safe
        broker.endpoint  # noqa: B018 - and ready before the threads enroll on it
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(lambda i: broker.agent(f"{name} {i}", listen=listen),
                                 range(count)))
