"""The auction over real sockets: broker, auctioneer threads, multicast and the PUB mirror."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

from agents.auction import AuctionClient, AuctionWatcher
from agents.auction_view import AuctionView
from agora.errors import AuctioneerUnreachable, BrokerUnreachable, RemoteError
from agora.multicast import free_udp_port, open_sender, random_group, send_datagram
from agora.protocol import ErrorCode, PrincipalKind
from auctioneer.feed import MembershipFeed
from auctioneer.server import AuctioneerServer
from broker.server import BrokerServer
from tests.conftest import raw_dealer


def write_item(folder, name: str, item_id: str, duration: float = 1.5,
               **extra: object) -> None:
    doc = {"id": item_id, "title": f"The {item_id}", "description": "test item",
           "starting_price": "10.00", "min_increment": "1.00", "duration": duration, **extra}
    (folder / name).write_text(json.dumps(doc))


class AuctionHarness:
    def __init__(self, broker, tmp_path, zctx) -> None:
        self.broker = broker
        self.agent = broker.agent("Auction House", kind=PrincipalKind.SERVICE)
        self.items = tmp_path / "items"
        self.items.mkdir()
        self.group, self.port = random_group(), free_udp_port()
        self.server = AuctioneerServer(
            self.agent, self.items, tmp_path / "auctioneer", "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:0", self.group, self.port, soft_close=0.5, pause=0.2,
            context=zctx)
        assert self.server.wait_for_membership(5.0)
        self.error: Exception | None = None  # what ended serve(), if anything did
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve()
        except Exception as exc:
            self.error = exc

    def client(self, name: str, timeout: float = 2.0, retries: int = 2) -> AuctionClient:
        agent = self.broker.agent(name)
        # A new registration reaches the auctioneer by push (the broker's store poll, then a
        # membership notice): wait for it rather than race it.
        key, deadline = bytes(agent.private_key.public_key), time.monotonic() + 5
        while key not in self.server.core.roster.keys and time.monotonic() < deadline:
            time.sleep(0.02)
        return AuctionClient.for_agent(agent, self.agent.username, self.server.endpoint,
                                       timeout=timeout, retries=retries)

    def stop(self) -> None:
        self.server.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def auction(broker, tmp_path, zctx):
    harness = AuctionHarness(broker, tmp_path, zctx)
    yield harness
    harness.stop()


def watch_in_thread(client: AuctionClient, results: dict, key: str, until_items: int = 1,
                    timeout: float = 15) -> threading.Thread:
    join = client.join()

    def run() -> None:
        watcher = AuctionWatcher(client, join)
        try:
            view = watcher.serve(lambda v: len(v.results) >= until_items, timeout)
            results[key] = (list(view.results), watcher.removed)
        finally:
            watcher.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class FullDisk:
    """The store's connection once the disk is full: writes go on, commits fail."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def commit(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


def test_bids_that_cannot_be_stored_are_neither_acknowledged_nor_announced(auction):
    ana = auction.client("Ana Lima", timeout=0.5, retries=1)
    view = AuctionView(ana.join(), ana.private_key)
    published: list[bytes] = []
    publish = auction.server.publisher.publish
    auction.server.publisher.publish = lambda d: (published.append(d), publish(d))
    write_item(auction.items, "01-lamp.json", "lamp", duration=30)
    deadline = time.monotonic() + 5
    while auction.server.core.idle and time.monotonic() < deadline:
        time.sleep(0.05)
    auction.server.store.db.conn = FullDisk(auction.server.store.db.conn)
    with pytest.raises(AuctioneerUnreachable):
        ana.bid("lamp", 1000)
    auction.thread.join(timeout=5)
    # It stopped, as on a crash: a restart resumes from what the store holds.
    assert isinstance(auction.error, sqlite3.OperationalError)
    assert auction.server.store.bids("lamp") == []
    events = [e["kind"] for d in published for e in view.feed(d).events]
    assert "opened" in events and "bid" not in events


def test_join_refuses_a_revoked_collaborator(auction, broker):
    client = auction.client("Ana Lima")
    assert client.join().username == "ana.lima"
    broker.admin.revoke("ana.lima", time.time())
    broker.wait_for_store_sync()
    with pytest.raises(RemoteError) as info:
        client.join()
    assert info.value.code is ErrorCode.REVOKED


def test_bidder_refuses_a_person_posing_as_the_auctioneer(auction, broker):
    agent = broker.agent("Ana Lima")
    broker.agent("Eve Auctioneer")
    with pytest.raises(Exception, match="not a service principal"):
        AuctionClient.for_agent(agent, "eve.auctioneer", auction.server.endpoint)


