"""Peer messages over real sockets on loopback: delivery, several peers, failures, bad input.

An Agent belongs to one thread, so a listening agent runs ``agent.messages()`` in a thread
of its own (:class:`Listening`) while the test thread sends with another agent.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import zmq

from agents import Agent
from agents.peer import LETTERS_SEEN_NAME, Listener
from agents.peer_protocol import PeerEndpoint
from agora.envelope import open_clear
from agora.errors import (
    LocalError,
    MessageTooLarge,
    PeerClosed,
    PeerError,
    PeerOffline,
    PeerTimeout,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.protocol import (
    MAX_MESSAGE_FRAMES,
    MAX_MESSAGE_SIZE,
    MAX_PEER_TEXT,
    Channel,
    ErrorCode,
    Kind,
    Sender,
)
from tests.conftest import PASSWORD, raw_dealer


class Listening:
    """A :class:`Listener` in a background thread, collecting what arrives."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.received = []
        self.listener = Listener(agent, self.received.append)
        self.thread = threading.Thread(target=self.listener.run, daemon=True)

    def wait_for(self, count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received

    def __enter__(self) -> Listening:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop.set()
        self.thread.join(5)


@pytest.fixture
def ana_bob(broker):
    return broker.agent("Ana Lima"), broker.agent("Bob Reis")


def raw_hello(zctx, core: PeerEndpoint, receiver: Agent):
    """Send a HELLO by hand; return what ``welcome_received`` makes of the answer."""
    pending = core.hello(receiver.username, bytes(receiver.private_key.public_key), time.time())
    dealer = raw_dealer(zctx, f"tcp://127.0.0.1:{receiver.info.port}")
    try:
        dealer.send_multipart(pending.frames)
        return core.welcome_received(pending, dealer.recv_multipart(), time.time())
    finally:
        dealer.close(0)


def raw_conversation(zctx, sender: Agent, receiver: Agent):
    """Set up a conversation by hand (the sender's real key, raw sockets): (conv, PAIR)."""
    conversation, port = raw_hello(zctx, PeerEndpoint(sender.username, sender.private_key),
                                   receiver)
    pair = zctx.socket(zmq.PAIR)
    pair.setsockopt(zmq.LINGER, 0)
    pair.setsockopt(zmq.RCVTIMEO, 3000)
    pair.connect(f"tcp://127.0.0.1:{port}")
    return conversation, pair


def test_send_is_delivered_and_acknowledged(ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        receipt = ana.send("bob.reis", "olá, Bob")
        [msg] = inbox.wait_for(1)
    assert (receipt.to, receipt.seq) == ("bob.reis", 1)
    assert (msg.sender, msg.text, msg.conversation) == ("ana.lima", "olá, Bob",
                                                          receipt.conversation)


@pytest.mark.parametrize("contents", ["not json", "[1, 2]", '{"x": "y"}', "[" * 100_000],
                         ids=["garbage", "not-an-object", "not-a-time", "nested-too-deep"])
def test_an_unreadable_letters_seen_file_is_ignored_and_messages_still_arrive(ana_bob,
                                                                              contents, caplog):
    ana, bob = ana_bob
    (bob.home / LETTERS_SEEN_NAME).write_text(contents)
    with caplog.at_level(logging.WARNING, logger="agora.peer"), Listening(bob) as inbox:
        ana.send("bob.reis", "still here")
        [msg] = inbox.wait_for(1)
    assert msg.text == "still here"
    assert "ignoring unreadable" in caplog.text


def test_listener_receives_from_several_peers_at_the_same_time(broker):
    bob = broker.agent("Bob Reis")
    senders = [broker.agent(f"Sender {n}") for n in range(3)]
    failures = []

    def write(agent: Agent) -> None:
        try:
            for i in range(5):
                agent.send("bob.reis", f"{agent.username} {i}")
        except Exception as exc:  # reported below; a thread must not swallow it
            failures.append(exc)

    with Listening(bob) as inbox:
        threads = [threading.Thread(target=write, args=(a,)) for a in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        received = inbox.wait_for(15)
    assert failures == []
    for agent in senders:
        texts = [m.text for m in received if m.sender == agent.username]
        assert texts == [f"{agent.username} {i}" for i in range(5)]


def test_send_many_delivers_every_text_in_order(ana_bob):
    ana, bob = ana_bob
    texts = [f"line {i}" for i in range(100)]
    with Listening(bob) as inbox:
        receipts = ana.peer.send_many("bob.reis", texts, window=8)
        received = inbox.wait_for(100)
    assert [m.text for m in received] == texts
    assert [r.seq for r in receipts] == list(range(1, 101))
    assert all(r.delivered for r in receipts)


def test_send_many_keeps_a_window_of_messages_unacknowledged(ana_bob):
    ana, bob = ana_bob
    in_flight_at_first_ack = []

    def first(receipt) -> None:
        if not in_flight_at_first_ack:
            [conversation] = ana.peer.conversations.values()
            in_flight_at_first_ack.append(conversation.send_seq)

    with Listening(bob) as inbox:
        ana.peer.send_many("bob.reis", [str(i) for i in range(10)], window=4, on_receipt=first)
        inbox.wait_for(10)
    # Four were sent before any ACK was waited for: a stream, not one round trip each.
    assert in_flight_at_first_ack == [4]


def test_send_many_checks_every_text_before_sending_any(ana_bob):
    ana, bob = ana_bob
    texts = ["fine", "x" * (MAX_PEER_TEXT + 1), "also fine"]
    with Listening(bob) as inbox:
        with pytest.raises(MessageTooLarge):
            ana.peer.send_many("bob.reis", texts)
        ana.send("bob.reis", "after")
        received = inbox.wait_for(1)
    assert [m.text for m in received] == ["after"]


def test_send_many_after_a_send_goes_on_the_same_conversation(ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        first = ana.send("bob.reis", "first")
        [conversation] = ana.peer.conversations.values()
        receipts = ana.peer.send_many("bob.reis", ["second", "third"])
        received = inbox.wait_for(3)
    assert list(ana.peer.conversations.values()) == [conversation]  # no second HELLO
    assert [m.text for m in received] == ["first", "second", "third"]
    assert [first.seq] + [r.seq for r in receipts] == [1, 2, 3]


def test_send_many_to_yourself_is_refused_and_opens_nothing(ana_bob):
    ana, _ = ana_bob
    with pytest.raises(LocalError, match="that is you"):
        ana.peer.send_many("ana.lima", ["hello me"])
    assert ana.peer.conversations == {}


def test_send_many_of_nothing_opens_no_conversation(ana_bob):
    ana, bob = ana_bob
    with Listening(bob):
        assert ana.peer.send_many("bob.reis", []) == []
    assert ana.peer.conversations == {}


def test_send_many_to_an_offline_peer_leaves_each_text_in_the_mailbox(broker):
    ana = broker.agent("Ana Lima")
    bob = broker.agent("Bob Reis", login=False)
    seen = []
    receipts = ana.peer.send_many("bob.reis", ["one", "two", "three"], on_receipt=seen.append)
    assert [r.queued for r in receipts] == [True, True, True] and seen == receipts
    bob.login(PASSWORD)
    with Listening(bob) as inbox:
        received = inbox.wait_for(3)
    assert [m.text for m in received] == ["one", "two", "three"]


def test_send_many_to_a_peer_that_stopped_reading_times_out(ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        ana.send("bob.reis", "first")
        inbox.wait_for(1)
    # bob is still logged in, with the conversation open, but nothing reads any more
    started = time.monotonic()
    with pytest.raises(PeerTimeout):
        ana.peer.send_many("bob.reis", ["a", "b", "c"], timeout=0.3, queue=False)
    assert time.monotonic() - started < 3


def test_send_many_goes_again_on_a_new_conversation_when_the_peer_vanished(broker, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        ana.send("bob.reis", "before")
        inbox.wait_for(1)
    for sock in list(bob.peer.conversations):  # bob's process dies: no goodbye, no logout
        sock.close(0)
    bob.inbox.close(0)
    bob2 = Agent(bob.home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(bob2)
    bob2.login(PASSWORD)
    texts = [f"after {i}" for i in range(20)]
    with Listening(bob2) as inbox2:
        receipts = ana.peer.send_many("bob.reis", texts, timeout=0.5, window=4)
        inbox2.wait_for(len(texts) + 1, timeout=0.3)  # time for a copy shown twice
    assert [m.text for m in inbox2.received] == texts
    assert len({r.conversation for r in receipts}) == 1 and all(r.delivered for r in receipts)


def test_send_to_unknown_user_fails_with_unknown_user(ana_bob):
    ana, _ = ana_bob
    with pytest.raises(RemoteError) as exc:
        ana.send("nobody.here", "hello?")
    assert exc.value.code is ErrorCode.UNKNOWN_USER


def test_send_to_offline_user_without_queueing_fails_with_offline(broker):
    ana = broker.agent("Ana Lima")
    broker.agent("Bob Reis", login=False)
    with pytest.raises(PeerOffline, match="bob.reis is offline"):
        ana.send("bob.reis", "hello?", queue=False)


def test_send_to_a_session_that_does_not_answer_times_out(ana_bob):
    ana, _ = ana_bob  # bob is logged in, but nothing reads his inbox
    started = time.monotonic()
    with pytest.raises(PeerTimeout, match="did not answer"):
        ana.send("bob.reis", "hello?", timeout=0.3, queue=False)
    assert time.monotonic() - started < 3


def test_peer_that_vanished_and_came_back_gets_a_new_conversation(broker, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        first = ana.send("bob.reis", "before")
        inbox.wait_for(1)
    # bob's process dies: sockets gone, no goodbye, no logout
    for sock in list(bob.peer.conversations):
        sock.close(0)
    bob.inbox.close(0)
    bob2 = Agent(bob.home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(bob2)
    bob2.login(PASSWORD)
    with Listening(bob2) as inbox2:
        second = ana.send("bob.reis", "after", timeout=0.5)
        [msg] = inbox2.wait_for(1)
    assert msg.text == "after" and second.conversation != first.conversation


def test_peer_that_said_goodbye_gets_a_new_conversation(broker, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        first = ana.send("bob.reis", "before")
        inbox.wait_for(1)
    bob.logout()
    bob.close()  # says BYE on the conversation
    bob2 = Agent(bob.home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(bob2)
    bob2.login(PASSWORD)
    with Listening(bob2) as inbox2:
        second = ana.send("bob.reis", "after")
        [msg] = inbox2.wait_for(1)
    assert msg.text == "after" and second.conversation != first.conversation


def test_reply_travels_on_the_conversation_the_peer_opened(ana_bob):
    ana, bob = ana_bob
    with Listening(bob):
        sent = ana.send("bob.reis", "ping")
    with Listening(ana) as inbox:
        reply = bob.send("ana.lima", "pong")
        [msg] = inbox.wait_for(1)
    assert msg.text == "pong" and reply.conversation == sent.conversation


def test_garbage_on_the_inbox_is_refused_and_the_listener_keeps_running(zctx, ana_bob, caplog):
    ana, bob = ana_bob
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob) as inbox:
        dealer = raw_dealer(zctx, f"tcp://127.0.0.1:{bob.info.port}")
        dealer.send_multipart([b"GET / HTTP/1.1"])
        refusal = dealer.recv_multipart()
        ana.send("bob.reis", "still there?")
        inbox.wait_for(1)
    dealer.close(0)
    [envelope] = refusal  # a clear ERROR: the request proved nothing, so nothing is sealed
    _, body = open_clear(envelope, Channel.PEER, Sender.ACCEPTOR, {Kind.ERROR})
    assert b"bad-request" in body
    assert [m.text for m in inbox.received] == ["still there?"]
    assert bob.peer.dropped == 1 and "dropped a bad conversation request" in caplog.text


def test_oversized_message_on_the_inbox_is_dropped(zctx, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        dealer = raw_dealer(zctx, f"tcp://127.0.0.1:{bob.info.port}")
        dealer.send_multipart([b"ana.lima", bytes(32), b"x" * (MAX_MESSAGE_SIZE + 1)])
        time.sleep(0.1)
        ana.send("bob.reis", "after the big one")
        inbox.wait_for(1)
    dealer.close(0)
    assert [m.text for m in inbox.received] == ["after the big one"]


def test_conversation_request_with_a_key_not_the_senders_is_refused(zctx, broker, caplog):
    bob = broker.agent("Bob Reis")
    broker.agent("Ana Lima")
    mallory = broker.agent("Mallory")
    impostor = PeerEndpoint("ana.lima", mallory.private_key)  # ana's name, mallory's key
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob), \
            pytest.raises(UnauthenticatedRefusal) as exc:  # in clear: it proved no key
        raw_hello(zctx, impostor, bob)
    assert exc.value.code == ErrorCode.BAD_CREDENTIALS
    assert bob.peer.conversations == {} and "not ana.lima's key" in caplog.text


def test_revoked_sender_is_refused(zctx, broker):
    bob, ana = broker.agent("Bob Reis"), broker.agent("Ana Lima")
    broker.admin.revoke("ana.lima", time.time())
    with Listening(bob), pytest.raises(UnauthenticatedRefusal) as exc:
        raw_hello(zctx, PeerEndpoint("ana.lima", ana.private_key), bob)
    assert exc.value.code == ErrorCode.REVOKED


def test_a_conversation_request_while_the_broker_is_away_is_refused_as_try_again(zctx,
                                                                                 broker):
    bob = broker.agent("Bob Reis", timeout=0.3)  # gives up on the broker quickly
    ana = broker.agent("Ana Lima")
    with Listening(bob):
        broker.pause()  # the sender's key cannot be checked now
        with pytest.raises(UnauthenticatedRefusal) as exc:
            raw_hello(zctx, PeerEndpoint("ana.lima", ana.private_key), bob)
    assert exc.value.code == ErrorCode.SERVICE_UNAVAILABLE
    assert exc.value.message == ("bob.reis refused the conversation: directory unavailable; "
                                 "try again")
    assert bob.peer.conversations == {}


@pytest.mark.parametrize("address", ["192.0.2.7", "127.0.0.2"])
def test_a_directory_address_other_than_loopback_is_never_connected_to(ana_bob, monkeypatch,
                                                                       address):
    ana, bob = ana_bob
    lookup = ana.call

    def call(service, args=None):  # the directory says bob listens elsewhere
        answer = lookup(service, args)
        return {**answer, "address": address} if service == "lookup" else answer

    monkeypatch.setattr(ana, "call", call)
    with Listening(bob), pytest.raises(PeerError, match="not on loopback; not connecting"):
        ana.send("bob.reis", "hi")
    assert ana.peer.conversations == {}


def test_send_to_yourself_is_refused(ana_bob):
    ana, _ = ana_bob
    with pytest.raises(LocalError, match="that is you"):
        ana.send("ana.lima", "hello me")


def test_bad_input_on_a_conversation_is_dropped_and_good_messages_still_arrive(zctx, ana_bob,
                                                                               caplog):
    ana, bob = ana_bob
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob) as inbox:
        conversation, pair = raw_conversation(zctx, ana, bob)
        _, _, first = conversation.message("one", time.time())
        _, _, second = conversation.message("two", time.time())
        _, _, third = conversation.message("three", time.time())
        tampered = [first[0][:-1] + bytes([first[0][-1] ^ 1])]
        two_frames = [third[0], b"tail"]  # a good envelope, but not a one-frame message
        for frames in ([b"garbage"], tampered, first, first, second, two_frames):
            pair.send_multipart(frames)  # 'first' twice: a replay
        inbox.wait_for(2)
        time.sleep(0.1)
    pair.close(0)
    assert [m.text for m in inbox.received] == ["one", "two"]
    assert bob.peer.dropped == 4
    assert "replayed or reordered" in caplog.text and "could not be authenticated" in caplog.text
    assert "one frame" in caplog.text


def test_oversized_message_on_a_conversation_is_dropped(zctx, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        conversation, pair = raw_conversation(zctx, ana, bob)
        pair.send(b"x" * (MAX_MESSAGE_SIZE + 1))
        time.sleep(0.1)
        ana.send("bob.reis", "after the big one")
        inbox.wait_for(1)
    pair.close(0)
    assert [m.text for m in inbox.received] == ["after the big one"]


def test_a_message_of_too_many_frames_on_a_conversation_is_dropped_and_the_next_arrives(
        zctx, ana_bob):
    ana, bob = ana_bob
    with Listening(bob) as inbox:
        conversation, pair = raw_conversation(zctx, ana, bob)
        _, _, dropped = conversation.message("a good envelope, then too many frames",
                                             time.time())
        _, _, good = conversation.message("after the many frames", time.time())
        pair.send_multipart([dropped[0]] + [b"f"] * MAX_MESSAGE_FRAMES)  # over the bound
        pair.send_multipart(good)
        inbox.wait_for(1)
        time.sleep(0.1)
    pair.close(0)
    assert [m.text for m in inbox.received] == ["after the many frames"]
    assert bob.peer.conversations  # the conversation is still open


def test_idle_conversation_is_closed_and_the_next_send_opens_another(ana_bob):
    ana, bob = ana_bob
    with Listening(bob):
        first = ana.send("bob.reis", "before")
    bob.peer.tick(time.time() + bob.peer.idle_timeout + 1)
    assert bob.peer.conversations == {}
    with Listening(bob) as inbox:
        second = ana.send("bob.reis", "after")
        inbox.wait_for(1)
    assert [m.text for m in inbox.received] == ["after"]
    assert second.conversation != first.conversation


def test_listener_at_its_conversation_limit_closes_the_oldest(broker, ana_bob):
    ana, bob = ana_bob
    carol = broker.agent("Carol Dias")
    bob.peer.max_conversations = 1
    with Listening(bob) as inbox:
        ana.send("bob.reis", "from ana")
        carol.send("bob.reis", "from carol")  # evicts ana's conversation (BYE)
        ana.send("bob.reis", "ana again")  # sees the BYE, sets up a new one
        inbox.wait_for(3)
    assert [m.text for m in inbox.received] == ["from ana", "from carol", "ana again"]
    assert len(bob.peer.conversations) == 1


def log_out(agent: Agent) -> None:  # `agora listen` ended with Ctrl-C
    agent.logout()  # LOGOUT, then BYE on every conversation


def die(agent: Agent) -> None:  # kill -9 of `agora listen`: no BYE, no LOGOUT
    for sock in list(agent.peer.conversations):
        sock.close(0)
    agent.inbox.close(0)


@pytest.mark.parametrize("leave", [log_out, die], ids=["logs-out", "dies"])
def test_send_many_leaves_the_rest_in_the_mailbox_when_the_peer_leaves_mid_stream(
        broker, ana_bob, leave):
    ana, bob = ana_bob
    texts = [f"line {i}" for i in range(40)]
    received = []

    def read_five_then_leave(msg):
        received.append(msg.text)
        if len(received) == 5:
            listener.stop.set()
            leave(bob)

    listener = Listener(bob, read_five_then_leave)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        receipts = ana.peer.send_many("bob.reis", texts, timeout=1.0, window=4)
    finally:
        listener.stop.set()
        thread.join(5)
    delivered = [t for t, r in zip(texts, receipts, strict=True) if r.delivered]
    assert len(receipts) == len(texts) and delivered == received and len(delivered) >= 5
    assert all(r.conversation == "mailbox" for r in receipts[len(delivered):])
    again = Agent(bob.home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(again)
    again.login(PASSWORD)
    with Listening(again) as inbox:
        letters = inbox.wait_for(len(texts) - len(delivered))
    assert received + [m.text for m in letters] == texts


def test_a_peer_that_says_bye_to_every_message_ends_the_send_after_two_conversations(
        ana_bob, monkeypatch):
    ana, bob = ana_bob
    node = bob.peer
    monkeypatch.setattr(node, "_on_pair", lambda sock, conversation, frame:
                        node._close(sock, say_bye=True, now=time.time()))
    opened = []
    reopen = ana.peer._reopen
    monkeypatch.setattr(ana.peer, "_reopen", lambda *a: opened.append(a) or reopen(*a))
    with Listening(bob), pytest.raises(PeerClosed):
        ana.peer.send_many("bob.reis", ["a", "b", "c"], timeout=1.0)
    assert len(opened) == 2