def test_several_watchers_all_see_the_same_winner(auction):
    bidders = [auction.client("Ana Lima"), auction.client("Bob Costa")]
    watchers = [auction.client(f"Watcher {n}") for n in "ABC"]
    seen: dict = {}
    threads = [watch_in_thread(c, seen, c.public_key.hex()) for c in watchers]
    write_item(auction.items, "01-lamp.json", "lamp", duration=1.5)
    for client in bidders:
        client.join()
    deadline = time.monotonic() + 5
    while auction.server.core.idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bidders[0].bid("lamp", 1000)["accepted"]
    assert bidders[1].bid("lamp", 1500)["accepted"]
    for thread in threads:
        thread.join(timeout=20)
    winners = {(r[0][-1]["winner"], r[0][-1]["price_cents"]) for r in seen.values()}
    assert len(seen) == 3 and winners == {("bob.costa", 1500)}
    assert (auction.items / "done" / "01-lamp.json").exists()


def test_revoked_member_is_keyed_out_while_others_keep_watching(auction, broker):
    ana, bob = auction.client("Ana Lima"), auction.client("Bob Costa")
    seen: dict = {}
    ana_thread = watch_in_thread(ana, seen, "ana")
    bob_thread = watch_in_thread(bob, seen, "bob")
    time.sleep(0.3)
    broker.admin.revoke("bob.costa", time.time())
    bob_thread.join(timeout=10)
    assert seen["bob"][1] and "not-joined" in seen["bob"][1]
    write_item(auction.items, "01-lamp.json", "lamp", duration=0.5)
    ana_thread.join(timeout=15)
    assert seen["ana"][0][-1]["item"] == "lamp" and seen["ana"][1] is None


def test_bad_item_file_is_rejected_and_the_next_one_runs(auction):
    (auction.items / "01-broken.json").write_text("{not json")
    write_item(auction.items, "02-float.json", "vase", starting_price=12.5)
    write_item(auction.items, "03-lamp.json", "lamp", duration=0.3)
    deadline = time.monotonic() + 10
    while not (auction.items / "done" / "03-lamp.json").exists():
        assert time.monotonic() < deadline, "good item never finished"
        time.sleep(0.05)
    rejected = auction.items / "rejected"
    assert (rejected / "01-broken.json.reason").read_text().strip() == "not valid JSON"
    assert "decimal string" in (rejected / "02-float.json.reason").read_text()


def test_watcher_ignores_other_groups_garbage_and_oversized_datagrams(auction):
    client = auction.client("Ana Lima")
    seen: dict = {}
    join = client.join()
    watcher = AuctionWatcher(client, join, mirror=False)  # multicast only
    thread = threading.Thread(
        target=lambda: seen.setdefault("view", watcher.serve(lambda v: bool(v.results), 15)),
        daemon=True)
    thread.start()
    sender = open_sender()
    try:
        other_group = random_group()
        while other_group == auction.group:
            other_group = random_group()
        for _ in range(5):  # another group on the same port: must never reach us
            send_datagram(sender, b"AG\x02\x06" + b"x" * 200, other_group, auction.port)
        send_datagram(sender, b"not an announcement", auction.group, auction.port)
        send_datagram(sender, b"A" * 65_000, auction.group, auction.port)
        time.sleep(0.3)
        write_item(auction.items, "01-lamp.json", "lamp", duration=0.5)
        thread.join(timeout=15)
    finally:
        sender.close()
        watcher.close()
    view = seen["view"]
    assert view.results[-1]["item"] == "lamp"
    assert view.dropped == 1  # the garbage; the oversized one is dropped before the view


def test_malformed_join_does_not_stop_the_auctioneer(auction, zctx):
    import zmq

    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    sock.connect(auction.server.endpoint)
    sock.send_multipart([b"k" * 32])
    reply = sock.recv_multipart()
    sock.close(0)
    assert len(reply) == 1 and b"bad-request" in reply[0]
    assert auction.client("Ana Lima").join().username == "ana.lima"


@pytest.mark.parametrize("frames", [[b"k" * 32], [b"not empty", b"k" * 32]],
                         ids=["one frame", "no empty delimiter"])
def test_a_message_without_a_routing_envelope_is_dropped_and_the_auctioneer_serves_on(
        auction, zctx, frames, caplog):
    import zmq

    dealer = raw_dealer(zctx, auction.server.endpoint, timeout_ms=300)
    with caplog.at_level("INFO", "agora.auctioneer"):
        dealer.send_multipart(frames)
        with pytest.raises(zmq.Again):  # dropped: no answer at all
            dealer.recv_multipart()
    dealer.close(0)
    assert "without a routing envelope" in caplog.text
    assert auction.client("Ana Lima").join().username == "ana.lima"


def test_a_failing_timer_does_not_stop_the_auctioneer(auction):
    real_tick, failures = auction.server.core.tick, []

    def tick(now: float) -> list[str]:
        if len(failures) < 3:
            failures.append(now)
            raise RuntimeError("bug in a timer")
        return real_tick(now)

    auction.server.core.tick = tick
    assert auction.client("Ana Lima").join().username == "ana.lima"
    deadline = time.monotonic() + 5
    while len(failures) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(failures) == 3 and auction.thread.is_alive()
    write_item(auction.items, "01-lamp.json", "lamp", duration=0.3)
    deadline = time.monotonic() + 10
    while not (auction.items / "done" / "01-lamp.json").exists():
        assert time.monotonic() < deadline, "the clock stopped after a failing tick"
        time.sleep(0.05)


def test_auctioneer_fails_closed_when_the_broker_is_down(auction, broker):
    ana = auction.client("Ana Lima")
    assert ana.join().username == "ana.lima"  # membership arrived by push
    auction.server.core.config.silence_limit = 0.5
    broker.pause()  # the broker goes away (the fixture closes it later)
    time.sleep(1.0)
    for request in (ana.join, lambda: ana.bid("lamp", 1000)):
        with pytest.raises(RemoteError) as info:
            request()
        assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
        assert "not heard from the broker" in info.value.message
    assert ana.snapshot()["state"]["status"] == "idle"  # reads are still served


def test_auctioneer_follows_a_restarted_broker_again(auction, broker, zctx):
    ana = auction.client("Ana Lima")
    assert ana.join().username == "ana.lima"
    auction.server.core.config.silence_limit = 1.0
    broker.pause()
    broker.server.close()
    time.sleep(1.5)  # past the silence limit: the auctioneer has failed closed
    with pytest.raises(RemoteError) as info:
        ana.join()
    assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
    # The broker comes back on the same directory and endpoint (its sessions are gone).
    broker.server = BrokerServer(broker.data_dir, broker.endpoint, zctx)
    broker.thread = threading.Thread(target=broker.server.serve, daemon=True)
    broker.thread.start()
    # The feed logs in again, subscribes and fetches a snapshot: service resumes, and a
    # member registered after the restart arrives by push on the new subscription.
    deadline = time.monotonic() + 15
    while True:
        try:
            assert ana.join().username == "ana.lima"
            break
        except RemoteError as exc:
            assert exc.code is ErrorCode.SERVICE_UNAVAILABLE
            assert time.monotonic() < deadline, "the auctioneer never heard the broker again"
            time.sleep(0.2)
    assert auction.client("Bruno Costa").join().username == "bruno.costa"


def test_a_missed_membership_notice_is_repaired_by_a_fresh_snapshot(auction):
    ana = auction.client("Ana Lima")
    core = auction.server.core
    held, version = core.roster, core.roster.version
    # A notice whose version shows that some were lost on the way: the core asks for a
    # snapshot, the server passes the wish on, and the feed fetches one from the broker.
    auction.server.feed.events.put(("changed", {"version": version + 5, "username": "ghost",
                                                "state": "registered"}, time.time()))
    deadline = time.monotonic() + 5
    while core.roster is held and time.monotonic() < deadline:
        time.sleep(0.02)
    assert core.roster is not held, "no fresh snapshot was fetched"
    assert core.roster.version == version and not core.wants_snapshot
    assert ana.join().username == "ana.lima"


class FlakyBrokerAgent:
    """An agent whose first login finds no broker and whose second hits a bug."""

    def __init__(self) -> None:
        self.session: object | None = None
        self.logins = 0

    def login(self, listen: bool) -> None:
        self.logins += 1
        if self.logins == 1:
            raise BrokerUnreachable("no answer from the broker")
        if self.logins == 2:
            raise RuntimeError("a bug in a feed step")
        self.session = object()

    def subscribe(self, membership: bool, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(poll=lambda timeout: [], silent_for=lambda: 0.0,
                               subscribed=True, close=lambda: None)

    def call(self, service: str) -> dict:
        return {"version": 7, "members": []}


def test_the_membership_feed_outlives_a_missing_broker_and_a_bug(monkeypatch, caplog):
    monkeypatch.setattr("auctioneer.feed.RETRY_INTERVAL", 0.01)
    feed = MembershipFeed(FlakyBrokerAgent())  # type: ignore[arg-type]
    thread = threading.Thread(target=feed.run, daemon=True)
    thread.start()
    try:
        event, value, _ = feed.events.get(timeout=5)
    finally:
        feed.stop.set()
        thread.join(5)
    assert (event, value["version"]) == ("snapshot", 7)  # it went on, and got there
    assert "membership from the broker unavailable: no answer" in caplog.text
    assert "internal error in the membership feed" in caplog.text


def test_a_second_auctioneer_on_the_same_data_directory_is_refused(auction, tmp_path, zctx):
    from agora.errors import LocalError

    with pytest.raises(LocalError, match=f"another auctioneer is already running on "
                                         f"{tmp_path / 'auctioneer'} \\(pid {os.getpid()}\\)"):
        AuctioneerServer(auction.agent, auction.items, tmp_path / "auctioneer",
                         "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", auction.group, auction.port,
                         context=zctx)
    assert auction.client("Ana Lima").join().username == "ana.lima"  # the first serves on
